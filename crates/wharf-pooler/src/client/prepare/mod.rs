//! Prepared statements in transaction and statement mode: a client's
//! named statements follow it from server to server.
//!
//! Going to the server, a named Parse is renamed to the statement's
//! pooler-wide name (or not sent at all when the server already has it), a
//! Bind or Describe of a named statement is renamed and preceded by a Parse
//! when the server lacks it, and a Close of a named statement is answered
//! by the pooler. Coming back, every request the server owes a reply is in
//! a queue, in order, saying whether its reply goes to the client, is
//! swallowed (a Parse or Close the pooler added), or is made by the pooler
//! (a Parse or Close the pooler did not send). After an error the server
//! skips to the next Sync, and so does the queue, undoing what the skipped
//! requests would have done. Unnamed statements and portals pass through.
//! SQL-level `PREPARE`, `EXECUTE` and `DEALLOCATE` are followed too
//! ([`sql`]).

mod long_query;
mod need;
#[cfg(test)]
mod random;
mod replies;
mod retry;
mod sql;

pub(in crate::client) use need::{bind_names_cut, untracked, Untracked};

pub(in crate::client) use replies::{reply_wanted, resets_tag};

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use long_query::LongQuery;

use crate::prepared::{ClientStatements, Registry, ServerStatements, Statement};
use crate::proto::cstr_bytes;
use crate::sql::prepare::may_name;
use crate::stats::PoolStats;

/// How much of a client message of `len` bytes (tag included) must be
/// held before it is passed on: a Parse, Describe and Close whole (up to
/// `max_packet_size`: a Parse is registered by its whole text); a Bind
/// whole up to [`BIND_HEAD`], and past that only its head, where its names
/// are (the parameters stream); a simple Query whole up to [`QUERY_READ`]
/// and not at all past it (it is looked at as it streams: [`long_query`]);
/// Terminate, which the session keeps for itself; nothing else.
pub(super) fn held(tag: u8, len: usize) -> usize {
    match tag {
        b'P' | b'D' | b'C' | b'X' => len,
        b'B' => len.min(BIND_HEAD),
        b'Q' if len <= QUERY_READ => len,
        _ => 0,
    }
}

/// The most of a Bind held before it is passed on: its portal and
/// statement names must be in it.
pub(super) const BIND_HEAD: usize = 64 * 1024;

/// The longest simple query read for an SQL-level `PREPARE`, `EXECUTE` or
/// `DEALLOCATE`: a longer one streams to the server, looked at on its way
/// ([`long_query`]).
pub(super) const QUERY_READ: usize = 64 * 1024;

/// A request whose reply the server owes, in the order sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// A simple Query or a FunctionCall: answered up to ReadyForQuery.
    Simple,
}

/// Who answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The server's reply goes to the client.
    Relay,
    /// The pooler added the request: its reply is dropped.
    Swallow,
    /// The pooler did not send it: it answers with an empty message of
    /// this tag (ParseComplete, CloseComplete) when its turn comes.
    Make(u8),
    /// A simple query the pooler rewrote into several statements: the
    /// CommandComplete at this index (from 0) is for a statement the
    /// pooler added, and is dropped; the rest goes to the client.
    HideComplete(u8),
    /// A long simple query the pooler made the server refuse
    /// ([`long_query`]): the server's error is replaced by the pooler's.
    Refused,
}

/// What a request changes, settled when its reply comes (or never does).
#[derive(Debug)]
enum Effect {
    None,
    /// A Parse (or SQL `PREPARE`) of `statement` sent to the server,
    /// recorded there at once: if it fails, it is not prepared there, and
    /// the client's name for it (when the client sent it) goes too.
    Prepared {
        statement: Arc<Statement>,
        client_name: Option<Vec<u8>>,
    },
    /// The client's Parse of a statement the server had: the name is the
    /// client's once answered (kept across a reset sent before it).
    Named {
        statement: Arc<Statement>,
        client_name: Vec<u8>,
    },
    /// A Close the pooler sent to make room: if it never runs, the
    /// statement is still there.
    Evicted(Arc<Statement>),
    /// A Close the pooler sent of a statement whose plan went stale: if it
    /// never runs, the statement is still stale there.
    Unstaled(Arc<Statement>),
    /// A Bind or `EXECUTE` of `statement`: should the server refuse its
    /// cached plan, the statement is stale on that server.
    Uses(Arc<Statement>),
    /// A Describe of a portal: the client learns the result's shape from
    /// its answer.
    DescribesPortal,
    /// The client's Close of its name, answered by the pooler: if it is
    /// skipped after an error, the name stays.
    Unnamed {
        statement: Arc<Statement>,
        client_name: Vec<u8>,
    },
}

#[derive(Debug)]
struct Outstanding {
    request: Request,
    answer: Answer,
    effect: Effect,
}

/// An edit of the server's bytes on their way to the client: at `at`,
/// `remove` bytes go and the bytes `insert` of the tracker's scratch
/// buffer come in.
#[derive(Debug, Clone, Copy)]
struct Edit {
    at: usize,
    remove: usize,
    insert: (usize, usize),
}

/// One client's prepared statements and the replies its server owes.
#[derive(Debug)]
pub(super) struct Tracker {
    /// `max_prepared_statements`: statements kept per server.
    cap: usize,
    client: ClientStatements,
    queue: VecDeque<Outstanding>,
    /// Client messages scanned and not yet sent, by tag and length.
    unsent: VecDeque<(u8, usize)>,
    /// Bytes of a streamed client message still to move.
    partial: usize,
    /// The streamed message is a long simple query.
    long_query: Option<LongQuery>,
    /// Client bytes for the server, rewritten.
    out: BytesMut,
    edits: Vec<Edit>,
    made: Vec<u8>,
    /// The server met an error and discards everything up to the next
    /// Sync, which the client has not sent yet.
    skipping: bool,
    /// A Bind or Execute went since the last Sync.
    group_ran: bool,
    /// Syncs and simple queries sent, and answered.
    groups_sent: u64,
    groups_done: u64,
    /// The last ReadyForQuery said the server was idle (no transaction).
    idle: bool,
    /// The execution to run again should the server refuse its plan.
    capture: Option<retry::Capture>,
}

impl Tracker {
    /// A tracker keeping at most `cap` statements on each server.
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            client: ClientStatements::default(),
            queue: VecDeque::new(),
            unsent: VecDeque::new(),
            partial: 0,
            long_query: None,
            out: BytesMut::new(),
            edits: Vec::new(),
            made: Vec::new(),
            skipping: false,
            group_ran: false,
            groups_sent: 0,
            groups_done: 0,
            idle: true,
            capture: None,
        }
    }

    /// A tracker made part-way through a session, before the message
    /// at `pass_through` bytes into the client's buffer: the bytes before
    /// it go as they are; the server still owes `owed` replies up to
    /// ReadyForQuery (for simple queries and Syncs sent without a
    /// tracker), the last `trailing_syncs` of them for Syncs sent after the
    /// last query (which a COPY FROM STDIN would make the server ignore);
    /// `idle` says whether its last ReadyForQuery was outside a
    /// transaction.
    pub(super) fn resumed(
        cap: usize,
        (owed, trailing_syncs): (usize, usize),
        pass_through: usize,
        idle: bool,
    ) -> Self {
        let mut tracker = Self::new(cap);
        tracker.partial = pass_through;
        tracker.idle = idle;
        let syncs = trailing_syncs.min(owed);
        for _ in syncs..owed {
            tracker.push_relayed(Request::Simple);
        }
        for _ in 0..syncs {
            tracker.push_relayed(Request::Sync);
        }
        tracker
    }

    /// Queues a request whose reply goes to the client as it is.
    fn push_relayed(&mut self, request: Request) {
        self.groups_sent += 1;
        self.queue.push_back(Outstanding {
            request,
            answer: Answer::Relay,
            effect: Effect::None,
        });
    }

    /// The client's statement names.
    pub(super) fn client_statements(&self) -> usize {
        self.client.len()
    }

    /// Whether the server owes nothing and the pooler has nothing to say.
    pub(super) fn settled(&self) -> bool {
        self.queue.is_empty()
    }

    /// Rewritten bytes waiting for the server.
    pub(super) fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Whether a reply the pooler makes is due now.
    pub(super) fn due(&self) -> bool {
        matches!(self.queue.front(), Some(o) if matches!(o.answer, Answer::Make(_)))
    }

    /// A client message the scanner found (`len` counts the whole
    /// message, tag included).
    pub(super) fn scanned(&mut self, tag: u8, len: usize) {
        self.unsent.push_back((tag, len));
    }

    /// Moves the scanned client bytes `from[..ready]` to [`out`](Self::out),
    /// rewritten for a server whose statements are `server`; the caller
    /// then drops them from `from`.
    pub(super) fn outgoing(
        &mut self,
        from: &[u8],
        server: &mut ServerStatements,
        registry: &Registry,
        stats: &PoolStats,
    ) {
        let start = self.out.len();
        if let Some(capture) = &mut self.capture {
            capture.window(start);
        }
        self.rewrite(from, server, registry, stats);
        if let Some(capture) = &mut self.capture {
            if !capture.take(&self.out) {
                self.capture = None;
            }
        }
    }

    fn rewrite(
        &mut self,
        from: &[u8],
        server: &mut ServerStatements,
        registry: &Registry,
        stats: &PoolStats,
    ) {
        let mut at = 0;
        while at < from.len() {
            if self.partial > 0 {
                let n = self.partial.min(from.len() - at);
                self.stream(&from[at..at + n], self.partial - n);
                at += n;
                continue;
            }
            let Some((tag, len)) = self.unsent.pop_front() else {
                // Nothing scanned is left unsent: cannot happen, but the
                // bytes must still go.
                self.out.put_slice(&from[at..]);
                return;
            };
            let hold = held(tag, len);
            if hold == len && at + len <= from.len() {
                self.message(tag, &from[at..at + len], server, registry, stats);
                at += len;
            } else if tag == b'B' && hold > 5 && at + hold <= from.len() {
                // A Bind too long to hold: its names are renamed in the
                // head, and its parameters stream after it.
                let head = &from[at..at + hold];
                if !self.bind(&head[5..], len - 5, server, stats) {
                    self.request(tag, server);
                    self.out.put_slice(head);
                }
                self.partial = len - hold;
                at += hold;
            } else {
                self.request(tag, server);
                if tag == b'S' {
                    if let Some(capture) = &mut self.capture {
                        capture.sync(self.out.len(), len);
                    }
                }
                if tag == b'Q' {
                    self.long_query = Some(LongQuery::new());
                }
                let n = len.min(from.len() - at);
                self.stream(&from[at..at + n], len - n);
                at += n;
            }
        }
    }

    /// Passes on `bytes` of a streamed message, `rest` of it still to
    /// come. A long simple query that may reach the pooler's statements
    /// has its last byte changed, so that the server refuses it unrun.
    fn stream(&mut self, bytes: &[u8], rest: usize) {
        self.out.put_slice(bytes);
        self.partial = rest;
        let Some(long) = &mut self.long_query else {
            return;
        };
        long.look(bytes);
        if rest > 0 {
            return;
        }
        let refused = long.may_reach();
        self.long_query = None;
        // While the server skips to a Sync, it drops the query, which was
        // not queued.
        let queued = self
            .queue
            .back_mut()
            .filter(|o| o.request == Request::Simple && o.answer == Answer::Relay);
        if let (true, Some(query), Some(last)) = (refused, queued, self.out.last_mut()) {
            *last = b' ';
            query.answer = Answer::Refused;
        }
    }

    /// Queues a request whose reply is owed; while the server skips to the
    /// next Sync after an error, a request it will discard is undone at
    /// once instead (and a reply the pooler would make is not made).
    fn push(&mut self, server: &mut ServerStatements, outstanding: Outstanding) {
        if outstanding.request == Request::Sync {
            self.skipping = false;
        } else if self.skipping {
            self.undo(outstanding, server);
            return;
        }
        match outstanding.request {
            Request::Bind | Request::Execute => self.group_ran = true,
            Request::Sync | Request::Simple => {
                self.group_ran = false;
                self.groups_sent += 1;
            }
            _ => {}
        }
        self.queue.push_back(outstanding);
    }

    /// Queues the reply owed for a message passed on as it is.
    fn request(&mut self, tag: u8, server: &mut ServerStatements) {
        let request = match tag {
            b'P' => Request::Parse,
            b'B' => Request::Bind,
            b'D' => Request::Describe,
            b'E' => Request::Execute,
            b'C' => Request::Close,
            b'S' => Request::Sync,
            b'Q' | b'F' => Request::Simple,
            // Flush, COPY data: nothing owed.
            _ => return,
        };
        self.push(
            server,
            Outstanding {
                request,
                answer: Answer::Relay,
                effect: Effect::None,
            },
        );
    }

    /// Handles one whole client message.
    fn message(
        &mut self,
        tag: u8,
        whole: &[u8],
        server: &mut ServerStatements,
        registry: &Registry,
        stats: &PoolStats,
    ) {
        let body = &whole[5..];
        let handled = match tag {
            b'Q' => self.query(body, server, registry, stats),
            b'P' => self.parse(body, server, registry, stats),
            b'B' => self.bind(body, body.len(), server, stats),
            b'D' => self.describe_or_close(b'D', body, server, stats),
            b'C' => self.describe_or_close(b'C', body, server, stats),
            _ => false,
        };
        if !handled {
            if tag == b'P' {
                stats.server_parses.fetch_add(1, Ordering::Relaxed);
            }
            if tag == b'D' && body.first() == Some(&b'P') {
                self.push(
                    server,
                    Outstanding {
                        request: Request::Describe,
                        answer: Answer::Relay,
                        effect: Effect::DescribesPortal,
                    },
                );
            } else {
                self.request(tag, server);
            }
            self.out.put_slice(whole);
        }
    }

    /// A Parse. Named ones are the client's from now on, and go to the
    /// server under the statement's own name unless it has it already.
    fn parse(
        &mut self,
        body: &[u8],
        server: &mut ServerStatements,
        registry: &Registry,
        stats: &PoolStats,
    ) -> bool {
        let Some((name, definition)) = cstr_bytes(body) else {
            return false;
        };
        // A Parse's text can reach the pooler's statements as a simple
        // query's can (`EXECUTE wharf_7`), named or not. Most Parses do
        // not hold the prefix at all, and are not read further.
        let shielded = if may_name(definition, OWN_PREFIX) {
            cstr_bytes(definition).and_then(|(text, types)| {
                Some([&sql::shield_own_names(text)?[..], &[0], types].concat())
            })
        } else {
            None
        };
        if name.is_empty() {
            let Some(definition) = shielded else {
                return false;
            };
            stats.server_parses.fetch_add(1, Ordering::Relaxed);
            self.request(b'P', server);
            self.send(b'P', &[&[0]], &definition);
            return true;
        }
        let statement = registry.statement(shielded.as_deref().unwrap_or(definition));
        self.client.insert(name, statement.clone());
        if server.touch(&statement) {
            self.push(
                server,
                Outstanding {
                    request: Request::Parse,
                    answer: Answer::Make(b'1'),
                    effect: Effect::Named {
                        statement,
                        client_name: name.to_vec(),
                    },
                },
            );
        } else {
            self.prepare(statement, Some(name.to_vec()), Answer::Relay, server, stats);
        }
        true
    }

    /// Sends a Parse of `statement` (closing the least recently used
    /// statement first when the server has as many as it may keep).
    fn prepare(
        &mut self,
        statement: Arc<Statement>,
        client_name: Option<Vec<u8>>,
        answer: Answer,
        server: &mut ServerStatements,
        stats: &PoolStats,
    ) {
        self.make_room(&statement, server);
        statement.write_parse(&mut self.out);
        stats.server_parses.fetch_add(1, Ordering::Relaxed);
        self.push(
            server,
            Outstanding {
                request: Request::Parse,
                answer,
                effect: Effect::Prepared {
                    statement,
                    client_name,
                },
            },
        );
    }

    /// Records `statement` as prepared on the server, closing the least
    /// recently used statement there first when it has as many as it may
    /// keep.
    fn make_room(&mut self, statement: &Arc<Statement>, server: &mut ServerStatements) {
        if server.take_stale(statement) {
            statement.write_close(&mut self.out);
            self.push(
                server,
                Outstanding {
                    request: Request::Close,
                    answer: Answer::Swallow,
                    effect: Effect::Unstaled(statement.clone()),
                },
            );
        }
        if let Some(evicted) = server.insert(statement.clone(), self.cap) {
            evicted.write_close(&mut self.out);
            self.push(
                server,
                Outstanding {
                    request: Request::Close,
                    answer: Answer::Swallow,
                    effect: Effect::Evicted(evicted),
                },
            );
        }
    }

    /// The client's statement `name`, prepared on the server if it is not
    /// there yet; `None` for a name the client does not have.
    fn ensure(
        &mut self,
        name: &[u8],
        server: &mut ServerStatements,
        stats: &PoolStats,
    ) -> Option<Arc<Statement>> {
        let statement = self.client.get(name)?.clone();
        if statement.is_sql() && !server.touch(&statement) {
            // SQL `PREPARE` made it: a Parse cannot make it again, and the
            // server says the name does not exist.
            return None;
        }
        if !server.touch(&statement) {
            self.prepare(statement.clone(), None, Answer::Swallow, server, stats);
        }
        Some(statement)
    }

    /// A Bind: of a named statement the client has, renamed. `body` is the
    /// message's body or its head, of a body `body_len` bytes long.
    fn bind(
        &mut self,
        body: &[u8],
        body_len: usize,
        server: &mut ServerStatements,
        stats: &PoolStats,
    ) -> bool {
        let Some((portal, rest)) = cstr_bytes(body) else {
            return false;
        };
        let Some((name, params)) = cstr_bytes(rest) else {
            return false;
        };
        if name.is_empty() {
            return false;
        }
        let statement = self.ensure(name, server, stats);
        // An unknown name goes to the server, which says it does not exist
        // in its own words and skips to the Sync; one that looks like the
        // pooler's own names is changed so that it cannot reach another
        // client's statement.
        let foreign;
        let server_name: &[u8] = match &statement {
            Some(statement) => statement.server_name(),
            None if name.starts_with(OWN_PREFIX) => {
                foreign = foreign_name(name);
                &foreign
            }
            None => return false,
        };
        let params_len = body_len - (body.len() - params.len());
        let len = 4 + portal.len() + 1 + server_name.len() + params_len;
        let bind_at = self.out.len();
        self.out.put_u8(b'B');
        self.out.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
        self.out.put_slice(portal);
        self.out.put_u8(0);
        self.out.put_slice(server_name);
        self.out.put_slice(params);
        match statement {
            Some(statement) => {
                self.start_capture(&statement, bind_at);
                self.push(
                    server,
                    Outstanding {
                        request: Request::Bind,
                        answer: Answer::Relay,
                        effect: Effect::Uses(statement),
                    },
                );
            }
            None => self.request(b'B', server),
        }
        true
    }

    /// A Describe or Close of a named statement the client has: a
    /// Describe is renamed, a Close answered by the pooler (the statement
    /// stays on the server for other clients).
    fn describe_or_close(
        &mut self,
        tag: u8,
        body: &[u8],
        server: &mut ServerStatements,
        stats: &PoolStats,
    ) -> bool {
        let Some((&b'S', rest)) = body.split_first() else {
            return false;
        };
        let Some((name, _)) = cstr_bytes(rest) else {
            return false;
        };
        let Some(statement) = self.client.get(name).cloned() else {
            if tag == b'C' {
                // Closing a name that does not exist is no error in
                // PostgreSQL; it must not close another client's statement.
                self.push(
                    server,
                    Outstanding {
                        request: Request::Close,
                        answer: Answer::Make(b'3'),
                        effect: Effect::None,
                    },
                );
                return true;
            }
            if !name.starts_with(OWN_PREFIX) {
                return false;
            }
            self.write_describe(&foreign_name(name));
            self.request(b'D', server);
            return true;
        };
        if tag == b'C' {
            self.client.remove(name);
            self.push(
                server,
                Outstanding {
                    request: Request::Close,
                    answer: Answer::Make(b'3'),
                    effect: Effect::Unnamed {
                        statement,
                        client_name: name.to_vec(),
                    },
                },
            );
            return true;
        }
        let Some(statement) = self.ensure(name, server, stats) else {
            return false;
        };
        self.write_describe(statement.server_name());
        self.push(
            server,
            Outstanding {
                request: Request::Describe,
                answer: Answer::Relay,
                effect: Effect::Uses(statement),
            },
        );
        true
    }

    /// Appends a Describe of the statement `server_name` (NUL included).
    fn write_describe(&mut self, server_name: &[u8]) {
        self.out.put_u8(b'D');
        self.out
            .put_i32(i32::try_from(4 + 1 + server_name.len()).unwrap_or(i32::MAX));
        self.out.put_u8(b'S');
        self.out.put_slice(server_name);
    }
}

/// The start of the names the pooler gives statements on servers.
const OWN_PREFIX: &[u8] = b"wharf_";

/// A name a client used without preparing it that looks like one of the
/// pooler's, changed so that it names nothing on a server (NUL included):
/// the server still answers that it does not exist.
fn foreign_name(name: &[u8]) -> Vec<u8> {
    let mut foreign = b"client:".to_vec();
    foreign.extend_from_slice(name);
    foreign.push(0);
    foreign
}

//! After DDL changes a statement's result type, PostgreSQL refuses the
//! statement's cached plan ("cached plan must not change result type").
//! Every server holding the statement would refuse it for ever, so the
//! statement is marked stale there, to be closed and prepared again at its
//! next use. And when the refused execution can run again with nothing
//! else changed and the client learns the new result shape from the run
//! itself (see [`Tracker::run_again`]), the pooler prepares the statement
//! again and runs it once more instead of failing the client.

use std::sync::Arc;

use bytes::BytesMut;

use super::replies::error_field;
use super::{Answer, Effect, Outstanding, Request, Tracker};
use crate::prepared::{ServerStatements, Statement};

/// An execution kept so that it can run again: above this, it is not.
const MOST_KEPT: usize = 64 * 1024;

/// The bytes sent to the server for one Bind of a named statement up to
/// the Sync after it.
#[derive(Debug)]
pub(super) struct Capture {
    statement: Arc<Statement>,
    /// How many Syncs (and simple queries) were sent before it.
    group: u64,
    bytes: BytesMut,
    /// Where in the tracker's `out` the bytes still to keep start, while
    /// client bytes are rewritten.
    from: usize,
    /// How long `bytes` is once the Sync is in.
    until: Option<usize>,
    /// The bytes are the text of a simple query's `EXECUTE`, not extended
    /// protocol messages.
    query: bool,
}

impl Capture {
    /// Rewritten bytes are about to be appended to `out` from `at` on.
    pub(super) fn window(&mut self, at: usize) {
        self.from = at;
    }

    /// A Sync of `len` bytes is appended to `out` at `at`.
    pub(super) fn sync(&mut self, at: usize, len: usize) {
        if self.until.is_none() {
            self.until = Some(self.bytes.len() + (at - self.from) + len);
        }
    }

    /// Keeps what was appended to `out` (up to the Sync); `false` when the
    /// execution has grown too large to keep.
    pub(super) fn take(&mut self, out: &[u8]) -> bool {
        let wanted = self
            .until
            .map_or(usize::MAX, |until| until - self.bytes.len());
        let end = out.len().min(self.from.saturating_add(wanted));
        self.bytes.extend_from_slice(&out[self.from..end]);
        self.from = out.len();
        self.bytes.len() <= MOST_KEPT
    }

    fn complete(&self) -> bool {
        self.until == Some(self.bytes.len())
    }

    /// Whether it belongs to a group of requests already answered.
    pub(super) fn answered(&self, groups_done: u64) -> bool {
        self.group < groups_done
    }
}

impl Tracker {
    /// A Bind of `statement` is written to `out` at `at`: kept, with what
    /// follows up to the Sync, if nothing ran since the last Sync (an
    /// earlier Bind's portal or Execute's work would be lost with the
    /// refused transaction). A Describe of the statement is not run again:
    /// the server answers part of it before it refuses the plan.
    pub(super) fn start_capture(&mut self, statement: &Arc<Statement>, at: usize) {
        if self.group_ran || self.capture.is_some() || self.skipping {
            return;
        }
        self.capture = Some(Capture {
            statement: statement.clone(),
            group: self.groups_sent,
            bytes: BytesMut::new(),
            from: at,
            until: None,
            query: false,
        });
    }

    /// A simple query `text` that executes `statement` is about to be
    /// queued: kept, to run again should the server refuse the plan (a
    /// simple query's answer always describes its rows, so the client
    /// learns the new shape).
    pub(super) fn capture_query(&mut self, statement: &Arc<Statement>, text: &[&[u8]]) {
        // Work sent before it without a Sync shares its implicit
        // transaction, and would be rolled back with it.
        if self.group_ran || self.capture.is_some() || self.skipping {
            return;
        }
        let bytes: BytesMut = text.concat().as_slice().into();
        let until = Some(bytes.len());
        self.capture = Some(Capture {
            statement: statement.clone(),
            group: self.groups_sent,
            bytes,
            from: 0,
            until,
            query: true,
        });
    }

    /// The error `body` at the head request: when it is the server refusing
    /// the cached plan of a statement the head uses, the statement is stale
    /// on this server (closed and prepared again at its next use there, as
    /// a driver that re-prepares expects). Whether it was.
    pub(super) fn note_stale_plan(
        &mut self,
        body: Option<&[u8]>,
        server: &mut ServerStatements,
    ) -> bool {
        let Some(Outstanding {
            effect: Effect::Uses(statement),
            ..
        }) = self.queue.front()
        else {
            return false;
        };
        if !body.is_some_and(is_stale_plan_error) {
            return false;
        }
        tracing::debug!(
            statement = statement.id(),
            "cached plan went stale; preparing the statement again"
        );
        server.mark_stale(statement);
        true
    }

    /// Runs the refused execution at the head again, after a Close and a
    /// Parse of its statement, when that changes nothing else: the server
    /// was outside a transaction (so the error rolled back only what is
    /// run again), nothing since the last Sync ran before it, the client's
    /// Sync after it is sent and nothing after that. And the client must
    /// have asked to describe the portal right after the Bind: a client
    /// that decodes rows by the description it kept from before the DDL
    /// must get PostgreSQL's error, not rows of another shape. The error
    /// (`at..end`) and the ReadyForQuery after it are dropped; `false`
    /// leaves the error to the client.
    pub(super) fn run_again(
        &mut self,
        at: usize,
        end: usize,
        server: &mut ServerStatements,
    ) -> bool {
        let Some(capture) = self.capture.take() else {
            return false;
        };
        if capture.query {
            return self.run_query_again(capture, at, end, server);
        }
        let Some(head) = self.queue.front() else {
            return false;
        };
        let same = head.request == Request::Bind
            && matches!(&head.effect, Effect::Uses(s) if Arc::ptr_eq(s, &capture.statement))
            && capture.group == self.groups_done;
        let sync = self.queue.iter().position(|o| o.request == Request::Sync);
        let last = self.queue.len() - 1;
        let clients_own = self.queue.iter().take(last).all(|o| {
            o.answer == Answer::Relay
                && matches!(
                    o.effect,
                    Effect::None | Effect::Uses(_) | Effect::DescribesPortal
                )
        });
        let described = self
            .queue
            .get(1)
            .is_some_and(|o| matches!(o.effect, Effect::DescribesPortal));
        if !(same
            && described
            && capture.complete()
            && self.idle
            && sync == Some(last)
            && clients_own)
        {
            return false;
        }
        let again: Vec<Outstanding> = self.queue.drain(..last).collect();
        if let Some(sync) = self.queue.front_mut() {
            sync.answer = Answer::Swallow;
        }
        self.drop_reply(at, end);
        let statement = capture.statement;
        self.make_room(&statement, server);
        statement.write_parse(&mut self.out);
        self.push(
            server,
            Outstanding {
                request: Request::Parse,
                answer: Answer::Swallow,
                effect: Effect::Prepared {
                    statement,
                    client_name: None,
                },
            },
        );
        self.out.extend_from_slice(&capture.bytes);
        for outstanding in again {
            self.push(server, outstanding);
        }
        self.push(
            server,
            Outstanding {
                request: Request::Sync,
                answer: Answer::Relay,
                effect: Effect::None,
            },
        );
        true
    }
}

impl Tracker {
    /// [`Tracker::run_again`] for a simple query's `EXECUTE`: sent again as
    /// `PREPARE ...; EXECUTE ...` after a Close, when the server was
    /// outside a transaction and nothing was sent after the query.
    fn run_query_again(
        &mut self,
        capture: Capture,
        at: usize,
        end: usize,
        server: &mut ServerStatements,
    ) -> bool {
        let alone = self.queue.len() == 1;
        let Some(head) = self.queue.front_mut() else {
            return false;
        };
        let same = matches!(&head.effect, Effect::Uses(s) if Arc::ptr_eq(s, &capture.statement))
            && capture.group == self.groups_done;
        if !(same && self.idle && alone) {
            return false;
        }
        head.answer = Answer::Swallow;
        head.effect = Effect::None;
        self.drop_reply(at, end);
        let statement = capture.statement;
        self.make_room(&statement, server);
        let prepare = statement.sql_prepare();
        self.send_query(&[&prepare, b"; ", &capture.bytes]);
        let effect = Effect::Prepared {
            statement,
            client_name: None,
        };
        self.queue_query(Answer::HideComplete(0), effect, server);
        true
    }
}

/// Whether the ErrorResponse `body` is PostgreSQL's "cached plan must not
/// change result type" (told by its SQLSTATE and routine, which are not
/// translated).
fn is_stale_plan_error(body: &[u8]) -> bool {
    error_field(body, b'C') == Some(b"0A000")
        && error_field(body, b'R') == Some(b"RevalidateCachedQuery")
}

#[cfg(test)]
mod tests {
    use super::{is_stale_plan_error, Capture};
    use crate::prepared::Registry;

    #[test]
    fn the_stale_plan_error_is_told_by_code_and_routine() {
        let error = b"SERROR\0C0A000\0Mcached plan must not change result type\0Fplancache.c\0RRevalidateCachedQuery\0\0";
        assert!(is_stale_plan_error(error));
        let other = b"SERROR\0C0A000\0Mnot supported\0Rother\0\0";
        assert!(!is_stale_plan_error(other));
        assert!(!is_stale_plan_error(b"C0A000"));
    }

    #[test]
    fn a_capture_keeps_the_bytes_up_to_the_sync_across_writes() {
        let statement = Registry::default().statement(b"select 1\0\0\0");
        let mut capture = Capture {
            statement,
            group: 0,
            bytes: Default::default(),
            from: 3,
            until: None,
            query: false,
        };
        let mut out = b"xxxBIND".to_vec();
        assert!(capture.take(&out));
        assert!(!capture.complete());
        // The next write: an Execute, then a Sync whose last bytes come
        // later, then the next transaction's bytes.
        capture.window(out.len());
        out.extend_from_slice(b"EXEC");
        capture.sync(out.len(), 4);
        out.extend_from_slice(b"SY");
        assert!(capture.take(&out));
        capture.window(out.len());
        out.extend_from_slice(b"NC");
        out.extend_from_slice(b"QNEXT");
        assert!(capture.take(&out));
        assert!(capture.complete());
        assert_eq!(&capture.bytes[..], b"BINDEXECSYNC");
    }
}

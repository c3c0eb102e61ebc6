//! SQL-level prepared statements in transaction mode: a simple query that
//! is one `PREPARE`, `EXECUTE` or `DEALLOCATE` is rewritten for the server
//! it runs on, as a Parse, Bind or Close is. The client's names and the
//! protocol-level ones are one namespace, as on a server.
//!
//! Every rewrite still runs on the server, so that the client gets the
//! server's own answer, errors and transaction state included:
//! - `PREPARE name ...` goes as `PREPARE wharf_N ...`; when the server has
//!   the statement already, as `PREPARE wharf_check ...; DEALLOCATE
//!   wharf_check` (checked again, the second tag dropped). A name the client
//!   has already gets PostgreSQL's `42P05` error, raised on the server.
//! - `EXECUTE name` goes as `EXECUTE wharf_N`, after `PREPARE wharf_N ...;`
//!   in the same query when the server lacks it (that tag dropped).
//! - `DEALLOCATE name` forgets the client's name, and the server (which
//!   keeps the statement for others) runs a stand-in that answers with the
//!   same tag.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BufMut;

use super::{foreign_name, Answer, Effect, Outstanding, Request, Tracker, OWN_PREFIX};
use crate::prepared::{Registry, ServerStatements, Statement};
use crate::sql::prepare::{classify, SqlStatement};
use crate::stats::PoolStats;

/// A name no client can reach: [`OWN_PREFIX`] names are the pooler's.
const CHECK_NAME: &[u8] = b"wharf_check";

impl Tracker {
    /// A simple Query: handled when it is one SQL-level `PREPARE`,
    /// `EXECUTE` or `DEALLOCATE` of the client's; otherwise it goes as it
    /// is (`false`).
    pub(super) fn query(
        &mut self,
        body: &[u8],
        server: &mut ServerStatements,
        registry: &Registry,
        stats: &PoolStats,
    ) -> bool {
        let Some(sql) = body.strip_suffix(&[0]) else {
            return false;
        };
        match classify(sql) {
            None => false,
            Some(SqlStatement::Prepare { name, definition }) => {
                self.sql_prepare(name.as_bytes(), definition, server, registry, stats);
                true
            }
            Some(SqlStatement::Execute { name, at }) => {
                let name = name.as_bytes();
                let statement = self.client.get(name).filter(|s| s.is_sql()).cloned();
                let (head, tail) = (&sql[..at.start], &sql[at.end..]);
                match statement {
                    Some(statement) => self.sql_execute(statement, head, tail, server, stats),
                    // Another client's statement on this server must stay
                    // out of reach: the server says this one does not exist.
                    None if name.starts_with(OWN_PREFIX) => {
                        let foreign = quoted(&foreign_name(name));
                        self.send_query(&[head, &foreign, tail]);
                        self.queue_query(Answer::Relay, Effect::None, server);
                    }
                    None => return false,
                }
                true
            }
            Some(SqlStatement::Deallocate { name }) => self.sql_deallocate(name.as_bytes(), server),
        }
    }

    fn sql_prepare(
        &mut self,
        name: &[u8],
        definition: &[u8],
        server: &mut ServerStatements,
        registry: &Registry,
        stats: &PoolStats,
    ) {
        if self.client.get(name).is_some() {
            self.send_query(&[&already_exists(name)]);
            self.queue_query(Answer::Relay, Effect::None, server);
            return;
        }
        let statement = registry.sql_statement(definition);
        self.client.insert(name, statement.clone());
        stats.server_parses.fetch_add(1, Ordering::Relaxed);
        let client_name = name.to_vec();
        if server.touch(&statement) {
            self.send_query(&[
                b"PREPARE ",
                CHECK_NAME,
                b" ",
                definition,
                b"; DEALLOCATE ",
                CHECK_NAME,
            ]);
            let effect = Effect::Named {
                statement,
                client_name,
            };
            self.queue_query(Answer::HideComplete(1), effect, server);
        } else {
            self.make_room(&statement, server);
            self.send_query(&[&statement.sql_prepare()]);
            let effect = Effect::Prepared {
                statement,
                client_name: Some(client_name),
            };
            self.queue_query(Answer::Relay, effect, server);
        }
    }

    fn sql_execute(
        &mut self,
        statement: Arc<Statement>,
        head: &[u8],
        tail: &[u8],
        server: &mut ServerStatements,
        stats: &PoolStats,
    ) {
        if server.touch(&statement) {
            let text = [head, statement.sql_name(), tail];
            self.capture_query(&statement, &text);
            self.send_query(&text);
            self.queue_query(Answer::Relay, Effect::Uses(statement), server);
            return;
        }
        self.make_room(&statement, server);
        stats.server_parses.fetch_add(1, Ordering::Relaxed);
        let prepare = statement.sql_prepare();
        self.send_query(&[&prepare, b"; ", head, statement.sql_name(), tail]);
        let effect = Effect::Prepared {
            statement,
            client_name: None,
        };
        self.queue_query(Answer::HideComplete(0), effect, server);
    }

    /// `DEALLOCATE name`: `false` for a name the client does not have,
    /// which goes to the server to be refused there (one of the pooler's
    /// names renamed out of reach first).
    fn sql_deallocate(&mut self, name: &[u8], server: &mut ServerStatements) -> bool {
        let Some(statement) = self.client.get(name).cloned() else {
            if !name.starts_with(OWN_PREFIX) {
                return false;
            }
            let foreign = quoted(&foreign_name(name));
            self.send_query(&[b"DEALLOCATE ", &foreign]);
            self.queue_query(Answer::Relay, Effect::None, server);
            return true;
        };
        self.client.remove(name);
        self.send_query(&[
            b"PREPARE ",
            CHECK_NAME,
            b" AS SELECT; DEALLOCATE ",
            CHECK_NAME,
        ]);
        let effect = Effect::Unnamed {
            statement,
            client_name: name.to_vec(),
        };
        self.queue_query(Answer::HideComplete(0), effect, server);
        true
    }

    /// Appends a Query of the concatenated `parts`.
    pub(super) fn send_query(&mut self, parts: &[&[u8]]) {
        let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>() + 1;
        self.out.put_u8(b'Q');
        self.out.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
        for part in parts {
            self.out.put_slice(part);
        }
        self.out.put_u8(0);
    }

    pub(super) fn queue_query(
        &mut self,
        answer: Answer,
        effect: Effect,
        server: &mut ServerStatements,
    ) {
        self.push(
            server,
            Outstanding {
                request: Request::Simple,
                answer,
                effect,
            },
        );
    }
}

/// `name` (NUL-terminated, as [`foreign_name`] makes it) as a quoted SQL
/// identifier.
fn quoted(name: &[u8]) -> Vec<u8> {
    let name = name.strip_suffix(&[0]).unwrap_or(name);
    let mut out = vec![b'"'];
    for &b in name {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

/// A statement raising PostgreSQL's own error for a `PREPARE` of a name in
/// use, run on the server so that a transaction block fails as it would.
fn already_exists(name: &[u8]) -> Vec<u8> {
    let mut message = b"prepared statement \"".to_vec();
    for &b in name {
        if b == b'\'' {
            message.push(b'\'');
        }
        message.push(b);
    }
    message.extend_from_slice(b"\" already exists");
    let mut tag = b"$wharf$".to_vec();
    while message.windows(tag.len()).any(|w| w == tag.as_slice()) {
        tag.insert(1, b'x');
    }
    [
        b"DO ".as_slice(),
        &tag,
        b"BEGIN RAISE EXCEPTION USING ERRCODE = 'duplicate_prepared_statement', MESSAGE = '",
        &message,
        b"'; END",
        &tag,
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::{already_exists, quoted};

    #[test]
    fn names_are_quoted_and_escaped() {
        assert_eq!(quoted(b"client:wharf_1\0"), br#""client:wharf_1""#);
        assert_eq!(quoted(b"a\"b"), br#""a""b""#);
        let sql = String::from_utf8(already_exists(b"it's")).unwrap();
        assert!(sql.contains(r#"MESSAGE = 'prepared statement "it''s" already exists'"#));
        assert!(sql.starts_with("DO $wharf$") && sql.ends_with("END$wharf$"));
        let sql = String::from_utf8(already_exists(b"$wharf$")).unwrap();
        assert!(sql.starts_with("DO $xwharf$"), "{sql}");
    }
}

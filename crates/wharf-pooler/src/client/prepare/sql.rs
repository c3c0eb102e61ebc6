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
use crate::sql::prepare::{classify, own_names_reached, SqlStatement};
use crate::stats::PoolStats;

/// A name for a statement the pooler prepares and deallocates at once: no
/// client can reach an [`OWN_PREFIX`] name, and none can guess this one to
/// leave a statement of that name in the way.
fn check_name() -> Vec<u8> {
    format!("wharf_check_{:016x}", fastrand::u64(..)).into_bytes()
}

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
            None => self.guard_own_names(sql, server),
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
            let check = check_name();
            self.send_query(&[
                b"PREPARE ",
                &check,
                b" ",
                definition,
                b"; DEALLOCATE ",
                &check,
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
        let check = check_name();
        self.send_query(&[b"PREPARE ", &check, b" AS SELECT; DEALLOCATE ", &check]);
        let effect = Effect::Unnamed {
            statement,
            client_name: name.to_vec(),
        };
        self.queue_query(Answer::HideComplete(0), effect, server);
        true
    }

    /// A query left to the server as it is, unless a `PREPARE`, `EXECUTE`
    /// or `DEALLOCATE` in it names one of the pooler's statements (`SELECT
    /// 1; EXECUTE wharf_7`): see [`shield_own_names`].
    fn guard_own_names(&mut self, sql: &[u8], server: &mut ServerStatements) -> bool {
        let Some(text) = shield_own_names(sql) else {
            return false;
        };
        self.send_query(&[&text]);
        self.queue_query(Answer::Relay, Effect::None, server);
        true
    }

    /// Appends a Query of the concatenated `parts`.
    pub(super) fn send_query(&mut self, parts: &[&[u8]]) {
        self.send(b'Q', parts, &[0]);
    }

    /// Appends a message of `tag` whose body is the concatenated `parts`
    /// and then `end`.
    pub(super) fn send(&mut self, tag: u8, parts: &[&[u8]], end: &[u8]) {
        let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>() + end.len();
        self.out.put_u8(tag);
        self.out.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
        for part in parts {
            self.out.put_slice(part);
        }
        self.out.put_slice(end);
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

/// `sql` with each of the pooler's statement names that a `PREPARE`,
/// `EXECUTE` or `DEALLOCATE` in it reaches changed to one the pooler never
/// gives (`client:wharf_7`), so that no client runs or drops another's
/// statement (the server says it does not exist), nor takes a name the
/// pooler will give one (a `PREPARE` makes the changed name instead);
/// `None` when it reaches none (most queries).
pub(super) fn shield_own_names(sql: &[u8]) -> Option<Vec<u8>> {
    let reached = own_names_reached(sql, OWN_PREFIX);
    if reached.is_empty() {
        return None;
    }
    let mut text = Vec::with_capacity(sql.len() + 16 * reached.len());
    let mut from = 0;
    for at in reached {
        text.extend_from_slice(&sql[from..at.start]);
        let name = sql[at.clone()].to_ascii_lowercase();
        let name = name
            .strip_prefix(b"\"")
            .and_then(|n| n.strip_suffix(b"\""))
            .unwrap_or(&name);
        text.extend_from_slice(&quoted(&foreign_name(name)));
        from = at.end;
    }
    text.extend_from_slice(&sql[from..]);
    Some(text)
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
/// The message is dollar-quoted, so no setting of
/// `standard_conforming_strings` changes how the name reads.
fn already_exists(name: &[u8]) -> Vec<u8> {
    let message = [
        b"prepared statement \"".as_slice(),
        name,
        b"\" already exists",
    ]
    .concat();
    let contains = |text: &[u8], tag: &[u8]| text.windows(tag.len()).any(|w| w == tag);
    let mut outer = b"$wharf$".to_vec();
    while contains(&message, &outer) {
        outer.insert(1, b'x');
    }
    let mut inner = b"$m$".to_vec();
    while contains(&message, &inner) {
        inner.insert(1, b'x');
    }
    [
        b"DO ".as_slice(),
        &outer,
        b"BEGIN RAISE EXCEPTION USING ERRCODE = 'duplicate_prepared_statement', MESSAGE = ",
        &inner,
        &message,
        &inner,
        b"; END",
        &outer,
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
        let sql = String::from_utf8(already_exists(b"it's\\")).unwrap();
        assert!(sql.contains(r#"MESSAGE = $m$prepared statement "it's\" already exists$m$"#));
        assert!(sql.starts_with("DO $wharf$") && sql.ends_with("END$wharf$"));
        let sql = String::from_utf8(already_exists(b"$wharf$m$")).unwrap();
        assert!(sql.starts_with("DO $xwharf$"), "{sql}");
        assert!(sql.contains("MESSAGE = $xm$"), "{sql}");
    }
}

//! Read/write routing on the client side: which of its pool's servers a
//! transaction goes to, chosen from the messages that start it, and the
//! `SET wharf.route` a client pins itself to the primary with, which the
//! pooler answers without a server.

use std::collections::HashMap;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::session::Session;
use crate::net::WriteNow;
use crate::proto::{cstr_bytes, messages};
use crate::sql::route::{is_read, route_set, RouteSet};

/// Named statements whose class a session remembers: a client preparing
/// more than this sends the rest's transactions to the primary.
const MAX_NAMED: usize = 10_000;

/// The longest Query, Parse or Bind read whole to route a transaction: a
/// longer one streams to the server as it comes, and its transaction goes
/// to the primary.
const ROUTE_READ: usize = 64 * 1024;

/// How much of a client message of `len` bytes (tag included) routing
/// must hold before it is passed on: statements and Binds whole up to
/// [`ROUTE_READ`], a Close whole (it forgets a named statement).
pub(super) fn held(tag: u8, len: usize) -> usize {
    match tag {
        b'Q' | b'P' | b'B' if len <= ROUTE_READ => len,
        b'C' => len,
        _ => 0,
    }
}

/// One session's routing state.
#[derive(Debug, Default)]
pub(super) struct Routing {
    /// `SET wharf.route = primary`: every transaction to the primary.
    pinned: bool,
    /// Whether each named statement the client prepared is a read, for a
    /// transaction that starts with a Bind of it; made at the first, so
    /// that a session without one keeps a pointer, not an empty map.
    // Boxed on purpose: an empty map inline is 48 bytes in every session.
    #[allow(clippy::box_collection)]
    named: Option<Box<HashMap<Vec<u8>, bool>>>,
}

/// The length of the whole message at the front of `bytes`, if it is all
/// there.
fn whole_message(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(1..5)?;
    let len = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let total = 1 + usize::try_from(len).ok().filter(|len| *len >= 4)?;
    (bytes.len() >= total).then_some(total)
}

impl Routing {
    /// Whether the transaction that `bytes` (whole client messages, from
    /// a message boundary) start may go to a standby: every statement in
    /// them is a read (Query, Parse, or Bind of a named statement known to
    /// be one). A message not all there, a FunctionCall, a COPY or
    /// anything else sends it to the primary.
    pub(super) fn is_read(&self, bytes: &[u8]) -> bool {
        if self.pinned {
            return false;
        }
        let mut at = 0;
        let mut statements = 0;
        // An unnamed statement lives until the next Parse: only one parsed
        // here (and classified) is known.
        let mut unnamed_parsed = false;
        while at < bytes.len() {
            let Some(total) = whole_message(&bytes[at..]) else {
                return false;
            };
            let body = &bytes[at + 5..at + total];
            let read = match bytes[at] {
                b'Q' => cstr_bytes(body).is_some_and(|(sql, _)| is_read(sql)),
                b'P' => {
                    let parsed =
                        cstr_bytes(body).and_then(|(name, rest)| Some((name, cstr_bytes(rest)?.0)));
                    unnamed_parsed |= parsed.is_some_and(|(name, _)| name.is_empty());
                    parsed.is_some_and(|(_, sql)| is_read(sql))
                }
                b'B' => match cstr_bytes(body).and_then(|(_, rest)| cstr_bytes(rest)) {
                    Some((name, _)) if name.is_empty() && unnamed_parsed => {
                        at += total;
                        continue;
                    }
                    Some((name, _)) => self
                        .named
                        .as_ref()
                        .and_then(|named| named.get(name).copied())
                        .unwrap_or(false),
                    None => false,
                },
                // Describe, Execute, Sync, Flush and Close run what the
                // statements above say.
                b'D' | b'E' | b'S' | b'H' | b'C' => {
                    at += total;
                    continue;
                }
                _ => false,
            };
            if !read {
                return false;
            }
            statements += 1;
            at += total;
        }
        statements > 0
    }

    /// Notes a whole client message on its way to a server: a named Parse
    /// (its class kept for later Binds), a Close of a statement, and a
    /// `SET wharf.route` sent inside a transaction (which the server takes
    /// as a placeholder setting, and the pooler as a pin from the next
    /// transaction on).
    pub(super) fn observe(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'P' => {
                let Some((name, rest)) = cstr_bytes(body) else {
                    return;
                };
                if name.is_empty() {
                    return;
                }
                let read = cstr_bytes(rest).is_some_and(|(sql, _)| is_read(sql));
                let named = self.named.get_or_insert_default();
                if named.len() < MAX_NAMED || named.contains_key(name) {
                    named.insert(name.to_vec(), read);
                }
            }
            b'C' if body.first() == Some(&b'S') => {
                if let (Some((name, _)), Some(named)) = (cstr_bytes(&body[1..]), &mut self.named) {
                    named.remove(name);
                }
            }
            b'Q' => {
                if let Some((sql, _)) = cstr_bytes(body) {
                    match route_set(sql) {
                        Some(RouteSet::Primary) => self.pinned = true,
                        Some(RouteSet::Auto) => self.pinned = false,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

impl<R: AsyncRead + Unpin + Send, W: WriteNow + Send> Session<'_, R, W> {
    /// Answers the `SET wharf.route` queries at the front of what an idle
    /// client sent (CommandComplete and ReadyForQuery, or an error), so
    /// that a pin takes no server. Called before the new bytes are scanned.
    pub(super) async fn answer_route_sets(&mut self) {
        if !self.pool.routes_reads() || self.cscan.ready() != 0 || !self.cscan.at_boundary() {
            return;
        }
        let mut out = BytesMut::new();
        while self.cbuf.first() == Some(&b'Q') {
            let Some(total) = whole_message(&self.cbuf) else {
                break;
            };
            let Some((sql, _)) = cstr_bytes(&self.cbuf[5..total]) else {
                break;
            };
            let Some(set) = route_set(sql) else {
                break;
            };
            match set {
                RouteSet::Primary | RouteSet::Auto => {
                    self.routing.pinned = set == RouteSet::Primary;
                    messages::command_complete(&mut out, "SET");
                }
                RouteSet::Invalid(message) => {
                    messages::error(&mut out, "ERROR", "22023", &message);
                }
            }
            messages::ready_for_query(&mut out, b'I');
            tracing::debug!(database = %self.pool.database(), user = %self.user,
                pinned = self.routing.pinned, "SET wharf.route");
            self.cbuf.advance(total);
        }
        if !out.is_empty() {
            // A client gone meanwhile is noticed by the next read.
            let _ = self.writer.write_all(&out).await;
            let _ = self.writer.flush().await;
        }
    }

    /// Whether the transaction the client's scanned messages start goes to
    /// the reads pool.
    pub(super) fn routes_to_reads(&self) -> bool {
        if !self.pool.routes_reads() {
            return false;
        }
        let read = self.routing.is_read(&self.cbuf[..self.cscan.ready()]);
        let stats = self.pool.stats();
        let counter = if read {
            &stats.routed_reads
        } else {
            &stats.routed_writes
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(database = %self.pool.database(), user = %self.user,
            to = if read { "reads" } else { "primary" }, "transaction routed");
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        msg(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
    }

    fn bind(name: &str) -> Vec<u8> {
        msg(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes())
    }

    #[test]
    fn a_transaction_is_a_read_when_every_statement_in_it_is() {
        let routing = Routing::default();
        let select = msg(b'Q', b"SELECT 1\0");
        let insert = msg(b'Q', b"INSERT INTO t VALUES (1)\0");
        assert!(routing.is_read(&select));
        assert!(!routing.is_read(&insert));
        assert!(!routing.is_read(&[select.clone(), insert].concat()));
        assert!(!routing.is_read(&select[..select.len() - 1]));
        assert!(!routing.is_read(b""));
        let extended = [
            parse("", "SELECT $1"),
            bind(""),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat();
        assert!(routing.is_read(&extended));
        assert!(!routing.is_read(&msg(b'F', b"\0\0\0\0")));
    }

    #[test]
    fn a_bind_goes_where_its_named_statement_would() {
        let mut routing = Routing::default();
        let p_read = parse("s1", "SELECT * FROM t WHERE id = $1");
        let p_write = parse("s2", "UPDATE t SET a = $1");
        routing.observe(b'P', &p_read[5..]);
        routing.observe(b'P', &p_write[5..]);
        let sync = msg(b'S', b"");
        assert!(routing.is_read(&[bind("s1"), sync.clone()].concat()));
        assert!(!routing.is_read(&[bind("s2"), sync.clone()].concat()));
        assert!(!routing.is_read(&[bind("unknown"), sync.clone()].concat()));
        routing.observe(b'C', b"Ss1\0");
        assert!(!routing.is_read(&[bind("s1"), sync].concat()));
    }

    #[test]
    fn set_wharf_route_inside_a_transaction_pins_from_the_next() {
        let mut routing = Routing::default();
        let select = msg(b'Q', b"SELECT 1\0");
        routing.observe(b'Q', b"SET wharf.route = primary\0");
        assert!(!routing.is_read(&select));
        routing.observe(b'Q', b"SET wharf.route = auto\0");
        assert!(routing.is_read(&select));
    }
}

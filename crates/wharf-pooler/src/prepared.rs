//! Prepared statements across pooled servers (`max_prepared_statements`).
//!
//! A client's named statement is registered pooler-wide by its exact text
//! and parameter types ([`Registry`]); every distinct statement gets one
//! server-side name (`wharf_N`), under which it is prepared on each server
//! that needs it. A client keeps its own names ([`ClientStatements`]); a
//! server keeps the statements prepared on it, least recently used first
//! out once `max_prepared_statements` are there ([`ServerStatements`]).
//! Statements no client or server holds any more leave the registry.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::{BufMut, BytesMut};
use parking_lot::Mutex;

/// One distinct statement: its text and parameter types, and the name it
/// has on every server.
#[derive(Debug)]
pub struct Statement {
    /// Unique for the life of the process.
    id: u64,
    /// `wharf_<id>`, NUL-terminated, as it goes into messages.
    server_name: Vec<u8>,
    /// The Parse body after the statement name: the query, NUL, the
    /// parameter count and type OIDs, exactly as the client sent them; or,
    /// for a statement made with SQL `PREPARE`, what followed the name.
    definition: Vec<u8>,
    /// Made with SQL `PREPARE` (and prepared on servers the same way).
    sql: bool,
}

impl Statement {
    /// The process-wide id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The server-side name with its NUL terminator.
    pub fn server_name(&self) -> &[u8] {
        &self.server_name
    }

    /// Whether the statement was made with SQL `PREPARE`: servers get it
    /// with [`sql_prepare`](Self::sql_prepare), not a Parse.
    pub fn is_sql(&self) -> bool {
        self.sql
    }

    /// The server-side name without its NUL, as SQL names it.
    pub fn sql_name(&self) -> &[u8] {
        &self.server_name[..self.server_name.len() - 1]
    }

    /// `PREPARE <server-side name> <definition>`, the SQL that prepares a
    /// statement made with SQL `PREPARE` on a server.
    pub fn sql_prepare(&self) -> Vec<u8> {
        [b"PREPARE ", self.sql_name(), b" ", &self.definition].concat()
    }

    /// Appends a Parse of this statement under its server-side name.
    pub fn write_parse(&self, out: &mut BytesMut) {
        let len = 4 + self.server_name.len() + self.definition.len();
        out.put_u8(b'P');
        out.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
        out.put_slice(&self.server_name);
        out.put_slice(&self.definition);
    }

    /// Appends a Close of this statement under its server-side name.
    pub fn write_close(&self, out: &mut BytesMut) {
        let len = 4 + 1 + self.server_name.len();
        out.put_u8(b'C');
        out.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
        out.put_u8(b'S');
        out.put_slice(&self.server_name);
    }
}

/// Every distinct statement some client or server holds, by definition:
/// those from Parse messages and those from SQL `PREPARE` apart.
#[derive(Debug, Default)]
pub struct Registry {
    statements: Mutex<HashMap<Vec<u8>, Weak<Statement>>>,
    sql_statements: Mutex<HashMap<Vec<u8>, Weak<Statement>>>,
    next_id: AtomicU64,
}

impl Registry {
    /// The statement with this definition (the Parse body after the
    /// name), registered on first use.
    pub fn statement(&self, definition: &[u8]) -> Arc<Statement> {
        self.intern(&self.statements, definition, false)
    }

    /// The statement SQL `PREPARE` defines with `definition` (what follows
    /// the name), registered on first use.
    pub fn sql_statement(&self, definition: &[u8]) -> Arc<Statement> {
        self.intern(&self.sql_statements, definition, true)
    }

    fn intern(
        &self,
        statements: &Mutex<HashMap<Vec<u8>, Weak<Statement>>>,
        definition: &[u8],
        sql: bool,
    ) -> Arc<Statement> {
        let mut statements = statements.lock();
        if let Some(statement) = statements.get(definition).and_then(Weak::upgrade) {
            return statement;
        }
        // Forget the dead before the map grows: a client preparing a
        // fresh text per query must not grow it for ever.
        if statements.len() >= 64 && statements.len().is_power_of_two() {
            statements.retain(|_, statement| statement.strong_count() > 0);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut server_name = format!("wharf_{id}").into_bytes();
        server_name.push(0);
        let statement = Arc::new(Statement {
            id,
            server_name,
            definition: definition.to_vec(),
            sql,
        });
        statements.insert(definition.to_vec(), Arc::downgrade(&statement));
        statement
    }

    /// Statements some client or server still holds.
    pub fn len(&self) -> usize {
        let live = |map: &Mutex<HashMap<Vec<u8>, Weak<Statement>>>| {
            map.lock().values().filter(|s| s.strong_count() > 0).count()
        };
        live(&self.statements) + live(&self.sql_statements)
    }

    /// Whether no statement is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client's statement names and what each stands for.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Vec<u8>, Arc<Statement>>,
}

impl ClientStatements {
    /// The statement the client calls `name` (without NUL).
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    /// The client now calls `statement` `name`, replacing what the name
    /// stood for.
    pub fn insert(&mut self, name: &[u8], statement: Arc<Statement>) {
        self.by_name.insert(name.to_vec(), statement);
    }

    /// The client closed `name`; whether it had it.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// Forgets `name` if it still stands for `statement` (a Parse that
    /// failed on the server).
    pub fn remove_if(&mut self, name: &[u8], statement: &Statement) {
        if self
            .by_name
            .get(name)
            .is_some_and(|current| current.id == statement.id)
        {
            self.by_name.remove(name);
        }
    }

    /// DEALLOCATE ALL / DISCARD ALL.
    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    /// How many names the client has.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }
}

/// The statements prepared on one server connection, least recently used
/// first out beyond the cap.
#[derive(Debug, Default)]
pub struct ServerStatements {
    /// Statement id → (statement, last use).
    prepared: HashMap<u64, (Arc<Statement>, u64)>,
    /// Statements whose plan the server refuses since DDL changed their
    /// result type: still there under their name, to be closed before they
    /// are prepared again.
    stale: HashSet<u64>,
    clock: u64,
}

impl ServerStatements {
    /// Whether `statement` is prepared here; a use that keeps it in.
    pub fn touch(&mut self, statement: &Statement) -> bool {
        self.clock += 1;
        match self.prepared.get_mut(&statement.id) {
            Some((_, used)) => {
                *used = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records `statement` as prepared here; with `cap` statements here
    /// already, the least recently used one is taken out and returned, for
    /// the caller to close on the server.
    pub fn insert(&mut self, statement: Arc<Statement>, cap: usize) -> Option<Arc<Statement>> {
        let evicted = if self.prepared.len() >= cap.max(1) {
            let oldest = self
                .prepared
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id);
            oldest.and_then(|id| self.prepared.remove(&id).map(|(s, _)| s))
        } else {
            None
        };
        self.clock += 1;
        self.prepared.insert(statement.id, (statement, self.clock));
        evicted
    }

    /// Takes `statement` out (a Parse that never ran, or a Close sent).
    pub fn remove(&mut self, statement: &Statement) {
        self.prepared.remove(&statement.id);
    }

    /// Puts back a statement whose Close never ran.
    pub fn restore(&mut self, statement: Arc<Statement>) {
        self.clock += 1;
        self.prepared.insert(statement.id, (statement, self.clock));
    }

    /// The server refused `statement`'s cached plan ("cached plan must not
    /// change result type"): it is used no more, and the next use closes
    /// and prepares it again.
    pub fn mark_stale(&mut self, statement: &Statement) {
        self.prepared.remove(&statement.id);
        self.stale.insert(statement.id);
    }

    /// Whether `statement` must be closed before it is prepared here; it is
    /// taken as closed.
    pub fn take_stale(&mut self, statement: &Statement) -> bool {
        self.stale.remove(&statement.id)
    }

    /// DEALLOCATE ALL / DISCARD ALL ran on the server.
    pub fn clear(&mut self) {
        self.prepared.clear();
        self.stale.clear();
    }

    /// How many statements are prepared here.
    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(sql: &str) -> Vec<u8> {
        let mut d = sql.as_bytes().to_vec();
        d.extend_from_slice(&[0, 0, 0]);
        d
    }

    #[test]
    fn one_statement_per_definition_while_anyone_holds_it() {
        let registry = Registry::default();
        let a = registry.statement(&definition("select 1"));
        let again = registry.statement(&definition("select 1"));
        let b = registry.statement(&definition("select 2"));
        assert!(Arc::ptr_eq(&a, &again));
        assert_ne!(a.id(), b.id());
        assert_eq!(a.server_name(), format!("wharf_{}\0", a.id()).as_bytes());
        assert_eq!(registry.len(), 2);
        drop((a, again));
        assert_eq!(registry.len(), 1);
        // A dead entry is made anew, with a new name.
        let fresh = registry.statement(&definition("select 1"));
        assert_ne!(fresh.id(), b.id());
    }

    #[test]
    fn parameter_types_are_part_of_the_key() {
        let registry = Registry::default();
        let mut int4 = b"select $1\0\0\x01".to_vec();
        int4.extend_from_slice(&23i32.to_be_bytes());
        let mut text = b"select $1\0\0\x01".to_vec();
        text.extend_from_slice(&25i32.to_be_bytes());
        assert_ne!(
            registry.statement(&int4).id(),
            registry.statement(&text).id()
        );
    }

    #[test]
    fn sql_statements_are_apart_and_prepared_with_sql() {
        let registry = Registry::default();
        let parsed = registry.statement(b"AS SELECT 1");
        let sql = registry.sql_statement(b"AS SELECT 1");
        assert_ne!(parsed.id(), sql.id());
        assert!(sql.is_sql() && !parsed.is_sql());
        assert_eq!(
            sql.sql_prepare(),
            format!("PREPARE wharf_{} AS SELECT 1", sql.id()).into_bytes()
        );
        assert_eq!(registry.len(), 2);
    }

    #[test]
    fn messages_use_the_server_name() {
        let registry = Registry::default();
        let s = registry.statement(&definition("select 1"));
        let mut out = BytesMut::new();
        s.write_parse(&mut out);
        let name = s.server_name();
        assert_eq!(out[0], b'P');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        assert_eq!(&out[5..5 + name.len()], name);
        assert_eq!(&out[5 + name.len()..], &definition("select 1")[..]);
        let mut close = BytesMut::new();
        s.write_close(&mut close);
        assert_eq!(
            &close[..],
            &[&[b'C', 0, 0, 0, (5 + name.len()) as u8, b'S'][..], name].concat()[..]
        );
    }

    #[test]
    fn servers_evict_the_least_recently_used() {
        let registry = Registry::default();
        let [a, b, c] = ["a", "b", "c"].map(|q| registry.statement(&definition(q)));
        let mut server = ServerStatements::default();
        assert!(server.insert(a.clone(), 2).is_none());
        assert!(server.insert(b.clone(), 2).is_none());
        assert!(server.touch(&a));
        let evicted = server.insert(c.clone(), 2).expect("full");
        assert_eq!(evicted.id(), b.id());
        assert!(!server.touch(&b));
        server.restore(evicted);
        assert_eq!(server.len(), 3);
        server.remove(&c);
        assert!(!server.touch(&c));
        server.clear();
        assert_eq!(server.len(), 0);
        // A stale statement is out, and to be closed once.
        server.insert(a.clone(), 2);
        server.mark_stale(&a);
        assert!(!server.touch(&a));
        assert!(server.take_stale(&a));
        assert!(!server.take_stale(&a));
    }

    #[test]
    fn clients_forget_only_what_failed() {
        let registry = Registry::default();
        let a = registry.statement(&definition("a"));
        let b = registry.statement(&definition("b"));
        let mut client = ClientStatements::default();
        client.insert(b"s1", a.clone());
        client.insert(b"s1", b.clone());
        client.remove_if(b"s1", &a);
        assert_eq!(client.get(b"s1").map(|s| s.id()), Some(b.id()));
        client.remove_if(b"s1", &b);
        assert_eq!(client.len(), 0);
        client.insert(b"s2", a);
        assert!(client.remove(b"s2"));
        assert!(!client.remove(b"s2"));
    }
}

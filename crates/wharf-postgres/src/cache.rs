//! A bounded, least-recently-used map from SQL text to prepared statements.

use std::collections::HashMap;

use tokio_postgres::Statement;

pub(crate) struct StatementCache {
    capacity: usize,
    entries: HashMap<String, Entry>,
    /// Ticks on every use; an entry's tick says how recently it was used,
    /// which is all eviction needs.
    clock: u64,
}

struct Entry {
    statement: Statement,
    last_used: u64,
}

impl StatementCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            clock: 0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&mut self, sql: &str) -> Option<Statement> {
        self.clock += 1;
        let entry = self.entries.get_mut(sql)?;
        entry.last_used = self.clock;
        Some(entry.statement.clone())
    }

    /// Stores `statement`, returning the one it displaced, if any, so that
    /// the caller drops it (which tells the server to close it) outside the
    /// lock.
    pub(crate) fn insert(&mut self, sql: &str, statement: Statement) -> Option<Statement> {
        if self.capacity == 0 {
            return Some(statement);
        }
        self.clock += 1;
        let mut evicted = None;
        if !self.entries.contains_key(sql) && self.entries.len() >= self.capacity {
            // A linear scan: caches are small (tens to hundreds of entries)
            // and misses cost a server round trip anyway.
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(sql, _)| sql.clone());
            if let Some(oldest) = oldest {
                evicted = self.entries.remove(&oldest).map(|entry| entry.statement);
            }
        }
        let entry = Entry {
            statement,
            last_used: self.clock,
        };
        self.entries
            .insert(sql.to_owned(), entry)
            .map(|old| old.statement)
            .or(evicted)
    }

    pub(crate) fn remove(&mut self, sql: &str) -> Option<Statement> {
        self.entries.remove(sql).map(|entry| entry.statement)
    }

    pub(crate) fn clear(&mut self) -> Vec<Statement> {
        self.entries
            .drain()
            .map(|(_, entry)| entry.statement)
            .collect()
    }
}

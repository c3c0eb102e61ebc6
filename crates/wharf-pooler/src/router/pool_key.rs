//! The key a pool is found by, `(database, user)`, looked up from borrowed
//! names: a login finds its pool without building an owned pair of
//! strings for the lookup alone.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// A database and user name, owned or borrowed.
pub(super) trait PoolKey {
    /// The database and the user.
    fn names(&self) -> (&str, &str);
}

impl PoolKey for (String, String) {
    fn names(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl PoolKey for (&str, &str) {
    fn names(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> Borrow<dyn PoolKey + 'a> for (String, String) {
    fn borrow(&self) -> &(dyn PoolKey + 'a) {
        self
    }
}

// Hashes as `(String, String)` does (each field's `str` hash in turn), as
// `Borrow` requires.
impl Hash for dyn PoolKey + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (database, user) = self.names();
        database.hash(state);
        user.hash(state);
    }
}

impl PartialEq for dyn PoolKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.names() == other.names()
    }
}

impl Eq for dyn PoolKey + '_ {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn borrowed_names_find_the_owned_key() {
        let mut pools = HashMap::new();
        for (db, user, n) in [("app", "alice", 1), ("app", "bob", 2), ("ap", "papp", 3)] {
            pools.insert((db.to_owned(), user.to_owned()), n);
        }
        let find = |db, user| pools.get(&(db, user) as &dyn PoolKey).copied();
        assert_eq!(find("app", "alice"), Some(1));
        assert_eq!(find("app", "bob"), Some(2));
        assert_eq!(find("ap", "papp"), Some(3));
        // The same letters split differently are another key.
        assert_eq!(find("appa", "lice"), None);
        assert_eq!(find("app", "carol"), None);
    }
}

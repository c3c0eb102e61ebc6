//! Run-time parameters: the ones the pooler keeps in step between a client
//! and whichever server it is linked to, what a server reported, and the
//! shared sets that let a transaction skip comparing them.

use std::sync::Arc;

use crate::proto::cstr;

/// Run-time parameters as (name, value) pairs, in the order reported.
pub type Params = Vec<(String, String)>;

/// The distinct sets of tracked parameters a pool's clients have, shared:
/// a server brought in line with one set then suits, by a pointer
/// comparison, every client with the same set, so that a transaction that
/// lands on a server last used by another client with the same settings
/// (the usual case) compares no parameters at all.
#[derive(Debug, Default)]
pub struct ParamSets {
    /// Weak: a set no client or server holds any more is forgotten.
    sets: parking_lot::Mutex<Vec<std::sync::Weak<Params>>>,
}

/// Beyond this many distinct sets in use, new ones are not shared (clients
/// with a set of their own each, such as a unique `application_name`, only
/// lose the shortcut).
const MAX_PARAM_SETS: usize = 256;

impl ParamSets {
    /// The shared copy of `params`.
    pub fn intern(&self, params: &Params) -> Arc<Params> {
        let mut sets = self.sets.lock();
        if let Some(set) = sets
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|set| **set == *params)
        {
            return set;
        }
        let set = Arc::new(params.clone());
        if sets.len() >= MAX_PARAM_SETS {
            sets.retain(|set| set.strong_count() > 0);
        }
        if sets.len() < MAX_PARAM_SETS {
            sets.push(Arc::downgrade(&set));
        }
        set
    }
}

/// The run-time parameters a client may set and the pooler keeps in step
/// between the client and whichever server it is linked to (PgBouncer's
/// tracked parameters).
pub const TRACKED: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
    "IntervalStyle",
];

/// Whether a server's value of tracked parameter `name` is the client's:
/// PostgreSQL reports some values in its own spelling (`UTC` for `utc`,
/// `ISO, MDY` for `iso, mdy`), and case means nothing in them, except in
/// `application_name`.
pub fn same_value(name: &str, server: Option<&str>, client: &str) -> bool {
    match server {
        Some(server) if name.eq_ignore_ascii_case("application_name") => server == client,
        Some(server) => server.eq_ignore_ascii_case(client),
        None => false,
    }
}

/// Whether `name` is one of the [`TRACKED`] parameters.
pub fn is_tracked(name: &str) -> bool {
    TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// Sets `name` in an ordered parameter list (names compare case-insensitively,
/// as PostgreSQL's GUC names do); whether that changed anything. A name
/// and value the caller owns are moved in, not copied.
pub fn set_param<N, V>(params: &mut Params, name: N, value: V) -> bool
where
    N: AsRef<str> + Into<String>,
    V: AsRef<str> + Into<String>,
{
    match params
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_ref()))
    {
        Some((_, v)) if v == value.as_ref() => false,
        Some((_, v)) => {
            *v = value.into();
            true
        }
        None => {
            params.push((name.into(), value.into()));
            true
        }
    }
}

/// What a server reported of its parameters, and the client parameter set
/// it is known to match.
#[derive(Debug, Default)]
pub struct ServerParams {
    /// The server's current ParameterStatus values, in the order reported.
    values: Params,
    /// The set of tracked parameters (from the pool's [`ParamSets`]) this
    /// server is known to match, so that a client with that very set skips
    /// comparing them.
    synced_with: Option<Arc<Params>>,
}

impl ServerParams {
    /// The server's value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value the server reported.
    pub fn values(&self) -> &Params {
        &self.values
    }

    /// Whether the server is known to match the client parameter `set`
    /// (a pointer comparison: sets come from one [`ParamSets`]).
    pub fn is_synced_with(&self, set: &Arc<Params>) -> bool {
        self.synced_with
            .as_ref()
            .is_some_and(|synced| Arc::ptr_eq(synced, set))
    }

    /// The server now matches `set`.
    pub fn mark_synced(&mut self, set: Arc<Params>) {
        self.synced_with = Some(set);
    }

    /// The server's parameters were reset to its defaults.
    pub fn forget_sync(&mut self) {
        self.synced_with = None;
    }

    /// Records a ParameterStatus body the pooler itself asked for (login,
    /// its own queries). A tracked parameter that changed here (a SET by
    /// the pooler, a configuration reload on the server) means the server
    /// no longer matches the set it was synced to.
    pub fn note(&mut self, body: &[u8]) {
        if let Some((name, value)) = parameter_status(body) {
            if set_param(&mut self.values, name, value) && is_tracked(name) {
                self.synced_with = None;
            }
        }
    }

    /// Records a ParameterStatus relayed to the client, which changed with
    /// the server: the value is the server's and, if tracked, the client's
    /// own setting too. The client's new tracked parameters when they
    /// changed, `None` when `client` still holds.
    pub fn note_relayed(&mut self, body: &[u8], client: &Params) -> Option<Params> {
        let (name, value) = parameter_status(body)?;
        set_param(&mut self.values, name, value);
        // Only a change needs the client's parameter set copied and looked
        // up again.
        let unchanged = client
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && v == value);
        if !is_tracked(name) || unchanged {
            return None;
        }
        let mut changed = client.clone();
        set_param(&mut changed, name, value);
        Some(changed)
    }
}

/// The (name, value) of a ParameterStatus body.
fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((name, value))
}

//! `auth_user` / `auth_query` / `auth_dbname`: the secret of a user who is
//! not in `auth_file`, read from PostgreSQL through a server connection
//! logged in as `auth_user` (whose password comes from `auth_file`, or
//! none) on the database's server, or on `auth_dbname`'s.
//!
//! Results are cached per (database, user): a secret found for
//! [`FOUND_TTL`] (30 s), "no such user" for [`UNKNOWN_TTL`] (5 s), a
//! failed lookup not at all. So a dropped role or a changed password is
//! seen by new logins within 30 s, at once after a failed password check
//! (which forgets the entry) or a RELOAD (which makes every entry stale),
//! while a burst of logins costs one query. A stale secret still serves
//! the server logins of the user's pool until a new lookup replaces it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{PoolPlan, Router};
use crate::config::{Config, Secret};

/// How long a secret found by `auth_query` is used without asking again.
pub const FOUND_TTL: Duration = Duration::from_secs(30);
/// How long "no such user" is believed without asking again.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// Beyond this many entries, stale ones are dropped on the next insert
/// (made-up user names must not grow the cache for ever).
const MAX_ENTRIES: usize = 10_000;

/// What `auth_query` says of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The user exists; its secret, `None` when the query returned NULL
    /// (no password, or `rolvaliduntil` passed): no password matches it.
    Found(Option<Secret>),
    /// The query returned no row.
    Unknown,
    /// The query could not be run or returned nonsense (logged).
    Failed,
}

/// Where and how a database's users are looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AuthQuery<'a> {
    /// The user the query runs as.
    user: &'a str,
    /// The query, `$1` being the user name.
    query: &'a str,
    /// The `[databases]` entry whose server runs it.
    database: &'a str,
}

/// The database's `auth_user`, `auth_query` and `auth_dbname`, each over
/// the global one; `None` without an `auth_user` (no lookups) or for a
/// database not in the configuration.
fn auth_query<'a>(config: &'a Config, database: &'a str) -> Option<AuthQuery<'a>> {
    let entry = config.database(database)?;
    let global = &config.pgbouncer;
    Some(AuthQuery {
        user: entry.auth_user.as_deref().or(global.auth_user.as_deref())?,
        query: entry.auth_query.as_deref().unwrap_or(&global.auth_query),
        database: entry
            .auth_dbname
            .as_deref()
            .or(global.auth_dbname.as_deref())
            .unwrap_or(database),
    })
}

struct Cached {
    lookup: Lookup,
    until: Instant,
}

/// Lookups by (database, user).
#[derive(Default)]
pub(super) struct AuthCache {
    entries: Mutex<HashMap<(String, String), Cached>>,
}

impl AuthCache {
    fn fresh(&self, database: &str, user: &str, now: Instant) -> Option<Lookup> {
        let entries = self.entries.lock();
        let cached = entries.get(&(database.to_owned(), user.to_owned()))?;
        (now < cached.until).then(|| cached.lookup.clone())
    }

    /// Stores a lookup; `true` when it changes the user's secret.
    fn store(&self, database: &str, user: &str, lookup: Lookup, now: Instant) -> bool {
        let ttl = match lookup {
            Lookup::Found(_) => FOUND_TTL,
            Lookup::Unknown => UNKNOWN_TTL,
            Lookup::Failed => return false,
        };
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, cached| cached.until > now);
        }
        let previous = entries.insert(
            (database.to_owned(), user.to_owned()),
            Cached {
                lookup: lookup.clone(),
                until: now + ttl,
            },
        );
        let secret_of = |lookup: &Lookup| match lookup {
            Lookup::Found(secret) => secret.clone(),
            _ => None,
        };
        previous.is_some_and(|p| secret_of(&p.lookup) != secret_of(&lookup))
    }

    /// The last secret found for the user, stale or not.
    pub(super) fn secret(&self, database: &str, user: &str) -> Option<Secret> {
        match &self
            .entries
            .lock()
            .get(&(database.to_owned(), user.to_owned()))?
            .lookup
        {
            Lookup::Found(secret) => secret.clone(),
            _ => None,
        }
    }

    fn make_stale(&self, database: &str, user: &str) {
        if let Some(cached) = self
            .entries
            .lock()
            .get_mut(&(database.to_owned(), user.to_owned()))
        {
            cached.until = Instant::now();
        }
    }

    /// Every entry is asked again at its next use.
    pub(super) fn make_all_stale(&self) {
        let now = Instant::now();
        for cached in self.entries.lock().values_mut() {
            cached.until = now;
        }
    }
}

impl Router {
    /// Whether clients of `database` who are not in `auth_file` are
    /// looked up with `auth_query` (an `auth_user` is set for it).
    pub fn looks_up_users(&self, config: &Config, database: &str) -> bool {
        auth_query(config, database).is_some()
    }

    /// What `auth_query` says of `user` for clients of `database`, from
    /// the cache when fresh (see the module's documentation).
    pub async fn look_up(&self, config: &Config, database: &str, user: &str) -> Lookup {
        let Some(query) = auth_query(config, database) else {
            return Lookup::Unknown;
        };
        if let Some(cached) = self.auth_cache.fresh(database, user, Instant::now()) {
            return cached;
        }
        let lookup = match self.run_auth_query(query, user).await {
            Ok(lookup) => lookup,
            Err(why) => {
                tracing::warn!(%database, %user, auth_user = query.user, auth_dbname = query.database, "auth_query failed: {why}");
                Lookup::Failed
            }
        };
        if self
            .auth_cache
            .store(database, user, lookup.clone(), Instant::now())
        {
            self.refresh_target(database, user);
        }
        lookup
    }

    /// Forgets what the cache says of `user` for `database` (its password
    /// did not match: it may have changed).
    pub fn forget_lookup(&self, database: &str, user: &str) {
        self.auth_cache.make_stale(database, user);
    }

    async fn run_auth_query(&self, query: AuthQuery<'_>, user: &str) -> Result<Lookup, String> {
        let pool = self
            .route(query.database, query.user)
            .map_err(|err| err.to_string())?;
        let mut server = pool.get(None).await.map_err(|err| {
            format!(
                "no server connection as \"{}\" to database \"{}\": {err}",
                query.user, query.database
            )
        })?;
        let rows = server
            .query_rows(query.query, &[user])
            .await
            .map_err(|err| err.to_string())?;
        let Some(row) = rows.first() else {
            tracing::info!(database = query.database, %user, "auth_query: no such user");
            return Ok(Lookup::Unknown);
        };
        let [name, secret] = row.as_slice() else {
            return Err(format!(
                "auth_query returned {} columns, expected 2 (user name, secret)",
                row.len()
            ));
        };
        if name.is_none() {
            return Err("auth_query returned a NULL user name".to_owned());
        }
        match secret {
            None => Ok(Lookup::Found(None)),
            Some(text) => Secret::parse(text)
                .map(|secret| Lookup::Found(Some(secret)))
                .map_err(|err| format!("auth_query returned a bad secret: {err}")),
        }
    }

    /// A new secret for `user` reaches its pool's new server connections.
    fn refresh_target(&self, database: &str, user: &str) {
        let Some(pool) = self
            .pools
            .read()
            .get(&(database.to_owned(), user.to_owned()))
            .cloned()
        else {
            return;
        };
        let config = self.config();
        let looked_up = self.auth_cache.secret(database, user);
        let plan = PoolPlan::new(
            &config,
            &self.secrets(),
            &self.client_keys.read(),
            self.tls().server(),
            database,
            user,
            looked_up.as_ref(),
        );
        if let Some(plan) = plan {
            pool.apply(&plan.shape, plan.target);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn per_database_settings_override_the_global_ones() {
        let config = crate::config::parse_ini_str(
            "[pgbouncer]\nauth_user = global\nauth_dbname = authdb\n\
             [databases]\napp =\nown = auth_user=local auth_query='SELECT 1' auth_dbname=other\n",
            Path::new("x.ini"),
        )
        .unwrap()
        .config;
        let app = auth_query(&config, "app").unwrap();
        assert_eq!(
            (app.user, app.database),
            ("global", "authdb"),
            "global settings"
        );
        assert!(app.query.contains("pg_authid"), "{}", app.query);
        let own = auth_query(&config, "own").unwrap();
        assert_eq!(
            (own.user, own.query, own.database),
            ("local", "SELECT 1", "other")
        );
        assert_eq!(auth_query(&config, "missing"), None);
        let none =
            crate::config::parse_ini_str("[pgbouncer]\n[databases]\napp =\n", Path::new("x"))
                .unwrap()
                .config;
        assert_eq!(auth_query(&none, "app"), None, "no auth_user, no lookups");
        let by_name = crate::config::parse_ini_str(
            "[pgbouncer]\nauth_user = u\n[databases]\napp =\n",
            Path::new("x"),
        )
        .unwrap()
        .config;
        assert_eq!(auth_query(&by_name, "app").unwrap().database, "app");
    }

    #[test]
    fn the_cache_expires_and_remembers_the_last_secret() {
        let cache = AuthCache::default();
        let now = Instant::now();
        let secret = Secret::Plain("pw".to_owned());
        assert_eq!(cache.fresh("db", "u", now), None);
        assert!(!cache.store("db", "u", Lookup::Found(Some(secret.clone())), now));
        assert_eq!(
            cache.fresh("db", "u", now + FOUND_TTL / 2),
            Some(Lookup::Found(Some(secret.clone())))
        );
        assert_eq!(cache.fresh("db", "u", now + FOUND_TTL), None);
        assert_eq!(cache.fresh("other", "u", now), None, "per database");
        cache.make_stale("db", "u");
        assert_eq!(cache.fresh("db", "u", Instant::now()), None);
        assert_eq!(
            cache.secret("db", "u"),
            Some(secret.clone()),
            "stale secrets still serve pools"
        );
        assert!(
            !cache.store("db", "u", Lookup::Found(Some(secret.clone())), now),
            "same secret"
        );
        assert!(cache.store(
            "db",
            "u",
            Lookup::Found(Some(Secret::Plain("new".to_owned()))),
            now
        ));
        assert!(!cache.store("db", "x", Lookup::Unknown, now));
        assert_eq!(
            cache.fresh("db", "x", now + UNKNOWN_TTL / 2),
            Some(Lookup::Unknown)
        );
        assert_eq!(cache.fresh("db", "x", now + UNKNOWN_TTL), None);
        assert!(!cache.store("db", "y", Lookup::Failed, now));
        assert_eq!(cache.fresh("db", "y", now), None, "failures are not cached");
        cache.make_all_stale();
        assert_eq!(cache.fresh("db", "x", Instant::now()), None);
    }
}

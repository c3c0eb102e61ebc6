//! The router: which server pool serves a client's (database, user), the
//! pools themselves, created on first use from the configuration in force,
//! and the operations on them (RELOAD's changes, autodb upkeep, PAUSE,
//! KILL, SUSPEND).

mod auth_query;
mod control;
mod plan;
mod pool_key;
mod upkeep;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::auth::ClientKey;
use crate::config::{Config, Secret};
use crate::pool::{ConnectionLimit, DbControl, GlobalControl, ServerPool, Tracking};
use crate::stats::Stats;
use crate::tls::TlsContexts;
use auth_query::AuthCache;
pub use auth_query::Lookup;
use plan::PoolPlan;
use pool_key::PoolKey;

/// Why a client's database could not be routed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Not in `[databases]` and no `*` entry.
    #[error("no such database: {0}")]
    UnknownDatabase(String),
    /// The pool's settings are unusable.
    #[error("pool {database}/{user}: {source}")]
    BadPool {
        /// Database.
        database: String,
        /// User.
        user: String,
        /// Why.
        source: wharf::ConfigError,
    },
}

/// ClientKeys kept per user: one per SCRAM secret it logs in with.
const MAX_KEYS_PER_USER: usize = 4;

/// Finds or creates the pool for each (database, user).
pub struct Router {
    /// Swapped whole by RELOAD; readers clone the `Arc` once per client or
    /// transaction, never hold the lock.
    config: RwLock<Arc<Config>>,
    /// Bumped by every RELOAD: sessions compare it (a plain load) to tell
    /// whether to re-read the configuration, instead of cloning the `Arc`
    /// (a shared counter every core would write) per transaction.
    generation: AtomicU64,
    secrets: RwLock<Arc<HashMap<String, Secret>>>,
    tls: RwLock<Arc<TlsContexts>>,
    /// SCRAM ClientKeys clients revealed, by user: they log the pooler in
    /// to servers whose secret is the auth file's (pass-through).
    client_keys: RwLock<HashMap<String, Vec<ClientKey>>>,
    /// `auth_query` lookups of users not in `auth_file`.
    auth_cache: AuthCache,
    pools: RwLock<HashMap<(String, String), Arc<ServerPool>>>,
    /// `max_db_connections` and `max_user_connections`, by "db:NAME" and
    /// "user:NAME", shared by every pool they cover.
    limits: Mutex<HashMap<String, Arc<ConnectionLimit>>>,
    /// Counters and the client/server registry.
    stats: Arc<Stats>,
    /// PAUSE/SUSPEND of everything.
    global: Arc<GlobalControl>,
    /// PAUSE/DISABLE per database, made on first use.
    dbs: Mutex<HashMap<String, Arc<DbControl>>>,
}

impl Router {
    /// A router over `config`, with the auth file's secrets for logging in
    /// to servers as users whose password is not in `[databases]`, and the
    /// TLS contexts the configuration describes.
    pub fn new(
        config: Arc<Config>,
        secrets: Arc<HashMap<String, Secret>>,
        tls: Arc<TlsContexts>,
    ) -> Self {
        Self {
            config: RwLock::new(config),
            generation: AtomicU64::new(0),
            secrets: RwLock::new(secrets),
            tls: RwLock::new(tls),
            client_keys: RwLock::new(HashMap::new()),
            auth_cache: AuthCache::default(),
            pools: RwLock::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            stats: Arc::new(Stats::default()),
            global: Arc::new(GlobalControl::default()),
            dbs: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration in force now (RELOAD may replace it at any time;
    /// the returned snapshot stays consistent).
    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    /// The auth file's secrets in force now.
    pub fn secrets(&self) -> Arc<HashMap<String, Secret>> {
        self.secrets.read().clone()
    }

    /// The TLS contexts in force now.
    pub fn tls(&self) -> Arc<TlsContexts> {
        self.tls.read().clone()
    }

    /// Puts a reloaded configuration, auth file and TLS contexts in force
    /// for new clients, transactions and pools. Existing pools are brought
    /// in line by [`Router::apply`]. Users found by `auth_query` are looked
    /// up again at their next login.
    pub fn replace(
        &self,
        config: Arc<Config>,
        secrets: Arc<HashMap<String, Secret>>,
        tls: Arc<TlsContexts>,
    ) {
        *self.config.write() = config;
        *self.secrets.write() = secrets;
        *self.tls.write() = tls;
        self.auth_cache.make_all_stale();
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Keeps the ClientKey a SCRAM login as `user` revealed; pools that
    /// log in as `user` with a SCRAM secret it opens use it from now on.
    /// A user may have several secrets (`auth_file` for one database,
    /// `auth_query` on another cluster): each keeps its own key.
    pub fn learn_client_key(&self, user: &str, key: ClientKey) {
        if self
            .client_keys
            .read()
            .get(user)
            .is_some_and(|keys| keys.contains(&key))
        {
            return;
        }
        {
            let mut keys = self.client_keys.write();
            let keys = keys.entry(user.to_owned()).or_default();
            if keys.len() >= MAX_KEYS_PER_USER {
                keys.remove(0);
            }
            keys.push(key);
        }
        if self.pools().iter().any(|pool| pool.user() == user) {
            self.apply();
        }
    }

    /// Changes whenever RELOAD puts a new configuration in force.
    pub fn config_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every pool created so far.
    pub fn pools(&self) -> Vec<Arc<ServerPool>> {
        self.pools.read().values().cloned().collect()
    }

    /// The counters and the client/server registry.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The PAUSE/DISABLE state of `database`, made on first use.
    pub fn db_control(&self, database: &str) -> Arc<DbControl> {
        self.dbs
            .lock()
            .entry(database.to_owned())
            .or_insert_with(|| Arc::new(DbControl::new(database, self.global.clone())))
            .clone()
    }

    fn limit(&self, name: String, kind: &str, key: &str, max: usize) -> Arc<ConnectionLimit> {
        self.limits
            .lock()
            .entry(format!("{kind}:{key}"))
            .or_insert_with(|| Arc::new(ConnectionLimit::new(name, max)))
            .clone()
    }

    /// The pool for a client of `database` logged in as `user`. Must be
    /// called inside the Tokio runtime (a new pool starts its tasks).
    pub fn route(&self, database: &str, user: &str) -> Result<Arc<ServerPool>, RouteError> {
        let config = self.config();
        let entry = config
            .database(database)
            .ok_or_else(|| RouteError::UnknownDatabase(database.to_owned()))?;
        // A forced user in [databases] makes every client share its pool.
        let server_user = entry.user.as_deref().unwrap_or(user);
        let key: &dyn PoolKey = &(database, server_user);
        if let Some(pool) = self.pools.read().get(key) {
            return Ok(pool.clone());
        }
        let mut pools = self.pools.write();
        if let Some(pool) = pools.get(key) {
            return Ok(pool.clone());
        }
        let looked_up = self.auth_cache.secret(database, server_user);
        let plan = PoolPlan::new(
            &config,
            &self.secrets(),
            &self.client_keys.read(),
            self.tls().server(),
            database,
            server_user,
            looked_up.as_ref(),
        )
        .ok_or_else(|| RouteError::UnknownDatabase(database.to_owned()))?;
        let mut limits = Vec::new();
        if let Some(db_max) = plan.max_db_connections {
            limits.push(self.limit(
                format!("max_db_connections={db_max} for database {database}"),
                "db",
                database,
                db_max,
            ));
        }
        if let Some(user_max) = plan.max_user_connections {
            limits.push(self.limit(
                format!("max_user_connections={user_max} for user {server_user}"),
                "user",
                server_user,
                user_max,
            ));
        }
        let tracking = Tracking {
            registry: self.stats.clone(),
            pool: self.stats.pool(database, server_user),
            control: self.db_control(database),
        };
        let pool = ServerPool::new(
            (database, server_user),
            &plan.shape,
            plan.target,
            limits,
            tracking,
            plan.auto,
        )
        .map_err(|source| RouteError::BadPool {
            database: database.to_owned(),
            user: server_user.to_owned(),
            source,
        })?;
        let pool = Arc::new(pool);
        pools.insert((database.to_owned(), server_user.to_owned()), pool.clone());
        Ok(pool)
    }
}

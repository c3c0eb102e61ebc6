//! The router: which server pool serves a client's (database, user), and
//! the pools themselves, created on first use from the configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::backend::{ConnectionLimit, Params, ServerAddr, ServerManager, ServerTarget};
use crate::config::{Config, PoolMode, Secret, ServerCheck};

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

/// One server pool: the servers for a (database, user) pair, and how
/// clients use them.
pub struct ServerPool {
    /// The database name clients asked for.
    pub database: String,
    /// The user the servers are logged in as.
    pub user: String,
    /// Session, transaction or statement pooling.
    pub mode: PoolMode,
    /// The server connections.
    pub pool: wharf::Pool<ServerManager>,
    /// Where the servers are (for cancel requests).
    pub addr: Arc<ServerAddr>,
    /// Run when a client releases its server in session mode, or always
    /// with `server_reset_query_always`.
    pub reset_query: Option<String>,
    /// Reset after every transaction too, not just at session end.
    pub reset_always: bool,
    /// The ParameterStatus set a server sent at login, cached for the
    /// welcome of later clients.
    welcome: Mutex<Option<Arc<Params>>>,
}

impl ServerPool {
    /// The cached welcome parameters, if a server has logged in yet.
    pub fn welcome(&self) -> Option<Arc<Params>> {
        self.welcome.lock().clone()
    }

    /// Caches a server's login parameters for later welcomes.
    pub fn set_welcome(&self, params: &[(String, String)]) {
        *self.welcome.lock() = Some(Arc::new(params.to_vec()));
    }
}

/// Finds or creates the pool for each (database, user).
pub struct Router {
    config: Arc<Config>,
    secrets: Arc<HashMap<String, Secret>>,
    pools: RwLock<HashMap<(String, String), Arc<ServerPool>>>,
    /// `max_db_connections` and `max_user_connections`, by "db:NAME" and
    /// "user:NAME", shared by every pool they cover.
    limits: Mutex<HashMap<String, Arc<ConnectionLimit>>>,
}

/// `0` means "no limit" in PgBouncer's timeouts; a year is as good.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

impl Router {
    /// A router over `config`, with the auth file's secrets for logging in
    /// to servers as users whose password is not in `[databases]`.
    pub fn new(config: Arc<Config>, secrets: Arc<HashMap<String, Secret>>) -> Self {
        Self {
            config,
            secrets,
            pools: RwLock::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration routes come from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every pool created so far.
    pub fn pools(&self) -> Vec<Arc<ServerPool>> {
        self.pools.read().values().cloned().collect()
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
        let entry = self
            .config
            .database(database)
            .ok_or_else(|| RouteError::UnknownDatabase(database.to_owned()))?;
        // A forced user in [databases] makes every client share its pool.
        let server_user = entry.user.clone().unwrap_or_else(|| user.to_owned());
        let key = (database.to_owned(), server_user.clone());
        if let Some(pool) = self.pools.read().get(&key) {
            return Ok(pool.clone());
        }
        let mut pools = self.pools.write();
        if let Some(pool) = pools.get(&key) {
            return Ok(pool.clone());
        }
        let settings = &self.config.pgbouncer;
        let user_entry = self.config.user(&server_user);
        let mode = user_entry
            .and_then(|u| u.pool_mode)
            .or(entry.pool_mode)
            .unwrap_or(settings.pool_mode);
        let pool_size = user_entry
            .and_then(|u| u.pool_size)
            .or(entry.pool_size)
            .unwrap_or(settings.default_pool_size)
            .max(1);
        // reserve_pool_timeout = 0 turns the reserve off, as in PgBouncer.
        let (reserve_size, reserve_timeout) = match settings.reserve_pool_timeout {
            Some(timeout) => (
                user_entry
                    .and_then(|u| u.reserve_pool_size)
                    .or(entry.reserve_pool_size)
                    .unwrap_or(settings.reserve_pool_size),
                timeout,
            ),
            None => (0, Duration::ZERO),
        };
        let min_pool_size = entry
            .min_pool_size
            .unwrap_or(settings.min_pool_size)
            .min(pool_size);
        let password = entry
            .password
            .clone()
            .map(Secret::Plain)
            .or_else(|| self.secrets.get(&server_user).cloned());
        let mut startup_params = Vec::new();
        for (name, value) in [
            ("client_encoding", &entry.client_encoding),
            ("DateStyle", &entry.datestyle),
            ("TimeZone", &entry.timezone),
            ("application_name", &entry.application_name),
        ] {
            if let Some(value) = value {
                startup_params.push((name.to_owned(), value.clone()));
            }
        }
        let addr = ServerAddr::new(entry.host.as_deref(), entry.port.unwrap_or(5432));
        let target = Arc::new(ServerTarget {
            addr: addr.clone(),
            database: entry.dbname.clone().unwrap_or_else(|| database.to_owned()),
            user: server_user.clone(),
            password,
            startup_params,
            connect_query: entry.connect_query.clone(),
            check_query: match settings.server_check() {
                ServerCheck::Disabled => None,
                ServerCheck::EmptyQuery => Some(String::new()),
                ServerCheck::Query(query) => Some(query.to_owned()),
            },
        });
        let check = match settings.server_check() {
            ServerCheck::Disabled => None,
            _ => Some(settings.server_check_delay),
        };
        let mut limits = Vec::new();
        // A per-entry 0 means "use the global value", as in PgBouncer.
        let db_max = entry
            .max_db_connections
            .filter(|&n| n > 0)
            .unwrap_or(settings.max_db_connections);
        if db_max > 0 {
            limits.push(self.limit(
                format!("max_db_connections={db_max} for database {database}"),
                "db",
                database,
                db_max,
            ));
        }
        let user_max = user_entry
            .and_then(|u| u.max_user_connections)
            .filter(|&n| n > 0)
            .unwrap_or(settings.max_user_connections);
        if user_max > 0 {
            limits.push(self.limit(
                format!("max_user_connections={user_max} for user {server_user}"),
                "user",
                &server_user,
                user_max,
            ));
        }
        let pool = wharf::Pool::builder(ServerManager {
            target,
            limits: limits.clone(),
        })
        .name(format!("{database}/{server_user}"))
        .max_size(pool_size)
        .min_idle(min_pool_size)
        .reserve_size(reserve_size)
        .reserve_timeout(reserve_timeout)
        .acquire_timeout(settings.query_wait_timeout.unwrap_or(FOREVER))
        .connect_timeout(settings.server_connect_timeout)
        .max_connecting(4)
        // PgBouncer's server_login_retry: while logins fail and the pool
        // has no server, clients are told at once rather than queued.
        .fail_fast(true)
        .connect_backoff(Duration::from_millis(100).min(settings.server_login_retry))
        .connect_backoff_max(settings.server_login_retry.max(Duration::from_millis(1)))
        .validate_after(check)
        .validation_timeout(settings.server_connect_timeout)
        .idle_timeout(settings.server_idle_timeout)
        .max_lifetime(settings.server_lifetime)
        .build()
        .map_err(|source| RouteError::BadPool {
            database: database.to_owned(),
            user: server_user.clone(),
            source,
        })?;
        let reset_query =
            Some(settings.server_reset_query.clone()).filter(|q| !q.trim().is_empty());
        for limit in &limits {
            limit.pools.lock().push(pool.downgrade());
        }
        let server_pool = Arc::new(ServerPool {
            database: database.to_owned(),
            user: server_user,
            mode,
            pool,
            addr: Arc::new(addr),
            reset_query,
            reset_always: settings.server_reset_query_always,
            welcome: Mutex::new(None),
        });
        pools.insert(key, server_pool.clone());
        Ok(server_pool)
    }
}

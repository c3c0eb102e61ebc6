//! The router: which server pool serves a client's (database, user), and
//! the pools themselves, created on first use from the configuration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::backend::{ConnectionLimit, Params, ServerAddr, ServerManager, ServerTarget};
use crate::config::{Config, PoolMode, Secret, ServerCheck};
use crate::stats::{PoolStats, Stats, Tracking};

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
    /// Session, transaction or statement pooling (see [`ServerPool::mode`]);
    /// RELOAD may change it.
    mode: AtomicU8,
    /// The server connections.
    pub pool: wharf::Pool<ServerManager>,
    /// Where the servers are (for cancel requests).
    pub addr: Arc<ServerAddr>,
    /// Run when a client releases its server in session mode, or always
    /// with `server_reset_query_always`.
    pub reset_query: Option<String>,
    /// Reset after every transaction too, not just at session end.
    pub reset_always: bool,
    /// Made from the `*` entry: dropped after `autodb_idle_timeout` unused.
    pub auto: bool,
    /// The ParameterStatus set a server sent at login, cached for the
    /// welcome of later clients.
    welcome: Mutex<Option<Arc<Params>>>,
    /// The pool's counters, held by every client of the pool for the
    /// whole session so the relay updates them without a lookup.
    pub stats: Arc<PoolStats>,
    /// PAUSE and DISABLE state of the pool's database.
    pub control: Arc<DbControl>,
    /// The pool's clients' sets of tracked parameters.
    pub param_sets: crate::backend::ParamSets,
}

impl ServerPool {
    /// Session, transaction or statement pooling, as now configured. A
    /// session reads it when it takes a server.
    pub fn mode(&self) -> PoolMode {
        match self.mode.load(Ordering::Relaxed) {
            m if m == PoolMode::Transaction as u8 => PoolMode::Transaction,
            m if m == PoolMode::Statement as u8 => PoolMode::Statement,
            _ => PoolMode::Session,
        }
    }

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
    /// Swapped whole by RELOAD; readers clone the `Arc` once per client or
    /// transaction, never hold the lock.
    config: RwLock<Arc<Config>>,
    /// Bumped by every RELOAD: sessions compare it (a plain load) to tell
    /// whether to re-read the configuration, instead of cloning the `Arc`
    /// (a shared counter every core would write) per transaction.
    generation: std::sync::atomic::AtomicU64,
    secrets: RwLock<Arc<HashMap<String, Secret>>>,
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

/// `0` means "no limit" in PgBouncer's timeouts; a year is as good.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

impl Router {
    /// A router over `config`, with the auth file's secrets for logging in
    /// to servers as users whose password is not in `[databases]`.
    pub fn new(config: Arc<Config>, secrets: Arc<HashMap<String, Secret>>) -> Self {
        Self {
            config: RwLock::new(config),
            generation: std::sync::atomic::AtomicU64::new(0),
            secrets: RwLock::new(secrets),
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

    /// Puts a reloaded configuration and auth file in force for new
    /// clients, transactions and pools. Existing pools are brought in line
    /// by [`Router::apply`].
    pub(crate) fn replace(&self, config: Arc<Config>, secrets: Arc<HashMap<String, Secret>>) {
        *self.config.write() = config;
        *self.secrets.write() = secrets;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Changes whenever RELOAD puts a new configuration in force.
    pub fn config_generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
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
        let config = self.config();
        let entry = config
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
        let stats = self.stats.pool(database, &server_user);
        let control = self.db_control(database);
        let plan = PoolPlan::new(&config, &self.secrets(), database, &server_user)
            .ok_or_else(|| RouteError::UnknownDatabase(database.to_owned()))?;
        let settings = &config.pgbouncer;
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
                &server_user,
                user_max,
            ));
        }
        let check = plan
            .target
            .check_query
            .as_ref()
            .map(|_| settings.server_check_delay);
        let addr = plan.target.addr.clone();
        let pool = wharf::Pool::builder(ServerManager {
            target: Arc::new(RwLock::new(Arc::new(plan.target.clone()))),
            limits: limits.clone(),
            tracking: Tracking {
                registry: self.stats.clone(),
                pool: stats.clone(),
                control: control.clone(),
            },
        })
        .name(format!("{database}/{server_user}"))
        .max_size(plan.pool_size)
        .min_idle(plan.min_pool_size)
        .reserve_size(plan.reserve_size)
        .reserve_timeout(plan.reserve_timeout)
        .acquire_timeout(settings.query_wait_timeout.unwrap_or(FOREVER))
        .connect_timeout(settings.server_connect_timeout)
        .max_connecting(4)
        // PgBouncer's server_login_retry: while logins fail and the pool
        // has no server, clients are told at once rather than queued.
        .fail_fast(true)
        .connect_backoff(login_retry_backoff(settings.server_login_retry).0)
        .connect_backoff_max(login_retry_backoff(settings.server_login_retry).1)
        .validate_after(check)
        .validation_timeout(settings.server_connect_timeout)
        .idle_timeout(settings.server_idle_timeout)
        .max_lifetime(plan.server_lifetime)
        .build()
        .map_err(|source| RouteError::BadPool {
            database: database.to_owned(),
            user: server_user.clone(),
            source,
        })?;
        for limit in &limits {
            limit.pools.lock().push(pool.downgrade());
        }
        let server_pool = Arc::new(ServerPool {
            database: database.to_owned(),
            user: server_user,
            mode: AtomicU8::new(plan.mode as u8),
            pool,
            addr: Arc::new(addr),
            reset_query: plan.reset_query,
            reset_always: settings.server_reset_query_always,
            auto: plan.auto,
            welcome: Mutex::new(None),
            stats,
            control,
            param_sets: crate::backend::ParamSets::default(),
        });
        pools.insert(key, server_pool.clone());
        Ok(server_pool)
    }

    /// Brings every existing pool in line with the configuration now in
    /// force (after [`Router::replace`]): sizes change at once, a changed
    /// server target applies to new connections and idle servers with the
    /// old one are closed (those in use are closed when released, as
    /// PgBouncer's `close_needed`). Clients are never dropped.
    pub(crate) fn apply(&self) -> Applied {
        let config = self.config();
        let secrets = self.secrets();
        let mut applied = Applied::default();
        for pool in self.pools() {
            let Some(plan) = PoolPlan::new(&config, &secrets, &pool.database, &pool.user) else {
                tracing::warn!(database = %pool.database, user = %pool.user,
                    "database no longer in the configuration; its pool keeps running until unused");
                applied.orphaned += 1;
                continue;
            };
            let status = pool.pool.status();
            if status.max_size != plan.pool_size {
                match pool.pool.resize(plan.pool_size) {
                    Ok(()) => {
                        tracing::info!(database = %pool.database, user = %pool.user,
                            from = status.max_size, to = plan.pool_size, "pool resized");
                        applied.resized += 1;
                    }
                    Err(err) => {
                        tracing::warn!(database = %pool.database, user = %pool.user, error = %err, "pool not resized");
                    }
                }
            }
            if pool.mode() != plan.mode {
                tracing::info!(database = %pool.database, user = %pool.user,
                    from = pool.mode().as_str(), to = plan.mode.as_str(),
                    "pool_mode changed; sessions holding a server keep the old mode until they release it");
                pool.mode.store(plan.mode as u8, Ordering::Relaxed);
            }
            let settings = &config.pgbouncer;
            pool.pool.set_min_idle(plan.min_pool_size);
            pool.pool
                .set_reserve(plan.reserve_size, plan.reserve_timeout);
            pool.pool
                .set_connect_timeout(settings.server_connect_timeout);
            pool.pool
                .set_validation_timeout(settings.server_connect_timeout);
            let (backoff, backoff_max) = login_retry_backoff(settings.server_login_retry);
            pool.pool.set_connect_backoff(backoff, backoff_max);
            pool.pool.set_idle_timeout(settings.server_idle_timeout);
            pool.pool.set_max_lifetime(Some(plan.server_lifetime));
            pool.pool.set_validate_after(
                plan.target
                    .check_query
                    .as_ref()
                    .map(|_| config.pgbouncer.server_check_delay),
            );
            let manager = pool.pool.manager();
            let changed = {
                let mut target = manager.target.write();
                if **target != plan.target {
                    *target = Arc::new(plan.target);
                    true
                } else {
                    false
                }
            };
            if changed {
                let closed = pool.pool.close_idle(usize::MAX);
                tracing::info!(database = %pool.database, user = %pool.user, closed_idle = closed,
                    "server target changed; servers with the old one close when released");
                applied.retargeted += 1;
            }
        }
        applied
    }

    /// Drops pools made from the `*` entry that no client has used for
    /// `autodb_idle_timeout`; `unused` remembers since when each was seen
    /// unused (the caller keeps it between rounds).
    pub(crate) fn drop_idle_autodb(
        &self,
        unused: &mut HashMap<(String, String), std::time::Instant>,
        now: std::time::Instant,
    ) -> usize {
        let timeout = self.config().pgbouncer.autodb_idle_timeout;
        let mut dropped = 0;
        let candidates: Vec<(String, String)> = {
            let pools = self.pools.read();
            unused.retain(|key, _| pools.contains_key(key));
            pools
                .iter()
                .filter(|(_, pool)| pool.auto)
                .map(|(key, _)| key.clone())
                .collect()
        };
        for key in candidates {
            let mut pools = self.pools.write();
            let Some(pool) = pools.get(&key) else {
                continue;
            };
            // Only the router holds it: no client session uses the pool.
            let in_use = Arc::strong_count(pool) > 1 || pool.pool.status().in_use > 0;
            if in_use {
                unused.remove(&key);
                continue;
            }
            let since = *unused.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= timeout {
                pools.remove(&key);
                unused.remove(&key);
                tracing::info!(database = %key.0, user = %key.1, "dropping unused autodb pool (autodb_idle_timeout)");
                dropped += 1;
            }
        }
        dropped
    }
}

/// The engine's connect backoff for PgBouncer's `server_login_retry`: the
/// first retry soon (100 ms at most), later ones spread up to it.
fn login_retry_backoff(server_login_retry: Duration) -> (Duration, Duration) {
    (
        Duration::from_millis(100).min(server_login_retry),
        server_login_retry.max(Duration::from_millis(1)),
    )
}

/// What [`Router::apply`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) resized: usize,
    pub(crate) retargeted: usize,
    pub(crate) orphaned: usize,
}

/// Everything a pool's settings come from, for a (database, server user)
/// under one configuration: how [`Router::route`] builds a pool and how
/// [`Router::apply`] tells what a reload changed.
struct PoolPlan {
    mode: PoolMode,
    pool_size: usize,
    min_pool_size: usize,
    reserve_size: usize,
    reserve_timeout: Duration,
    max_db_connections: Option<usize>,
    max_user_connections: Option<usize>,
    server_lifetime: Duration,
    reset_query: Option<String>,
    target: ServerTarget,
    auto: bool,
}

impl PoolPlan {
    /// `None` when the database is not in the configuration (not even by `*`).
    fn new(
        config: &Config,
        secrets: &HashMap<String, Secret>,
        database: &str,
        server_user: &str,
    ) -> Option<Self> {
        let entry = config.database(database)?;
        let settings = &config.pgbouncer;
        let pool = config.settings_of(Some(entry), config.user(server_user));
        let pool_size = pool.pool_size.max(1);
        // reserve_pool_timeout = 0 turns the reserve off, as in PgBouncer.
        let (reserve_size, reserve_timeout) = match settings.reserve_pool_timeout {
            Some(timeout) => (pool.reserve_pool_size, timeout),
            None => (0, Duration::ZERO),
        };
        let password = entry
            .password
            .clone()
            .map(Secret::Plain)
            .or_else(|| secrets.get(server_user).cloned());
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
        let target = ServerTarget {
            addr: ServerAddr::new(entry.host.as_deref(), entry.port.unwrap_or(5432)),
            database: entry.dbname.clone().unwrap_or_else(|| database.to_owned()),
            user: server_user.to_owned(),
            password,
            startup_params,
            connect_query: entry.connect_query.clone(),
            check_query: match settings.server_check() {
                ServerCheck::Disabled => None,
                ServerCheck::EmptyQuery => Some(String::new()),
                ServerCheck::Query(query) => Some(query.to_owned()),
            },
        };
        Some(Self {
            mode: pool.pool_mode,
            pool_size,
            min_pool_size: pool.min_pool_size.min(pool_size),
            reserve_size,
            reserve_timeout,
            max_db_connections: pool.max_db_connections,
            max_user_connections: pool.max_user_connections,
            server_lifetime: pool.server_lifetime,
            reset_query: Some(settings.server_reset_query.clone()).filter(|q| !q.trim().is_empty()),
            target,
            auto: entry.is_fallback(),
        })
    }
}

/// PAUSE and SUSPEND of the whole pooler, shared by every database's
/// [`DbControl`].
#[derive(Debug, Default)]
pub struct GlobalControl {
    paused: AtomicBool,
    suspended: AtomicBool,
    /// Woken on every RESUME (rare: waking every waiter is fine).
    resumed: Notify,
}

/// A database's PAUSE/KILL and DISABLE state, checked by the relay with
/// one atomic load before it takes a server.
#[derive(Debug)]
pub struct DbControl {
    /// The database name clients use.
    pub name: String,
    paused: AtomicBool,
    disabled: AtomicBool,
    global: Arc<GlobalControl>,
}

impl DbControl {
    /// Whether new transactions of this database must wait (PAUSE, KILL,
    /// SUSPEND).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
            || self.global.paused.load(Ordering::SeqCst)
            || self.global.suspended.load(Ordering::SeqCst)
    }

    /// Whether this database itself was paused (not the whole pooler).
    pub fn paused_itself(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Whether new clients are refused (DISABLE).
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::SeqCst)
    }

    /// Returns once the database is not paused.
    pub async fn wait_resumed(&self) {
        // Every transaction passes here: registering with the shared
        // `Notify` takes its lock, so only a paused database does.
        if !self.is_paused() {
            return;
        }
        loop {
            let resumed = self.global.resumed.notified();
            tokio::pin!(resumed);
            // Registered before the check, so a RESUME in between is seen.
            resumed.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            resumed.await;
        }
    }
}

/// How often PAUSE and WAIT_CLOSE look again at the servers they wait for.
const ADMIN_POLL: Duration = Duration::from_millis(20);

impl Router {
    /// The counters and the client/server registry.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The PAUSE/DISABLE state of `database`, made on first use.
    pub fn db_control(&self, database: &str) -> Arc<DbControl> {
        self.dbs
            .lock()
            .entry(database.to_owned())
            .or_insert_with(|| {
                Arc::new(DbControl {
                    name: database.to_owned(),
                    paused: AtomicBool::new(false),
                    disabled: AtomicBool::new(false),
                    global: self.global.clone(),
                })
            })
            .clone()
    }

    fn pools_of(&self, db: Option<&str>) -> Vec<Arc<ServerPool>> {
        self.pools()
            .into_iter()
            .filter(|p| db.is_none_or(|db| p.database == db))
            .collect()
    }

    /// Marks every server of `pool` for closing when released and closes
    /// the idle ones now: a fresh target makes them all "close_needed".
    fn retire_servers(pool: &ServerPool) {
        {
            let mut target = pool.pool.manager().target.write();
            *target = Arc::new(ServerTarget::clone(&target));
        }
        pool.pool.close_idle(usize::MAX);
    }

    /// What PAUSE and KILL start with: new transactions of `db` (of
    /// every database with `None`) wait for RESUME, and its servers are
    /// retired. A pooler-wide PAUSE pauses the pooler; a pooler-wide KILL,
    /// as PgBouncer's, pauses each database that has a pool instead, to be
    /// resumed by name.
    fn hold(&self, db: Option<&str>, command: &str) {
        match db {
            Some(db) => self.db_control(db).paused.store(true, Ordering::SeqCst),
            None if command == "KILL" => {
                for pool in self.pools() {
                    pool.control.paused.store(true, Ordering::SeqCst);
                }
            }
            None => self.global.paused.store(true, Ordering::SeqCst),
        }
        tracing::info!(database = db.unwrap_or("*"), "{command}");
        for pool in self.pools_of(db) {
            Self::retire_servers(&pool);
        }
    }

    fn servers_of(&self, db: Option<&str>) -> Vec<Arc<crate::stats::ServerEntry>> {
        self.stats
            .servers()
            .into_iter()
            .filter(|s| db.is_none_or(|db| s.pool.database == db))
            .collect()
    }

    /// PgBouncer's PAUSE: new transactions of `db` (every database with
    /// `None`) wait, and this returns once every server of it has been
    /// released (at transaction end in transaction mode, at disconnect
    /// in session mode) and closed. RESUME lets the waiting transactions
    /// go on, on new servers.
    pub async fn pause(&self, db: Option<&str>) {
        self.hold(db, "PAUSE");
        while !self.servers_of(db).is_empty() {
            for pool in self.pools_of(db) {
                pool.pool.close_idle(usize::MAX);
            }
            tokio::time::sleep(ADMIN_POLL).await;
        }
    }

    /// RESUME: undoes PAUSE and KILL of one database, or (with `None`)
    /// the whole pooler's PAUSE, KILL or SUSPEND. As in PgBouncer, a
    /// database paused by name stays paused until resumed by name.
    pub fn resume(&self, db: Option<&str>) {
        match db {
            Some(db) => self.db_control(db).paused.store(false, Ordering::SeqCst),
            None => {
                self.global.paused.store(false, Ordering::SeqCst);
                self.global.suspended.store(false, Ordering::SeqCst);
            }
        }
        tracing::info!(database = db.unwrap_or("*"), "RESUME");
        self.global.resumed.notify_waiters();
    }

    /// Whether some database is paused by name.
    pub fn any_database_paused(&self) -> bool {
        self.dbs
            .lock()
            .values()
            .any(|control| control.paused_itself())
    }

    /// SUSPEND: no new transaction anywhere starts until RESUME; servers
    /// are left as they are.
    pub fn suspend(&self) {
        tracing::info!("SUSPEND");
        self.global.suspended.store(true, Ordering::SeqCst);
    }

    /// Whether the whole pooler is paused, and whether it is suspended.
    pub fn global_state(&self) -> (bool, bool) {
        (
            self.global.paused.load(Ordering::SeqCst),
            self.global.suspended.load(Ordering::SeqCst),
        )
    }

    /// DISABLE (`true`) or ENABLE (`false`) new client logins to `db`.
    pub fn set_disabled(&self, db: &str, disabled: bool) {
        tracing::info!(database = db, disabled, "DISABLE/ENABLE");
        self.db_control(db)
            .disabled
            .store(disabled, Ordering::SeqCst);
    }

    /// RECONNECT: every server of `db` (of all with `None`) is closed when
    /// next released; idle ones now.
    pub fn reconnect(&self, db: Option<&str>) {
        tracing::info!(database = db.unwrap_or("*"), "RECONNECT");
        for pool in self.pools_of(db) {
            Self::retire_servers(&pool);
        }
    }

    /// KILL: drops every client and server of `db` (of every database
    /// with `None`) at once, admin console sessions excepted; new
    /// transactions wait for RESUME. Returns how many clients were killed.
    pub fn kill(&self, db: Option<&str>) -> usize {
        self.hold(db, "KILL");
        let mut killed = 0;
        for client in self.stats.clients() {
            if !client.info.admin && db.is_none_or(|db| client.info.database == db) {
                client.kill(crate::stats::KillReason::DatabaseKilled);
                killed += 1;
            }
        }
        killed
    }

    /// KILL_CLIENT: disconnects the client with this id (its server, if
    /// it has one mid-transaction, is closed). `false` if there is none.
    pub fn kill_client(&self, id: u64) -> bool {
        match self.stats.client(id) {
            Some(client) => {
                tracing::info!(client = id, "KILL_CLIENT");
                client.kill(crate::stats::KillReason::AdminForced);
                true
            }
            None => false,
        }
    }

    /// WAIT_CLOSE: returns once no server of `db` (of any with `None`) is
    /// still marked for closing by RECONNECT or RELOAD.
    pub async fn wait_close(&self, db: Option<&str>) {
        loop {
            let pending: Vec<_> = self
                .servers_of(db)
                .into_iter()
                .filter(|s| s.close_needed())
                .collect();
            if pending.is_empty() {
                return;
            }
            // Servers still logging in when their pool was retargeted come
            // back idle with the old target; nothing would release them.
            if pending
                .iter()
                .any(|s| s.state() == crate::stats::ServerState::Idle)
            {
                for pool in self.pools_of(db) {
                    pool.pool.close_idle(usize::MAX);
                }
            }
            tokio::time::sleep(ADMIN_POLL).await;
        }
    }
}

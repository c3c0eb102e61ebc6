//! Server pools on the `wharf` engine: one [`ServerPool`] per (database,
//! user), its engine [`ServerManager`], the connection limits several
//! pools share, and the PAUSE/DISABLE state its clients check.

mod control;
mod hosts;
mod limit;
mod manager;
mod welcome;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wharf::Pooled;

pub use control::{DbControl, GlobalControl};
pub use hosts::HostStatus;
pub use limit::ConnectionLimit;
pub use manager::{ServerManager, Tracking};
pub use welcome::Greeting;

use crate::config::PoolMode;
use crate::server::{ParamSets, Params, ServerTarget, SessionAttrs};
use crate::stats::PoolStats;

/// `0` means "no limit" in PgBouncer's timeouts; a year is as good.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a server pool is sized and timed: what the configuration in force
/// says for one (database, user), in the engine's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolShape {
    /// Session, transaction or statement pooling.
    pub mode: PoolMode,
    /// Most servers (`pool_size`).
    pub pool_size: usize,
    /// Servers kept open (`min_pool_size`).
    pub min_pool_size: usize,
    /// Extra servers for clients that waited `reserve_timeout`.
    pub reserve_size: usize,
    /// How long a client waits before the reserve opens.
    pub reserve_timeout: Duration,
    /// `server_lifetime`.
    pub server_lifetime: Duration,
    /// `server_idle_timeout` (`None`: off).
    pub idle_timeout: Option<Duration>,
    /// `server_connect_timeout`, also the check query's timeout.
    pub connect_timeout: Duration,
    /// `server_login_retry`.
    pub login_retry: Duration,
    /// `server_check_delay`, when servers are checked at all.
    pub check_delay: Option<Duration>,
    /// `query_wait_timeout` (`None`: off).
    pub query_wait_timeout: Option<Duration>,
    /// Run when a client releases its server in session mode, or always
    /// with `reset_always`.
    pub reset_query: Option<String>,
    /// `server_reset_query_always`.
    pub reset_always: bool,
    /// `read_routing`: reads may go to a second pool of standby servers.
    pub read_routing: bool,
}

/// What [`ServerPool::apply`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// The pool's size changed.
    pub resized: bool,
    /// The server target changed: servers with the old one close when
    /// released.
    pub retargeted: bool,
}

/// One server pool: the servers for a (database, user) pair, and how
/// clients use them.
pub struct ServerPool {
    /// Shared with its clients' registry entries.
    database: Arc<str>,
    user: Arc<str>,
    /// A [`PoolMode`] as a byte: RELOAD may change it under live sessions.
    mode: AtomicU8,
    /// The servers every transaction goes to without read routing, and
    /// the writes with it (then on the primary).
    engine: wharf::Pool<ServerManager>,
    /// With read routing: the servers reads go to (a standby when one is
    /// up, else the primary). Made when routing is first turned on and
    /// kept, so that a session finds it with a plain load.
    reads: OnceLock<wharf::Pool<ServerManager>>,
    /// `read_routing` as now configured.
    routing: AtomicBool,
    /// What the reads pool is made with, when RELOAD turns routing on.
    limits: Vec<Arc<ConnectionLimit>>,
    tracking: Tracking,
    reset_query: Option<String>,
    reset_always: bool,
    /// Made from the `*` entry: dropped after `autodb_idle_timeout` unused.
    auto: bool,
    /// The ParameterStatus set a server sent at login, and the welcomes
    /// made from it.
    welcomes: welcome::Welcomes,
    stats: Arc<PoolStats>,
    control: Arc<DbControl>,
    param_sets: ParamSets,
}

impl ServerPool {
    /// A pool of `database`'s servers logged in as `user`, opened for
    /// `target` under `limits`. Must be called inside the Tokio runtime
    /// (the engine starts its tasks).
    pub fn new(
        (database, user): (&str, &str),
        shape: &PoolShape,
        target: ServerTarget,
        limits: Vec<Arc<ConnectionLimit>>,
        tracking: Tracking,
        auto: bool,
    ) -> Result<Self, wharf::ConfigError> {
        let (stats, control) = (tracking.pool.clone(), tracking.control.clone());
        let (writes, reads) = routed_targets(shape.read_routing, target);
        let name = (format!("{database}/{user}"), shape.min_pool_size);
        let engine = build_engine(name, shape, writes, limits.clone(), tracking.clone())?;
        let reads_engine = OnceLock::new();
        if let Some(target) = reads {
            // min_pool_size is the writes pool's: reads open servers on
            // demand.
            let name = (format!("{database}/{user}/reads"), 0);
            let built = build_engine(name, shape, target, limits.clone(), tracking.clone())?;
            let _ = reads_engine.set(built);
        }
        Ok(Self {
            database: database.into(),
            user: user.into(),
            mode: AtomicU8::new(shape.mode as u8),
            engine,
            reads: reads_engine,
            routing: AtomicBool::new(shape.read_routing),
            limits,
            tracking,
            reset_query: shape.reset_query.clone(),
            reset_always: shape.reset_always,
            auto,
            welcomes: welcome::Welcomes::default(),
            stats,
            control,
            param_sets: ParamSets::default(),
        })
    }

    /// Brings the live pool in line with `shape` and `target` (a RELOAD):
    /// sizes and timeouts at once, a new target for new servers, read
    /// routing on or off.
    pub fn apply(&self, shape: &PoolShape, target: ServerTarget) -> Changed {
        if self.mode() != shape.mode {
            tracing::info!(database = %self.database, user = %self.user,
                from = self.mode().as_str(), to = shape.mode.as_str(),
                "pool_mode changed; sessions holding a server keep the old mode until they release it");
            self.mode.store(shape.mode as u8, Ordering::Relaxed);
        }
        let (writes, reads) = routed_targets(shape.read_routing, target);
        let mut changed = self.tune(&self.engine, shape, shape.min_pool_size, writes);
        match reads {
            Some(target) => {
                let reads = self.apply_reads(shape, target);
                changed.resized |= reads.resized;
                changed.retargeted |= reads.retargeted;
            }
            None => {
                if let Some(reads) = self.reads.get() {
                    // Reads go to the primary's pool from now on; the
                    // standby servers close as they come back.
                    if self.routing.swap(false, Ordering::Relaxed) {
                        tracing::info!(database = %self.database, user = %self.user, "read routing off");
                    }
                    reads.manager().retire_all();
                    reads.close_idle(usize::MAX);
                }
            }
        }
        changed
    }

    /// Routing on (or still on) after a RELOAD: the reads pool is made if
    /// it was not, else brought in line.
    fn apply_reads(&self, shape: &PoolShape, target: ServerTarget) -> Changed {
        let mut changed = Changed::default();
        match self.reads.get() {
            Some(reads) => changed = self.tune(reads, shape, 0, target),
            None => {
                let name = (format!("{}/{}/reads", self.database, self.user), 0);
                let built = build_engine(
                    name,
                    shape,
                    target,
                    self.limits.clone(),
                    self.tracking.clone(),
                );
                match built {
                    Ok(engine) => {
                        let _ = self.reads.set(engine);
                    }
                    Err(err) => {
                        tracing::warn!(database = %self.database, user = %self.user, error = %err,
                            "read routing not turned on");
                        return changed;
                    }
                }
            }
        }
        if !self.routing.swap(true, Ordering::Relaxed) {
            tracing::info!(database = %self.database, user = %self.user, "read routing on");
        }
        changed
    }

    /// Sizes, timeouts and target of one of the pool's engines.
    fn tune(
        &self,
        engine: &wharf::Pool<ServerManager>,
        shape: &PoolShape,
        min_size: usize,
        target: ServerTarget,
    ) -> Changed {
        let mut changed = Changed::default();
        let status = engine.status();
        if status.max_size != shape.pool_size {
            match engine.resize(shape.pool_size) {
                Ok(()) => {
                    tracing::info!(database = %self.database, user = %self.user,
                        from = status.max_size, to = shape.pool_size, "pool resized");
                    changed.resized = true;
                }
                Err(err) => {
                    tracing::warn!(database = %self.database, user = %self.user, error = %err, "pool not resized");
                }
            }
        }
        engine.set_min_size(min_size);
        engine.set_reserve(shape.reserve_size, shape.reserve_timeout);
        engine.set_connect_timeout(all_hosts_timeout(shape.connect_timeout, &target));
        engine.manager().set_host_timeout(shape.connect_timeout);
        engine.set_validation_timeout(shape.connect_timeout);
        let (backoff, backoff_max) = login_retry_backoff(shape.login_retry);
        engine.set_connect_backoff(backoff, backoff_max);
        engine.set_idle_timeout(shape.idle_timeout);
        engine.set_max_lifetime(Some(shape.server_lifetime));
        engine.set_validate_after(shape.check_delay);
        if engine.manager().retarget(target) {
            let closed = engine.close_idle(usize::MAX);
            tracing::info!(database = %self.database, user = %self.user, closed_idle = closed,
                "server target changed; servers with the old one close when released");
            changed.retargeted = true;
        }
        changed
    }

    /// The pool's hosts and what is known of each (up, role, lag).
    pub fn hosts(&self) -> Vec<HostStatus> {
        self.engine.manager().host_status()
    }

    /// The database name clients asked for.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The user the servers are logged in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The database name and the servers' user, shared (a client's
    /// registry entry keeps them without a copy of its own).
    pub fn shared_names(&self) -> (Arc<str>, Arc<str>) {
        (self.database.clone(), self.user.clone())
    }

    /// Session, transaction or statement pooling, as now configured. A
    /// session reads it when it takes a server.
    pub fn mode(&self) -> PoolMode {
        match self.mode.load(Ordering::Relaxed) {
            m if m == PoolMode::Transaction as u8 => PoolMode::Transaction,
            m if m == PoolMode::Statement as u8 => PoolMode::Statement,
            _ => PoolMode::Session,
        }
    }

    /// Takes a server, waiting first while the database is paused (PAUSE,
    /// KILL, SUSPEND), then at most `wait` for a server (`None`: the
    /// pool's `query_wait_timeout` as it was when the pool was made).
    pub async fn get(&self, wait: Option<Duration>) -> Result<Pooled<ServerManager>, wharf::Error> {
        self.get_for(false, wait).await
    }

    /// Like [`get`](Self::get), for a transaction that starts with a read
    /// when `read` is set: a server of the reads pool when read routing is
    /// on.
    // One layer of future over the engine's, not one per caller's choice:
    // a waiting client's future is boxed, and each layer of it copied the
    // one below with its arguments. Past 1 KiB, glibc's allocation of it
    // leaves its thread cache.
    pub async fn get_for(
        &self,
        read: bool,
        wait: Option<Duration>,
    ) -> Result<Pooled<ServerManager>, wharf::Error> {
        self.control.wait_resumed().await;
        let engine = match self.reads_engine() {
            Some(reads) if read => reads,
            _ => &self.engine,
        };
        match wait {
            Some(wait) => engine.get_timeout(wait).await,
            None => engine.get().await,
        }
    }

    /// A server that can be had at once, without waiting (see
    /// [`wharf::Pool::try_get`]): `None` while the database is paused or
    /// when none is idle and ready, and then [`get`](Self::get) waits.
    /// `read` as for [`get_for`](Self::get_for).
    pub fn try_get(&self, read: bool) -> Option<Pooled<ServerManager>> {
        if self.control.is_paused() {
            return None;
        }
        let engine = match self.reads_engine() {
            Some(reads) if read => reads,
            _ => &self.engine,
        };
        engine.try_get()
    }

    /// Wakes the clients in line for a server of this pool (of its reads
    /// pool too), without serving them: each looks again at how long it
    /// has waited, for `query_wait_notify`.
    pub fn wake_waiting_clients(&self) {
        self.engine.wake_long_waits(Duration::ZERO);
        if let Some(reads) = self.reads.get() {
            reads.wake_long_waits(Duration::ZERO);
        }
    }

    /// The reads pool, when read routing is on.
    fn reads_engine(&self) -> Option<&wharf::Pool<ServerManager>> {
        if !self.routing.load(Ordering::Relaxed) {
            return None;
        }
        self.reads.get()
    }

    /// Whether transactions that start with a read go to the reads pool:
    /// read routing is on and the pool is in transaction mode.
    pub fn routes_reads(&self) -> bool {
        self.mode() == PoolMode::Transaction && self.reads_engine().is_some()
    }

    /// The engines' figures: size, idle, in use, waiting, summed over the
    /// writes and reads pools; `max_size` is one pool's (each has it).
    pub fn status(&self) -> wharf::Status {
        let mut status = self.engine.status();
        if let Some(reads) = self.reads.get() {
            let more = reads.status();
            status.size += more.size;
            status.idle += more.idle;
            status.in_use += more.in_use;
            status.waiting += more.waiting;
        }
        status
    }

    /// The engine's counters and histograms.
    pub fn metrics(&self) -> wharf::Metrics {
        self.engine.metrics()
    }

    /// Connect failures in a row, and the last one.
    pub fn connect_failures(&self) -> (u32, Option<wharf::ConnectError>) {
        self.engine.connect_failures()
    }

    /// Closes up to `max` idle servers now; how many it closed.
    pub fn close_idle(&self, max: usize) -> usize {
        let closed = self.engine.close_idle(max);
        match self.reads.get() {
            Some(reads) if closed < max => closed + reads.close_idle(max - closed),
            _ => closed,
        }
    }

    /// Every server is closed when next released; idle ones now.
    pub fn retire_servers(&self) {
        for engine in std::iter::once(&self.engine).chain(self.reads.get()) {
            engine.manager().retire_all();
            engine.close_idle(usize::MAX);
        }
    }

    /// The query that resets a server's session state, if any.
    pub fn reset_query(&self) -> Option<&str> {
        self.reset_query.as_deref()
    }

    /// Whether servers are reset after every transaction, not only at
    /// session end.
    pub fn resets_always(&self) -> bool {
        self.reset_always
    }

    /// Whether the pool was made from the `*` entry.
    pub fn is_auto(&self) -> bool {
        self.auto
    }

    /// The pool's counters, held by every client of the pool for the
    /// whole session so the relay updates them without a lookup.
    pub fn stats(&self) -> &Arc<PoolStats> {
        &self.stats
    }

    /// PAUSE and DISABLE state of the pool's database.
    pub fn control(&self) -> &Arc<DbControl> {
        &self.control
    }

    /// The pool's clients' sets of tracked parameters.
    pub fn param_sets(&self) -> &ParamSets {
        &self.param_sets
    }

    /// Keeps the parameters the pool's first server reported at login
    /// for later welcomes, and greets the client that waited for it (as
    /// [`ServerPool::greeting`]).
    pub fn first_greeting(
        &self,
        server: &[(String, String)],
        client: &Params,
        keep: bool,
    ) -> Arc<Greeting> {
        self.welcomes
            .set_server_and_greet(server, client, keep, &self.param_sets)
    }

    /// The welcome of a client that logged in with the tracked parameters
    /// `client`, or `None` before any server has logged in. `keep`: whether
    /// later clients may log in with the same parameters (not when they
    /// carry the client's address).
    pub fn greeting(&self, client: &Params, keep: bool) -> Option<Arc<Greeting>> {
        self.welcomes.greeting(client, keep, &self.param_sets)
    }
}

/// The targets of the writes (or only) pool and, with read routing, of
/// the reads pool: writes need the primary (`read-write` unless the line
/// asks for `primary`), reads take a standby when one is up and within
/// `max_replica_lag`, else the primary.
fn routed_targets(routing: bool, target: ServerTarget) -> (ServerTarget, Option<ServerTarget>) {
    if !routing {
        return (target, None);
    }
    let reads = ServerTarget {
        attrs: SessionAttrs::PreferStandby,
        ..target.clone()
    };
    let mut writes = target;
    if writes.attrs == SessionAttrs::Any {
        writes.attrs = SessionAttrs::ReadWrite;
    }
    (writes, Some(reads))
}

/// One engine pool of servers for `target`, keeping `min_size` open.
fn build_engine(
    (name, min_size): (String, usize),
    shape: &PoolShape,
    target: ServerTarget,
    limits: Vec<Arc<ConnectionLimit>>,
    tracking: Tracking,
) -> Result<wharf::Pool<ServerManager>, wharf::ConfigError> {
    let (backoff, backoff_max) = login_retry_backoff(shape.login_retry);
    let connect_timeout = all_hosts_timeout(shape.connect_timeout, &target);
    let manager = ServerManager::new(target, limits, tracking);
    manager.set_host_timeout(shape.connect_timeout);
    let engine = wharf::Pool::builder(manager)
        .name(name)
        .max_size(shape.pool_size)
        // PgBouncer's min_pool_size counts servers in use too.
        .min_size(min_size)
        .reserve_size(shape.reserve_size)
        .reserve_timeout(shape.reserve_timeout)
        .acquire_timeout(shape.query_wait_timeout.unwrap_or(FOREVER))
        .connect_timeout(connect_timeout)
        .max_connecting(4)
        // PgBouncer's server_login_retry: while logins fail and the
        // pool has no server, clients are told at once, not queued.
        .fail_fast(true)
        .connect_backoff(backoff)
        .connect_backoff_max(backoff_max)
        .validate_after(shape.check_delay)
        .validation_timeout(shape.connect_timeout)
        .idle_timeout(shape.idle_timeout)
        .max_lifetime(shape.server_lifetime)
        .build()?;
    for limit in engine.manager().limits() {
        limit.watch(&engine);
    }
    Ok(engine)
}

/// How long one new server may take: each host gets
/// `server_connect_timeout`, and a pool that checks roles one more for
/// its queries.
fn all_hosts_timeout(per_host: Duration, target: &ServerTarget) -> Duration {
    let tries = target.hosts.len().max(1) + usize::from(target.attrs.checks_role());
    per_host.saturating_mul(u32::try_from(tries).unwrap_or(u32::MAX))
}

/// The engine's connect backoff for PgBouncer's `server_login_retry`: the
/// first retry soon (100 ms at most), later ones spread up to it.
fn login_retry_backoff(server_login_retry: Duration) -> (Duration, Duration) {
    (
        Duration::from_millis(100).min(server_login_retry),
        server_login_retry.max(Duration::from_millis(1)),
    )
}

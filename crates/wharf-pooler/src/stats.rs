//! Statistics and the connection registry behind the admin console's
//! `SHOW` commands.
//!
//! Counters are per pool ([`PoolStats`]), plain atomics that the client
//! relay updates through an `Arc` it holds for the whole session, so the
//! hot path takes no lock. Latencies also go into lock-free
//! [`wharf::AtomicHistogram`]s, for exporters that want quantiles.
//!
//! The registry ([`Stats`]) lists every logged-in client and every open
//! server connection. Entries are added at login or connect and removed
//! by a guard on drop (a lock taken twice per connection, never per
//! query); their state is an atomic the relay sets as it links and
//! releases servers.
//!
//! Averages (`avg_*` in `SHOW STATS`) are computed every `stats_period`
//! by [`run_averages`], as PgBouncer does: rates per second over the last
//! period, and mean times per transaction, query or server assignment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atomic_waker::AtomicWaker;
use parking_lot::{Mutex, RwLock};
use wharf::AtomicHistogram;

use crate::backend::ServerTarget;

/// What a pool's server manager needs to register its servers and honour
/// PAUSE.
#[derive(Debug, Clone)]
pub struct Tracking {
    /// The registry servers are listed in.
    pub registry: Arc<Stats>,
    /// The pool's counters.
    pub pool: Arc<PoolStats>,
    /// The pool's database's PAUSE/DISABLE state.
    pub control: Arc<crate::router::DbControl>,
}

/// Cumulative counters of one pool (a database and user pair), as in
/// PgBouncer's `SHOW STATS`, plus latency histograms.
///
/// Every field is updated with relaxed atomic adds; read them with
/// [`PoolStats::totals`] for a consistent-enough copy.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// The database name clients asked for.
    pub database: String,
    /// The user the pool's servers log in as.
    pub user: String,
    /// Times a server was assigned to a client.
    pub server_assignments: AtomicU64,
    /// Transactions completed (an autocommit statement counts as one).
    pub xacts: AtomicU64,
    /// Queries completed (one per ReadyForQuery relayed to a client).
    pub queries: AtomicU64,
    /// Bytes received from clients and passed on to servers.
    pub received: AtomicU64,
    /// Bytes from servers sent to clients.
    pub sent: AtomicU64,
    /// Microseconds spent in transactions.
    pub xact_time_us: AtomicU64,
    /// Microseconds spent running queries.
    pub query_time_us: AtomicU64,
    /// Microseconds clients waited for a server.
    pub wait_time_us: AtomicU64,
    /// Parse messages from clients.
    pub client_parses: AtomicU64,
    /// Parse messages sent to servers (every client Parse: wharf does not
    /// rewrite prepared statements).
    pub server_parses: AtomicU64,
    /// Bind messages from clients.
    pub binds: AtomicU64,
    /// Successful client logins.
    pub client_logins: AtomicU64,
    /// Cancel requests waiting for their connection to the server
    /// (`cl_waiting_cancel_req`).
    pub cancels_waiting: AtomicU64,
    /// Cancel requests sent to the server, waiting for it to take them
    /// (`cl_active_cancel_req`; each holds one connection to the server,
    /// `sv_active_cancel`).
    pub cancels_active: AtomicU64,
    /// How long clients waited for a server, one sample per assignment.
    pub wait_time: AtomicHistogram,
    /// How long transactions took.
    pub xact_time: AtomicHistogram,
    /// How long queries took.
    pub query_time: AtomicHistogram,
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl PoolStats {
    /// Empty counters for the pool of `database` and `user`.
    pub fn new(database: &str, user: &str) -> Self {
        Self {
            database: database.to_owned(),
            user: user.to_owned(),
            ..Self::default()
        }
    }

    /// A server was assigned after the client waited `wait`.
    pub fn assigned(&self, wait: Duration) {
        self.server_assignments.fetch_add(1, Ordering::Relaxed);
        self.wait_time_us.fetch_add(micros(wait), Ordering::Relaxed);
        self.wait_time.record(wait);
    }

    /// A query ended after `took` (`None` when its start was not seen, as
    /// for the second of two pipelined queries).
    pub fn query_done(&self, took: Option<Duration>) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(took) = took {
            self.query_time_us
                .fetch_add(micros(took), Ordering::Relaxed);
            self.query_time.record(took);
        }
    }

    /// A transaction ended after `took`.
    pub fn xact_done(&self, took: Option<Duration>) {
        self.xacts.fetch_add(1, Ordering::Relaxed);
        if let Some(took) = took {
            self.xact_time_us.fetch_add(micros(took), Ordering::Relaxed);
            self.xact_time.record(took);
        }
    }

    /// Counts a client message by its tag (Parse and Bind).
    pub fn client_message(&self, tag: u8) {
        match tag {
            b'P' => {
                self.client_parses.fetch_add(1, Ordering::Relaxed);
                self.server_parses.fetch_add(1, Ordering::Relaxed);
            }
            b'B' => {
                self.binds.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// A copy of the counters.
    pub fn totals(&self) -> Totals {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            server_assignment_count: get(&self.server_assignments),
            xact_count: get(&self.xacts),
            query_count: get(&self.queries),
            received: get(&self.received),
            sent: get(&self.sent),
            xact_time: get(&self.xact_time_us),
            query_time: get(&self.query_time_us),
            wait_time: get(&self.wait_time_us),
            client_parse_count: get(&self.client_parses),
            server_parse_count: get(&self.server_parses),
            bind_count: get(&self.binds),
            client_login_count: get(&self.client_logins),
        }
    }
}

/// Counter values, summed over pools or taken as a difference between two
/// moments. Times are in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Server assignments.
    pub server_assignment_count: u64,
    /// Transactions.
    pub xact_count: u64,
    /// Queries.
    pub query_count: u64,
    /// Bytes from clients.
    pub received: u64,
    /// Bytes to clients.
    pub sent: u64,
    /// Time in transactions, µs.
    pub xact_time: u64,
    /// Time in queries, µs.
    pub query_time: u64,
    /// Time waiting for servers, µs.
    pub wait_time: u64,
    /// Client Parse messages.
    pub client_parse_count: u64,
    /// Parse messages sent to servers.
    pub server_parse_count: u64,
    /// Bind messages.
    pub bind_count: u64,
    /// Client logins.
    pub client_login_count: u64,
}

impl Totals {
    fn zip(self, other: Totals, f: impl Fn(u64, u64) -> u64) -> Totals {
        Totals {
            server_assignment_count: f(self.server_assignment_count, other.server_assignment_count),
            xact_count: f(self.xact_count, other.xact_count),
            query_count: f(self.query_count, other.query_count),
            received: f(self.received, other.received),
            sent: f(self.sent, other.sent),
            xact_time: f(self.xact_time, other.xact_time),
            query_time: f(self.query_time, other.query_time),
            wait_time: f(self.wait_time, other.wait_time),
            client_parse_count: f(self.client_parse_count, other.client_parse_count),
            server_parse_count: f(self.server_parse_count, other.server_parse_count),
            bind_count: f(self.bind_count, other.bind_count),
            client_login_count: f(self.client_login_count, other.client_login_count),
        }
    }

    /// The sum of two sets of counters.
    pub fn plus(self, other: Totals) -> Totals {
        self.zip(other, u64::saturating_add)
    }

    /// What was counted since `earlier`.
    pub fn since(self, earlier: Totals) -> Totals {
        self.zip(earlier, u64::saturating_sub)
    }

    /// PgBouncer's averages over a period of `secs` seconds in which these
    /// were counted: rates per second, and mean durations.
    pub fn averages(self, secs: f64) -> Totals {
        let rate = |n: u64| {
            if secs > 0.0 {
                (n as f64 / secs).round() as u64
            } else {
                0
            }
        };
        let mean = |sum: u64, n: u64| sum.checked_div(n).unwrap_or(0);
        Totals {
            server_assignment_count: rate(self.server_assignment_count),
            xact_count: rate(self.xact_count),
            query_count: rate(self.query_count),
            received: rate(self.received),
            sent: rate(self.sent),
            xact_time: mean(self.xact_time, self.xact_count),
            query_time: mean(self.query_time, self.query_count),
            wait_time: mean(self.wait_time, self.server_assignment_count),
            client_parse_count: rate(self.client_parse_count),
            server_parse_count: rate(self.server_parse_count),
            bind_count: rate(self.bind_count),
            client_login_count: rate(self.client_login_count),
        }
    }

    /// `(name suffix, value)` in `SHOW STATS` column order.
    pub fn fields(&self) -> [(&'static str, u64); 12] {
        [
            ("server_assignment_count", self.server_assignment_count),
            ("xact_count", self.xact_count),
            ("query_count", self.query_count),
            ("received", self.received),
            ("sent", self.sent),
            ("xact_time", self.xact_time),
            ("query_time", self.query_time),
            ("wait_time", self.wait_time),
            ("client_parse_count", self.client_parse_count),
            ("server_parse_count", self.server_parse_count),
            ("bind_count", self.bind_count),
            ("client_login_count", self.client_login_count),
        ]
    }
}

/// What a client connection is doing, for `SHOW CLIENTS` and `SHOW POOLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, no server, nothing to run.
    Idle = 0,
    /// Linked to a server.
    Active = 1,
    /// Has a query and waits for a server (or for `RESUME`).
    Waiting = 2,
}

impl ClientState {
    fn from_u8(n: u8) -> Self {
        match n {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }

    /// The name `SHOW CLIENTS` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }
}

/// What a server connection is doing, for `SHOW SERVERS` and `SHOW POOLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// Connecting or logging in.
    Login = 0,
    /// In the pool, ready.
    Idle = 1,
    /// Linked to a client.
    Active = 2,
    /// Running the pool's check query.
    Tested = 3,
    /// Released by its client, held back until the cancel requests on
    /// their way to it have landed.
    BeingCanceled = 4,
}

impl ServerState {
    fn from_u8(n: u8) -> Self {
        match n {
            1 => ServerState::Idle,
            2 => ServerState::Active,
            3 => ServerState::Tested,
            4 => ServerState::BeingCanceled,
            _ => ServerState::Login,
        }
    }
}

/// When something happened, as microseconds since the Unix epoch (0 for
/// never), so it fits an atomic.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(micros)
        .unwrap_or(0)
}

/// Why the admin console disconnected a client: the error it is told, as
/// PgBouncer words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// KILL_CLIENT.
    AdminForced = 0,
    /// KILL of its database.
    DatabaseKilled = 1,
}

impl KillReason {
    /// The message sent to the client.
    pub fn message(self) -> &'static str {
        match self {
            KillReason::AdminForced => "admin forced disconnect",
            KillReason::DatabaseKilled => "database removed",
        }
    }
}

/// A logged-in client, as the registry lists it.
#[derive(Debug)]
pub struct ClientEntry {
    /// Who and where it is, fixed for the session.
    pub info: ClientInfo,
    /// When it connected, µs since the epoch.
    pub connect_time: u64,
    request_time: AtomicU64,
    state: AtomicU8,
    /// When it started waiting, µs since the epoch.
    wait_since: AtomicU64,
    link: AtomicU64,
    application_name: Mutex<String>,
    killed: AtomicBool,
    kill_reason: AtomicU8,
    /// Wakes the session to look at its kill flag and the pooler's
    /// lifecycle again.
    attention: AtomicWaker,
}

impl ClientEntry {
    /// What it is doing.
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Waits for a server from now on.
    pub fn set_waiting(&self) {
        let now = now_us();
        self.wait_since.store(now, Ordering::Relaxed);
        self.request_time.store(now, Ordering::Relaxed);
        self.state
            .store(ClientState::Waiting as u8, Ordering::Relaxed);
    }

    /// Linked to server `server` (a registry id).
    pub fn set_active(&self, server: u64) {
        self.link.store(server, Ordering::Relaxed);
        self.state
            .store(ClientState::Active as u8, Ordering::Relaxed);
    }

    /// Without a server again.
    pub fn set_idle(&self) {
        self.link.store(0, Ordering::Relaxed);
        self.state.store(ClientState::Idle as u8, Ordering::Relaxed);
    }

    /// How long it has been waiting, if it is.
    pub fn waiting_for(&self) -> Option<Duration> {
        (self.state() == ClientState::Waiting).then(|| {
            let since = self.wait_since.load(Ordering::Relaxed);
            Duration::from_micros(now_us().saturating_sub(since))
        })
    }

    /// The linked server's registry id, 0 for none.
    pub fn link(&self) -> u64 {
        self.link.load(Ordering::Relaxed)
    }

    /// When it last asked for a server, µs since the epoch.
    pub fn request_time(&self) -> u64 {
        self.request_time.load(Ordering::Relaxed)
    }

    /// Records a request now (`request_time`).
    pub fn touch(&self) {
        self.request_time.store(now_us(), Ordering::Relaxed);
    }

    /// Its `application_name`.
    pub fn application_name(&self) -> String {
        self.application_name.lock().clone()
    }

    /// Records a new `application_name`.
    pub fn set_application_name(&self, name: &str) {
        let mut current = self.application_name.lock();
        if *current != name {
            *current = name.to_owned();
        }
    }

    /// Asks the client's task to disconnect it, telling the client
    /// `reason` (`KILL`, `KILL_CLIENT`).
    pub fn kill(&self, reason: KillReason) {
        self.kill_reason.store(reason as u8, Ordering::SeqCst);
        self.killed.store(true, Ordering::SeqCst);
        self.attention.wake();
    }

    /// Why the client was killed, once it was.
    pub fn kill_reason(&self) -> KillReason {
        match self.kill_reason.load(Ordering::SeqCst) {
            r if r == KillReason::DatabaseKilled as u8 => KillReason::DatabaseKilled,
            _ => KillReason::AdminForced,
        }
    }

    /// Wakes the client's session to re-read the pooler's lifecycle phase
    /// (a shutdown started or became more drastic).
    pub fn nudge(&self) {
        self.attention.wake();
    }

    /// Resolves once `done()` holds, re-checking it whenever the session is
    /// killed or nudged. Only the client's own task waits on an entry, so
    /// one waker slot serves every such wait, and registering the same
    /// waker again (on each of the relay's events) is a couple of atomic
    /// operations, with no lock.
    pub fn attention_until<'a>(
        &'a self,
        done: impl Fn() -> bool + Send + 'a,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        std::future::poll_fn(move |cx| {
            // Registered before the check, so a wake in between is not lost.
            self.attention.register(cx.waker());
            if done() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// Completes once [`kill`](Self::kill) has been called.
    pub async fn killed(&self) {
        self.attention_until(|| self.killed.load(Ordering::SeqCst))
            .await
    }
}

/// A server connection, as the registry lists it.
#[derive(Debug)]
pub struct ServerEntry {
    /// Unique id (`SHOW SERVERS` `id`).
    pub id: u64,
    /// The pool's counters (and its database and user).
    pub pool: Arc<PoolStats>,
    /// The server's address and port (`unix socket path`, port).
    pub addr: (String, u16),
    /// When the connection was opened, µs since the epoch.
    pub connect_time: u64,
    /// What the connection was opened with.
    target: Arc<ServerTarget>,
    /// The pool's target now: when it is no longer `target` (RELOAD,
    /// RECONNECT, PAUSE, KILL swap it), the server closes when released.
    current: Arc<RwLock<Arc<ServerTarget>>>,
    local_addr: Mutex<(String, u16)>,
    remote_pid: AtomicI32,
    request_time: AtomicU64,
    /// When it last went idle (monotonic, µs since the registry started).
    idle_since: AtomicU64,
    state: AtomicU8,
    link: AtomicU64,
}

impl ServerEntry {
    /// What it is doing.
    pub fn state(&self) -> ServerState {
        ServerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Logged in: records its backend pid and local address.
    pub fn logged_in(&self, pid: i32, local: Option<(String, u16)>) {
        self.remote_pid.store(pid, Ordering::Relaxed);
        if let Some(local) = local {
            *self.local_addr.lock() = local;
        }
    }

    /// Sets its state; `epoch` is the registry's start, for idle times.
    fn set_state(&self, state: ServerState, started: Instant) {
        if state == ServerState::Idle {
            self.idle_since
                .store(micros(started.elapsed()), Ordering::Relaxed);
        }
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Linked to client `client`.
    pub fn set_active(&self, client: u64) {
        self.link.store(client, Ordering::Relaxed);
        self.request_time.store(now_us(), Ordering::Relaxed);
        self.state
            .store(ServerState::Active as u8, Ordering::Relaxed);
    }

    /// The linked client's id, 0 for none.
    pub fn link(&self) -> u64 {
        self.link.load(Ordering::Relaxed)
    }

    /// Whether it will be closed when released.
    pub fn close_needed(&self) -> bool {
        !Arc::ptr_eq(&self.target, &self.current.read())
    }

    /// The backend's process id.
    pub fn remote_pid(&self) -> i32 {
        self.remote_pid.load(Ordering::Relaxed)
    }

    /// The pooler's end of the connection.
    pub fn local_addr(&self) -> (String, u16) {
        self.local_addr.lock().clone()
    }

    /// When it was last linked to a client, µs since the epoch.
    pub fn request_time(&self) -> u64 {
        self.request_time.load(Ordering::Relaxed)
    }
}

/// Removes a client from the registry when its session ends.
#[derive(Debug)]
pub struct ClientGuard {
    stats: Arc<Stats>,
    /// The registered entry.
    pub entry: Arc<ClientEntry>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.stats.clients.lock().remove(&self.entry.info.id);
    }
}

/// Removes a server from the registry when its connection is dropped.
#[derive(Debug)]
pub struct ServerGuard {
    stats: Arc<Stats>,
    /// The registered entry.
    pub entry: Arc<ServerEntry>,
}

impl ServerGuard {
    /// Back in the pool.
    pub fn set_idle(&self) {
        self.entry.link.store(0, Ordering::Relaxed);
        self.entry.set_state(ServerState::Idle, self.stats.started);
    }

    /// Running the pool's check query.
    pub fn set_tested(&self) {
        self.entry
            .set_state(ServerState::Tested, self.stats.started);
    }

    /// Held back until the cancels on their way to it land.
    pub fn set_being_canceled(&self) {
        self.entry.link.store(0, Ordering::Relaxed);
        self.entry
            .set_state(ServerState::BeingCanceled, self.stats.started);
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.stats.servers.lock().remove(&self.entry.id);
    }
}

/// Who and where a client is: what its registry entry starts from.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Session id (becomes the entry's id).
    pub id: u64,
    /// Login user.
    pub user: String,
    /// Database asked for.
    pub database: String,
    /// The pool's user.
    pub pool_user: String,
    /// Peer address and port.
    pub addr: (String, u16),
    /// Local address and port.
    pub local_addr: (String, u16),
    /// Peer process id when known, else 0.
    pub remote_pid: u32,
    /// Admin console session.
    pub admin: bool,
}

/// Per-database averages over the last `stats_period`.
#[derive(Debug, Clone, Default)]
struct Averages {
    /// Totals at the last tick, per database.
    last: HashMap<String, Totals>,
    /// When the last tick was.
    at: Option<Instant>,
    /// The averages computed at the last tick.
    current: HashMap<String, Totals>,
}

/// The pooler's statistics: every pool's counters, the registry of
/// clients and servers, and the periodic averages.
#[derive(Debug)]
pub struct Stats {
    pools: Mutex<HashMap<(String, String), Arc<PoolStats>>>,
    clients: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    servers: Mutex<HashMap<u64, Arc<ServerEntry>>>,
    averages: Mutex<Averages>,
    next_server: AtomicU64,
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            pools: Mutex::default(),
            clients: Mutex::default(),
            servers: Mutex::default(),
            averages: Mutex::default(),
            next_server: AtomicU64::new(1),
            started: Instant::now(),
        }
    }
}

impl Stats {
    /// The counters of pool (`database`, `user`), made on first use and
    /// kept for the life of the process (figures are since start, as in
    /// PgBouncer, even if the pool itself is rebuilt by a reload).
    pub fn pool(&self, database: &str, user: &str) -> Arc<PoolStats> {
        self.pools
            .lock()
            .entry((database.to_owned(), user.to_owned()))
            .or_insert_with(|| Arc::new(PoolStats::new(database, user)))
            .clone()
    }

    /// Every pool's counters, sorted by database then user.
    pub fn pools(&self) -> Vec<Arc<PoolStats>> {
        let mut pools: Vec<_> = self.pools.lock().values().cloned().collect();
        pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        pools
    }

    /// Totals per database, sorted by name.
    pub fn database_totals(&self) -> Vec<(String, Totals)> {
        let mut by_db: Vec<(String, Totals)> = Vec::new();
        for pool in self.pools() {
            let totals = pool.totals();
            match by_db.iter_mut().find(|(db, _)| *db == pool.database) {
                Some((_, sum)) => *sum = sum.plus(totals),
                None => by_db.push((pool.database.clone(), totals)),
            }
        }
        by_db
    }

    /// The averages per database computed at the last `stats_period` tick
    /// (zero before the first).
    pub fn database_averages(&self, database: &str) -> Totals {
        self.averages
            .lock()
            .current
            .get(database)
            .copied()
            .unwrap_or_default()
    }

    /// Totals over every database.
    pub fn overall_totals(&self) -> Totals {
        self.database_totals()
            .into_iter()
            .fold(Totals::default(), |sum, (_, t)| sum.plus(t))
    }

    /// Averages over every database at the last tick.
    pub fn overall_averages(&self) -> Totals {
        self.averages
            .lock()
            .current
            .values()
            .fold(Totals::default(), |sum, t| sum.plus(*t))
    }

    /// Computes the averages of the period since the last call (called
    /// every `stats_period` by [`run_averages`]); returns the overall
    /// rates of the period, for the log.
    pub fn tick(&self) -> Totals {
        let now = Instant::now();
        let totals = self.database_totals();
        let mut averages = self.averages.lock();
        let secs = averages
            .at
            .map(|at| now.duration_since(at).as_secs_f64())
            .unwrap_or(0.0);
        let mut overall = Totals::default();
        let mut current = HashMap::new();
        for (db, total) in &totals {
            let before = averages.last.get(db).copied().unwrap_or_default();
            let delta = total.since(before);
            overall = overall.plus(delta);
            current.insert(db.clone(), delta.averages(secs));
        }
        averages.current = current;
        averages.last = totals.into_iter().collect();
        averages.at = Some(now);
        overall.averages(secs)
    }

    /// Registers a logged-in client.
    pub fn register_client(
        self: &Arc<Self>,
        info: ClientInfo,
        application_name: String,
    ) -> ClientGuard {
        let now = now_us();
        let entry = Arc::new(ClientEntry {
            info,
            connect_time: now,
            request_time: AtomicU64::new(now),
            state: AtomicU8::new(ClientState::Idle as u8),
            wait_since: AtomicU64::new(0),
            link: AtomicU64::new(0),
            application_name: Mutex::new(application_name),
            killed: AtomicBool::new(false),
            kill_reason: AtomicU8::new(KillReason::AdminForced as u8),
            attention: AtomicWaker::new(),
        });
        self.clients.lock().insert(entry.info.id, entry.clone());
        ClientGuard {
            stats: self.clone(),
            entry,
        }
    }

    /// Registers a server connection that is starting to log in.
    pub fn register_server(
        self: &Arc<Self>,
        pool: Arc<PoolStats>,
        addr: (String, u16),
        target: Arc<ServerTarget>,
        current: Arc<RwLock<Arc<ServerTarget>>>,
    ) -> ServerGuard {
        let entry = Arc::new(ServerEntry {
            id: self.next_server.fetch_add(1, Ordering::Relaxed),
            pool,
            addr,
            connect_time: now_us(),
            target,
            current,
            local_addr: Mutex::new((String::new(), 0)),
            remote_pid: AtomicI32::new(0),
            request_time: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            state: AtomicU8::new(ServerState::Login as u8),
            link: AtomicU64::new(0),
        });
        self.servers.lock().insert(entry.id, entry.clone());
        ServerGuard {
            stats: self.clone(),
            entry,
        }
    }

    /// Every logged-in client, by id.
    pub fn clients(&self) -> Vec<Arc<ClientEntry>> {
        let mut clients: Vec<_> = self.clients.lock().values().cloned().collect();
        clients.sort_by_key(|c| c.info.id);
        clients
    }

    /// The client with this id.
    pub fn client(&self, id: u64) -> Option<Arc<ClientEntry>> {
        self.clients.lock().get(&id).cloned()
    }

    /// Every server connection, by id.
    pub fn servers(&self) -> Vec<Arc<ServerEntry>> {
        let mut servers: Vec<_> = self.servers.lock().values().cloned().collect();
        servers.sort_by_key(|s| s.id);
        servers
    }

    /// How long since the pooler started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// How long a server has been idle.
    pub fn idle_for(&self, server: &ServerEntry) -> Duration {
        let since = server.idle_since.load(Ordering::Relaxed);
        self.started
            .elapsed()
            .saturating_sub(Duration::from_micros(since))
    }
}

/// Computes the averages every `period()` until the pooler is gone (the
/// `Weak` no longer upgrades), logging them when `log()` says so, as
/// PgBouncer's `log_stats` does. `settings` is read at every tick, so a
/// changed `stats_period` applies from the next one.
pub async fn run_averages(
    stats: Weak<Stats>,
    settings: impl Fn() -> Option<(Duration, bool)> + Send + 'static,
) {
    if let Some(stats) = stats.upgrade() {
        stats.tick();
    }
    loop {
        let Some((period, log)) = settings() else {
            return;
        };
        tokio::time::sleep(period.max(Duration::from_secs(1))).await;
        let Some(stats) = stats.upgrade() else {
            return;
        };
        let rates = stats.tick();
        if log {
            tracing::info!(
                "stats: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, {} binds/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
                rates.xact_count,
                rates.query_count,
                rates.client_parse_count,
                rates.server_parse_count,
                rates.bind_count,
                rates.received,
                rates.sent,
                rates.xact_time,
                rates.query_time,
                rates.wait_time,
            );
        }
    }
}

/// Formats µs since the epoch as PgBouncer prints times
/// (`2024-05-01 10:20:30 UTC`).
pub fn format_time(us: u64) -> String {
    let secs = us / 1_000_000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Turns days since 1970-01-01 into a proleptic Gregorian `(year, month,
/// day)`.
///
/// Howard Hinnant's algorithm: it counts 400-year eras from 0000-03-01, so
/// that leap days fall at the end of a year.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn times_format_like_pgbouncer() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            format_time(1_714_558_830 * 1_000_000),
            "2024-05-01 10:20:30 UTC"
        );
        assert_eq!(
            format_time(951_782_400 * 1_000_000),
            "2000-02-29 00:00:00 UTC"
        );
    }

    #[test]
    fn averages_are_rates_and_means() {
        let delta = Totals {
            xact_count: 20,
            xact_time: 2000,
            query_count: 40,
            query_time: 1000,
            server_assignment_count: 10,
            wait_time: 500,
            received: 1000,
            ..Totals::default()
        };
        let avg = delta.averages(10.0);
        assert_eq!(avg.xact_count, 2);
        assert_eq!(avg.query_count, 4);
        assert_eq!(avg.xact_time, 100);
        assert_eq!(avg.query_time, 25);
        assert_eq!(avg.wait_time, 50);
        assert_eq!(avg.received, 100);
        assert_eq!(Totals::default().averages(10.0), Totals::default());
    }

    #[test]
    fn registry_entries_leave_with_their_guards() {
        let stats = Arc::new(Stats::default());
        let pool = stats.pool("db", "u");
        let target = Arc::new(ServerTarget {
            addr: crate::backend::ServerAddr::new(Some("h"), 1),
            database: "db".into(),
            user: "u".into(),
            password: None,
            startup_params: Vec::new(),
            connect_query: None,
            check_query: None,
        });
        let current = Arc::new(RwLock::new(target.clone()));
        let server = stats.register_server(pool.clone(), ("h".into(), 1), target, current.clone());
        assert!(!stats.servers()[0].close_needed());
        let fresh = Arc::new(ServerTarget::clone(&current.read()));
        *current.write() = fresh;
        assert!(stats.servers()[0].close_needed());
        let info = ClientInfo {
            id: 7,
            user: "u".into(),
            database: "db".into(),
            pool_user: "u".into(),
            addr: ("a".into(), 1),
            local_addr: ("b".into(), 2),
            remote_pid: 0,
            admin: false,
        };
        let client = stats.register_client(info, String::new());
        assert_eq!(stats.servers().len(), 1);
        assert_eq!(stats.client(7).map(|c| c.info.id), Some(7));
        drop((server, client));
        assert!(stats.servers().is_empty());
        assert!(stats.clients().is_empty());
        assert!(Arc::ptr_eq(&pool, &stats.pool("db", "u")));
    }
}

//! The registry of every logged-in client and open server connection, as
//! `SHOW CLIENTS`, `SHOW SERVERS` and `SHOW POOLS` list them. Entries are
//! added at login or connect and removed by a guard on drop (a lock taken
//! twice per connection, never per query); their state is an atomic the
//! relay sets as it links and releases servers.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;

use super::{now_us, Moment, PoolStats, Stats};
use crate::net::Peer;
use crate::proto::Replication;

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

/// A pool's generation of servers: RELOAD with a new target, RECONNECT,
/// PAUSE and KILL start a new one, and servers of an older one are closed
/// when released (PgBouncer's `close_needed`). One atomic load tells.
#[derive(Debug, Default)]
pub struct Generation(AtomicU64);

impl Generation {
    /// The generation now.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Starts a new generation: every server opened before is retired.
    pub fn advance(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
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
    /// When it last asked for a server, a [`Moment`]'s microseconds.
    request_time: AtomicU64,
    state: AtomicU8,
    /// When it started waiting, a [`Moment`]'s microseconds.
    wait_since: AtomicU64,
    link: AtomicU64,
    application_name: Mutex<String>,
    killed: AtomicBool,
    kill_reason: AtomicU8,
    /// Wakes the session to look at its kill flag and the pooler's
    /// lifecycle again.
    attention: AtomicWaker,
    /// Its prepared statement names (`SHOW CLIENTS` prepared_statements).
    prepared: AtomicU32,
}

impl ClientEntry {
    /// Its prepared statement names.
    pub fn prepared(&self) -> u32 {
        self.prepared.load(Ordering::Relaxed)
    }

    /// Records how many prepared statement names it has.
    pub fn set_prepared(&self, n: usize) {
        self.prepared
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// What it is doing.
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Waits for a server from `since` on.
    pub fn set_waiting(&self, since: Moment) {
        let since = since.as_micros();
        self.wait_since.store(since, Ordering::Relaxed);
        self.request_time.store(since, Ordering::Relaxed);
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
        (self.state() == ClientState::Waiting).then(|| age(&self.wait_since))
    }

    /// The linked server's registry id, 0 for none.
    pub fn link(&self) -> u64 {
        self.link.load(Ordering::Relaxed)
    }

    /// When it last asked for a server, µs since the epoch.
    pub fn request_time(&self) -> u64 {
        wall_micros(&self.request_time)
    }

    /// How long ago it last asked for a server.
    pub fn since_request(&self) -> Duration {
        age(&self.request_time)
    }

    /// Records a request made at `at` (`request_time`).
    pub fn touch(&self, at: Moment) {
        self.request_time.store(at.as_micros(), Ordering::Relaxed);
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
    /// The pool's generation the connection was opened in.
    born: u64,
    /// The pool's generation now: once it has moved on (RELOAD with a new
    /// target, RECONNECT, PAUSE, KILL), the server closes when released.
    generation: Arc<Generation>,
    local_addr: Mutex<(String, u16)>,
    /// The TLS protocol and cipher, empty for plain text.
    tls: Mutex<String>,
    remote_pid: AtomicI32,
    /// When it was last linked to a client, a [`Moment`]'s microseconds
    /// (0 for never).
    request_time: AtomicU64,
    /// When it last went idle, a [`Moment`]'s microseconds.
    idle_since: AtomicU64,
    state: AtomicU8,
    link: AtomicU64,
    /// Statements prepared on it (`SHOW SERVERS` prepared_statements).
    prepared: AtomicU32,
    /// Made over into a replication connection for one client.
    replication: Mutex<Replication>,
}

impl ServerEntry {
    /// Whether it is a replication connection, and which kind.
    pub fn replication(&self) -> Replication {
        *self.replication.lock()
    }

    /// Records that it became a replication connection.
    pub fn set_replication(&self, replication: Replication) {
        *self.replication.lock() = replication;
    }

    /// Statements prepared on it.
    pub fn prepared(&self) -> u32 {
        self.prepared.load(Ordering::Relaxed)
    }

    /// Records how many statements are prepared on it.
    pub fn set_prepared(&self, n: usize) {
        self.prepared
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// What it is doing.
    pub fn state(&self) -> ServerState {
        ServerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Logged in: records its backend pid, local address and TLS.
    pub fn logged_in(&self, pid: i32, local: Option<(String, u16)>, tls: String) {
        self.remote_pid.store(pid, Ordering::Relaxed);
        if let Some(local) = local {
            *self.local_addr.lock() = local;
        }
        *self.tls.lock() = tls;
    }

    /// The TLS protocol and cipher (`SHOW SERVERS` tls), empty for plain
    /// text.
    pub fn tls(&self) -> String {
        self.tls.lock().clone()
    }

    /// Sets its state.
    fn set_state(&self, state: ServerState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Linked to client `client` at `at`.
    pub fn set_active(&self, client: u64, at: Moment) {
        self.link.store(client, Ordering::Relaxed);
        self.request_time.store(at.as_micros(), Ordering::Relaxed);
        self.state
            .store(ServerState::Active as u8, Ordering::Relaxed);
    }

    /// The linked client's id, 0 for none.
    pub fn link(&self) -> u64 {
        self.link.load(Ordering::Relaxed)
    }

    /// Whether it will be closed when released.
    pub fn close_needed(&self) -> bool {
        self.born != self.generation.current()
    }

    /// The backend's process id.
    pub fn remote_pid(&self) -> i32 {
        self.remote_pid.load(Ordering::Relaxed)
    }

    /// The pooler's end of the connection.
    pub fn local_addr(&self) -> (String, u16) {
        self.local_addr.lock().clone()
    }

    /// When it was last linked to a client, µs since the epoch (0 for
    /// never).
    pub fn request_time(&self) -> u64 {
        wall_micros(&self.request_time)
    }

    /// How long it has been idle (since it last went idle, whatever it
    /// does now).
    pub fn idle_for(&self) -> Duration {
        age(&self.idle_since)
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
    /// Back in the pool since `at`.
    pub fn set_idle(&self, at: Moment) {
        self.entry.link.store(0, Ordering::Relaxed);
        self.entry
            .idle_since
            .store(at.as_micros(), Ordering::Relaxed);
        self.entry.set_state(ServerState::Idle);
    }

    /// Running the pool's check query.
    pub fn set_tested(&self) {
        self.entry.set_state(ServerState::Tested);
    }

    /// Held back until the cancels on their way to it land.
    pub fn set_being_canceled(&self) {
        self.entry.link.store(0, Ordering::Relaxed);
        self.entry.set_state(ServerState::BeingCanceled);
    }
}

/// How long ago a time kept as a [`Moment`]'s microseconds was.
fn age(kept: &AtomicU64) -> Duration {
    Moment::now().since(Moment::from_micros(kept.load(Ordering::Relaxed)))
}

/// A time kept as a [`Moment`]'s microseconds, as µs since the epoch (0
/// stays 0, for never).
fn wall_micros(kept: &AtomicU64) -> u64 {
    match kept.load(Ordering::Relaxed) {
        0 => 0,
        micros => Moment::from_micros(micros).wall_micros(),
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
    pub user: Arc<str>,
    /// Database asked for.
    pub database: Arc<str>,
    /// The pool's user.
    pub pool_user: Arc<str>,
    /// Where the client connects from.
    pub addr: Peer,
    /// The pooler's end of the connection, when the socket tells.
    pub local_addr: Option<Peer>,
    /// The TLS protocol and cipher, empty for plain text.
    pub tls: String,
    /// Peer process id when known, else 0.
    pub remote_pid: u32,
    /// Admin console session.
    pub admin: bool,
    /// Whether it is a replication connection, and which kind.
    pub replication: Replication,
}

impl Stats {
    pub fn register_client(
        self: &Arc<Self>,
        info: ClientInfo,
        application_name: String,
    ) -> ClientGuard {
        let entry = Arc::new(ClientEntry {
            info,
            connect_time: now_us(),
            request_time: AtomicU64::new(Moment::now().as_micros()),
            state: AtomicU8::new(ClientState::Idle as u8),
            wait_since: AtomicU64::new(0),
            link: AtomicU64::new(0),
            application_name: Mutex::new(application_name),
            killed: AtomicBool::new(false),
            kill_reason: AtomicU8::new(KillReason::AdminForced as u8),
            attention: AtomicWaker::new(),
            prepared: AtomicU32::new(0),
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
        generation: (Arc<Generation>, u64),
    ) -> ServerGuard {
        let entry = Arc::new(ServerEntry {
            id: self.next_server.fetch_add(1, Ordering::Relaxed),
            pool,
            addr,
            connect_time: now_us(),
            born: generation.1,
            generation: generation.0,
            local_addr: Mutex::new((String::new(), 0)),
            tls: Mutex::new(String::new()),
            remote_pid: AtomicI32::new(0),
            request_time: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            state: AtomicU8::new(ServerState::Login as u8),
            link: AtomicU64::new(0),
            prepared: AtomicU32::new(0),
            replication: Mutex::new(Replication::None),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_entries_leave_with_their_guards() {
        let stats = Arc::new(Stats::default());
        let pool = stats.pool("db", "u");
        let generation = Arc::new(Generation::default());
        let born = generation.current();
        let server =
            stats.register_server(pool.clone(), ("h".into(), 1), (generation.clone(), born));
        assert!(!stats.servers()[0].close_needed());
        generation.advance();
        assert!(stats.servers()[0].close_needed());
        let info = ClientInfo {
            id: 7,
            user: "u".into(),
            database: "db".into(),
            pool_user: "u".into(),
            addr: Peer::Tcp("127.0.0.1:1".parse().unwrap()),
            local_addr: None,
            tls: String::new(),
            remote_pid: 0,
            admin: false,
            replication: Replication::None,
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

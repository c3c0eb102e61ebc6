//! A scripted manager for deterministic tests of the engine: connections are
//! plain structs, and the test decides when connects fail or hang, when
//! checks fail, and which connections break.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// What a scripted connect or check fails with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScriptError(pub String);

/// Shared, test-controlled behaviour of a [`ScriptedManager`] and the record
/// of what it was asked to do.
#[derive(Default)]
pub struct Script {
    next_id: AtomicU64,
    /// Connections currently alive (created and not yet dropped).
    pub alive: AtomicUsize,
    pub connect_attempts: AtomicU64,
    pub checks: AtomicU64,
    /// While set, connects fail with "connection refused".
    pub refuse: AtomicBool,
    /// While set, connects never finish.
    pub hang: AtomicBool,
    /// While set, checks fail.
    pub fail_checks: AtomicBool,
    /// While set, checks never finish.
    pub hang_checks: AtomicBool,
    /// Connects succeed after this long (zero by default).
    connect_delay: Mutex<Duration>,
    /// Ids reported broken by `has_broken`.
    broken: Mutex<HashSet<u64>>,
    /// Connections with an id at or below this are broken.
    broken_up_to: AtomicU64,
    /// When each connect attempt started.
    pub attempt_times: Mutex<Vec<Instant>>,
    /// Connections concurrently being opened, and the most seen at once.
    connecting: AtomicUsize,
    pub max_connecting_seen: AtomicUsize,
}

impl Script {
    pub fn set_connect_delay(&self, delay: Duration) {
        *self.connect_delay.lock() = delay;
    }

    pub fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }

    pub fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    pub fn fail_checks(&self, on: bool) {
        self.fail_checks.store(on, Ordering::SeqCst);
    }

    pub fn hang_checks(&self, on: bool) {
        self.hang_checks.store(on, Ordering::SeqCst);
    }

    /// Marks one connection broken.
    pub fn break_conn(&self, id: u64) {
        self.broken.lock().insert(id);
    }

    /// Marks every connection opened so far broken.
    pub fn break_all(&self) {
        self.broken_up_to
            .store(self.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    pub fn alive(&self) -> usize {
        self.alive.load(Ordering::SeqCst)
    }

    pub fn attempts(&self) -> u64 {
        self.connect_attempts.load(Ordering::SeqCst)
    }

    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::SeqCst)
    }

    fn is_broken(&self, id: u64) -> bool {
        id <= self.broken_up_to.load(Ordering::SeqCst) || self.broken.lock().contains(&id)
    }
}

/// A pooled fake connection. Drop counts it as closed.
#[derive(Debug)]
pub struct FakeConn {
    pub id: u64,
    /// Set by tests to simulate state left on the connection.
    pub dirty: bool,
    script: Arc<Script>,
}

impl Drop for FakeConn {
    fn drop(&mut self) {
        self.script.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Default)]
pub struct ScriptedManager {
    pub script: Arc<Script>,
}

impl ScriptedManager {
    pub fn new() -> (Self, Arc<Script>) {
        let manager = Self::default();
        let script = manager.script.clone();
        (manager, script)
    }
}

struct Connecting<'a>(&'a Script);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl wharf::Manager for ScriptedManager {
    type Connection = FakeConn;
    type Error = ScriptError;

    async fn connect(&self) -> Result<FakeConn, ScriptError> {
        let s = &self.script;
        s.connect_attempts.fetch_add(1, Ordering::SeqCst);
        s.attempt_times.lock().push(Instant::now());
        let now_connecting = s.connecting.fetch_add(1, Ordering::SeqCst) + 1;
        let _connecting = Connecting(s);
        s.max_connecting_seen
            .fetch_max(now_connecting, Ordering::SeqCst);
        let delay = *s.connect_delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if s.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if s.refuse.load(Ordering::SeqCst) {
            return Err(ScriptError("connection refused".into()));
        }
        let id = s.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        s.alive.fetch_add(1, Ordering::SeqCst);
        Ok(FakeConn {
            id,
            dirty: false,
            script: s.clone(),
        })
    }

    async fn check(&self, conn: &mut FakeConn) -> Result<(), ScriptError> {
        let s = &self.script;
        s.checks.fetch_add(1, Ordering::SeqCst);
        if s.hang_checks.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if s.fail_checks.load(Ordering::SeqCst) || s.is_broken(conn.id) {
            return Err(ScriptError(format!("connection {} is dead", conn.id)));
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut FakeConn) -> bool {
        self.script.is_broken(conn.id)
    }
}

/// Lets background tasks (connectors, the janitor) run until they settle,
/// without moving the paused clock.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Asserts the pool's books balance: every connection counted is idle or in
/// use (nothing being opened or checked), and the manager has exactly as
/// many alive.
#[track_caller]
pub fn assert_balanced(pool: &wharf::Pool<ScriptedManager>, script: &Script) {
    let s = pool.status();
    assert!(
        s.size <= s.max_size,
        "size {} above max {}",
        s.size,
        s.max_size
    );
    assert_eq!(s.size, s.idle + s.in_use, "status does not add up: {s:?}");
    assert_eq!(
        script.alive(),
        s.size,
        "alive connections differ from size: {s:?}"
    );
}

// `FakeConn` derives `Debug` and holds an `Arc<Script>`, so `Script` needs
// one too (its atomics and locks say little; show the counters).
impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("alive", &self.alive())
            .field("connect_attempts", &self.attempts())
            .field("checks", &self.checks())
            .finish_non_exhaustive()
    }
}

/// A pool builder around a fresh scripted manager, and the script.
pub fn scripted() -> (wharf::Builder<ScriptedManager>, Arc<Script>) {
    let (manager, script) = ScriptedManager::new();
    (wharf::Pool::builder(manager), script)
}

/// Polls a future exactly once, from the current task.
pub async fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx))).await
}

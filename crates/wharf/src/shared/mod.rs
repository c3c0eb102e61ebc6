//! Pools of *shared* connections: connections that carry many requests at
//! once (an HTTP/2 connection, a gRPC channel), so they are leased rather
//! than checked out. Each lease goes to the open connection with the
//! fewest leases; a new connection opens only when every open one has
//! `per_connection` leases (up to `max_connections`), one at a time;
//! connections idle for `idle_timeout` beyond `min_connections` close; a
//! connection reported broken (or failing its check) is replaced.
//!
//! This is what Google's gRPC libraries do with channel pools, and what
//! the exclusive checkout of [`Pool`](crate::Pool) cannot do: it would let
//! one request at a time use a connection built for a hundred.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use wharf::shared::{Open, SharedPool, SharedSettings};
//!
//! /// Opens "connections" that are just numbers.
//! struct Numbers(AtomicUsize);
//!
//! impl Open for Numbers {
//!     type Conn = usize;
//!     type Error = Infallible;
//!     async fn open(&self) -> Result<(usize, String), Infallible> {
//!         let n = self.0.fetch_add(1, Ordering::Relaxed);
//!         Ok((n, format!("number {n}")))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let settings = SharedSettings { per_connection: 2, min_connections: 1, ..SharedSettings::default() };
//! let pool = SharedPool::start(Numbers(AtomicUsize::new(0)), settings).await.unwrap();
//! let a = pool.lease().await.unwrap();
//! let b = pool.lease().await.unwrap();
//! let c = pool.lease().await.unwrap(); // the first is full: a second opens
//! assert_eq!((*a.conn(), *b.conn(), *c.conn()), (0, 0, 1));
//! # }
//! ```

mod lease;
mod upkeep;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use lease::Slot;
pub use lease::{Lease, LeaseHold};

/// Opens the shared connections of a [`SharedPool`].
pub trait Open: Send + Sync + 'static {
    /// A handle to one connection; cloning it must not open another.
    type Conn: Clone + Send + Sync + 'static;
    /// Why opening failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a connection, and says where it goes (for logs and status).
    /// Openers with several targets spread connections over them.
    fn open(&self) -> impl Future<Output = Result<(Self::Conn, String), Self::Error>> + Send;

    /// Whether an idle connection still works (a health check), asked at
    /// each maintenance round when [`SharedSettings::check_idle`] is on.
    fn check(&self, conn: &Self::Conn) -> impl Future<Output = bool> + Send {
        let _ = conn;
        async { true }
    }

    /// Whether the connection is still open, without I/O (a closed
    /// HTTP/2 connection, say); asked before each lease.
    fn is_open(&self, conn: &Self::Conn) -> bool {
        let _ = conn;
        true
    }
}

/// How a [`SharedPool`] is sized and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSettings {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Connections kept open even when idle, opened at start.
    pub min_connections: usize,
    /// Leases on one connection before another is opened.
    pub per_connection: usize,
    /// A connection beyond `min_connections` with no lease for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// How often idle connections are closed, the pool topped up and, with
    /// `check_idle`, idle connections checked.
    pub maintenance_interval: Duration,
    /// Ask [`Open::check`] about idle connections at each round.
    pub check_idle: bool,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
}

impl Default for SharedSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 2,
            per_connection: 100,
            idle_timeout: Duration::from_secs(60),
            maintenance_interval: Duration::from_secs(1),
            check_idle: false,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl SharedSettings {
    /// Checks the settings make sense together.
    ///
    /// # Errors
    ///
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), SharedError<std::convert::Infallible>> {
        let bad = |what| Err(SharedError::Settings(what));
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.min_connections > self.max_connections {
            return bad("min_connections must not exceed max_connections");
        }
        if self.per_connection == 0 {
            return bad("per_connection must be at least 1");
        }
        if self.maintenance_interval.is_zero() {
            return bad("maintenance_interval must not be zero");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must not be zero");
        }
        Ok(())
    }
}

/// Why a [`SharedPool`] could not give a lease.
#[derive(Debug, thiserror::Error)]
pub enum SharedError<E: std::error::Error + 'static> {
    /// No connection was open and a new one could not be opened.
    #[error("cannot open a connection: {0}")]
    Open(#[source] E),
    /// No connection was open and opening one took longer than
    /// `connect_timeout`.
    #[error("cannot open a connection within {0:?}")]
    OpenTimeout(Duration),
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
    /// A setting out of range.
    #[error("invalid settings: {0}")]
    Settings(&'static str),
}

/// A pool of shared connections; see the [module](self) documentation.
/// Cloning is cheap and shares the pool.
pub struct SharedPool<O: Open> {
    inner: Arc<Inner<O>>,
}

impl<O: Open> Clone for SharedPool<O> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<O: Open> std::fmt::Debug for SharedPool<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPool")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

struct Inner<O: Open> {
    opener: O,
    settings: SharedSettings,
    slots: Mutex<Vec<Arc<Slot<O::Conn>>>>,
    /// One connection opens at a time: leases that find every connection
    /// full wait for it rather than each opening one.
    opening: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    closed: AtomicBool,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    leases: AtomicU64,
    opened: AtomicU64,
    closed_idle: AtomicU64,
    replaced: AtomicU64,
    open_failures: AtomicU64,
}

/// A [`SharedPool`]'s state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStatus {
    /// Each open connection.
    pub connections: Vec<ConnectionStatus>,
    /// Leases given since the pool started.
    pub leases: u64,
    /// Connections opened.
    pub opened: u64,
    /// Connections closed for being idle.
    pub closed_idle: u64,
    /// Connections taken out after a failure.
    pub replaced: u64,
    /// Attempts to open a connection that failed.
    pub open_failures: u64,
}

impl SharedStatus {
    /// Leases in flight over all connections.
    pub fn in_flight(&self) -> usize {
        self.connections.iter().map(|c| c.in_flight).sum()
    }
}

/// One open connection of a [`SharedPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// The pool's id for it.
    pub id: u64,
    /// Where it goes.
    pub label: String,
    /// Leases on it now.
    pub in_flight: usize,
}

/// Which connection [`Inner::lease`] may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// The least loaded, if it is under `per_connection`.
    WithRoom,
    /// The least loaded, whatever its load.
    LeastLoaded,
}

impl<O: Open> SharedPool<O> {
    /// Starts a pool: opens `min_connections` (stopping at the first that
    /// fails: a target that is down does not fail the start) and the
    /// maintenance task, which lives as long as the pool. Must be called
    /// within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`SharedError::Settings`] for settings out of range.
    pub async fn start(opener: O, settings: SharedSettings) -> Result<Self, SharedError<O::Error>> {
        if let Err(SharedError::Settings(what)) = settings.validate() {
            return Err(SharedError::Settings(what));
        }
        let inner = Arc::new(Inner {
            opener,
            settings,
            slots: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
        });
        inner.top_up().await;
        tokio::spawn(upkeep::run(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Leases the open connection with the fewest leases, opening a new
    /// one first when every open connection has `per_connection` and fewer
    /// than `max_connections` are open. When a new one cannot be opened
    /// but others are open, the least loaded of those is leased.
    ///
    /// # Errors
    ///
    /// [`SharedError::Open`] when no connection is open and none can be
    /// opened; [`SharedError::Closed`] after [`close`](Self::close).
    pub async fn lease(&self) -> Result<Lease<O::Conn>, SharedError<O::Error>> {
        let inner = &self.inner;
        if inner.is_closed() {
            return Err(SharedError::Closed);
        }
        if let Some(lease) = inner.lease(Choice::WithRoom) {
            return Ok(lease);
        }
        let failures = inner.counters.open_failures.load(Ordering::Relaxed);
        let _opening = inner.opening.lock().await;
        // Someone may have opened one, or leases ended, meanwhile.
        if let Some(lease) = inner.lease(Choice::WithRoom) {
            return Ok(lease);
        }
        // At the cap, or an open failed while this lease waited its turn:
        // the open connections serve rather than each waiter trying (and
        // timing out) in turn.
        let failed_meanwhile = inner.counters.open_failures.load(Ordering::Relaxed) != failures;
        if failed_meanwhile || inner.open_count() >= inner.settings.max_connections {
            if let Some(lease) = inner.lease(Choice::LeastLoaded) {
                return Ok(lease);
            }
        }
        match inner.open().await {
            Ok(slot) => inner.add_and_lease(slot).ok_or(SharedError::Closed),
            Err(err) => inner.lease(Choice::LeastLoaded).ok_or(err),
        }
    }

    /// The pool's connections and counters now.
    pub fn status(&self) -> SharedStatus {
        let slots = self.inner.slots.lock();
        let c = &self.inner.counters;
        SharedStatus {
            connections: slots
                .iter()
                .map(|slot| ConnectionStatus {
                    id: slot.id,
                    label: slot.label.clone(),
                    in_flight: slot.in_flight(),
                })
                .collect(),
            leases: c.leases.load(Ordering::Relaxed),
            opened: c.opened.load(Ordering::Relaxed),
            closed_idle: c.closed_idle.load(Ordering::Relaxed),
            replaced: c.replaced.load(Ordering::Relaxed),
            open_failures: c.open_failures.load(Ordering::Relaxed),
        }
    }

    /// The settings the pool runs with.
    pub fn settings(&self) -> &SharedSettings {
        &self.inner.settings
    }

    /// The opener.
    pub fn opener(&self) -> &O {
        &self.inner.opener
    }

    /// Closes the pool: no new leases; each connection closes once its
    /// leases end; the maintenance task stops.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.slots.lock().clear();
    }
}

impl<O: Open> Inner<O> {
    /// Leases the least-loaded usable connection (dropping failed ones on
    /// the way), if `choice` allows it.
    fn lease(&self, choice: Choice) -> Option<Lease<O::Conn>> {
        let mut slots = self.slots.lock();
        for slot in slots.iter() {
            if !self.opener.is_open(&slot.conn) {
                slot.mark_broken();
            }
        }
        self.drop_broken(&mut slots);
        let best = slots.iter().min_by_key(|slot| slot.in_flight())?;
        if choice == Choice::WithRoom && best.in_flight() >= self.settings.per_connection {
            return None;
        }
        self.counters.leases.fetch_add(1, Ordering::Relaxed);
        Some(best.lease())
    }

    /// Adds a new connection and leases it; `None` (the connection
    /// dropped) when the pool was closed while it opened.
    fn add_and_lease(&self, slot: Arc<Slot<O::Conn>>) -> Option<Lease<O::Conn>> {
        let mut slots = self.slots.lock();
        if self.is_closed() {
            return None;
        }
        let lease = slot.lease();
        slots.push(slot);
        self.counters.leases.fetch_add(1, Ordering::Relaxed);
        Some(lease)
    }

    fn open_count(&self) -> usize {
        self.slots.lock().iter().filter(|s| !s.is_broken()).count()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    async fn open(&self) -> Result<Arc<Slot<O::Conn>>, SharedError<O::Error>> {
        let limit = self.settings.connect_timeout;
        let opened = match tokio::time::timeout(limit, self.opener.open()).await {
            Ok(Ok(opened)) => Ok(opened),
            Ok(Err(err)) => Err(SharedError::Open(err)),
            Err(_) => Err(SharedError::OpenTimeout(limit)),
        };
        match opened {
            Ok((conn, label)) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                self.counters.opened.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(connection = id, target = %label, "shared connection opened");
                Ok(Arc::new(Slot::new(id, label, conn)))
            }
            Err(err) => {
                self.counters.open_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "cannot open a shared connection");
                Err(err)
            }
        }
    }

    /// Opens connections until `min_connections` are open; stops at the
    /// first failure (the next round tries again), and leaves the round to
    /// a lease that is opening one already.
    async fn top_up(&self) {
        let Ok(_opening) = self.opening.try_lock() else {
            return;
        };
        while !self.is_closed() && self.open_count() < self.settings.min_connections {
            match self.open().await {
                Ok(slot) => {
                    let mut slots = self.slots.lock();
                    if self.is_closed() {
                        return;
                    }
                    slots.push(slot);
                }
                Err(_) => return,
            }
        }
    }

    fn drop_broken(&self, slots: &mut Vec<Arc<Slot<O::Conn>>>) {
        let before = slots.len();
        slots.retain(|slot| !slot.is_broken());
        let dropped = before - slots.len();
        self.counters
            .replaced
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }
}

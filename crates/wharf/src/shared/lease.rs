//! A shared connection's place in the pool, and the leases on it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// One open connection of a [`SharedPool`](super::SharedPool).
#[derive(Debug)]
pub(crate) struct Slot<C> {
    pub(crate) id: u64,
    /// Where it is connected, for logs and status.
    pub(crate) label: String,
    pub(crate) conn: C,
    in_flight: AtomicUsize,
    /// Failed: no new lease; closed once the leases on it end.
    broken: AtomicBool,
    /// When its last lease ended (or when it opened).
    idle_since: Mutex<Instant>,
}

impl<C: Clone> Slot<C> {
    pub(crate) fn new(id: u64, label: String, conn: C) -> Self {
        Self {
            id,
            label,
            conn,
            in_flight: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    pub(crate) fn mark_broken(&self) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::warn!(connection = self.id, target = %self.label, "shared connection failed; replacing it");
        }
    }

    /// Whether it has had no lease for at least `limit`.
    pub(crate) fn idle_for(&self, limit: Duration) -> bool {
        self.in_flight() == 0 && self.idle_since.lock().elapsed() >= limit
    }

    /// A lease on it; the pool calls this under its lock, so that choosing
    /// the least-loaded connection and counting the lease go together.
    pub(crate) fn lease(self: &Arc<Self>) -> Lease<C>
    where
        C: Send + Sync + 'static,
    {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Lease {
            conn: self.conn.clone(),
            hold: LeaseHold(Arc::new(Guard { slot: self.clone() })),
        }
    }
}

/// Counts one lease for as long as it lives.
struct Guard<C> {
    slot: Arc<Slot<C>>,
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        // Set on every drop, before the count goes down: a maintenance
        // round that sees no lease also sees when the last one ended.
        *self.slot.idle_since.lock() = Instant::now();
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps a lease counted: a clone goes with each request and with each
/// response body or stream, so a connection's count is the work in flight
/// on it, streams included.
#[derive(Clone)]
pub struct LeaseHold(Arc<dyn Held>);

/// What a hold can do without knowing the connection type.
trait Held: Send + Sync {
    fn mark_broken(&self);
    fn id(&self) -> u64;
    fn label(&self) -> &str;
}

impl<C: Clone + Send + Sync> Held for Guard<C> {
    fn mark_broken(&self) {
        self.slot.mark_broken();
    }
    fn id(&self) -> u64 {
        self.slot.id
    }
    fn label(&self) -> &str {
        &self.slot.label
    }
}

impl LeaseHold {
    /// Takes the leased connection out of the pool: a failure at the
    /// transport, or a server answering every request with an error.
    pub fn report_broken(&self) {
        self.0.mark_broken();
    }

    /// The pool's id of the leased connection.
    pub fn id(&self) -> u64 {
        self.0.id()
    }

    /// Where the leased connection goes (the opener's label).
    pub fn label(&self) -> &str {
        self.0.label()
    }
}

impl std::fmt::Debug for LeaseHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHold").finish_non_exhaustive()
    }
}

/// A lease on a shared connection of a [`SharedPool`](super::SharedPool):
/// the connection (a clone of its handle) and the hold that keeps it
/// counted. Cloning shares the lease.
#[derive(Debug, Clone)]
pub struct Lease<C> {
    conn: C,
    hold: LeaseHold,
}

impl<C> Lease<C> {
    /// The leased connection's handle.
    pub fn conn(&self) -> &C {
        &self.conn
    }

    /// The leased connection's handle, to send on.
    pub fn conn_mut(&mut self) -> &mut C {
        &mut self.conn
    }

    /// A hold on the lease, to keep it counted while a response body is
    /// read after the lease itself is dropped.
    pub fn hold(&self) -> LeaseHold {
        self.hold.clone()
    }

    /// Takes the leased connection out of the pool (see
    /// [`LeaseHold::report_broken`]).
    pub fn report_broken(&self) {
        self.hold.report_broken();
    }
}

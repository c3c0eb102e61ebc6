//! [`Pooled`]: a checked-out connection that goes back to the pool on drop.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::breaker::{Call, Failure};
use crate::hooks::CloseReason;
use crate::lanes::LanePlace;
use crate::pool::Shared;
use crate::queue::{Live, Meta};
use crate::Manager;

/// A connection checked out of a [`Pool`](crate::Pool).
///
/// Derefs to the connection. Dropping it returns the connection to the pool
/// (RAII: no code path can forget to release it, which is how the seeds'
/// "leaked client" bug is ruled out by construction). To close it instead,
/// call [`discard`](Self::discard); to keep it for good, [`detach`](Self::detach).
// Four words: everything else about the checkout is in the connection's
// boxed record, so the handle (and every future that returns it) is cheap
// to move.
pub struct Pooled<M: Manager> {
    pub(crate) live: Option<Live<M::Connection>>,
    pub(crate) shared: Arc<Shared<M>>,
    /// The caller's place in its lane, given back (by being dropped) after
    /// the connection is.
    pub(crate) lane_place: Option<LanePlace>,
}

/// Facts about a pooled connection, from [`Pooled::info`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// A number unique within the pool, in order of creation (from 1).
    pub id: u64,
    /// Time since the connection was opened.
    pub age: Duration,
    /// How many times it has been checked out, this time included (for an
    /// idle connection: so far).
    pub uses: u64,
    /// Time since it was last returned to the pool; zero while in use.
    pub idle_for: Duration,
}

impl<M: Manager> Pooled<M> {
    pub(crate) fn new(shared: Arc<Shared<M>>, mut live: Live<M::Connection>, now: Instant) -> Self {
        // The record's other checkout fields were cleared when it came back.
        live.checked_out_at = now;
        Self {
            live: Some(live),
            shared,
            lane_place: None,
        }
    }

    pub(crate) fn live_mut(&mut self) -> &mut Live<M::Connection> {
        self.live
            .as_mut()
            .expect("a Pooled holds its connection until it is consumed")
    }

    pub(crate) fn meta(&self) -> Meta {
        self.live().meta
    }

    fn live(&self) -> &Live<M::Connection> {
        self.live
            .as_ref()
            .expect("a Pooled holds its connection until it is consumed")
    }

    pub(crate) fn conn_mut(&mut self) -> &mut M::Connection {
        &mut self.live_mut().conn
    }

    /// Closes the connection instead of returning it (counted as
    /// [`CloseReason::Discarded`]). Use it after an error that may have left
    /// the connection in a bad state.
    pub fn discard(mut self) {
        self.close(CloseReason::Discarded);
    }

    pub(crate) fn close(&mut self, reason: CloseReason) {
        self.release(Some(reason));
    }

    /// Tells the pool's circuit breaker that the work done with this
    /// connection failed: when the connection comes back, this checkout
    /// counts as a failed call instead of a successful one (and, for a
    /// half-open circuit's probe, opens the circuit again). Report failures
    /// that say the backend is unwell (lost connections, timeouts,
    /// "too many connections"), not the application's own errors. Without
    /// a breaker it does nothing. [`Pool::run`](crate::Pool::run) reports
    /// for you.
    pub fn report_failure(&mut self) {
        self.report(Failure::Reported);
    }

    /// Gives the checkout its breaker call (none without a breaker).
    #[inline]
    pub(crate) fn set_call(&mut self, call: Option<Call>) {
        // Only a breaker's call needs writing: the record's is unset.
        if call.is_some() {
            self.live_mut().call = call;
        }
    }

    pub(crate) fn report(&mut self, failure: Failure) {
        if let Some(call) = self.live.as_mut().and_then(|live| live.call.as_mut()) {
            call.report(failure);
        }
    }

    /// Takes the connection out of the pool for good: the pool forgets it
    /// (freeing its slot for a new one) and the caller owns it.
    pub fn detach(mut self) -> M::Connection {
        let (live, _) = self.take();
        self.shared.detach();
        live.conn
    }

    /// The connection's id, age and use count.
    pub fn info(&self) -> ConnInfo {
        let meta = self.meta();
        ConnInfo {
            idle_for: Duration::ZERO,
            ..meta.info(Instant::now())
        }
    }

    /// Takes the connection out, its record's checkout fields settled and
    /// cleared for the next checkout; with its `close_on_drop`.
    fn take(&mut self) -> (Live<M::Connection>, Option<CloseReason>) {
        let mut live = self
            .live
            .take()
            .expect("a Pooled holds its connection until it is consumed");
        if let (Some(key), Some(leaks)) = (live.leak_key.take(), &self.shared.leaks) {
            leaks.unregister(key);
        }
        // Only a pool with a breaker gives its checkouts a call.
        if let Some(breaker) = &self.shared.breaker {
            if let Some(call) = live.call.take() {
                call.finish(breaker, || self.shared.recorder.acquire_wait.count());
            }
        }
        let close_on_drop = live.close_on_drop.take();
        (live, close_on_drop)
    }

    fn release(&mut self, verdict: Option<CloseReason>) {
        if self.live.is_none() {
            return;
        }
        let (live, close_on_drop) = self.take();
        // Connections the pool closes while still preparing them were never
        // in the caller's hands: they say nothing about time in use.
        let held_since = close_on_drop.is_none().then_some(live.checked_out_at);
        self.shared
            .checkin(live, held_since, verdict.or(close_on_drop));
    }
}

impl<M: Manager> Drop for Pooled<M> {
    fn drop(&mut self) {
        self.release(None);
        // After the connection is back, so the next caller of the lane
        // finds it (and whatever consumed the handle, this runs last).
        if let Some(lane) = self.lane_place.take() {
            self.shared.lanes[lane].leave();
        }
    }
}

impl<M: Manager> Deref for Pooled<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.live().conn
    }
}

impl<M: Manager> DerefMut for Pooled<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        self.conn_mut()
    }
}

impl<M: Manager> AsRef<M::Connection> for Pooled<M> {
    fn as_ref(&self) -> &M::Connection {
        self
    }
}

impl<M: Manager> AsMut<M::Connection> for Pooled<M> {
    fn as_mut(&mut self) -> &mut M::Connection {
        self
    }
}

impl<M: Manager> fmt::Debug for Pooled<M>
where
    M::Connection: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("info", &self.info())
            .field("conn", &self.live().conn)
            .finish()
    }
}

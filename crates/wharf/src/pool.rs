//! The pool handle and the return path (checkout is in `acquire.rs`).

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::{timeout_at, Instant};

use crate::breaker::{Breaker, CircuitState, Failure};
use crate::budget::{Holder, Membership};
use crate::config::Builder;
use crate::error::HumanDuration;
use crate::hooks::{CloseReason, Hooks};
use crate::lanes::Lane;
use crate::leak::LeakRegistry;
use crate::metrics::{Recorder, Status};
use crate::padded::CachePadded;
use crate::queue::{Live, Meta, State};
use crate::tunables::Tunables;
use crate::waiters::Outcome;
use crate::{connector, janitor, Config, Error, Manager, Metrics, Pooled};

/// An async pool of connections made by a [`Manager`].
///
/// Cheap to clone: clones share one pool. When the last clone is dropped the
/// pool closes: waiters get [`Error::Closed`], idle connections are closed at
/// once, connections still in use when they come back, and the background
/// tasks stop.
pub struct Pool<M: Manager> {
    handle: Arc<PoolHandle<M>>,
}

/// Closes the pool when the last [`Pool`] clone goes. Connections in use
/// keep the shared state alive (not the pool open) until they are returned.
struct PoolHandle<M: Manager> {
    shared: Arc<Shared<M>>,
}

impl<M: Manager> Drop for PoolHandle<M> {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

/// A handle that does not keep a [`Pool`] open, from [`Pool::downgrade`]:
/// for registries that must not stop a pool from closing when its last
/// owner drops it.
pub struct WeakPool<M: Manager> {
    handle: std::sync::Weak<PoolHandle<M>>,
}

impl<M: Manager> WeakPool<M> {
    /// The pool, if it is still open somewhere.
    pub fn upgrade(&self) -> Option<Pool<M>> {
        self.handle.upgrade().map(|handle| Pool { handle })
    }
}

impl<M: Manager> Clone for WeakPool<M> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

impl<M: Manager> fmt::Debug for WeakPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakPool").finish_non_exhaustive()
    }
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

impl<M: Manager> fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared().config.name)
            .field("status", &self.status())
            .finish()
    }
}

// Aligned so that the `Arc`'s reference count, written by every checkout
// and return, has a cache line of its own instead of sharing one with the
// settings every checkout reads.
#[repr(align(128))]
pub(crate) struct Shared<M: Manager> {
    pub(crate) manager: M,
    pub(crate) config: Config,
    pub(crate) hooks: Hooks<M::Connection>,
    /// Padded for the same reason: the lock is the pool's busiest line.
    pub(crate) state: CachePadded<Mutex<State<M::Connection>>>,
    pub(crate) recorder: Recorder,
    pub(crate) leaks: Option<LeakRegistry>,
    pub(crate) runtime: Handle,
    /// The settings that may change while the pool runs.
    pub(crate) tunables: Tunables,
    pub(crate) breaker: Option<Arc<Breaker>>,
    pub(crate) lanes: Box<[Lane]>,
    /// The pool's seat in a shared [`Budget`](crate::Budget), if it has one.
    pub(crate) budget: Option<Membership>,
    /// Woken when a connection is opened (for `ready()`) and when the last
    /// connection in use comes back to a closed pool (for `close()`).
    changed: Notify,
    next_conn_id: AtomicU64,
}

impl<M: Manager> Pool<M> {
    /// Starts building a pool around `manager`.
    pub fn builder(manager: M) -> Builder<M> {
        Builder::new(manager)
    }

    pub(crate) fn start(
        manager: M,
        config: Config,
        hooks: Hooks<M::Connection>,
        runtime: Handle,
        budget: Option<Membership>,
    ) -> Self {
        let mut state = State::with_reserve(
            config.max_size,
            config.min_idle,
            config.reserve_size,
            config.reserve_timeout,
        );
        state.min_size = config.min_size;
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared<M>>| {
            if let Some(member) = &budget {
                let holder: std::sync::Weak<dyn Holder> = weak.clone();
                member.attach(holder);
            }
            Shared {
                state: CachePadded(Mutex::new(state)),
                leaks: config.leak_detection_threshold.map(LeakRegistry::new),
                manager,
                hooks,
                recorder: Recorder::new(&config.name),
                tunables: Tunables::new(&config),
                breaker: config
                    .circuit_breaker
                    .clone()
                    .map(|breaker| Arc::new(Breaker::new(breaker, &config.name))),
                lanes: config.lanes.iter().map(Lane::new).collect(),
                budget,
                runtime,
                changed: Notify::new(),
                next_conn_id: AtomicU64::new(1),
                config,
            }
        });
        shared.runtime.spawn(janitor::run(
            Arc::downgrade(&shared),
            shared.config.maintenance_interval,
        ));
        shared.spawn_connectors(&mut shared.state.lock());
        Self {
            handle: Arc::new(PoolHandle { shared }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared<M>> {
        &self.handle.shared
    }

    /// Takes a connection, waiting up to `acquire_timeout` for one.
    ///
    /// Callers are served first come, first served. An idle connection is
    /// reused most-recently-used first; one idle for longer than
    /// `validate_after` is checked first, and if the check fails the caller
    /// quietly gets another. The returned [`Pooled`] goes back to the pool
    /// when dropped.
    ///
    /// The future may be dropped at any point (a timeout around it, a client
    /// that went away) without losing a connection or a slot.
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<Pooled<M>, Error>> + Send + 'static {
        let caller = Location::caller();
        let shared = self.shared().clone();
        let wait = shared.config.acquire_timeout;
        Shared::admit_and_acquire(shared, wait, caller)
    }

    /// Takes a connection in the lane called `lane`
    /// ([`Builder::lane`]): waits first for one of the lane's places (in
    /// the lane's own line, first come, first served), then for a
    /// connection, within the lane's `acquire_timeout` in all. Fails with
    /// [`Error::UnknownLane`] for a name the pool was not built with, and
    /// [`Error::LaneTimeout`] when the lane stayed full.
    #[track_caller]
    // Inlined so that the checkout's future (about 1 KiB) is built in the
    // caller's own state instead of being returned and copied twice.
    #[inline]
    pub fn get_in(
        &self,
        lane: &str,
    ) -> impl Future<Output = Result<Pooled<M>, Error>> + Send + 'static {
        let caller = Location::caller();
        let shared = self.shared().clone();
        let index = shared.lane_index(lane);
        // Its future itself, not wrapped in another (see `admission.rs`).
        Shared::admitted_acquire(shared, index, caller)
    }

    /// An idle connection, if one can be handed out at once without a
    /// future: nobody is waiting ahead of the caller, and the connection
    /// needs no check (`validate_after`), no `on_checkout` hook and no
    /// circuit breaker admission. `None` otherwise, having queued, opened
    /// and taken nothing: the caller goes on with [`get`](Self::get).
    ///
    /// For callers that keep many tasks alive and want the common case
    /// free of `get()`'s future (its state is part of every task that
    /// awaits it).
    ///
    /// ```
    /// # use wharf::{Manager, Pool};
    /// # struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u32;
    /// #     type Error = std::io::Error;
    /// #     async fn connect(&self) -> Result<u32, std::io::Error> { Ok(7) }
    /// #     async fn check(&self, _: &mut u32) -> Result<(), std::io::Error> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = Pool::builder(Numbers).max_size(4).build()?;
    /// assert!(pool.try_get().is_none()); // nothing open yet, and nothing opened
    /// drop(pool.get().await?); // opens one, which goes back idle
    /// let conn = match pool.try_get() {
    ///     Some(conn) => conn,
    ///     None => pool.get().await?,
    /// };
    /// assert_eq!(*conn, 7);
    /// # Ok(())
    /// # }
    /// ```
    #[track_caller]
    pub fn try_get(&self) -> Option<Pooled<M>> {
        self.shared().take_ready(Location::caller())
    }

    /// Like [`get`](Self::get), with a different wait limit than the
    /// configured `acquire_timeout`.
    #[track_caller]
    pub fn get_timeout(
        &self,
        wait: Duration,
    ) -> impl Future<Output = Result<Pooled<M>, Error>> + Send + 'static {
        let caller = Location::caller();
        let shared = self.shared().clone();
        Shared::admit_and_acquire(shared, wait, caller)
    }

    /// Wakes, without serving them, the callers that have been waiting in
    /// line for a connection for at least `waited`, and returns how many.
    /// They keep their place and go on waiting; their own code, polled
    /// again, can act on how long they have waited (tell its user, log
    /// it). A caller that acts on a long wait this way needs no timer of
    /// its own: one periodic call replaces a timer set and cleared per
    /// wait, most of which end long before it would go off.
    pub fn wake_long_waits(&self, waited: Duration) -> usize {
        let Some(cutoff) = Instant::now().checked_sub(waited) else {
            return 0;
        };
        let wakers = self.shared().state.lock().waiters.wakers_since(cutoff);
        let woken = wakers.len();
        // Woken outside the lock, as every hand-off is.
        for waker in wakers {
            waker.wake();
        }
        woken
    }

    /// The pool's size right now.
    pub fn status(&self) -> Status {
        self.shared().status()
    }

    /// Counters and latency histograms, with the current status.
    pub fn metrics(&self) -> Metrics {
        self.shared().metrics()
    }

    /// Connects that failed in a row since the last one that succeeded (0
    /// when the last one worked, or none failed yet), and the last error
    /// among them: whether the backend is reachable, for health checks.
    pub fn connect_failures(&self) -> (u32, Option<crate::ConnectError>) {
        let st = self.shared().state.lock();
        (st.consecutive_failures, st.last_error.clone())
    }

    /// The manager's own error behind `err` (see [`Error::backend`]), with
    /// its type taken from this pool's manager.
    ///
    /// `wharf::Error` itself stays one type for every manager, so that code
    /// handling the errors of several pools (and `From<wharf::Error>`
    /// conversions in adapters) need not be generic.
    pub fn backend_error<'e>(&self, err: &'e Error) -> Option<&'e M::Error> {
        err.backend::<M::Error>()
    }

    /// The settings the pool was built with (`max_size` may since have been
    /// changed by [`resize`](Self::resize); [`status`](Self::status) has the
    /// current one).
    pub fn config(&self) -> &Config {
        &self.shared().config
    }

    /// The manager the pool opens connections with.
    pub fn manager(&self) -> &M {
        &self.shared().manager
    }

    /// A handle that does not keep the pool open.
    pub fn downgrade(&self) -> WeakPool<M> {
        WeakPool {
            handle: Arc::downgrade(&self.handle),
        }
    }

    /// Closes up to `max` idle connections, least recently used first
    /// (reason [`CloseReason::Idle`]), and returns how many it closed. For
    /// making room under a limit shared with other pools, as PgBouncer
    /// closes idle servers of one pool when another of the same database
    /// needs one.
    pub fn close_idle(&self, max: usize) -> usize {
        let shared = self.shared();
        let closing = shared.state.lock().take_idle(max);
        let n = closing.len();
        for live in closing {
            shared.close_conn(live, CloseReason::Idle);
        }
        n
    }

    /// Waits until `min_idle` connections are open, or fails with
    /// [`Error::Timeout`] (carrying the last connect error) after
    /// `acquire_timeout`.
    pub async fn ready(&self) -> Result<(), Error> {
        let shared = self.shared();
        let start = Instant::now();
        let deadline = start + shared.config.acquire_timeout;
        loop {
            let mut changed = pin!(shared.changed.notified());
            changed.as_mut().enable();
            {
                let st = shared.state.lock();
                if st.closed {
                    return Err(Error::Closed);
                }
                if st.idle.len() + st.in_use >= st.min_idle.max(st.min_size) {
                    return Ok(());
                }
            }
            if timeout_at(deadline, changed).await.is_err() {
                return Err(shared.timeout_error(start));
            }
        }
    }

    /// Whether [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.shared().state.lock().closed
    }

    /// Closes the pool gracefully.
    ///
    /// At once: new `get()` calls fail with [`Error::Closed`], every waiter
    /// is woken with it, and idle connections are closed. Then it waits, up
    /// to `close_timeout`, for connections in use to be returned; each is
    /// closed as it comes back (also after the deadline). Calling it again
    /// just waits again.
    pub async fn close(&self) {
        let shared = self.shared();
        shared.shut_down();
        #[cfg(feature = "metrics")]
        shared.publish_metrics();
        let deadline = Instant::now() + shared.config.close_timeout;
        loop {
            let mut changed = pin!(shared.changed.notified());
            changed.as_mut().enable();
            let in_use = shared.state.lock().in_use;
            if in_use == 0 {
                return;
            }
            if timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(
                    pool = %shared.config.name,
                    in_use,
                    "pool closed with connections still in use after {}; \
                     they will be closed when returned",
                    HumanDuration(shared.config.close_timeout)
                );
                return;
            }
        }
    }
}

impl<M: Manager> Shared<M> {
    /// The index of the lane called `name`, or the name when there is none.
    fn lane_index(&self, name: &str) -> Result<usize, String> {
        self.lanes
            .iter()
            .position(|lane| lane.name == name)
            .ok_or_else(|| name.to_owned())
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let mut metrics = self.recorder.snapshot(&self.config.name, self.status());
        metrics.circuit = self.breaker.as_ref().map(|breaker| breaker.metrics());
        metrics.lanes = self.lanes.iter().map(Lane::metrics).collect();
        metrics.budget = self.budget.as_ref().map(Membership::share);
        metrics
    }

    /// Tells the circuit breaker, if any, that a connect failed.
    pub(crate) fn connect_failed(&self, err: &crate::ConnectError) {
        if let Some(breaker) = &self.breaker {
            let acquired = self.recorder.acquire_wait.count();
            breaker.record_failure(Failure::Connect(err.clone()), acquired);
        }
    }

    /// Sends gauges and counters to the `metrics` facade.
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_metrics(&self) {
        self.recorder.facade.publish(&self.metrics());
    }

    pub(crate) fn status(&self) -> Status {
        let circuit = self
            .breaker
            .as_ref()
            .map_or(CircuitState::Disabled, |breaker| breaker.state());
        let st = self.state.lock();
        Status {
            size: st.size,
            idle: st.idle.len(),
            in_use: st.in_use,
            waiting: st.waiters.len(),
            max_size: st.max_size,
            circuit,
        }
    }

    /// Takes back a connection from a caller (or from a waiter that left,
    /// with no `held_since`): keeps it for the next caller unless it must be
    /// retired.
    pub(crate) fn checkin(
        self: &Arc<Self>,
        mut live: Live<M::Connection>,
        held_since: Option<Instant>,
        verdict: Option<CloseReason>,
    ) {
        let now = Instant::now();
        if let Some(since) = held_since {
            self.recorder
                .in_use_time
                .record(now.saturating_duration_since(since));
        }
        let verdict = verdict.or_else(|| self.retire_reason(&mut live, now));
        let mut st = self.state.lock();
        st.in_use -= 1;
        let verdict = verdict.or(if st.closed {
            Some(CloseReason::Closed)
        } else if st.over_size() {
            Some(CloseReason::Resized)
        } else {
            None
        });
        match verdict {
            None => {
                if let Some((to, to_name)) = self.yield_for_budget(&st) {
                    st.size -= 1;
                    self.spawn_connectors(&mut st);
                    drop(st);
                    self.reclaimed(live, &to_name);
                    crate::budget::notify(vec![to]);
                    return;
                }
                live.meta.last_active = now;
                live.meta.idle_since = now;
                // Only after use: a connection given back by a waiter that
                // left was never in anyone's hands.
                if held_since.is_some() && self.manager.recycles() {
                    st.testing += 1;
                    drop(st);
                    self.runtime.spawn(janitor::recycle(self.clone(), live));
                    return;
                }
                let waiter = st.hand_off(live, now);
                drop(st);
                if let Some(waiter) = waiter {
                    waiter.wake();
                }
            }
            Some(reason) => {
                st.size -= 1;
                self.spawn_connectors(&mut st);
                let drained = st.closed && st.in_use == 0;
                drop(st);
                self.close_conn(live, reason);
                if drained {
                    self.changed.notify_waiters();
                }
            }
        }
    }

    /// Takes a connection out of the pool's accounting for good.
    pub(crate) fn detach(self: &Arc<Self>) {
        let mut st = self.state.lock();
        st.in_use -= 1;
        st.size -= 1;
        self.spawn_connectors(&mut st);
        let drained = st.closed && st.in_use == 0;
        drop(st);
        self.release_budget_unit();
        if drained {
            self.changed.notify_waiters();
        }
    }

    fn retire_reason(&self, live: &mut Live<M::Connection>, now: Instant) -> Option<CloseReason> {
        if self.manager.has_broken(&mut live.conn) {
            return Some(CloseReason::Broken);
        }
        if let Some(hook) = &self.hooks.on_checkin {
            if !hook(&mut live.conn) {
                return Some(CloseReason::Rejected);
            }
        }
        if self
            .config
            .max_uses
            .is_some_and(|max| live.meta.uses >= max)
        {
            return Some(CloseReason::MaxUses);
        }
        if live.meta.is_expired(now) {
            return Some(CloseReason::Lifetime);
        }
        None
    }

    /// Closes a connection that is already out of the pool's accounting,
    /// and gives its budget unit back.
    pub(crate) fn close_conn(&self, live: Live<M::Connection>, reason: CloseReason) {
        self.drop_conn(live, reason);
        self.release_budget_unit();
    }

    /// Closes a connection, leaving its budget unit (if any) to the caller.
    pub(crate) fn drop_conn(&self, mut live: Live<M::Connection>, reason: CloseReason) {
        self.recorder.closed(reason);
        tracing::debug!(
            pool = %self.config.name,
            conn = live.meta.id,
            %reason,
            age = ?live.meta.created_at.elapsed(),
            uses = live.meta.uses,
            "closing connection"
        );
        if let Some(hook) = &self.hooks.on_close {
            hook(&mut live.conn, reason);
        }
        // Closed before its unit goes to anyone else.
        drop(live);
    }

    /// Starts connector tasks for unmet demand, up to `max_connecting`.
    /// While the backend is failing one connector (the probe) is enough.
    #[inline]
    pub(crate) fn spawn_connectors(self: &Arc<Self>, st: &mut State<M::Connection>) {
        // A pool at its largest (the usual case when callers queue) can
        // want none: no need to weigh the demand on every wait.
        if st.size < st.max_size + st.reserve_size {
            self.spawn_wanted_connectors(st);
        }
    }

    fn spawn_wanted_connectors(self: &Arc<Self>, st: &mut State<M::Connection>) {
        while st.connectors < self.config.max_connecting
            && st.wants_connection()
            && st.demand() > st.connectors
            && !(st.consecutive_failures > 0 && st.connectors > 0)
        {
            st.connectors += 1;
            self.runtime.spawn(connector::run(Arc::downgrade(self)));
        }
    }

    pub(crate) fn new_meta(&self, now: Instant) -> Meta {
        let lifetime_share = 1.0 - fastrand::f64() * self.config.lifetime_jitter;
        Meta {
            id: self.next_conn_id.fetch_add(1, Ordering::Relaxed),
            created_at: now,
            expires_at: expiry(now, self.tunables.max_lifetime(), lifetime_share),
            lifetime_share,
            uses: 0,
            last_active: now,
            idle_since: now,
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.changed.notify_waiters();
    }

    /// Marks the pool closed, wakes every waiter with `Closed` and closes
    /// the idle connections. Connections in use are closed as they return.
    fn shut_down(&self) {
        let (waiters, idle) = {
            let mut st = self.state.lock();
            st.closed = true;
            st.budget_queued = 0;
            if let Some(member) = &self.budget {
                member.forget_requests();
            }
            let idle: Vec<_> = st.idle.drain(..).collect();
            st.size -= idle.len();
            (st.waiters.end_all(|| Outcome::Closed), idle)
        };
        for waiter in waiters {
            waiter.wake();
        }
        for live in idle {
            self.close_conn(live, CloseReason::Closed);
        }
        self.changed.notify_waiters();
    }
}

/// When a connection made at `created_at` with this share of `lifetime`
/// expires.
pub(crate) fn expiry(
    created_at: Instant,
    lifetime: Option<Duration>,
    share: f64,
) -> Option<Instant> {
    lifetime.map(|lifetime| created_at + lifetime.mul_f64(share))
}

//! The pool handle and the acquire / return paths.

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};
use tokio::time::{timeout, timeout_at, Instant};

use crate::config::Builder;
use crate::error::HumanDuration;
use crate::hooks::{CloseReason, Hooks};
use crate::leak::LeakRegistry;
use crate::metrics::{Recorder, Status};
use crate::queue::{Handoff, Live, Meta, State};
use crate::tunables::Tunables;
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

pub(crate) struct Shared<M: Manager> {
    pub(crate) manager: M,
    pub(crate) config: Config,
    pub(crate) hooks: Hooks<M::Connection>,
    pub(crate) state: Mutex<State<M::Connection>>,
    pub(crate) recorder: Recorder,
    pub(crate) leaks: Option<LeakRegistry>,
    runtime: Handle,
    /// The settings that may change while the pool runs.
    pub(crate) tunables: Tunables,
    /// Woken when a connection is opened (for `ready()`) and when the last
    /// connection in use comes back to a closed pool (for `close()`).
    changed: Notify,
    next_conn_id: AtomicU64,
}

enum Taken<C> {
    Idle(Live<C>),
    Wait(u64, oneshot::Receiver<Handoff<C>>),
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
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::with_reserve(
                config.max_size,
                config.min_idle,
                config.reserve_size,
                config.reserve_timeout,
            )),
            leaks: config.leak_detection_threshold.map(LeakRegistry::new),
            manager,
            hooks,
            recorder: Recorder::new(&config.name),
            tunables: Tunables::new(&config),
            runtime,
            changed: Notify::new(),
            next_conn_id: AtomicU64::new(1),
            config,
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
        async move { Shared::acquire(shared, wait, caller).await }
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
        async move { Shared::acquire(shared, wait, caller).await }
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
                if st.idle.len() + st.in_use >= st.min_idle {
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
    pub(crate) fn metrics(&self) -> Metrics {
        self.recorder.snapshot(&self.config.name, self.status())
    }

    /// Sends gauges and counters to the `metrics` facade.
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_metrics(&self) {
        self.recorder.facade.publish(&self.metrics());
    }

    pub(crate) fn status(&self) -> Status {
        let st = self.state.lock();
        Status {
            size: st.size,
            idle: st.idle.len(),
            in_use: st.in_use,
            waiting: st.waiters.len(),
            max_size: st.max_size,
        }
    }

    async fn acquire(
        self: Arc<Self>,
        wait: Duration,
        caller: &'static Location<'static>,
    ) -> Result<Pooled<M>, Error> {
        let start = Instant::now();
        let deadline = start + wait;
        let mut now = start;
        // Our place in line, kept across retries after a failed check.
        let mut ticket = None;
        loop {
            let taken = {
                let mut st = self.state.lock();
                if st.closed {
                    return Err(Error::Closed);
                }
                let retrying = ticket.is_some();
                let id = *ticket.get_or_insert_with(|| st.take_ticket());
                // Only a caller retrying after a failed check can be ahead of
                // a waiter.
                let first_in_line = match st.waiters.front() {
                    Some(waiter) => id < waiter.id,
                    None => true,
                };
                match st.idle.pop_back() {
                    // Only when nobody is ahead of us: a newcomer must not
                    // overtake the queue (returned connections go to waiters
                    // first, so this is rare, but validation can race with it).
                    Some(live) if first_in_line => {
                        st.in_use += 1;
                        Taken::Idle(live)
                    }
                    popped => {
                        if let Some(live) = popped {
                            st.idle.push_back(live);
                        }
                        // A caller already let in is not refused on a retry.
                        if let Some(max_waiting) = self.config.max_waiting.filter(|_| !retrying) {
                            if st.waiters.len() >= max_waiting {
                                drop(st);
                                Recorder::count(&self.recorder.counters.rejected);
                                return Err(Error::QueueFull {
                                    max_waiting,
                                    status: self.status(),
                                });
                            }
                        }
                        // While the backend refuses connections and the pool
                        // has none, a fail-fast pool answers at once instead
                        // of queueing (PgBouncer's server_login_retry), and
                        // asks for one probe to find out when it is back.
                        if self.config.fail_fast
                            && st.consecutive_failures > 0
                            && st.has_no_connections()
                        {
                            st.probe_wanted = true;
                            self.spawn_connectors(&mut st);
                            let last_error = st.last_error.clone();
                            drop(st);
                            Recorder::count(&self.recorder.counters.rejected);
                            return Err(Error::Unavailable { last_error });
                        }
                        let rx = st.queue_waiter(id, start);
                        self.spawn_connectors(&mut st);
                        Taken::Wait(id, rx)
                    }
                }
            };
            let live = match taken {
                Taken::Idle(live) => live,
                Taken::Wait(id, rx) => {
                    let live = self.wait(id, rx, deadline, start).await?;
                    now = Instant::now();
                    live
                }
            };
            let mut pooled = Pooled::new(self.clone(), live, now);
            if let Some(ready) = self.prepare(&mut pooled, now).await {
                // Checking the connection and running `on_checkout` were
                // part of the caller's wait: it holds the connection (for
                // `in_use_time` and leak detection) only from here.
                pooled.checked_out_at = ready;
                self.recorder.acquire_wait.record(ready - start);
                if let Some(leaks) = &self.leaks {
                    pooled.leak_key = Some(leaks.register(ready, caller));
                }
                return Ok(pooled);
            }
            now = Instant::now();
        }
    }

    async fn wait(
        self: &Arc<Self>,
        id: u64,
        rx: oneshot::Receiver<Handoff<M::Connection>>,
        deadline: Instant,
        start: Instant,
    ) -> Result<Live<M::Connection>, Error> {
        let mut guard = WaitGuard {
            shared: self,
            id,
            rx,
            done: false,
        };
        match timeout_at(deadline, &mut guard.rx).await {
            Ok(Ok(Ok(live))) => {
                guard.done = true;
                Ok(live)
            }
            Ok(Ok(Err(err))) => {
                guard.done = true;
                Recorder::count(&self.recorder.counters.rejected);
                Err(Error::Unavailable {
                    last_error: Some(err),
                })
            }
            Ok(Err(_)) => {
                guard.done = true;
                Err(Error::Closed)
            }
            Err(_) => match guard.give_up() {
                // Handed over just as the deadline passed: take it.
                Some(live) => Ok(live),
                None => {
                    Recorder::count(&self.recorder.counters.timeouts);
                    Err(self.timeout_error(start))
                }
            },
        }
    }

    fn timeout_error(&self, start: Instant) -> Error {
        let last_error = self.state.lock().last_error.clone();
        Error::Timeout {
            waited: start.elapsed(),
            status: self.status(),
            last_error,
        }
    }

    /// Makes a connection just taken fit to hand out: not expired, checked
    /// if it sat idle, passed by `on_checkout`. Returns when it became ready
    /// (`now` itself when nothing had to run: reading the clock is a good
    /// share of an uncontended checkout), or `None` when it was closed and
    /// the caller should try again.
    async fn prepare(&self, pooled: &mut Pooled<M>, now: Instant) -> Option<Instant> {
        // A get() cancelled during the check or hook must not return a
        // connection in an unknown state to the pool.
        pooled.close_on_drop = Some(CloseReason::FailedCheck);
        let meta = pooled.meta();
        if meta.is_expired(now) {
            pooled.close(CloseReason::Lifetime);
            return None;
        }
        let needs_check = self
            .tunables
            .validate_after()
            .is_some_and(|after| now.saturating_duration_since(meta.last_active) >= after);
        let mut ready = now;
        if needs_check {
            let check = self.manager.check(pooled.conn_mut());
            match timeout(self.tunables.validation_timeout(), check).await {
                Ok(Ok(())) => {
                    ready = Instant::now();
                    pooled.live_mut().meta.last_active = ready;
                }
                Ok(Err(err)) => {
                    tracing::debug!(pool = %self.config.name, conn = meta.id, error = %err, "connection failed its check before checkout");
                    pooled.close(CloseReason::FailedCheck);
                    return None;
                }
                Err(_) => {
                    tracing::debug!(pool = %self.config.name, conn = meta.id, "connection check timed out before checkout");
                    pooled.close(CloseReason::FailedCheck);
                    return None;
                }
            }
        }
        if let Some(hook) = &self.hooks.on_checkout {
            let outcome = hook(pooled.conn_mut()).await;
            ready = Instant::now();
            if let Err(err) = outcome {
                tracing::debug!(pool = %self.config.name, conn = meta.id, error = %err, "on_checkout hook refused connection");
                pooled.close(CloseReason::FailedCheck);
                return None;
            }
        }
        pooled.close_on_drop = None;
        pooled.live_mut().meta.uses += 1;
        Some(ready)
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
                live.meta.last_active = now;
                live.meta.idle_since = now;
                st.hand_off(live);
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

    /// Closes a connection that is already out of the pool's accounting.
    pub(crate) fn close_conn(&self, mut live: Live<M::Connection>, reason: CloseReason) {
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
    }

    /// Starts connector tasks for unmet demand, up to `max_connecting`.
    /// While the backend is failing one connector (the probe) is enough.
    pub(crate) fn spawn_connectors(self: &Arc<Self>, st: &mut State<M::Connection>) {
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
            let idle: Vec<_> = st.idle.drain(..).collect();
            st.size -= idle.len();
            (std::mem::take(&mut st.waiters), idle)
        };
        drop(waiters);
        for live in idle {
            self.close_conn(live, CloseReason::Closed);
        }
        self.changed.notify_waiters();
    }
}

/// Keeps a queued waiter honest when its `get()` is cancelled or times out:
/// either it is still queued and leaves the queue, or a connection was
/// already handed to it and goes back to the pool (or to the caller).
struct WaitGuard<'a, M: Manager> {
    shared: &'a Arc<Shared<M>>,
    id: u64,
    rx: oneshot::Receiver<Handoff<M::Connection>>,
    done: bool,
}

impl<M: Manager> WaitGuard<'_, M> {
    fn give_up(&mut self) -> Option<Live<M::Connection>> {
        if std::mem::replace(&mut self.done, true) {
            return None;
        }
        if self.shared.state.lock().remove_waiter(self.id) {
            return None;
        }
        // Not queued any more: it was served (under the lock, so the
        // connection is in the channel by now) or woken by close.
        self.rx.try_recv().ok().and_then(Result::ok)
    }
}

impl<M: Manager> Drop for WaitGuard<'_, M> {
    fn drop(&mut self) {
        if let Some(live) = self.give_up() {
            self.shared.checkin(live, None, None);
        }
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

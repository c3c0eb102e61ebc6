//! The pool handle and the acquire / return paths.

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use tokio::sync::Notify;
use tokio::time::{timeout, timeout_at, Instant};

use crate::config::Builder;
use crate::error::HumanDuration;
use crate::hooks::{CloseReason, Hooks};
use crate::leak::LeakRegistry;
use crate::metrics::{Recorder, Status};
use crate::padded::CachePadded;
use crate::queue::{Live, Meta, State};
use crate::waiters::{Outcome, Watch};
use crate::{connector, deadline, janitor, Config, ConfigError, Error, Manager, Metrics, Pooled};

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
    runtime: Handle,
    /// The settings that may change while the pool runs.
    pub(crate) tunables: Tunables,
    /// Woken when a connection is opened (for `ready()`) and when the last
    /// connection in use comes back to a closed pool (for `close()`).
    changed: Notify,
    /// Tells the deadline watcher about a deadline earlier than it knew.
    deadline_told: Arc<Notify>,
    next_conn_id: AtomicU64,
}

enum Taken<C> {
    Idle(Live<C>),
    /// Queued under this ticket, in this waiter slot.
    Wait(u64, usize),
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
            state: CachePadded(Mutex::new(State::with_reserve(
                config.max_size,
                config.min_idle,
                config.reserve_size,
                config.reserve_timeout,
            ))),
            leaks: config.leak_detection_threshold.map(LeakRegistry::new),
            manager,
            hooks,
            recorder: Recorder::new(&config.name),
            tunables: Tunables::new(&config),
            runtime,
            changed: Notify::new(),
            deadline_told: Arc::new(Notify::new()),
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

    fn shared(&self) -> &Arc<Shared<M>> {
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

    /// Changes `max_size`. Growing lets waiters have new connections at once;
    /// shrinking closes idle connections beyond the new size now and retires
    /// connections in use when they are returned (reason
    /// [`CloseReason::Resized`]). `min_idle` is capped at the new size.
    pub fn resize(&self, max_size: usize) -> Result<(), ConfigError> {
        if max_size == 0 {
            return Err(ConfigError::ZeroMaxSize);
        }
        let shared = self.shared();
        let excess = {
            let mut st = shared.state.lock();
            st.max_size = max_size;
            st.min_idle = shared
                .tunables
                .min_idle
                .load(Ordering::Relaxed)
                .min(max_size);
            let excess = st.take_excess_idle();
            shared.spawn_connectors(&mut st);
            excess
        };
        for live in excess {
            shared.close_conn(live, CloseReason::Resized);
        }
        Ok(())
    }

    /// Changes `idle_timeout` (`None` turns it off) from the next
    /// maintenance round on, for every idle connection. [`config`](Self::config)
    /// keeps showing the value the pool was built with.
    pub fn set_idle_timeout(&self, idle_timeout: Option<Duration>) {
        self.shared()
            .tunables
            .idle_timeout
            .store(encode(idle_timeout), Ordering::Relaxed);
    }

    /// Changes `validate_after` (`None`: never check) from the next
    /// `get()` on.
    pub fn set_validate_after(&self, validate_after: Option<Duration>) {
        self.shared()
            .tunables
            .validate_after
            .store(encode(validate_after), Ordering::Relaxed);
    }

    /// Changes `max_lifetime` (`None`: unlimited). New connections get it
    /// at once; existing ones keep their jitter share of it and are brought
    /// in line while idle, at the next maintenance round (a connection in
    /// use is never closed under its user).
    pub fn set_max_lifetime(&self, max_lifetime: Option<Duration>) {
        self.shared()
            .tunables
            .max_lifetime
            .store(encode(max_lifetime), Ordering::Relaxed);
    }

    /// Changes `min_idle` (capped at `max_size`); a larger value opens
    /// the missing connections at once.
    pub fn set_min_idle(&self, min_idle: usize) {
        let shared = self.shared();
        shared.tunables.min_idle.store(min_idle, Ordering::Relaxed);
        let mut st = shared.state.lock();
        st.min_idle = min_idle.min(st.max_size);
        shared.spawn_connectors(&mut st);
    }

    /// Changes `reserve_size` and `reserve_timeout` from the next waiter
    /// on. Connections already opened from the reserve are closed as they
    /// come back, down to the new limit.
    pub fn set_reserve(&self, reserve_size: usize, reserve_timeout: Duration) {
        let shared = self.shared();
        let mut st = shared.state.lock();
        st.reserve_size = reserve_size;
        st.reserve_timeout = reserve_timeout;
        shared.spawn_connectors(&mut st);
    }

    /// Changes `connect_timeout` for connects that start from now on.
    pub fn set_connect_timeout(&self, connect_timeout: Duration) {
        self.shared()
            .tunables
            .connect_timeout
            .store(encode(Some(connect_timeout)), Ordering::Relaxed);
    }

    /// Changes `connect_backoff` and `connect_backoff_max` from the next
    /// failed connect on.
    pub fn set_connect_backoff(&self, connect_backoff: Duration, connect_backoff_max: Duration) {
        let tunables = &self.shared().tunables;
        tunables
            .connect_backoff
            .store(encode(Some(connect_backoff)), Ordering::Relaxed);
        tunables
            .connect_backoff_max
            .store(encode(Some(connect_backoff_max)), Ordering::Relaxed);
    }

    /// Changes `validation_timeout` for checks that start from now on.
    pub fn set_validation_timeout(&self, validation_timeout: Duration) {
        self.shared()
            .tunables
            .validation_timeout
            .store(encode(Some(validation_timeout)), Ordering::Relaxed);
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
        // The future's own reference becomes the handle's: one `Arc` count
        // per checkout, not two.
        let mut shared = self;
        let start = Instant::now();
        let deadline = start + wait;
        let mut now = start;
        // Our place in line, kept across retries after a failed check.
        let mut ticket = None;
        loop {
            // The waker is needed only to queue, but then under the lock.
            let taken = poll_fn(|cx| {
                Poll::Ready(shared.take_or_queue(&mut ticket, start, deadline, cx.waker()))
            })
            .await?;
            let live = match taken {
                Taken::Idle(live) => live,
                Taken::Wait(id, slot) => {
                    let live = shared.wait(id, slot, start).await?;
                    now = Instant::now();
                    live
                }
            };
            let mut pooled = Pooled::new(shared, live, now);
            if let Some(ready) = Self::prepare(&mut pooled, now).await {
                // Checking the connection and running `on_checkout` were
                // part of the caller's wait: it holds the connection (for
                // `in_use_time` and leak detection) only from here.
                pooled.checked_out_at = ready;
                let shared = &pooled.shared;
                // An immediate hit reads the clock once: `ready` is `start`.
                let waited = if ready == start {
                    Duration::ZERO
                } else {
                    ready - start
                };
                shared.recorder.acquire_wait.record(waited);
                if let Some(leaks) = &shared.leaks {
                    pooled.leak_key = Some(leaks.register(ready, caller));
                }
                return Ok(pooled);
            }
            // Closed in `prepare`: only the rare retry pays for a clone.
            shared = pooled.shared.clone();
            drop(pooled);
            now = Instant::now();
        }
    }

    /// Takes an idle connection if nobody is ahead of the caller, or queues
    /// it (under its ticket, kept across retries) with `waker` to be woken
    /// when served; or refuses it at once.
    fn take_or_queue(
        self: &Arc<Self>,
        ticket: &mut Option<u64>,
        start: Instant,
        deadline: Instant,
        waker: &Waker,
    ) -> Result<Taken<M::Connection>, Error> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        let retrying = ticket.is_some();
        let id = *ticket.get_or_insert_with(|| st.take_ticket());
        // Only a caller retrying after a failed check can be ahead of a
        // waiter.
        let first_in_line = match st.waiters.front() {
            Some(waiter) => id < waiter.id,
            None => true,
        };
        if first_in_line {
            // Only when nobody is ahead of us: a newcomer must not overtake
            // the queue (returned connections go to waiters first, so this
            // is rare, but validation can race with it).
            if let Some(live) = st.idle.pop_back() {
                st.in_use += 1;
                return Ok(Taken::Idle(live));
            }
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
        // While the backend refuses connections and the pool has none, a
        // fail-fast pool answers at once instead of queueing (PgBouncer's
        // server_login_retry), and asks for one probe to find out when it
        // is back.
        if self.config.fail_fast && st.consecutive_failures > 0 && st.has_no_connections() {
            st.probe_wanted = true;
            self.spawn_connectors(&mut st);
            let last_error = st.last_error.clone();
            drop(st);
            Recorder::count(&self.recorder.counters.rejected);
            return Err(Error::Unavailable { last_error });
        }
        let (slot, watch) = st.waiters.push(id, start, deadline, waker);
        self.spawn_connectors(&mut st);
        drop(st);
        match watch {
            Watch::Nothing => {}
            Watch::Tell => self.deadline_told.notify_one(),
            Watch::Start => {
                self.runtime.spawn(deadline::run(
                    Arc::downgrade(self),
                    self.deadline_told.clone(),
                ));
            }
        }
        Ok(Taken::Wait(id, slot))
    }

    async fn wait(
        self: &Arc<Self>,
        id: u64,
        slot: usize,
        start: Instant,
    ) -> Result<Live<M::Connection>, Error> {
        let mut guard = WaitGuard {
            shared: self,
            id,
            slot,
            done: false,
        };
        // The waker was registered when queueing, in this same poll: the
        // first look would find nothing, so it is skipped (a hand-off in
        // between has already woken this task again).
        let mut queued_now = true;
        let outcome = poll_fn(|cx| {
            if std::mem::take(&mut queued_now) {
                return Poll::Pending;
            }
            match self.state.lock().waiters.poll(slot, cx.waker()) {
                Some(outcome) => Poll::Ready(outcome),
                None => Poll::Pending,
            }
        })
        .await;
        guard.done = true;
        match outcome {
            Outcome::Conn(live) => Ok(live),
            Outcome::Failed(err) => {
                Recorder::count(&self.recorder.counters.rejected);
                Err(Error::Unavailable {
                    last_error: Some(err),
                })
            }
            Outcome::Closed => Err(Error::Closed),
            Outcome::TimedOut => {
                Recorder::count(&self.recorder.counters.timeouts);
                Err(self.timeout_error(start))
            }
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
    async fn prepare(pooled: &mut Pooled<M>, now: Instant) -> Option<Instant> {
        // A get() cancelled during the check or hook must not return a
        // connection in an unknown state to the pool.
        pooled.close_on_drop = Some(CloseReason::FailedCheck);
        let meta = pooled.meta();
        if meta.is_expired(now) {
            pooled.close(CloseReason::Lifetime);
            return None;
        }
        // Borrowing the handle's fields apart lets the pool's settings be
        // read while its connection is lent to the check or the hook.
        let Pooled { live, shared, .. } = &mut *pooled;
        let live = live
            .as_mut()
            .expect("a Pooled holds its connection until it is consumed");
        let needs_check = shared
            .tunables
            .validate_after()
            .is_some_and(|after| now.saturating_duration_since(meta.last_active) >= after);
        let mut ready = now;
        let mut refused = false;
        if needs_check {
            let check = shared.manager.check(&mut live.conn);
            match timeout(shared.tunables.validation_timeout(), check).await {
                Ok(Ok(())) => {
                    ready = Instant::now();
                    live.meta.last_active = ready;
                }
                Ok(Err(err)) => {
                    tracing::debug!(pool = %shared.config.name, conn = meta.id, error = %err, "connection failed its check before checkout");
                    refused = true;
                }
                Err(_) => {
                    tracing::debug!(pool = %shared.config.name, conn = meta.id, "connection check timed out before checkout");
                    refused = true;
                }
            }
        }
        if !refused {
            if let Some(hook) = &shared.hooks.on_checkout {
                let outcome = hook(&mut live.conn).await;
                ready = Instant::now();
                if let Err(err) = outcome {
                    tracing::debug!(pool = %shared.config.name, conn = meta.id, error = %err, "on_checkout hook refused connection");
                    refused = true;
                }
            }
        }
        if refused {
            pooled.close(CloseReason::FailedCheck);
            return None;
        }
        live.meta.uses += 1;
        pooled.close_on_drop = None;
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
                let waiter = st.hand_off(live);
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
            (st.waiters.end_all(|| Outcome::Closed), idle)
        };
        for waiter in waiters {
            waiter.wake();
        }
        for live in idle {
            self.close_conn(live, CloseReason::Closed);
        }
        self.changed.notify_waiters();
        // It exits when it sees the pool closed.
        self.deadline_told.notify_one();
    }
}

/// Keeps a queued waiter honest when its `get()` is cancelled: either it is
/// still queued and leaves the queue, or a connection was already handed to
/// it and goes back to the pool (to the next waiter, most likely).
struct WaitGuard<'a, M: Manager> {
    shared: &'a Arc<Shared<M>>,
    id: u64,
    slot: usize,
    done: bool,
}

impl<M: Manager> Drop for WaitGuard<'_, M> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let handed = self.shared.state.lock().waiters.abandon(self.id, self.slot);
        if let Some(live) = handed {
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

/// `None` for a setting that is off.
const OFF: u64 = u64::MAX;

fn encode(value: Option<Duration>) -> u64 {
    value.map_or(OFF, |d| u64::try_from(d.as_nanos()).unwrap_or(OFF - 1))
}

fn decode(value: u64) -> Option<Duration> {
    (value != OFF).then(|| Duration::from_nanos(value))
}

/// The settings a running pool can change, read without a lock on the
/// paths that use them.
pub(crate) struct Tunables {
    idle_timeout: AtomicU64,
    validate_after: AtomicU64,
    max_lifetime: AtomicU64,
    validation_timeout: AtomicU64,
    connect_timeout: AtomicU64,
    connect_backoff: AtomicU64,
    connect_backoff_max: AtomicU64,
    /// `min_idle` as set, before [`Pool::resize`] caps it at `max_size`.
    min_idle: AtomicUsize,
}

impl Tunables {
    fn new(config: &Config) -> Self {
        Self {
            idle_timeout: AtomicU64::new(encode(config.idle_timeout)),
            validate_after: AtomicU64::new(encode(config.validate_after)),
            max_lifetime: AtomicU64::new(encode(config.max_lifetime)),
            validation_timeout: AtomicU64::new(encode(Some(config.validation_timeout))),
            connect_timeout: AtomicU64::new(encode(Some(config.connect_timeout))),
            connect_backoff: AtomicU64::new(encode(Some(config.connect_backoff))),
            connect_backoff_max: AtomicU64::new(encode(Some(config.connect_backoff_max))),
            min_idle: AtomicUsize::new(config.min_idle),
        }
    }

    pub(crate) fn validation_timeout(&self) -> Duration {
        decode(self.validation_timeout.load(Ordering::Relaxed)).unwrap_or(Duration::MAX)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        decode(self.connect_timeout.load(Ordering::Relaxed)).unwrap_or(Duration::MAX)
    }

    /// The first and the largest delay between failed connects.
    pub(crate) fn connect_backoff(&self) -> (Duration, Duration) {
        let base = decode(self.connect_backoff.load(Ordering::Relaxed)).unwrap_or_default();
        let max = decode(self.connect_backoff_max.load(Ordering::Relaxed)).unwrap_or_default();
        (base, max)
    }

    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        decode(self.idle_timeout.load(Ordering::Relaxed))
    }

    pub(crate) fn validate_after(&self) -> Option<Duration> {
        decode(self.validate_after.load(Ordering::Relaxed))
    }

    pub(crate) fn max_lifetime(&self) -> Option<Duration> {
        decode(self.max_lifetime.load(Ordering::Relaxed))
    }
}

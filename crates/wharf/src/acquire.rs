//! The acquire path: taking an idle connection or queueing for one, waiting,
//! and making the connection fit to hand out.

use std::future::{poll_fn, Future};
use std::panic::Location;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::time::{timeout, Instant};

use crate::hooks::CloseReason;
use crate::metrics::Recorder;
use crate::pool::Shared;
use crate::queue::{Live, Meta};
use crate::wait_timer::WaitTimer;
use crate::waiters::{Outcome, SlotRef};
use crate::{Error, Manager, Pooled};

enum Taken<C> {
    Idle(Live<C>),
    /// Queued.
    Wait(Queued<C>),
}

impl<M: Manager> Shared<M> {
    /// Takes a connection within `wait`, handing the pool's `Arc` back with
    /// an error: for the breaker and lanes, which have outcomes to record
    /// after a failure, without an extra reference count per checkout.
    ///
    /// `lane` is the lane whose place the caller holds: the handle gives it
    /// back, and so does a `get_in` dropped while it waits here. After an
    /// error the place is still the caller's to give back.
    // A function returning an `async` block, not an `async fn`: the block
    // uses its arguments where they were captured, where an `async fn`
    // keeps a second copy of each in its state. A waiting caller's future
    // is this one nested in its own, and every byte of it is copied.
    pub(crate) fn acquire_keeping_pool(
        self: Arc<Self>,
        wait: Duration,
        caller: &'static Location<'static>,
        lane: Option<usize>,
    ) -> impl Future<Output = Result<Pooled<M>, (Arc<Self>, Error)>> + Send {
        // The future's own reference becomes the handle's: one `Arc` count
        // per checkout, not two.
        let mut shared = self;
        async move {
            let start = Instant::now();
            let mut now = start;
            // Our place in line, kept across retries after a failed check.
            let mut ticket = None;
            loop {
                // The waker is needed only to queue, but then under the lock.
                let taken = poll_fn(|cx| {
                    Poll::Ready(shared.take_or_queue(&mut ticket, start, wait, cx.waker()))
                })
                .await;
                let live = match taken {
                    Ok(Taken::Idle(live)) => live,
                    Ok(Taken::Wait(queued)) => {
                        match shared.wait(queued, start, lane).await {
                            // The hand-off's instant: no clock read here.
                            Ok((live, served_at)) => {
                                now = served_at;
                                live
                            }
                            Err(err) => return Err((shared, err)),
                        }
                    }
                    Err(err) => return Err((shared, err)),
                };
                let mut pooled = Pooled::new(shared, live, now);
                pooled.lane_place = lane;
                let prepared = match Self::prepare_at_once(&mut pooled, now) {
                    Prepared::Ready => Ok((pooled, now)),
                    Prepared::Closed => Err(pooled),
                    // Boxed: a check's future (its query, its timeout's
                    // timer) would otherwise take room in every waiting
                    // caller's future, for a path most checkouts never take;
                    // a checkout that takes it waits for a round trip anyway.
                    Prepared::Later => Box::pin(Self::prepare(pooled, now)).await,
                };
                match prepared {
                    Ok((mut pooled, ready)) => {
                        // Checking the connection and running `on_checkout`
                        // were part of the caller's wait: it holds the
                        // connection (for `in_use_time` and leak detection)
                        // only from here.
                        let Pooled { live, shared, .. } = &mut pooled;
                        let live = live.as_mut().expect("just prepared");
                        live.checked_out_at = ready;
                        // An immediate hit reads the clock once: `ready` is
                        // `start`.
                        let waited = if ready == start {
                            Duration::ZERO
                        } else {
                            ready - start
                        };
                        shared.recorder.acquire_wait.record(waited);
                        if let Some(leaks) = &shared.leaks {
                            live.leak_key = Some(leaks.register(ready, caller));
                        }
                        return Ok(pooled);
                    }
                    Err(mut pooled) => {
                        // Closed: only the rare retry pays for a clone.
                        shared = pooled.shared.clone();
                        // The place stays the caller's for the next try.
                        pooled.lane_place = None;
                        drop(pooled);
                        now = Instant::now();
                    }
                }
            }
        }
    }

    /// An idle connection that can be handed out as it is, now: `None`
    /// when the caller would have to wait in line, a connection would have
    /// to be opened, checked (`validate_after`) or passed to `on_checkout`,
    /// or a circuit breaker has to admit the call. Nothing is queued or
    /// opened then, and nothing is taken.
    pub(crate) fn take_ready(
        self: &Arc<Self>,
        caller: &'static Location<'static>,
    ) -> Option<Pooled<M>> {
        if self.breaker.is_some() || self.hooks.on_checkout.is_some() {
            return None;
        }
        let now = Instant::now();
        let live = {
            let mut st = self.state.lock();
            // Returned connections go to waiters, not to the idle set, so
            // idle ones and waiters meet only in a race with a check; then
            // the waiters keep their turn.
            if st.closed || !st.waiters.is_empty() {
                return None;
            }
            let meta = st.idle.back()?.meta;
            if self.needs_check(&meta, now) || meta.is_expired(now) {
                return None;
            }
            st.in_use += 1;
            st.idle.pop_back()?
        };
        let mut pooled = Pooled::new(self.clone(), live, now);
        pooled.live_mut().meta.uses += 1;
        self.recorder.acquire_wait.record(Duration::ZERO);
        if let Some(leaks) = &self.leaks {
            pooled.live_mut().leak_key = Some(leaks.register(now, caller));
        }
        Some(pooled)
    }

    /// Takes an idle connection if nobody is ahead of the caller, or queues
    /// it (under its ticket, kept across retries) with `waker` to be woken
    /// when served; or refuses it at once, or (on a retry after a failed
    /// check) tells it that its deadline has passed.
    fn take_or_queue(
        self: &Arc<Self>,
        ticket: &mut Option<u64>,
        start: Instant,
        wait: Duration,
        waker: &Waker,
    ) -> Result<Taken<M::Connection>, Error> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        let retrying = ticket.is_some();
        // A connection that failed its check may have taken the caller past
        // its deadline: it is not served after that, from the idle set any
        // more than by a hand-off.
        if retrying && Instant::now() >= deadline_of(start, wait) {
            drop(st);
            Recorder::count(&self.recorder.counters.timeouts);
            return Err(self.timeout_error(start));
        }
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
        // Only a caller that waits needs its deadline worked out.
        let deadline = deadline_of(start, wait);
        let slot = st.waiters.push(id, start, deadline, waker);
        let queued = Queued {
            id,
            slot,
            deadline,
            slot_ref: st.waiters.slot_ref(slot),
            timer: st.waiters.take_timer(slot),
        };
        self.spawn_connectors(&mut st);
        drop(st);
        Ok(Taken::Wait(queued))
    }

    /// Waits in line until served, or until `deadline`, which this wait
    /// keeps itself: nothing else has to run on time for it to hold.
    /// Returns the connection and when it was handed over.
    ///
    /// A function returning an `async` block, as `acquire_keeping_pool`.
    #[allow(clippy::manual_async_fn)] // an `async fn` copies its arguments
    fn wait(
        self: &Arc<Self>,
        Queued {
            id,
            slot,
            deadline,
            slot_ref,
            timer,
        }: Queued<M::Connection>,
        start: Instant,
        lane: Option<usize>,
    ) -> impl Future<Output = Result<(Live<M::Connection>, Instant), Error>> + Send + '_ {
        async move {
            let mut guard = WaitGuard {
                shared: self,
                id,
                slot,
                lane,
                timer: None,
                done: false,
            };
            // Made or set outside the lock, and only once the guard exists:
            // should it panic (a runtime without timers), the guard takes the
            // waiter out of the queue instead of leaving it to be served.
            guard.timer = Some(WaitTimer::for_wait(timer, deadline));
            // The waker the slot holds: the one this task queued with, in
            // this same poll.
            let mut registered = None;
            let outcome = poll_fn(|cx| {
                // Safety: this wait's own slot, in the pool whose `Arc` this
                // future holds, and nothing has ended the wait yet.
                if let Some(outcome) = unsafe { slot_ref.pick_up(&mut guard.timer) } {
                    guard.done = true;
                    return Poll::Ready(outcome);
                }
                let waker = waker_identity(cx.waker());
                if registered
                    .replace(waker)
                    .is_some_and(|before| before != waker)
                {
                    // Moved to another task's waker (a `select!` in between,
                    // say): the slot must wake this one.
                    let mut st = self.state.lock();
                    if let Some(outcome) = st.waiters.poll(slot, cx.waker()) {
                        st.waiters.keep_timer(slot, guard.timer.take());
                        guard.done = true;
                        return Poll::Ready(outcome);
                    }
                }
                // Polled on every wake-up (and first when queueing, which arms
                // it), and only after the slot: a connection handed over before
                // the deadline is the caller's even if this task runs after it.
                let timer = guard.timer.as_mut().expect("kept until the wait ends");
                match timer.poll_deadline(deadline, cx) {
                    Poll::Ready(()) => {
                        let mut st = self.state.lock();
                        let outcome = st.waiters.time_out(id, slot);
                        st.waiters.keep_timer(slot, guard.timer.take());
                        guard.done = true;
                        Poll::Ready(outcome)
                    }
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match outcome {
                Outcome::Conn(live, served_at) => Ok((live, served_at)),
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
    }

    pub(crate) fn timeout_error(&self, start: Instant) -> Error {
        let last_error = self.state.lock().last_error.clone();
        Error::Timeout {
            waited: start.elapsed(),
            status: self.status(),
            last_error,
        }
    }

    /// Makes a connection just taken fit to hand out, if that needs no
    /// waiting: `Ready` (counted as one more use) when it has not expired,
    /// needs no check and there is no `on_checkout` hook, `Closed` when it
    /// has expired, `Later` when [`prepare`](Self::prepare) has to run.
    #[inline]
    fn prepare_at_once(pooled: &mut Pooled<M>, now: Instant) -> Prepared {
        let Pooled { live, shared, .. } = &mut *pooled;
        let live = live
            .as_mut()
            .expect("a Pooled holds its connection until it is consumed");
        if live.meta.is_expired(now) {
            // Never in the caller's hands: no time in use to count.
            live.close_on_drop = Some(CloseReason::FailedCheck);
            pooled.close(CloseReason::Lifetime);
            return Prepared::Closed;
        }
        if shared.hooks.on_checkout.is_some() || shared.needs_check(&live.meta, now) {
            return Prepared::Later;
        }
        live.meta.uses += 1;
        Prepared::Ready
    }

    fn needs_check(&self, meta: &Meta, now: Instant) -> bool {
        self.tunables
            .validate_after()
            .is_some_and(|after| now.saturating_duration_since(meta.last_active) >= after)
    }

    /// Checks a connection just taken if it sat idle long enough, and
    /// passes it to `on_checkout`. Returns it with when it became ready, or
    /// (having closed it) the pool, for the caller to try again.
    async fn prepare(
        mut pooled: Pooled<M>,
        now: Instant,
    ) -> Result<(Pooled<M>, Instant), Pooled<M>> {
        // A get() cancelled during the check or hook must not return a
        // connection in an unknown state to the pool.
        pooled.live_mut().close_on_drop = Some(CloseReason::FailedCheck);
        let meta = pooled.meta();
        // Borrowing the handle's fields apart lets the pool's settings be
        // read while its connection is lent to the check or the hook.
        let Pooled { live, shared, .. } = &mut pooled;
        let live = live
            .as_mut()
            .expect("a Pooled holds its connection until it is consumed");
        let mut ready = now;
        let mut refused = false;
        if Self::needs_check(shared, &meta, now) {
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
            return Err(pooled);
        }
        live.meta.uses += 1;
        live.close_on_drop = None;
        Ok((pooled, ready))
    }
}

/// What a connection just taken needs before it is handed out.
enum Prepared {
    Ready,
    /// Expired, and closed.
    Closed,
    /// A check or the `on_checkout` hook: [`Shared::prepare`].
    Later,
}

/// A caller just queued: its ticket, its slot (by index, and its own view
/// of it), its deadline, and the timer the slot kept from its last wait.
struct Queued<C> {
    id: u64,
    slot: usize,
    deadline: Instant,
    slot_ref: SlotRef<C>,
    timer: Option<WaitTimer>,
}

/// What `Waker::will_wake` compares, kept as plain numbers (the future
/// stays `Send`) to tell whether the slot's waker is still this task's
/// without the lock.
fn waker_identity(waker: &Waker) -> (usize, usize) {
    (
        waker.data() as usize,
        std::ptr::from_ref(waker.vtable()) as usize,
    )
}

/// Keeps a queued waiter honest when its `get()` is cancelled: either it is
/// still queued and leaves the queue, or a connection was already handed to
/// it and goes back to the pool (to the next waiter, most likely).
struct WaitGuard<'a, M: Manager> {
    shared: &'a Arc<Shared<M>>,
    id: u64,
    slot: usize,
    /// The lane place of a `get_in`, given back if it is dropped.
    lane: Option<usize>,
    /// The wait's timer, left in the slot when the wait ends.
    timer: Option<WaitTimer>,
    done: bool,
}

impl<M: Manager> Drop for WaitGuard<'_, M> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let handed = {
            let mut st = self.shared.state.lock();
            let handed = st.waiters.abandon(self.id, self.slot);
            st.waiters.keep_timer(self.slot, self.timer.take());
            handed
        };
        if let Some(live) = handed {
            self.shared.checkin(live, None, None);
        }
        if let Some(lane) = self.lane {
            self.shared.lanes[lane].leave();
        }
    }
}

/// `start + wait`, or a deadline a century away for a wait too long to add
/// (`Duration::MAX` as "no limit"): never a panic under the pool's lock.
fn deadline_of(start: Instant, wait: Duration) -> Instant {
    start
        .checked_add(wait)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600))
}

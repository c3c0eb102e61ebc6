//! The idle set and the waiter queue: the state behind the pool's one lock.
//!
//! Everything here runs with the lock held, so nothing here awaits, runs user
//! code, or drops a connection (dropping may close a socket): callers take
//! connections out and deal with them after unlocking.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::breaker::Call;
use crate::waiters::Waiters;
use crate::{CloseReason, ConnectError};

/// A connection with the bookkeeping the pool keeps about it, boxed: it
/// moves from the idle set to a waiter's slot to a caller's [`Pooled`]
/// handle and back, and as one pointer each move costs a word, not a
/// hundred-odd bytes (the handle and the checkout's future stay small).
///
/// [`Pooled`]: crate::Pooled
pub(crate) type Live<C> = Box<Record<C>>;

pub(crate) struct Record<C> {
    pub(crate) conn: C,
    pub(crate) meta: Meta,
    /// The rest is about the checkout the connection is out for (unset
    /// while it is idle), kept here rather than in the handle.
    pub(crate) checked_out_at: Instant,
    /// Its entry in the leak registry.
    pub(crate) leak_key: Option<usize>,
    /// Set while the pool is still checking the connection, so that a
    /// `get()` cancelled mid-check closes it instead of returning it
    /// unverified.
    pub(crate) close_on_drop: Option<CloseReason>,
    /// The circuit breaker's record of this checkout, finished when the
    /// connection comes back.
    pub(crate) call: Option<Call>,
}

impl<C> Record<C> {
    pub(crate) fn new(conn: C, meta: Meta) -> Live<C> {
        Box::new(Record {
            conn,
            meta,
            checked_out_at: meta.created_at,
            leak_key: None,
            close_on_drop: None,
            call: None,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) id: u64,
    pub(crate) created_at: Instant,
    /// When `max_lifetime` (less this connection's jitter) runs out.
    pub(crate) expires_at: Option<Instant>,
    /// The fraction of `max_lifetime` this connection gets (jitter), kept
    /// so a changed `max_lifetime` can be applied with the same spread.
    pub(crate) lifetime_share: f64,
    pub(crate) uses: u64,
    /// Last time the connection was known to work: returned after use, or
    /// passed a check. Drives `validate_after` and `keepalive_interval`.
    pub(crate) last_active: Instant,
    /// When it last entered the idle set. Drives `idle_timeout`.
    pub(crate) idle_since: Instant,
}

impl Meta {
    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// What users are told about the connection, as of `now`.
    pub(crate) fn info(&self, now: Instant) -> crate::ConnInfo {
        crate::ConnInfo {
            id: self.id,
            age: now.saturating_duration_since(self.created_at),
            uses: self.uses,
            idle_for: now.saturating_duration_since(self.idle_since),
        }
    }
}

pub(crate) struct State<C> {
    /// Idle connections; the back is the most recently returned, so reuse
    /// pops from the back (MRU keeps the working set small and lets the
    /// rest age out) and eviction looks at the front.
    pub(crate) idle: VecDeque<Live<C>>,
    /// Callers waiting, oldest first.
    pub(crate) waiters: Waiters<C>,
    next_waiter_id: u64,
    /// Every connection counted against `max_size`: idle, in use, being
    /// opened, or out for a keepalive check.
    pub(crate) size: usize,
    pub(crate) in_use: usize,
    pub(crate) opening: usize,
    pub(crate) testing: usize,
    /// Connector tasks alive (each opens connections one after another).
    pub(crate) connectors: usize,
    pub(crate) max_size: usize,
    /// Extra connections allowed once the oldest waiter has waited
    /// `reserve_timeout` (PgBouncer's reserve pool).
    pub(crate) reserve_size: usize,
    pub(crate) reserve_timeout: Duration,
    pub(crate) min_idle: usize,
    /// Connections kept open in total (`Config::min_size`).
    pub(crate) min_size: usize,
    pub(crate) closed: bool,
    /// Failed connects since the last success; non-zero means the backend is
    /// considered down and only one probe runs at a time.
    pub(crate) consecutive_failures: u32,
    pub(crate) next_attempt_at: Option<Instant>,
    pub(crate) last_error: Option<ConnectError>,
    /// A `fail_fast` pool turned a caller away: one more connect attempt
    /// (after the backoff) finds out whether the backend is back.
    pub(crate) probe_wanted: bool,
    /// Requests for a unit queued at the shared budget (each stands for a
    /// connection on its way, like `opening`).
    pub(crate) budget_queued: usize,
}

impl<C> State<C> {
    #[cfg(test)]
    pub(crate) fn new(max_size: usize, min_idle: usize) -> Self {
        Self::with_reserve(max_size, min_idle, 0, Duration::ZERO)
    }

    pub(crate) fn with_reserve(
        max_size: usize,
        min_idle: usize,
        reserve_size: usize,
        reserve_timeout: Duration,
    ) -> Self {
        Self {
            idle: VecDeque::with_capacity(max_size),
            waiters: Waiters::new(),
            next_waiter_id: 0,
            size: 0,
            in_use: 0,
            opening: 0,
            testing: 0,
            connectors: 0,
            max_size,
            reserve_size,
            reserve_timeout,
            min_idle,
            min_size: 0,
            closed: false,
            consecutive_failures: 0,
            next_attempt_at: None,
            last_error: None,
            probe_wanted: false,
            budget_queued: 0,
        }
    }

    /// A place in line, handed out in order of arrival. A caller keeps its
    /// ticket for the whole `get()`, so one whose connection failed its check
    /// queues again in its old place rather than behind later arrivals.
    pub(crate) fn take_ticket(&mut self) -> u64 {
        let id = self.next_waiter_id;
        self.next_waiter_id += 1;
        id
    }

    /// Gives a connection that is in nobody's hands to the oldest waiter
    /// whose deadline is still ahead at `now`, or else to the idle set, and
    /// returns the waiter's waker to wake once the lock is released. No
    /// barging: while anyone waits in time, a connection never reaches the
    /// idle set; and no caller is served after its deadline.
    #[must_use = "the waiter must be woken after unlocking"]
    #[inline]
    pub(crate) fn hand_off(&mut self, live: Live<C>, now: Instant) -> Option<Waker> {
        if self.waiters.is_empty() {
            self.idle.push_back(live);
            return None;
        }
        match self.waiters.serve(live, now) {
            Ok(waker) => {
                self.in_use += 1;
                waker
            }
            Err(live) => {
                self.idle.push_back(live);
                None
            }
        }
    }

    /// Connections wanted now: one per waiter plus whatever tops the idle
    /// set up to `min_idle`, or as many as bring the open ones up to
    /// `min_size` (which the waiters' connections count towards),
    /// whichever is more.
    pub(crate) fn demand(&self) -> usize {
        let open = self.size.saturating_sub(self.opening);
        let for_callers = self.waiters.len() + self.min_idle.saturating_sub(self.idle.len());
        let for_min_size = self.min_size.saturating_sub(open);
        for_callers.max(for_min_size) + usize::from(self.probe_wanted)
    }

    /// Whether the pool has no connection at all besides those being opened.
    pub(crate) fn has_no_connections(&self) -> bool {
        self.size == self.opening
    }

    /// Whether another connection should be opened now: someone needs one
    /// that no connect in flight will provide, and there is room.
    pub(crate) fn wants_connection(&self) -> bool {
        !self.closed
            && self.size < self.ceiling()
            && self.demand() > self.opening + self.budget_queued
    }

    /// Whether a connection coming back (or just opened) would leave the
    /// pool above its size: beyond `max_size` after a shrink, or a reserve
    /// connection nobody is waiting for. A reserve connection goes on
    /// serving waiters while there are any.
    pub(crate) fn over_size(&self) -> bool {
        self.size > self.max_size
            && (self.waiters.is_empty() || self.size > self.max_size + self.reserve_size)
    }

    /// How many connections the pool may have right now: `max_size`, plus
    /// the reserve while the oldest waiter has waited `reserve_timeout`.
    pub(crate) fn ceiling(&self) -> usize {
        let reserve_open = self.reserve_size > 0
            && self
                .waiters
                .front()
                .is_some_and(|w| w.since.elapsed() >= self.reserve_timeout);
        if reserve_open {
            self.max_size + self.reserve_size
        } else {
            self.max_size
        }
    }

    /// Takes idle connections beyond `max_size` out, oldest first, after a
    /// resize down.
    pub(crate) fn take_excess_idle(&mut self) -> Vec<Live<C>> {
        self.take_idle(self.size.saturating_sub(self.max_size))
    }

    /// Takes up to `max` idle connections out of the pool, oldest first.
    pub(crate) fn take_idle(&mut self, max: usize) -> Vec<Live<C>> {
        let n = max.min(self.idle.len());
        self.size -= n;
        self.idle.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waiters::Outcome;

    fn live(id: u64) -> Live<u64> {
        let now = Instant::now();
        Record::new(
            id,
            Meta {
                id,
                created_at: now,
                expires_at: None,
                lifetime_share: 1.0,
                uses: 0,
                last_active: now,
                idle_since: now,
            },
        )
    }

    /// Queues a new caller at the back; returns its ticket and slot.
    fn push_waiter(st: &mut State<u64>) -> (u64, usize) {
        let id = st.take_ticket();
        (id, queue_waiter(st, id))
    }

    fn queue_waiter(st: &mut State<u64>, id: u64) -> usize {
        let far = Instant::now() + Duration::from_secs(60);
        st.waiters.push(id, Instant::now(), far, Waker::noop())
    }

    fn received(st: &mut State<u64>, slot: usize) -> Option<u64> {
        match st.waiters.poll(slot, Waker::noop()) {
            Some(Outcome::Conn(live, _)) => Some(live.conn),
            _ => None,
        }
    }

    #[tokio::test]
    async fn hand_off_serves_the_oldest_listening_waiter_first() {
        let mut st = State::<u64>::new(4, 0);
        let (gone_id, gone) = push_waiter(&mut st);
        let (_, first) = push_waiter(&mut st);
        let (second_id, second) = push_waiter(&mut st);
        assert!(st.waiters.abandon(gone_id, gone).is_none());
        let _ = st.hand_off(live(7), Instant::now());
        assert_eq!(received(&mut st, first), Some(7));
        assert_eq!(received(&mut st, second), None);
        assert_eq!(st.in_use, 1);
        assert!(st.waiters.abandon(second_id, second).is_none());
        assert!(st.waiters.is_empty());
        let _ = st.hand_off(live(8), Instant::now());
        assert_eq!(st.idle.len(), 1);
    }

    #[tokio::test]
    async fn a_waiter_giving_up_after_being_served_gets_the_connection_back_to_return() {
        let mut st = State::<u64>::new(1, 0);
        let (id, slot) = push_waiter(&mut st);
        assert!(
            st.hand_off(live(3), Instant::now()).is_some(),
            "its waker, to wake"
        );
        assert_eq!(st.waiters.abandon(id, slot).map(|l| l.conn), Some(3));
    }

    #[tokio::test]
    async fn demand_counts_waiters_and_min_idle_against_connects_in_flight() {
        let mut st = State::<u64>::new(2, 1);
        assert!(st.wants_connection());
        st.opening = 1;
        st.size = 1;
        assert!(!st.wants_connection());
        let _ = push_waiter(&mut st);
        assert!(st.wants_connection());
        st.size = 2;
        assert!(!st.wants_connection());
    }

    #[tokio::test]
    async fn a_caller_queued_again_under_its_ticket_is_served_before_later_arrivals() {
        let mut st = State::<u64>::new(1, 0);
        let early = st.take_ticket();
        let (later_id, later) = push_waiter(&mut st);
        let early_slot = queue_waiter(&mut st, early);
        assert_eq!(st.waiters.ids(), [early, later_id]);
        let _ = st.hand_off(live(1), Instant::now());
        assert_eq!(received(&mut st, early_slot), Some(1));
        assert_eq!(received(&mut st, later), None);
        // The queue stays sorted, so removal by id still works.
        assert!(st.waiters.abandon(later_id, later).is_none());
        assert!(st.waiters.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hand_off_passes_over_waiters_past_their_deadline_and_keeps_the_order() {
        let mut st = State::<u64>::new(2, 0);
        let now = Instant::now();
        let secs = Duration::from_secs;
        let ids: Vec<u64> = (0..4).map(|_| st.take_ticket()).collect();
        // Deadlines out of queue order, as `get_timeout` allows.
        let deadlines = [secs(5), secs(2), secs(9), secs(1)];
        let slots: Vec<usize> = ids
            .iter()
            .zip(deadlines)
            .map(|(&id, d)| st.waiters.push(id, now, now + d, Waker::noop()))
            .collect();

        // At 3 s the second waiter's deadline has gone: the first is served.
        assert!(st.hand_off(live(1), now + secs(3)).is_some());
        assert_eq!(received(&mut st, slots[0]), Some(1));
        // At 6 s the second is passed over, timed out; the third is served.
        assert!(st.hand_off(live(2), now + secs(6)).is_some());
        assert!(matches!(
            st.waiters.poll(slots[1], Waker::noop()),
            Some(Outcome::TimedOut)
        ));
        assert_eq!(received(&mut st, slots[2]), Some(2));
        assert_eq!(st.waiters.ids(), [ids[3]]);
        // At a deadline exactly, it is too late: the connection goes idle.
        assert!(st.hand_off(live(3), now + secs(1)).is_none());
        assert_eq!(st.idle.len(), 1);
        assert_eq!(st.in_use, 2);
        assert!(st.waiters.is_empty());
        assert!(matches!(
            st.waiters.time_out(ids[3], slots[3]),
            Outcome::TimedOut
        ));
    }

    #[tokio::test]
    async fn a_served_waiter_picks_up_its_connection_without_the_lock_and_only_then_frees_its_slot()
    {
        let mut st = State::<u64>::new(1, 0);
        let (_, served) = push_waiter(&mut st);
        let served_ref = st.waiters.slot_ref(served);
        let mut timer = None;
        // Safety (each `pick_up`): the slot's own caller, the state alive.
        assert!(unsafe { served_ref.pick_up(&mut timer) }.is_none());
        assert!(st.hand_off(live(5), Instant::now()).is_some());
        // Out of the queue but not picked up yet: a newcomer gets another
        // slot, never this one.
        let (later_id, later) = push_waiter(&mut st);
        assert_ne!(later, served);
        assert!(matches!(
            unsafe { served_ref.pick_up(&mut timer) },
            Some(Outcome::Conn(l, _)) if l.conn == 5
        ));
        assert!(st.waiters.abandon(later_id, later).is_none());
        // Picked up: free again, and the oldest freed slot is reused first.
        let (_, next) = push_waiter(&mut st);
        assert_eq!(next, served);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_timing_out_keeps_a_connection_handed_to_it_in_time_or_leaves_the_queue() {
        let mut st = State::<u64>::new(1, 0);
        let (served_id, served) = push_waiter(&mut st);
        let (left_id, left) = push_waiter(&mut st);
        assert!(st.hand_off(live(4), Instant::now()).is_some());
        // Its own deadline fires before it looked: the connection is its.
        assert!(matches!(
            st.waiters.time_out(served_id, served),
            Outcome::Conn(l, _) if l.conn == 4
        ));
        assert_eq!(st.waiters.ids(), [left_id]);
        assert!(matches!(
            st.waiters.time_out(left_id, left),
            Outcome::TimedOut
        ));
        assert!(st.waiters.is_empty());
        // Both slots are free again, and reused.
        let (_, again) = push_waiter(&mut st);
        let (_, again2) = push_waiter(&mut st);
        let mut reused = [again, again2];
        reused.sort_unstable();
        let mut freed = [served, left];
        freed.sort_unstable();
        assert_eq!(reused, freed);
    }
}

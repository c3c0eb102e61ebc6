//! The idle set and the waiter queue: the state behind the pool's one lock.
//!
//! Everything here runs with the lock held, so nothing here awaits, runs user
//! code, or drops a connection (dropping may close a socket): callers take
//! connections out and deal with them after unlocking.

use std::collections::VecDeque;

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::ConnectError;

/// A connection with the bookkeeping the pool keeps about it.
pub(crate) struct Live<C> {
    pub(crate) conn: C,
    pub(crate) meta: Meta,
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
}

/// What a waiter receives: a connection, or the connect error that made a
/// `fail_fast` pool give up on everyone waiting.
pub(crate) type Handoff<C> = Result<Live<C>, ConnectError>;

/// A caller parked in `get()`. The sender is how a connection is handed
/// straight to it; dropping the sender (on close) wakes it with `Closed`.
pub(crate) struct Waiter<C> {
    pub(crate) id: u64,
    pub(crate) tx: oneshot::Sender<Handoff<C>>,
    /// When it queued: the oldest waiter's wait unlocks the reserve.
    pub(crate) since: Instant,
}

pub(crate) struct State<C> {
    /// Idle connections; the back is the most recently returned, so reuse
    /// pops from the back (MRU keeps the working set small and lets the
    /// rest age out) and eviction looks at the front.
    pub(crate) idle: VecDeque<Live<C>>,
    /// Callers waiting, oldest first. Ids increase front to back.
    pub(crate) waiters: VecDeque<Waiter<C>>,
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
    pub(crate) closed: bool,
    /// Failed connects since the last success; non-zero means the backend is
    /// considered down and only one probe runs at a time.
    pub(crate) consecutive_failures: u32,
    pub(crate) next_attempt_at: Option<Instant>,
    pub(crate) last_error: Option<ConnectError>,
    /// A `fail_fast` pool turned a caller away: one more connect attempt
    /// (after the backoff) finds out whether the backend is back.
    pub(crate) probe_wanted: bool,
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
            waiters: VecDeque::new(),
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
            closed: false,
            consecutive_failures: 0,
            next_attempt_at: None,
            last_error: None,
            probe_wanted: false,
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

    /// Queues a caller under its ticket: behind everyone who arrived before
    /// it, ahead of everyone who arrived after (so the queue stays sorted).
    pub(crate) fn queue_waiter(
        &mut self,
        id: u64,
        since: Instant,
    ) -> oneshot::Receiver<Handoff<C>> {
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter { id, tx, since };
        // A newcomer has the largest ticket: only a retry needs a search.
        if self.waiters.back().is_none_or(|w| w.id < id) {
            self.waiters.push_back(waiter);
        } else {
            let pos = self.waiters.partition_point(|w| w.id < id);
            self.waiters.insert(pos, waiter);
        }
        rx
    }

    /// Queues a new caller at the back.
    #[cfg(test)]
    pub(crate) fn push_waiter(&mut self) -> (u64, oneshot::Receiver<Handoff<C>>) {
        let id = self.take_ticket();
        (id, self.queue_waiter(id, Instant::now()))
    }

    /// Removes a waiter that gave up. `false` means it was already served
    /// (or woken by close), so whatever was sent is in its receiver.
    pub(crate) fn remove_waiter(&mut self, id: u64) -> bool {
        match self.waiters.binary_search_by_key(&id, |w| w.id) {
            Ok(pos) => {
                self.waiters.remove(pos);
                true
            }
            Err(_) => false,
        }
    }

    /// Gives a connection that is in nobody's hands to the oldest waiter
    /// still listening, or else to the idle set. No barging: while anyone
    /// waits, a connection never reaches the idle set.
    pub(crate) fn hand_off(&mut self, mut live: Live<C>) {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.tx.send(Ok(live)) {
                Ok(()) => {
                    self.in_use += 1;
                    return;
                }
                // The waiter is gone; `send` gives back exactly what it was
                // given, so this is always the connection.
                Err(Ok(back)) => live = back,
                Err(Err(_)) => unreachable!("hand_off sends only connections"),
            }
        }
        self.idle.push_back(live);
    }

    /// Connections wanted now: one per waiter, plus whatever tops the idle
    /// set up to `min_idle`.
    pub(crate) fn demand(&self) -> usize {
        self.waiters.len()
            + self.min_idle.saturating_sub(self.idle.len())
            + usize::from(self.probe_wanted)
    }

    /// Whether the pool has no connection at all besides those being opened.
    pub(crate) fn has_no_connections(&self) -> bool {
        self.size == self.opening
    }

    /// Wakes every waiter with `err` (a `fail_fast` pool whose backend
    /// refuses connections).
    pub(crate) fn fail_waiters(&mut self, err: &ConnectError) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.tx.send(Err(err.clone()));
        }
    }

    /// Whether another connection should be opened now: someone needs one
    /// that no connect in flight will provide, and there is room.
    pub(crate) fn wants_connection(&self) -> bool {
        !self.closed && self.size < self.ceiling() && self.demand() > self.opening
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

    fn live(id: u64) -> Live<u64> {
        let now = Instant::now();
        Live {
            conn: id,
            meta: Meta {
                id,
                created_at: now,
                expires_at: None,
                lifetime_share: 1.0,
                uses: 0,
                last_active: now,
                idle_since: now,
            },
        }
    }

    #[tokio::test]
    async fn hand_off_serves_the_oldest_listening_waiter_first() {
        let mut st = State::<u64>::new(4, 0);
        let (_, gone) = st.push_waiter();
        let (_, mut first) = st.push_waiter();
        let (second_id, mut second) = st.push_waiter();
        drop(gone);
        st.hand_off(live(7));
        assert_eq!(
            first.try_recv().ok().and_then(Result::ok).map(|l| l.conn),
            Some(7)
        );
        assert!(second.try_recv().is_err());
        assert_eq!(st.in_use, 1);
        assert!(st.remove_waiter(second_id));
        assert!(!st.remove_waiter(second_id));
        st.hand_off(live(8));
        assert_eq!(st.idle.len(), 1);
    }

    #[tokio::test]
    async fn demand_counts_waiters_and_min_idle_against_connects_in_flight() {
        let mut st = State::<u64>::new(2, 1);
        assert!(st.wants_connection());
        st.opening = 1;
        st.size = 1;
        assert!(!st.wants_connection());
        let _rx = st.push_waiter();
        assert!(st.wants_connection());
        st.size = 2;
        assert!(!st.wants_connection());
    }

    #[tokio::test]
    async fn a_caller_queued_again_under_its_ticket_is_served_before_later_arrivals() {
        let mut st = State::<u64>::new(1, 0);
        let early = st.take_ticket();
        let (later_id, mut later) = st.push_waiter();
        let mut early_rx = st.queue_waiter(early, Instant::now());
        assert_eq!(
            st.waiters.iter().map(|w| w.id).collect::<Vec<_>>(),
            [early, later_id]
        );
        st.hand_off(live(1));
        assert_eq!(
            early_rx
                .try_recv()
                .ok()
                .and_then(Result::ok)
                .map(|l| l.conn),
            Some(1)
        );
        assert!(later.try_recv().is_err());
        // The queue stays sorted, so removal by id still works.
        assert!(st.remove_waiter(later_id));
    }
}

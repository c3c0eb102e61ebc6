//! The waiter queue: callers parked in `get()`, oldest first, and the slots
//! through which each is handed a connection or told why not.
//!
//! A waiter is a slot in a slab that lives under the pool's lock, plus the
//! waker of the task waiting on it. Compared with a channel per waiter this
//! allocates nothing once the slab has grown to the busiest queue seen, and
//! it lets the pool wake a waiter after unlocking instead of inside the
//! critical section every other caller is queueing on.
//!
//! Deadlines are kept twice over, and by nothing shared: each waiting
//! `get()` sleeps until its own deadline and then leaves the queue
//! ([`Waiters::time_out`]), and a hand-off passes over any waiter whose
//! deadline has already passed ([`Waiters::serve`]), so a caller whose
//! task runs late is told it timed out instead of being served late. (A
//! single pool task that timed everyone out did not hold: when it ran late,
//! every waiter overshot its deadline, and the next connection went to
//! one that had.)
//!
//! Everything here runs with the pool's lock held and only moves values
//! around; wakers are returned to be woken once the lock is released.

use std::collections::VecDeque;
use std::task::Waker;

use tokio::time::Instant;

use crate::queue::Live;
use crate::wait_timer::WaitTimer;
use crate::ConnectError;

/// How a wait ended, left in the waiter's slot for it to pick up.
pub(crate) enum Outcome<C> {
    /// Handed a connection, now counted as in use, at this instant (the
    /// waiter's wait ends then, and its use begins: it need not read the
    /// clock again).
    Conn(Live<C>, Instant),
    /// A `fail_fast` pool's backend refuses connections.
    Failed(ConnectError),
    /// The pool was closed.
    Closed,
    /// Its deadline passed.
    TimedOut,
}

/// A caller in line.
pub(crate) struct Waiter {
    /// Its ticket: ids increase front to back.
    pub(crate) id: u64,
    slot: usize,
    /// When it queued: the oldest waiter's wait unlocks the reserve.
    pub(crate) since: Instant,
    deadline: Instant,
}

struct Slot<C> {
    waker: Option<Waker>,
    outcome: Option<Outcome<C>>,
    /// The timer of the last wait in this slot, still set, for the next
    /// one to take over (see `wait_timer.rs`).
    timer: Option<WaitTimer>,
}

pub(crate) struct Waiters<C> {
    queue: VecDeque<Waiter>,
    slots: Vec<Slot<C>>,
    free: Vec<usize>,
}

impl<C> Waiters<C> {
    pub(crate) fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn front(&self) -> Option<&Waiter> {
        self.queue.front()
    }

    #[cfg(test)]
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.queue.iter().map(|w| w.id).collect()
    }

    /// Queues a caller under its ticket: behind everyone who arrived before
    /// it, ahead of everyone after (so the queue stays sorted). Returns its
    /// slot.
    pub(crate) fn push(
        &mut self,
        id: u64,
        since: Instant,
        deadline: Instant,
        waker: &Waker,
    ) -> usize {
        let slot = match self.free.pop() {
            Some(index) => {
                // A freed slot has neither waker nor outcome left.
                self.slots[index].waker = Some(waker.clone());
                index
            }
            None => {
                self.slots.push(Slot {
                    waker: Some(waker.clone()),
                    outcome: None,
                    timer: None,
                });
                self.slots.len() - 1
            }
        };
        let waiter = Waiter {
            id,
            slot,
            since,
            deadline,
        };
        // A newcomer has the largest ticket: only a retry needs a search.
        if self.queue.back().is_none_or(|w| w.id < id) {
            self.queue.push_back(waiter);
        } else {
            let pos = self.queue.partition_point(|w| w.id < id);
            self.queue.insert(pos, waiter);
        }
        slot
    }

    /// Hands `live` to the oldest waiter whose deadline is still ahead at
    /// `now` and returns its waker, or gives the connection back when no
    /// such waiter is left.
    ///
    /// Waiters passed over, their deadline gone, are told they timed out
    /// and leave the queue. They are not woken here: each one's own sleep
    /// until that deadline has fired or is about to, and wakes it.
    pub(crate) fn serve(&mut self, live: Live<C>, now: Instant) -> Result<Option<Waker>, Live<C>> {
        while let Some(waiter) = self.queue.pop_front() {
            if waiter.deadline > now {
                return Ok(self.finish(waiter.slot, Outcome::Conn(live, now)));
            }
            // Its waker stays in the slot for `poll` to replace or drop.
            self.slots[waiter.slot].outcome = Some(Outcome::TimedOut);
        }
        Err(live)
    }

    /// Ends every wait with `outcome` (close, or a `fail_fast` failure).
    pub(crate) fn end_all(&mut self, outcome: impl Fn() -> Outcome<C>) -> Vec<Waker> {
        let queue = std::mem::take(&mut self.queue);
        queue
            .into_iter()
            .filter_map(|w| self.finish(w.slot, outcome()))
            .collect()
    }

    /// The outcome of the wait in `slot`, freeing the slot, or `None` (with
    /// `waker` remembered) while it goes on.
    pub(crate) fn poll(&mut self, slot: usize, waker: &Waker) -> Option<Outcome<C>> {
        let entry = &mut self.slots[slot];
        match entry.outcome.take() {
            Some(outcome) => {
                entry.waker = None;
                self.free.push(slot);
                Some(outcome)
            }
            None => {
                if !entry.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    entry.waker = Some(waker.clone());
                }
                None
            }
        }
    }

    /// A waiter that gave up: leaves the queue if still in it, and gets back
    /// the connection if one was handed to it meanwhile (now the caller's to
    /// return).
    pub(crate) fn abandon(&mut self, id: u64, slot: usize) -> Option<Live<C>> {
        if let Ok(pos) = self.queue.binary_search_by_key(&id, |w| w.id) {
            self.queue.remove(pos);
        }
        let entry = &mut self.slots[slot];
        entry.waker = None;
        let outcome = entry.outcome.take();
        self.free.push(slot);
        match outcome {
            Some(Outcome::Conn(live, _)) => Some(live),
            _ => None,
        }
    }

    /// A waiter whose own deadline has passed: the outcome already left in
    /// its slot if there is one (a connection handed over in time is still
    /// the caller's), or else it leaves the queue timed out. Frees the slot.
    pub(crate) fn time_out(&mut self, id: u64, slot: usize) -> Outcome<C> {
        if let Ok(pos) = self.queue.binary_search_by_key(&id, |w| w.id) {
            self.queue.remove(pos);
        }
        let entry = &mut self.slots[slot];
        entry.waker = None;
        let outcome = entry.outcome.take().unwrap_or(Outcome::TimedOut);
        self.free.push(slot);
        outcome
    }

    /// The timer left in `slot` by its last wait, for the wait now in it.
    pub(crate) fn take_timer(&mut self, slot: usize) -> Option<WaitTimer> {
        self.slots[slot].timer.take()
    }

    /// Leaves a finished wait's timer in its (now free) slot for the next.
    pub(crate) fn keep_timer(&mut self, slot: usize, timer: Option<WaitTimer>) {
        self.slots[slot].timer = timer;
    }

    fn finish(&mut self, slot: usize, outcome: Outcome<C>) -> Option<Waker> {
        let entry = &mut self.slots[slot];
        entry.outcome = Some(outcome);
        entry.waker.take()
    }
}

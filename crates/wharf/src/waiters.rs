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
//! around; wakers are returned to be woken once the lock is released. The
//! one exception is the waiter picking up its outcome ([`SlotRef::pick_up`]):
//! a slot is boxed (its address stays put while the slab grows) and says by
//! an atomic state whose it is, so a served waiter takes its connection
//! without the lock, which every other caller and return is queueing on.
//!
//! A slot is `FREE` (the lock holder's, to queue the next caller in),
//! `WAITING` (the lock holder's: the caller is in the queue) or `READY`
//! (an outcome was left in it and the caller is out of the queue: the
//! caller's alone, until it makes the slot `FREE` again).

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
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

const FREE: u8 = 0;
const WAITING: u8 = 1;
const READY: u8 = 2;

/// Only ever reached through `&Slot` (the slab holds it in an `Arc`, for a
/// stable address and no unique owner): whose each cell is at any moment
/// follows from `state`, as the module documentation says.
struct Slot<C> {
    state: AtomicU8,
    /// Written under the lock while `WAITING`; the caller's once `READY`.
    outcome: UnsafeCell<Option<Outcome<C>>>,
    /// Only under the lock.
    waker: UnsafeCell<Option<Waker>>,
    /// The timer of the last wait in this slot, still set, for the next
    /// one to take over (see `wait_timer.rs`): put back by the caller
    /// before it frees the slot, taken under the lock when the slot is
    /// given to the next.
    timer: UnsafeCell<Option<WaitTimer>>,
}

// The cells are shared only as the states allow (see above).
unsafe impl<C: Send> Send for Slot<C> {}
unsafe impl<C: Send> Sync for Slot<C> {}

impl<C> Slot<C> {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(FREE),
            outcome: UnsafeCell::new(None),
            waker: UnsafeCell::new(None),
            timer: UnsafeCell::new(None),
        }
    }

    /// The waker cell. Safety: the caller holds the pool's lock.
    #[allow(clippy::mut_from_ref)]
    unsafe fn waker(&self) -> &mut Option<Waker> {
        unsafe { &mut *self.waker.get() }
    }

    /// Takes the outcome and frees the slot, leaving `timer` in it.
    /// Safety: the slot is `READY` and the caller's (it holds the lock, or
    /// it is the waiter and saw `READY`).
    unsafe fn take_and_free(&self, timer: Option<WaitTimer>) -> Outcome<C> {
        let outcome = unsafe { (*self.outcome.get()).take() }.expect("a READY slot has an outcome");
        unsafe { *self.timer.get() = timer };
        self.state.store(FREE, Ordering::Release);
        outcome
    }
}

/// A queued caller's own view of its slot, for picking up its outcome
/// without the pool's lock.
pub(crate) struct SlotRef<C>(NonNull<Slot<C>>);

// A pointer to a `Sync` slot.
unsafe impl<C: Send> Send for SlotRef<C> {}
unsafe impl<C: Send> Sync for SlotRef<C> {}

impl<C> SlotRef<C> {
    /// The outcome left for the wait, if there is one yet, freeing the
    /// slot with `timer` left in it for the next wait (`timer` is left
    /// alone otherwise).
    ///
    /// Safety: only the caller queued in this slot calls this, while the
    /// pool (and so its slab) is alive, and not again once it returned an
    /// outcome or the wait was ended under the lock.
    pub(crate) unsafe fn pick_up(&self, timer: &mut Option<WaitTimer>) -> Option<Outcome<C>> {
        let slot = unsafe { self.0.as_ref() };
        if slot.state.load(Ordering::Acquire) != READY {
            return None;
        }
        Some(unsafe { slot.take_and_free(timer.take()) })
    }
}

pub(crate) struct Waiters<C> {
    queue: VecDeque<Waiter>,
    slots: Vec<Arc<Slot<C>>>,
    /// Slots out of the queue, oldest first: free, or soon to be once
    /// their caller has picked up its outcome.
    free: VecDeque<usize>,
}

impl<C> Waiters<C> {
    pub(crate) fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            slots: Vec::new(),
            free: VecDeque::new(),
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

    /// A free slot: the oldest freed if its caller has picked up its
    /// outcome (one that has not is passed over, to the back, so that a
    /// caller never polled again holds up nobody), or a new one.
    fn free_slot(&mut self) -> usize {
        for _ in 0..2 {
            let Some(index) = self.free.pop_front() else {
                break;
            };
            if self.slots[index].state.load(Ordering::Acquire) == FREE {
                return index;
            }
            self.free.push_back(index);
        }
        self.slots.push(Arc::new(Slot::new()));
        self.slots.len() - 1
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
        let slot = self.free_slot();
        let entry = &self.slots[slot];
        // Safety: under the lock, and the slot is free.
        unsafe { *entry.waker() = Some(waker.clone()) };
        entry.state.store(WAITING, Ordering::Relaxed);
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

    /// The wakers of the callers in line since `cutoff` or before, still
    /// registered with their slots: for waking them without serving them.
    pub(crate) fn wakers_since(&self, cutoff: Instant) -> Vec<Waker> {
        // Front to back is oldest ticket first, and a ticket is taken when
        // its caller first queues, under the lock, while `since` is read
        // before it: two callers can be out of order by as long as one of
        // them waited for the lock. A later call finds one passed over.
        self.queue
            .iter()
            .take_while(|waiter| waiter.since <= cutoff)
            // Safety: under the lock, and a queued waiter's slot is WAITING.
            .filter_map(|waiter| unsafe { self.slots[waiter.slot].waker() }.clone())
            .collect()
    }

    /// The caller's own view of `slot`, valid while the pool is.
    pub(crate) fn slot_ref(&self, slot: usize) -> SlotRef<C> {
        SlotRef(NonNull::from(&*self.slots[slot]))
    }

    /// The timer left in `slot` by its last wait, for the wait now in it.
    pub(crate) fn take_timer(&mut self, slot: usize) -> Option<WaitTimer> {
        // Safety: under the lock, and the slot was just given to the caller.
        unsafe { (*self.slots[slot].timer.get()).take() }
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
            drop(self.finish(waiter.slot, Outcome::TimedOut));
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
    /// `waker` remembered) while it goes on. For a caller that holds the
    /// lock anyway; [`SlotRef::pick_up`] does without.
    pub(crate) fn poll(&mut self, slot: usize, waker: &Waker) -> Option<Outcome<C>> {
        let entry = &self.slots[slot];
        if entry.state.load(Ordering::Acquire) == READY {
            // Safety: under the lock; a READY slot is its caller's, who
            // is the one calling. Its timer, if any, comes with `keep_timer`.
            return Some(unsafe { entry.take_and_free(None) });
        }
        // Safety: under the lock.
        let registered = unsafe { entry.waker() };
        if !registered.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *registered = Some(waker.clone());
        }
        None
    }

    /// A waiter that gave up: leaves the queue if still in it, and gets back
    /// the connection if one was handed to it meanwhile (now the caller's to
    /// return).
    pub(crate) fn abandon(&mut self, id: u64, slot: usize) -> Option<Live<C>> {
        match self.leave(id, slot) {
            Outcome::Conn(live, _) => Some(live),
            _ => None,
        }
    }

    /// A waiter whose own deadline has passed: the outcome already left in
    /// its slot if there is one (a connection handed over in time is still
    /// the caller's), or else it leaves the queue timed out. Frees the slot.
    pub(crate) fn time_out(&mut self, id: u64, slot: usize) -> Outcome<C> {
        self.leave(id, slot)
    }

    /// Ends the wait in `slot` under the lock: its outcome, or `TimedOut`
    /// when it was still queued. Frees the slot.
    fn leave(&mut self, id: u64, slot: usize) -> Outcome<C> {
        let entry = &self.slots[slot];
        // Safety (both): under the lock, by the slot's caller.
        if entry.state.load(Ordering::Acquire) == READY {
            // Already among the free ones, since its outcome was left.
            return unsafe { entry.take_and_free(None) };
        }
        if let Ok(pos) = self.queue.binary_search_by_key(&id, |w| w.id) {
            self.queue.remove(pos);
        }
        unsafe { *entry.waker() = None };
        entry.state.store(FREE, Ordering::Release);
        self.free.push_back(slot);
        Outcome::TimedOut
    }

    /// Leaves a finished wait's timer in its (now free) slot for the next.
    pub(crate) fn keep_timer(&mut self, slot: usize, timer: Option<WaitTimer>) {
        // Safety: under the lock; the slot was just freed by its caller.
        unsafe { *self.slots[slot].timer.get() = timer };
    }

    /// Leaves `outcome` for the (queued) waiter in `slot`, which thereby
    /// leaves the queue, and returns its waker.
    fn finish(&mut self, slot: usize, outcome: Outcome<C>) -> Option<Waker> {
        let entry = &self.slots[slot];
        // Safety: under the lock, and the slot is WAITING: the lock
        // holder's. After the store below it is the caller's.
        let waker = unsafe {
            *entry.outcome.get() = Some(outcome);
            entry.waker().take()
        };
        entry.state.store(READY, Ordering::Release);
        self.free.push_back(slot);
        waker
    }
}

//! A lane's gate: at most `cap` places taken at once, handed out first
//! come, first served.
//!
//! The uncontended path is one compare-and-swap to enter and one
//! subtraction (plus a load) to leave, with no reference count and no lock:
//! the lock and the queue are only touched while someone waits. (Tokio's
//! `Semaphore` took an `Arc` clone per owned permit and locked its waiter
//! list on every release, which made a lane cost half a checkout.)
//!
//! Taken places are counted in `taken`; a waiter is queued under the lock
//! and counted in `queued`. A place given back while anyone is queued goes
//! to the oldest waiter (`dispatch`). The two sides meet without a lost
//! wake-up because each writes its own counter before reading the other's
//! (all `SeqCst`): a leaver that saw nobody queued has already lowered
//! `taken` where the newly queued waiter's own `dispatch` will see it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

pub(crate) struct Gate {
    cap: usize,
    taken: AtomicUsize,
    queued: AtomicUsize,
    line: Mutex<Line>,
}

#[derive(Default)]
struct Line {
    /// Waiting slots, oldest first.
    queue: VecDeque<usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
}

#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    /// A place was handed to this waiter.
    granted: bool,
}

impl Gate {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            taken: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            line: Mutex::new(Line::default()),
        }
    }

    pub(crate) fn taken(&self) -> usize {
        self.taken.load(SeqCst)
    }

    /// Takes a place if one is free and nobody is queued for one (a
    /// newcomer does not overtake the line).
    pub(crate) fn try_enter(&self) -> bool {
        self.queued.load(SeqCst) == 0 && self.take_free()
    }

    fn take_free(&self) -> bool {
        let mut taken = self.taken.load(SeqCst);
        while taken < self.cap {
            match self
                .taken
                .compare_exchange_weak(taken, taken + 1, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(now) => taken = now,
            }
        }
        false
    }

    /// Waits in line for a place; dropping the future leaves the line (or
    /// gives back a place handed over meanwhile).
    pub(crate) fn enter(&self) -> Enter<'_> {
        Enter {
            gate: self,
            slot: None,
        }
    }

    /// Gives a place back: to the oldest waiter, if any.
    pub(crate) fn leave(&self) {
        self.taken.fetch_sub(1, SeqCst);
        if self.queued.load(SeqCst) > 0 {
            self.dispatch(&mut self.line.lock());
        }
    }

    /// Hands free places to waiters, oldest first, and wakes them.
    fn dispatch(&self, line: &mut Line) {
        while !line.queue.is_empty() && self.take_free() {
            let Some(index) = line.queue.pop_front() else {
                break;
            };
            self.queued.fetch_sub(1, SeqCst);
            let slot = &mut line.slots[index];
            slot.granted = true;
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }
}

/// A caller waiting for a place, from [`Gate::enter`].
pub(crate) struct Enter<'a> {
    gate: &'a Gate,
    /// Its slot once queued.
    slot: Option<usize>,
}

impl Future for Enter<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let gate = self.gate;
        let mut line = gate.line.lock();
        let index = match self.slot {
            Some(index) => index,
            None => {
                let index = line.free.pop().unwrap_or_else(|| {
                    line.slots.push(Slot::default());
                    line.slots.len() - 1
                });
                line.queue.push_back(index);
                gate.queued.fetch_add(1, SeqCst);
                self.slot = Some(index);
                // A place freed before we were counted as queued.
                gate.dispatch(&mut line);
                index
            }
        };
        let slot = &mut line.slots[index];
        if slot.granted {
            slot.granted = false;
            slot.waker = None;
            line.free.push(index);
            self.slot = None;
            return Poll::Ready(());
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Enter<'_> {
    fn drop(&mut self) {
        let Some(index) = self.slot else {
            return;
        };
        let gate = self.gate;
        let mut line = gate.line.lock();
        let slot = &mut line.slots[index];
        let granted = std::mem::take(&mut slot.granted);
        slot.waker = None;
        if let Some(pos) = line.queue.iter().position(|&i| i == index) {
            line.queue.remove(pos);
            gate.queued.fetch_sub(1, SeqCst);
        }
        line.free.push(index);
        if granted {
            // Handed a place it will not use: the next in line has it.
            gate.taken.fetch_sub(1, SeqCst);
            gate.dispatch(&mut line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(enter: &mut Pin<Box<Enter<'_>>>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        enter.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn places_go_to_waiters_in_arrival_order_and_never_above_the_cap() {
        let gate = Gate::new(1);
        assert!(gate.try_enter());
        assert!(!gate.try_enter());
        let mut first = Box::pin(gate.enter());
        let mut second = Box::pin(gate.enter());
        assert!(!poll(&mut first));
        assert!(!poll(&mut second));
        gate.leave();
        assert!(!poll(&mut second));
        assert!(poll(&mut first));
        assert_eq!(gate.taken(), 1);
        // A newcomer does not overtake the one still queued.
        gate.leave();
        assert!(!gate.try_enter());
        assert!(poll(&mut second));
        gate.leave();
        assert_eq!(gate.taken(), 0);
    }

    #[test]
    fn a_waiter_dropped_after_being_handed_a_place_passes_it_on() {
        let gate = Gate::new(1);
        assert!(gate.try_enter());
        let mut first = Box::pin(gate.enter());
        let mut second = Box::pin(gate.enter());
        assert!(!poll(&mut first));
        assert!(!poll(&mut second));
        gate.leave();
        drop(first);
        assert!(poll(&mut second));
        assert_eq!(gate.taken(), 1);
        drop(second);
        gate.leave();
        assert_eq!(gate.taken(), 0);
        assert!(gate.try_enter());
    }
}

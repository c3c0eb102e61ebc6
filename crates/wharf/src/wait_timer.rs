//! The timer that keeps a waiting caller's deadline, reused from one wait
//! to the next.
//!
//! Every wait needs a timer of its own on the caller's runtime (see
//! `waiters.rs` for why nothing shared will do), but registering a Tokio
//! timer and cancelling it again takes the timer wheel's lock twice and two
//! counts on the runtime's handle: in a pool where callers queue, that was
//! the largest cost of a wait. So a timer outlives its wait. It stays in
//! the waiter's slot, still registered, and the next wait in that slot
//! takes it over: if it is set to go off no later than the new deadline it
//! is used as it is, and when it goes off before that deadline it is set
//! again, to it. A caller still learns of its deadline on time, and most
//! waits begin and end without touching the timer wheel at all.
//!
//! A timer belongs to the runtime it was made on, and only that runtime's
//! driver makes it go off: a wait on another runtime makes its own.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::runtime::{self, Handle};
use tokio::time::{sleep_until, Instant, Sleep};

pub(crate) struct WaitTimer {
    sleep: Pin<Box<Sleep>>,
    runtime: runtime::Id,
}

impl WaitTimer {
    /// A timer for a wait until `deadline` on the current runtime: `spare`
    /// (left in the slot by an earlier wait) when it belongs to this
    /// runtime, or else a new one.
    pub(crate) fn for_wait(spare: Option<WaitTimer>, deadline: Instant) -> WaitTimer {
        let runtime = Handle::current().id();
        match spare {
            Some(mut timer) if timer.runtime == runtime => {
                // Going off early costs a wake-up; going off late would
                // break the deadline.
                if timer.sleep.deadline() > deadline {
                    timer.sleep.as_mut().reset(deadline);
                }
                timer
            }
            _ => WaitTimer {
                sleep: Box::pin(sleep_until(deadline)),
                runtime,
            },
        }
    }

    /// Ready once `deadline` has passed; registers the task's waker to be
    /// woken then.
    pub(crate) fn poll_deadline(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if self.sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            // Set by an earlier wait: on to this one's deadline.
            self.sleep.as_mut().reset(deadline);
        }
    }
}

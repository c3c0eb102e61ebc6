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

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    async fn until_deadline(timer: &mut WaitTimer, deadline: Instant) {
        poll_fn(|cx| timer.poll_deadline(deadline, cx)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_kept_from_a_shorter_wait_goes_off_at_the_new_deadline_not_its_own() {
        let start = Instant::now();
        let earlier = WaitTimer::for_wait(None, start + secs(1));
        let mut timer = WaitTimer::for_wait(Some(earlier), start + secs(3));
        until_deadline(&mut timer, start + secs(3)).await;
        assert_eq!(start.elapsed(), secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_kept_from_a_longer_wait_is_brought_forward_to_the_new_deadline() {
        let start = Instant::now();
        let longer = WaitTimer::for_wait(None, start + secs(5));
        let mut timer = WaitTimer::for_wait(Some(longer), start + secs(2));
        until_deadline(&mut timer, start + secs(2)).await;
        assert_eq!(start.elapsed(), secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_that_already_went_off_is_set_again_for_the_next_wait() {
        let start = Instant::now();
        let mut first = WaitTimer::for_wait(None, start + secs(1));
        until_deadline(&mut first, start + secs(1)).await;
        let mut timer = WaitTimer::for_wait(Some(first), start + secs(4));
        until_deadline(&mut timer, start + secs(4)).await;
        assert_eq!(start.elapsed(), secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_of_another_runtime_is_not_taken_over() {
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let deadline = Instant::now() + secs(1);
        let foreign = {
            let _entered = other.enter();
            WaitTimer::for_wait(None, deadline)
        };
        assert_eq!(foreign.runtime, other.handle().id());
        let timer = WaitTimer::for_wait(Some(foreign), deadline);
        assert_eq!(timer.runtime, Handle::current().id());
        drop(timer);
        // Not driven, and dropped here, inside this runtime: no blocking.
        other.shutdown_background();
    }
}

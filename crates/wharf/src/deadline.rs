//! The deadline watcher: one task per pool that times out waiters whose
//! `acquire_timeout` has passed.
//!
//! Waiters carry no timer of their own. Registering a timer when a caller
//! queues and cancelling it when a connection arrives costs a timer-wheel
//! lock each way, on every wait; this task instead sleeps until the
//! earliest deadline in the queue, and runs only while there is a queue. Waiters queued with the same timeout
//! have deadlines in queue order, so once it is asleep a newcomer never
//! needs it woken: it is told (by [`Notify`]) only about a deadline earlier
//! than the one it sleeps for, which mostly means the first waiter after the
//! queue was empty.

use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use crate::pool::Shared;
use crate::Manager;

/// Runs while the pool has waiters (started by the first one to queue),
/// holding the pool only weakly while asleep.
pub(crate) async fn run<M: Manager>(pool: Weak<Shared<M>>, told: Arc<Notify>) {
    loop {
        // Created before looking, and `notify_one` leaves a permit when
        // nobody is waiting yet: a deadline set meanwhile is not missed.
        let told_about = told.notified();
        let until = {
            let Some(shared) = pool.upgrade() else {
                return;
            };
            let (wakers, next) = {
                let mut st = shared.state.lock();
                if st.closed {
                    return;
                }
                st.waiters.expire(Instant::now())
            };
            drop(shared);
            for waker in wakers {
                waker.wake();
            }
            match next {
                Some(at) => at,
                None => return,
            }
        };
        tokio::select! {
            () = told_about => {}
            () = sleep_until(until) => {}
        }
    }
}

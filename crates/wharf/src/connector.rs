//! Opening connections: bounded concurrency, backoff with full jitter, and a
//! single probe while the backend is down.
//!
//! Callers never connect themselves. They queue, and connector tasks open
//! connections for the queue. So a caller that gives up does not abort a
//! connect half-way, a burst of callers does not become a burst of connects
//! (at most `max_connecting` run at once), and after a failure the pool
//! waits a random, growing delay and sends one probe before ramping up again:
//! when a database restarts, its pools come back without a stampede.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::{sleep_until, timeout, Instant};

use crate::error::HumanDuration;
use crate::metrics::Recorder;
use crate::pool::Shared;
use crate::queue::Record;
use crate::waiters::Outcome;
use crate::{CloseReason, ConnectError, Manager};

/// A connect that did not finish within `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {}", HumanDuration(*.0))]
pub struct ConnectTimeout(pub Duration);

/// What a connector does next.
enum Step {
    /// Waits out the backoff after a failed connect.
    Sleep(Instant),
    /// Opens a connection: its slot (and budget unit) are taken.
    Open,
    /// The shared budget is spent; `urgent` when callers wait or the pool
    /// is below its guarantee.
    BudgetSpent { urgent: bool },
}

/// A connector task: opens connections one after another while there is
/// demand, then exits.
pub(crate) async fn run<M: Manager>(pool: Weak<Shared<M>>) {
    loop {
        let Some(shared) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let step = {
            let mut st = shared.state.lock();
            let probing = st.consecutive_failures > 0 && st.opening > 0;
            if !st.wants_connection() || probing {
                shared.connector_leaves(&mut st);
                return;
            }
            match st.next_attempt_at {
                Some(at) if at > now => Step::Sleep(at),
                // A pool without a budget pays for this branch only.
                _ if !shared.take_budget_unit() => Step::BudgetSpent {
                    urgent: shared.may_reclaim(&st),
                },
                _ => {
                    st.size += 1;
                    st.opening += 1;
                    st.probe_wanted = false;
                    Step::Open
                }
            }
        };
        match step {
            Step::Sleep(at) => {
                // Not holding the pool alive while asleep.
                drop(shared);
                sleep_until(at).await;
            }
            Step::Open => open_one(&shared).await,
            Step::BudgetSpent { urgent } => {
                if !shared.budget_spent(urgent) {
                    return;
                }
            }
        }
    }
}

async fn open_one<M: Manager>(shared: &Arc<Shared<M>>) {
    let started = Instant::now();
    let result = connect(shared).await;
    let now = Instant::now();
    match result {
        Ok(conn) => {
            shared.recorder.connect_time.record(now - started);
            Recorder::count(&shared.recorder.counters.created);
            let live = Record::new(conn, shared.new_meta(now));
            tracing::debug!(pool = %shared.config.name, conn = live.meta.id, took = ?(now - started), "opened connection");
            let mut st = shared.state.lock();
            st.opening -= 1;
            st.consecutive_failures = 0;
            st.next_attempt_at = None;
            st.last_error = None;
            // Closed, or shrunk by `resize` while this connect was in flight:
            // keeping it would leave the pool above its size.
            let unwanted = if st.closed {
                Some(CloseReason::Closed)
            } else if st.over_size() {
                Some(CloseReason::Resized)
            } else {
                None
            };
            if let Some(reason) = unwanted {
                st.size -= 1;
                drop(st);
                shared.close_conn(live, reason);
                return;
            }
            let waiter = st.hand_off(live, now);
            // After a successful probe, ramp back up to max_connecting.
            shared.spawn_connectors(&mut st);
            drop(st);
            if let Some(waiter) = waiter {
                waiter.wake();
            }
            shared.connection_opened();
        }
        Err(err) => {
            Recorder::count(&shared.recorder.counters.create_errors);
            let mut st = shared.state.lock();
            st.opening -= 1;
            st.size -= 1;
            st.consecutive_failures = st.consecutive_failures.saturating_add(1);
            let (backoff, backoff_max) = shared.tunables.connect_backoff();
            let delay = backoff_delay(st.consecutive_failures, backoff, backoff_max);
            st.next_attempt_at = Some(now + delay);
            st.last_error = Some(err.clone());
            let failed = if shared.config.fail_fast && st.has_no_connections() {
                st.waiters.end_all(|| Outcome::Failed(err.clone()))
            } else {
                Vec::new()
            };
            let attempt = st.consecutive_failures;
            drop(st);
            shared.release_budget_unit();
            for waiter in failed {
                waiter.wake();
            }
            shared.connect_failed(&err);
            tracing::warn!(
                pool = %shared.config.name,
                error = %err,
                attempt,
                retry_in = %HumanDuration(delay),
                "failed to open a connection"
            );
        }
    }
}

/// Opens one connection and runs `on_connect` on it, all within
/// `connect_timeout`: a hook that hangs is a connect that hangs, and must not
/// hold a connector (and its slot) forever.
async fn connect<M: Manager>(shared: &Shared<M>) -> Result<M::Connection, ConnectError> {
    let limit = shared.tunables.connect_timeout();
    let open = async {
        let mut conn = shared
            .manager
            .connect()
            .await
            .map_err(|err| -> ConnectError { Arc::new(err) })?;
        if let Some(hook) = &shared.hooks.on_connect {
            hook(&mut conn).await.map_err(ConnectError::from)?;
        }
        Ok(conn)
    };
    match timeout(limit, open).await {
        Ok(result) => result,
        Err(_) => Err(Arc::new(ConnectTimeout(limit))),
    }
}

/// "Full jitter" exponential backoff: a uniform random delay below
/// `min(max, initial * 2^(failures - 1))`. Spreading retries over the whole
/// window is what stops many pools from hitting a recovering database in
/// lockstep.
pub(crate) fn backoff_delay(failures: u32, initial: Duration, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(31);
    let ceiling = initial.saturating_mul(1 << exponent).min(max);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_stays_below_it() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for failures in 1..40 {
            let ceiling = (initial * 2u32.saturating_pow(failures - 1).min(1 << 20)).min(max);
            for _ in 0..50 {
                let d = backoff_delay(failures, initial, max);
                assert!(d <= ceiling, "{d:?} above {ceiling:?} at {failures}");
            }
        }
        let spread: Vec<_> = (0..100).map(|_| backoff_delay(10, initial, max)).collect();
        let (lo, hi) = (spread.iter().min(), spread.iter().max());
        assert!(hi
            .zip(lo)
            .is_some_and(|(h, l)| *h - *l > Duration::from_millis(500)));
    }
}

//! The maintenance task (PgBouncer's janitor): evicts idle and expired
//! connections, runs keepalive checks, reports leaks and keeps `min_idle`
//! connections ready.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use tokio::time::{interval_at, timeout, Duration, Instant, MissedTickBehavior};

use crate::pool::Shared;
use crate::queue::Live;
use crate::{CloseReason, Manager};

/// Runs until the pool is closed or dropped. Holds only a weak reference
/// between rounds, so it never keeps a dropped pool alive.
pub(crate) async fn run<M: Manager>(pool: Weak<Shared<M>>, every: Duration) {
    let mut ticks = interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = pool.upgrade() else {
            return;
        };
        if shared.state.lock().closed {
            return;
        }
        maintain(&shared).await;
        if let Some(breaker) = &shared.breaker {
            breaker.tick(shared.recorder.acquire_wait.count());
        }
        #[cfg(feature = "metrics")]
        shared.publish_metrics();
    }
}

async fn maintain<M: Manager>(shared: &Arc<Shared<M>>) {
    let config = &shared.config;
    let now = Instant::now();
    let mut retire = Vec::new();
    let mut due = Vec::new();
    let idle_timeout = shared.tunables.idle_timeout();
    let lifetime = shared.tunables.max_lifetime();
    {
        let mut st = shared.state.lock();
        let (min_idle, min_size) = (st.min_idle, st.min_size);
        let mut idle_left = st.idle.len();
        let mut size_left = st.size;
        let mut keep = VecDeque::with_capacity(st.idle.capacity());
        // The front holds the connections idle the longest, so idle-timeout
        // eviction takes those first and leaves the busiest ones.
        for mut live in st.idle.drain(..) {
            // Brings a changed `max_lifetime` to connections already open
            // (the same value again when it has not changed).
            let meta = &mut live.meta;
            meta.expires_at = crate::pool::expiry(meta.created_at, lifetime, meta.lifetime_share);
            let idle_for = now.saturating_duration_since(live.meta.idle_since);
            let quiet_for = now.saturating_duration_since(live.meta.last_active);
            if live.meta.is_expired(now) {
                idle_left -= 1;
                size_left -= 1;
                retire.push((live, CloseReason::Lifetime));
            } else if idle_timeout.is_some_and(|t| idle_for >= t)
                && idle_left > min_idle
                && size_left > min_size
            {
                idle_left -= 1;
                size_left -= 1;
                retire.push((live, CloseReason::Idle));
            } else {
                if config.keepalive_interval.is_some_and(|k| quiet_for >= k) {
                    due.push(live.meta.id);
                }
                keep.push_back(live);
            }
        }
        st.idle = keep;
        st.size -= retire.len();
        shared.spawn_connectors(&mut st);
    }
    for (live, reason) in retire {
        shared.close_conn(live, reason);
    }
    if let Some(leaks) = &shared.leaks {
        leaks.report(now, &shared.config.name, &shared.recorder);
    }
    // One at a time: a connection waiting for its turn stays in the idle
    // set, where a caller can still have it, instead of being held out of
    // the pool for every check ahead of it.
    for id in due {
        if let Some(live) = take_for_keepalive(shared, id, now) {
            keepalive(shared, live).await;
        }
    }
}

/// Takes idle connection `id` out for its keepalive check, unless it has
/// been closed, or checked out (and so shown to work) since `round_start`.
fn take_for_keepalive<M: Manager>(
    shared: &Shared<M>,
    id: u64,
    round_start: Instant,
) -> Option<Live<M::Connection>> {
    let mut st = shared.state.lock();
    if st.closed {
        return None;
    }
    let pos = st
        .idle
        .iter()
        .position(|live| live.meta.id == id && live.meta.last_active <= round_start)?;
    let live = st.idle.remove(pos)?;
    st.testing += 1;
    Some(live)
}

async fn keepalive<M: Manager>(shared: &Arc<Shared<M>>, mut live: Live<M::Connection>) {
    let check = shared.manager.check(&mut live.conn);
    let healthy = matches!(
        timeout(shared.tunables.validation_timeout(), check).await,
        Ok(Ok(()))
    );
    if !healthy {
        tracing::info!(pool = %shared.config.name, conn = live.meta.id, "keepalive check failed; closing idle connection");
    }
    back_from_check(shared, live, healthy);
}

/// Runs [`Manager::recycle`] on a connection just returned (counted in
/// `testing` meanwhile), then lets it serve again.
pub(crate) async fn recycle<M: Manager>(shared: Arc<Shared<M>>, mut live: Live<M::Connection>) {
    let reset = shared.manager.recycle(&mut live.conn);
    let healthy = match timeout(shared.tunables.validation_timeout(), reset).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::debug!(pool = %shared.config.name, conn = live.meta.id, error = %err, "recycling a returned connection failed");
            false
        }
        Err(_) => {
            tracing::debug!(pool = %shared.config.name, conn = live.meta.id, "recycling a returned connection timed out");
            false
        }
    };
    back_from_check(&shared, live, healthy);
}

/// Takes back a connection that was out of the idle set for a check or a
/// reset: keeps it if it passed and the pool still wants it.
fn back_from_check<M: Manager>(
    shared: &Arc<Shared<M>>,
    mut live: Live<M::Connection>,
    healthy: bool,
) {
    let mut st = shared.state.lock();
    st.testing -= 1;
    let reason = if st.closed {
        CloseReason::Closed
    } else if !healthy {
        CloseReason::FailedCheck
    } else if st.over_size() {
        // Shrunk by `resize` while out.
        CloseReason::Resized
    } else {
        let now = Instant::now();
        live.meta.last_active = now;
        let waiter = st.hand_off(live, now);
        drop(st);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        return;
    };
    st.size -= 1;
    shared.spawn_connectors(&mut st);
    drop(st);
    shared.close_conn(live, reason);
}

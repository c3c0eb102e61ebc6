//! Upkeep for as long as the pooler runs: pools made from the `*` entry
//! are dropped once unused for `autodb_idle_timeout`, and clients queued
//! for a server are woken now and then to see whether they have waited
//! long enough for `query_wait_notify`'s notice.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use crate::state::PoolerState;

/// Housekeeping for as long as the pooler runs: drops pools made from the
/// `*` entry once unused for `autodb_idle_timeout`.
pub(crate) async fn run(state: Weak<PoolerState>) {
    let mut unused = HashMap::new();
    loop {
        let tick = {
            let Some(state) = state.upgrade() else {
                return;
            };
            let now = std::time::Instant::now();
            state.router().drop_idle_autodb(&mut unused, now);
            let timeout = state.router().config().pgbouncer.autodb_idle_timeout;
            (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
        };
        tokio::time::sleep(tick).await;
    }
}

/// How often queued clients are woken to look at how long they have
/// waited: a notice comes at most this late.
const WAIT_SWEEP: Duration = Duration::from_millis(500);

/// Wakes, every [`WAIT_SWEEP`], the clients waiting for a server, in the
/// engines' queues or for a RESUME: each checks its own `query_wait_notify`
/// against its wait, which began when it asked for a server (a PAUSE before
/// it queued counts). A timer per wait cost every queued transaction (when
/// 50 clients share 20 servers, about 290 instructions of 8,400), for a
/// notice almost no wait lasts long enough to need; a sweep wakes the
/// clients queued at that moment, once each, and as most waits end within
/// milliseconds, few are ever woken. PgBouncer also looks at its waiting
/// clients periodically rather than timing each.
pub(crate) async fn sweep_waiting_clients(state: Weak<PoolerState>) {
    loop {
        tokio::time::sleep(WAIT_SWEEP).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        // Off in the configuration in force: sessions logged in before a
        // RELOAD turned it off are not told either.
        if state
            .router()
            .config()
            .pgbouncer
            .query_wait_notify
            .is_none()
        {
            continue;
        }
        // Every client in line, however short its wait so far: one held
        // by a PAUSE before it queued may be due already.
        state.router().wake_waiting_clients();
    }
}

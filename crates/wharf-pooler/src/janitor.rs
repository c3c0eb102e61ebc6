//! Upkeep for as long as the pooler runs: pools made from the `*` entry
//! are dropped once unused for `autodb_idle_timeout`.

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

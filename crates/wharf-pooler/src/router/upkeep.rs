//! What the router does to live pools: RELOAD brings each in line with the
//! new configuration, and pools made from the `*` entry are dropped once
//! unused for `autodb_idle_timeout`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::{PoolPlan, Router};

/// What [`Router::apply`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Pools whose size changed.
    pub resized: usize,
    /// Pools whose server target changed.
    pub retargeted: usize,
    /// Pools of databases no longer in the configuration.
    pub orphaned: usize,
}

impl Router {
    /// Brings every existing pool in line with the configuration now in
    /// force (after [`Router::replace`]): sizes change at once, a changed
    /// server target applies to new connections and idle servers with the
    /// old one are closed (those in use are closed when released, as
    /// PgBouncer's `close_needed`). Clients are never dropped.
    pub fn apply(&self) -> Applied {
        let config = self.config();
        let secrets = self.secrets();
        let tls = self.tls();
        let client_keys = self.client_keys.read().clone();
        let mut applied = Applied::default();
        for pool in self.pools() {
            let looked_up = self.auth_cache.secret(pool.database(), pool.user());
            let Some(plan) = PoolPlan::new(
                &config,
                &secrets,
                &client_keys,
                tls.server(),
                pool.database(),
                pool.user(),
                looked_up.as_ref(),
            ) else {
                tracing::warn!(database = %pool.database(), user = %pool.user(),
                    "database no longer in the configuration; its pool keeps running until unused");
                applied.orphaned += 1;
                continue;
            };
            let changed = pool.apply(&plan.shape, plan.target);
            applied.resized += usize::from(changed.resized);
            applied.retargeted += usize::from(changed.retargeted);
        }
        applied
    }

    /// Drops pools made from the `*` entry that no client has used for
    /// `autodb_idle_timeout`; `unused` remembers since when each was seen
    /// unused (the caller keeps it between rounds).
    pub fn drop_idle_autodb(
        &self,
        unused: &mut HashMap<(String, String), Instant>,
        now: Instant,
    ) -> usize {
        let timeout = self.config().pgbouncer.autodb_idle_timeout;
        let mut dropped = 0;
        let candidates: Vec<(String, String)> = {
            let pools = self.pools.read();
            unused.retain(|key, _| pools.contains_key(key));
            pools
                .iter()
                .filter(|(_, pool)| pool.is_auto())
                .map(|(key, _)| key.clone())
                .collect()
        };
        for key in candidates {
            let mut pools = self.pools.write();
            let Some(pool) = pools.get(&key) else {
                continue;
            };
            // Only the router holds it: no client session uses the pool.
            let in_use = Arc::strong_count(pool) > 1 || pool.status().in_use > 0;
            if in_use {
                unused.remove(&key);
                continue;
            }
            let since = *unused.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= timeout {
                pools.remove(&key);
                unused.remove(&key);
                tracing::info!(database = %key.0, user = %key.1, "dropping unused autodb pool (autodb_idle_timeout)");
                dropped += 1;
            }
        }
        dropped
    }
}

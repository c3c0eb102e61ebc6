//! A shared pool's maintenance: idle connections closed, failed ones
//! dropped, idle ones checked, the pool topped up to `min_connections`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::lease::Slot;
use super::{Inner, Open};

/// Runs until the pool is dropped or closed.
pub(super) async fn run<O: Open>(pool: Weak<Inner<O>>) {
    let Some(interval) = pool.upgrade().map(|p| p.settings.maintenance_interval) else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        if inner.is_closed() {
            return;
        }
        close_idle(&inner);
        if inner.settings.check_idle {
            check_idle(&inner).await;
        }
        inner.drop_broken(&mut inner.slots.lock());
        inner.top_up().await;
    }
}

/// Closes connections idle for `idle_timeout`, keeping `min_connections`
/// (failed ones are dropped first: they are not spare).
fn close_idle<O: Open>(inner: &Inner<O>) {
    let mut slots = inner.slots.lock();
    inner.drop_broken(&mut slots);
    let mut spare = slots.len().saturating_sub(inner.settings.min_connections);
    let limit = inner.settings.idle_timeout;
    slots.retain(|slot| {
        if spare > 0 && slot.idle_for(limit) {
            spare -= 1;
            tracing::debug!(connection = slot.id, "closing idle shared connection");
            inner.counters.closed_idle.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            true
        }
    });
}

/// Asks the opener about each idle connection; one that fails is marked.
async fn check_idle<O: Open>(inner: &Inner<O>) {
    let idle: Vec<Arc<Slot<O::Conn>>> = inner
        .slots
        .lock()
        .iter()
        .filter(|s| s.in_flight() == 0 && !s.is_broken())
        .cloned()
        .collect();
    for slot in idle {
        if !inner.opener.check(&slot.conn).await {
            slot.mark_broken();
        }
    }
}

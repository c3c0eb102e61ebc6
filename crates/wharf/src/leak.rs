//! Leak detection: connections held longer than `leak_detection_threshold`
//! are reported once, with the place that checked them out.
//!
//! Only pools with a threshold have a registry, so pools without one pay
//! nothing for it. It has its own lock to stay off the pool's.

use std::panic::Location;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::HumanDuration;
use crate::metrics::Recorder;

pub(crate) struct LeakRegistry {
    threshold: Duration,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Checkout>>,
    free: Vec<usize>,
}

struct Checkout {
    since: Instant,
    caller: &'static Location<'static>,
    reported: bool,
}

impl LeakRegistry {
    pub(crate) fn new(threshold: Duration) -> Self {
        Self {
            threshold,
            slots: Mutex::new(Slots::default()),
        }
    }

    pub(crate) fn register(&self, since: Instant, caller: &'static Location<'static>) -> usize {
        let checkout = Checkout {
            since,
            caller,
            reported: false,
        };
        let mut slots = self.slots.lock();
        match slots.free.pop() {
            Some(key) => {
                slots.entries[key] = Some(checkout);
                key
            }
            None => {
                slots.entries.push(Some(checkout));
                slots.entries.len() - 1
            }
        }
    }

    pub(crate) fn unregister(&self, key: usize) {
        let checkout = {
            let mut slots = self.slots.lock();
            let Some(checkout) = slots.entries.get_mut(key).and_then(Option::take) else {
                return;
            };
            slots.free.push(key);
            checkout
        };
        if checkout.reported {
            tracing::info!(
                caller = %checkout.caller,
                held_for = %HumanDuration(checkout.since.elapsed()),
                "a connection reported as leaked was returned"
            );
        }
    }

    /// Reports every connection that crossed the threshold since the last
    /// round, once each.
    pub(crate) fn report(&self, now: Instant, pool: &str, recorder: &Recorder) {
        let mut slots = self.slots.lock();
        for checkout in slots.entries.iter_mut().flatten() {
            let held = now.saturating_duration_since(checkout.since);
            if checkout.reported || held < self.threshold {
                continue;
            }
            checkout.reported = true;
            Recorder::count(&recorder.counters.leaks);
            tracing::warn!(
                pool,
                caller = %checkout.caller,
                held_for = %HumanDuration(held),
                threshold = %HumanDuration(self.threshold),
                "possible connection leak: a connection checked out at {} has been held for {}",
                checkout.caller,
                HumanDuration(held),
            );
        }
    }
}

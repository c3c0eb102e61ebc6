//! Publishing to the [`metrics`] facade (the `metrics` feature).
//!
//! Applications with a metrics stack (metrics-exporter-prometheus, StatsD,
//! OpenTelemetry bridges...) install a recorder once; every pool built after
//! that publishes the same families that [`render_prometheus`] writes, under
//! the same names, labelled `pool="<name>"`.
//!
//! Latency samples go to the facade's histograms as they happen. Gauges and
//! counters are published by the maintenance task every
//! `maintenance_interval` (and once more when the pool closes), so the
//! checkout path pays nothing for them.
//!
//! [`render_prometheus`]: crate::render_prometheus

use std::sync::Once;

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::metrics::{Metrics, CLOSED, COUNTERS, GAUGES, HISTOGRAMS};
use crate::CloseReason;

/// The facade's handles for one pool.
pub(crate) struct Facade {
    gauges: Vec<Gauge>,
    counters: Vec<Counter>,
    closed: Vec<Counter>,
}

/// Descriptions are global to the recorder, not per pool.
fn describe() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        for (name, help, _) in GAUGES {
            metrics::describe_gauge!(name, Unit::Count, help);
        }
        for (name, help, _) in COUNTERS {
            metrics::describe_counter!(name, Unit::Count, help);
        }
        let (name, help) = CLOSED;
        metrics::describe_counter!(name, Unit::Count, help);
        for (name, help, _) in HISTOGRAMS {
            metrics::describe_histogram!(name, Unit::Seconds, help);
        }
    });
}

/// The facade histogram for family `family` of [`HISTOGRAMS`].
pub(crate) fn histogram(pool: &str, family: usize) -> Histogram {
    describe();
    metrics::histogram!(HISTOGRAMS[family].0, "pool" => pool.to_owned())
}

impl Facade {
    pub(crate) fn new(pool: &str) -> Self {
        describe();
        Self {
            gauges: GAUGES
                .iter()
                .map(|(name, _, _)| metrics::gauge!(*name, "pool" => pool.to_owned()))
                .collect(),
            counters: COUNTERS
                .iter()
                .map(|(name, _, _)| metrics::counter!(*name, "pool" => pool.to_owned()))
                .collect(),
            closed: CloseReason::ALL
                .iter()
                .map(|reason| {
                    metrics::counter!(
                        CLOSED.0,
                        "pool" => pool.to_owned(),
                        "reason" => reason.to_string()
                    )
                })
                .collect(),
        }
    }

    /// Sets every gauge and counter from a snapshot. Counters are set with
    /// `absolute`, so publishing the same snapshot twice counts nothing
    /// twice.
    pub(crate) fn publish(&self, metrics: &Metrics) {
        for (gauge, (_, _, get)) in self.gauges.iter().zip(GAUGES) {
            gauge.set(get(&metrics.status) as f64);
        }
        for (counter, (_, _, get)) in self.counters.iter().zip(COUNTERS) {
            counter.absolute(get(metrics));
        }
        for (counter, (_, n)) in self.closed.iter().zip(&metrics.closed) {
            counter.absolute(*n);
        }
    }
}

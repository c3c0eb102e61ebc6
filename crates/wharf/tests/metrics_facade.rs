//! The `metrics` feature: what a recorder installed through the `metrics`
//! facade receives agrees with the pool's own figures, under the same names
//! as the Prometheus rendering.
#![cfg(feature = "metrics")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use parking_lot::Mutex;

use common::ScriptedManager;

/// What the recorder captured, by metric name and label set.
#[derive(Default)]
struct Captured {
    counters: Mutex<BTreeMap<String, Arc<Cell>>>,
    gauges: Mutex<BTreeMap<String, Arc<Cell>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
    described: Mutex<BTreeSet<String>>,
}

/// A counter's value, or a gauge's as f64 bits.
#[derive(Default)]
struct Cell(AtomicU64);

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) + value);
    }
    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().push(value);
    }
}

/// `name{k="v",...}` with labels sorted, as Prometheus would print them.
fn series(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

struct Capture(&'static Captured);

impl Recorder for Capture {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.0.described.lock().insert(key.as_str().to_owned());
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.0.described.lock().insert(key.as_str().to_owned());
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.0.described.lock().insert(key.as_str().to_owned());
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = self
            .0
            .counters
            .lock()
            .entry(series(key))
            .or_default()
            .clone();
        Counter::from_arc(cell)
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let cell = self.0.gauges.lock().entry(series(key)).or_default().clone();
        Gauge::from_arc(cell)
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let samples = self
            .0
            .histograms
            .lock()
            .entry(series(key))
            .or_default()
            .clone();
        Histogram::from_arc(samples)
    }
}

/// The recorder is process-global; nextest runs each test in its own
/// process, and this file has one test.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<&'static Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured: &'static Captured = Box::leak(Box::default());
        metrics::set_global_recorder(Capture(captured)).expect("no other recorder");
        captured
    })
}

fn counter(c: &Captured, series: &str) -> u64 {
    let counters = c.counters.lock();
    let cell = counters
        .get(series)
        .unwrap_or_else(|| panic!("no counter {series}; have {:?}", counters.keys()));
    cell.0.load(Ordering::Relaxed)
}

fn gauge(c: &Captured, series: &str) -> f64 {
    let gauges = c.gauges.lock();
    let cell = gauges
        .get(series)
        .unwrap_or_else(|| panic!("no gauge {series}; have {:?}", gauges.keys()));
    f64::from_bits(cell.0.load(Ordering::Relaxed))
}

#[tokio::test(start_paused = true)]
async fn facade_receives_the_pools_figures_under_the_prometheus_names() {
    let c = captured();
    let (manager, script) = ScriptedManager::new();
    script.set_connect_delay(Duration::from_millis(5));
    let pool = wharf::Pool::builder(manager)
        .name("facade")
        .max_size(2)
        .acquire_timeout(Duration::from_millis(50))
        .maintenance_interval(Duration::from_millis(100))
        .build()
        .unwrap();

    for _ in 0..5 {
        let conn = pool.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
        drop(conn);
    }
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert!(matches!(
        pool.get().await,
        Err(wharf::Error::Timeout { .. })
    ));
    b.discard();

    // The maintenance task publishes gauges and counters on its next tick.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let own = pool.metrics();
    let status = pool.status();
    assert_eq!(status.in_use, 1);

    assert_eq!(
        gauge(c, r#"wharf_pool_connections_in_use{pool="facade"}"#),
        1.0
    );
    assert_eq!(
        gauge(c, r#"wharf_pool_connections{pool="facade"}"#),
        status.size as f64
    );
    assert_eq!(gauge(c, r#"wharf_pool_max_size{pool="facade"}"#), 2.0);
    assert_eq!(
        counter(c, r#"wharf_pool_acquired_total{pool="facade"}"#),
        7,
        "5 sequential gets and 2 held"
    );
    assert_eq!(counter(c, r#"wharf_pool_timeouts_total{pool="facade"}"#), 1);
    assert_eq!(
        counter(c, r#"wharf_pool_connections_created_total{pool="facade"}"#),
        own.created
    );
    assert_eq!(
        counter(
            c,
            r#"wharf_pool_connections_closed_total{pool="facade",reason="discarded"}"#
        ),
        1
    );

    // Every latency sample reached the facade as it happened, in seconds.
    {
        let histograms = c.histograms.lock();
        let waits = histograms[r#"wharf_pool_acquire_wait_seconds{pool="facade"}"#]
            .0
            .lock()
            .clone();
        assert_eq!(waits.len() as u64, own.acquire_wait.count());
        assert!(
            waits.iter().any(|&w| (0.004..0.010).contains(&w)),
            "{waits:?}"
        );
        let held = histograms[r#"wharf_pool_in_use_seconds{pool="facade"}"#]
            .0
            .lock()
            .len();
        assert_eq!(held as u64, own.in_use_time.count());
        let connects = histograms[r#"wharf_pool_connect_seconds{pool="facade"}"#]
            .0
            .lock()
            .len();
        assert_eq!(connects as u64, own.created);
    }

    // The facade's families are exactly the text rendering's families.
    let text = pool.metrics().to_prometheus();
    let rendered: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert_eq!(*c.described.lock(), rendered);

    drop(a);
    pool.close().await;
    assert_eq!(
        gauge(c, r#"wharf_pool_connections_in_use{pool="facade"}"#),
        0.0
    );
}

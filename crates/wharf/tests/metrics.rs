//! Metrics: counters, histograms and gauges after a scripted workload, and
//! the Prometheus text rendering (parsed with `prometheus-parse`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{assert_balanced, ScriptedManager};
use prometheus_parse::{LineInfo, Sample, Scrape, Value};
use tokio::time::sleep;
use wharf::{CloseReason, Error, Histogram, Metrics, Pool};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asserts `actual` is within `tolerance` (a fraction) of `expected`.
#[track_caller]
fn assert_near(actual: Duration, expected: Duration, tolerance: f64) {
    let (a, e) = (actual.as_secs_f64(), expected.as_secs_f64());
    assert!(
        (a - e).abs() <= e * tolerance,
        "{actual:?} not within {:.0}% of {expected:?}",
        tolerance * 100.0
    );
}

const POOL: &str = "orders-db";

/// A fixed workload under the paused clock:
///
/// - 10 checkouts one after another, each held exactly 10 ms (the first
///   opens the connection, 5 ms; the rest reuse it at once);
/// - then 3 held together (one reused, two opened, 5 ms each), a 4th get
///   that times out after 100 ms, and the 3 let go: one discarded, one
///   broken, one returned.
async fn workload() -> (Pool<ScriptedManager>, Metrics, Metrics) {
    let (manager, script) = ScriptedManager::new();
    script.set_connect_delay(ms(5));
    let pool = Pool::builder(manager)
        .name(POOL)
        .max_size(3)
        .acquire_timeout(ms(100))
        .build()
        .unwrap();

    for _ in 0..10 {
        let conn = pool.get().await.unwrap();
        sleep(ms(10)).await;
        drop(conn);
    }

    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let c = pool.get().await.unwrap();
    let d = tokio::spawn(pool.get());
    sleep(ms(50)).await;
    let during = pool.metrics();
    let err = d.await.unwrap().expect_err("the pool is exhausted");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    a.discard();
    script.break_conn(b.id);
    drop(b);
    drop(c);
    assert_balanced(&pool, &script);
    let after = pool.metrics();
    (pool, during, after)
}

#[tokio::test(start_paused = true)]
async fn counters_add_up_after_a_scripted_workload() {
    let (_pool, during, m) = workload().await;

    assert_eq!(m.name, POOL);
    assert_eq!(m.acquired(), 13, "successful gets");
    assert_eq!(m.timeouts, 1);
    assert_eq!(m.rejected, 0);
    assert_eq!(m.created, 3);
    assert_eq!(m.create_errors, 0);
    assert_eq!(m.leaks, 0);
    assert_eq!(m.closed_for(CloseReason::Discarded), 1);
    assert_eq!(m.closed_for(CloseReason::Broken), 1);
    assert_eq!(m.closed_total(), 2);
    assert_eq!(m.closed.len(), CloseReason::ALL.len());
    assert_eq!(m.created, m.closed_total() + m.status.size as u64);

    // Gauges while three were held and a fourth caller waited, and after.
    let s = during.status;
    assert_eq!(
        (s.size, s.idle, s.in_use, s.waiting, s.max_size),
        (3, 0, 3, 1, 3),
        "{s:?}"
    );
    let s = m.status;
    assert_eq!(
        (s.size, s.idle, s.in_use, s.waiting, s.max_size),
        (1, 1, 0, 0, 3),
        "{s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn histograms_count_and_measure_the_workload() {
    let (_pool, _, m) = workload().await;

    // Held: 10 x 10 ms, then 110, 105 and 100 ms.
    let held = &m.in_use_time;
    assert_eq!(held.count(), 13);
    assert_eq!(held.sum(), ms(10 * 10 + 110 + 105 + 100));
    assert_near(held.p50(), ms(10), 0.07);
    assert_near(held.p99(), ms(110), 0.07);
    assert_near(held.max(), ms(110), 0.07);

    // Waited: 5 ms for each of the 3 connects, nothing for the 10 reuses.
    let waited = &m.acquire_wait;
    assert_eq!(waited.count(), 13);
    assert_eq!(waited.sum(), ms(15));
    assert_eq!(waited.p50(), Duration::ZERO);
    assert_near(waited.max(), ms(5), 0.07);

    let connect = &m.connect_time;
    assert_eq!(connect.count(), 3);
    assert_eq!(connect.sum(), ms(15));
    assert_near(connect.p50(), ms(5), 0.07);
    assert_near(connect.mean(), ms(5), 0.001);
}

/// Checks every line of `text` is well-formed exposition format and every
/// sample belongs to a family declared before it.
fn assert_well_formed(text: &str) {
    let mut declared = BTreeMap::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } => {}
            LineInfo::Type {
                metric_name,
                metric_alias,
                sample_type,
            } => {
                let family = metric_alias.unwrap_or(metric_name);
                let previous = declared.insert(family.clone(), sample_type);
                assert!(previous.is_none(), "family {family} declared twice");
            }
            LineInfo::Sample {
                metric_name,
                labels,
                value,
                timestamp,
            } => {
                assert!(timestamp.is_none(), "unexpected timestamp: {line}");
                assert!(value.parse::<f64>().is_ok(), "bad value: {line}");
                assert!(labels.is_some(), "unlabelled sample: {line}");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| metric_name.strip_suffix(suffix))
                    .filter(|base| declared.contains_key(*base))
                    .unwrap_or(metric_name);
                assert!(declared.contains_key(family), "undeclared family: {line}");
            }
            LineInfo::Empty | LineInfo::Ignored => panic!("not exposition format: {line:?}"),
        }
    }
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

fn find<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> &'a Sample {
    let mut found = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    let sample = found
        .next()
        .unwrap_or_else(|| panic!("no {metric} {labels:?}"));
    assert!(found.next().is_none(), "several {metric} {labels:?}");
    sample
}

fn scalar(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match find(scrape, metric, labels).value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric} is not a scalar: {other:?}"),
    }
}

/// Checks a histogram family against the snapshot it was rendered from.
fn assert_histogram(scrape: &Scrape, family: &str, pool: &str, h: &Histogram) {
    let labels = [("pool", pool)];
    let sample = find(scrape, family, &labels);
    let Value::Histogram(buckets) = &sample.value else {
        panic!("{family} is not a histogram: {:?}", sample.value);
    };
    assert!(buckets.len() >= 2, "{family}: {buckets:?}");
    for pair in buckets.windows(2) {
        assert!(
            pair[0].less_than < pair[1].less_than,
            "{family} bounds not ascending"
        );
        assert!(
            pair[0].count <= pair[1].count,
            "{family} buckets not cumulative"
        );
    }
    let last = buckets.last().unwrap();
    assert_eq!(last.less_than, f64::INFINITY, "{family} has no +Inf bucket");
    let count = scalar(scrape, &format!("{family}_count"), &labels);
    assert_eq!(
        last.count, count,
        "{family}: +Inf bucket differs from _count"
    );
    assert_eq!(count, h.count() as f64);
    let sum = scalar(scrape, &format!("{family}_sum"), &labels);
    assert!(
        (sum - h.sum().as_secs_f64()).abs() < 1e-9,
        "{family}_sum {sum}"
    );
}

#[tokio::test(start_paused = true)]
async fn prometheus_output_parses_and_matches_the_metrics() {
    let (_pool, _, m) = workload().await;
    let text = m.to_prometheus();
    assert_well_formed(&text);
    let scrape = parse(&text);

    let families: BTreeSet<&str> = scrape.docs.keys().map(String::as_str).collect();
    let expected = BTreeSet::from([
        "wharf_pool_connections",
        "wharf_pool_connections_idle",
        "wharf_pool_connections_in_use",
        "wharf_pool_waiting",
        "wharf_pool_max_size",
        "wharf_pool_acquired_total",
        "wharf_pool_timeouts_total",
        "wharf_pool_rejected_total",
        "wharf_pool_connections_created_total",
        "wharf_pool_connect_errors_total",
        "wharf_pool_leaks_total",
        "wharf_pool_connections_closed_total",
        "wharf_pool_acquire_wait_seconds",
        "wharf_pool_in_use_seconds",
        "wharf_pool_connect_seconds",
        "wharf_pool_circuit_state",
        "wharf_pool_circuit_opened_total",
        "wharf_pool_circuit_rejected_total",
        "wharf_pool_retries_total",
    ]);
    assert_eq!(families, expected);
    for sample in &scrape.samples {
        assert_eq!(sample.labels.get("pool"), Some(POOL), "{sample:?}");
    }

    let pool = [("pool", POOL)];
    let gauges = [
        ("wharf_pool_connections", 1.0),
        ("wharf_pool_connections_idle", 1.0),
        ("wharf_pool_connections_in_use", 0.0),
        ("wharf_pool_waiting", 0.0),
        ("wharf_pool_max_size", 3.0),
    ];
    for (name, want) in gauges {
        assert!(
            matches!(find(&scrape, name, &pool).value, Value::Gauge(v) if v == want),
            "{name}"
        );
    }
    let counters = [
        ("wharf_pool_acquired_total", 13.0),
        ("wharf_pool_timeouts_total", 1.0),
        ("wharf_pool_rejected_total", 0.0),
        ("wharf_pool_connections_created_total", 3.0),
        ("wharf_pool_connect_errors_total", 0.0),
        ("wharf_pool_leaks_total", 0.0),
    ];
    for (name, want) in counters {
        assert!(
            matches!(find(&scrape, name, &pool).value, Value::Counter(v) if v == want),
            "{name}"
        );
    }
    for reason in CloseReason::ALL {
        let labels = [("pool", POOL), ("reason", reason.as_str())];
        let want = m.closed_for(reason) as f64;
        let got = scalar(&scrape, "wharf_pool_connections_closed_total", &labels);
        assert_eq!(got, want, "closed {reason}");
    }
    assert_eq!(
        scalar(
            &scrape,
            "wharf_pool_connections_closed_total",
            &[("reason", "discarded")]
        ),
        1.0
    );

    assert_histogram(
        &scrape,
        "wharf_pool_acquire_wait_seconds",
        POOL,
        &m.acquire_wait,
    );
    assert_histogram(&scrape, "wharf_pool_in_use_seconds", POOL, &m.in_use_time);
    assert_histogram(&scrape, "wharf_pool_connect_seconds", POOL, &m.connect_time);

    // The buckets place the samples where they belong: all 13 holds above
    // 5 ms, the ten 10 ms ones within 25 ms, everything within 250 ms.
    let Value::Histogram(held) = &find(&scrape, "wharf_pool_in_use_seconds", &pool).value else {
        unreachable!()
    };
    let at = |le: f64| held.iter().find(|b| b.less_than == le).map(|b| b.count);
    assert_eq!(at(0.005), Some(0.0));
    assert_eq!(at(0.025), Some(10.0));
    assert_eq!(at(0.25), Some(13.0));
}

#[tokio::test(start_paused = true)]
async fn several_pools_render_as_one_document() {
    let (orders, _) = ScriptedManager::new();
    let (users, _) = ScriptedManager::new();
    let orders = Pool::builder(orders)
        .name("orders")
        .max_size(2)
        .build()
        .unwrap();
    let users = Pool::builder(users)
        .name("users")
        .max_size(5)
        .build()
        .unwrap();
    let _held = orders.get().await.unwrap();
    drop(users.get().await.unwrap());

    let mut text = String::new();
    wharf::render_prometheus(&[orders.metrics(), users.metrics()], &mut text);
    assert_well_formed(&text);
    let scrape = parse(&text);
    assert_eq!(scrape.docs.len(), 19);
    let max = |pool: &str| scalar(&scrape, "wharf_pool_max_size", &[("pool", pool)]);
    assert_eq!((max("orders"), max("users")), (2.0, 5.0));
    let in_use = |pool: &str| scalar(&scrape, "wharf_pool_connections_in_use", &[("pool", pool)]);
    assert_eq!((in_use("orders"), in_use("users")), (1.0, 0.0));
    for pool in ["orders", "users"] {
        let m = if pool == "orders" {
            orders.metrics()
        } else {
            users.metrics()
        };
        assert_histogram(
            &scrape,
            "wharf_pool_acquire_wait_seconds",
            pool,
            &m.acquire_wait,
        );
    }
}

/// A second kind of pool, to show the registry mixes managers.
struct Flags;

impl wharf::Manager for Flags {
    type Connection = bool;
    type Error = std::convert::Infallible;

    async fn connect(&self) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn check(&self, _: &mut bool) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_registry_renders_its_live_pools_and_forgets_dropped_ones() {
    let (orders, _) = ScriptedManager::new();
    let orders = Pool::builder(orders)
        .name("orders")
        .max_size(3)
        .build()
        .unwrap();
    let flags = Pool::builder(Flags)
        .name("flags")
        .max_size(7)
        .build()
        .unwrap();
    let registry = wharf::MetricsRegistry::new();
    registry.register(&orders);
    registry.register(&flags);
    let _held = flags.get().await.unwrap();

    let text = registry.render();
    assert_well_formed(&text);
    let scrape = parse(&text);
    let max =
        |scrape: &Scrape, pool: &str| scalar(scrape, "wharf_pool_max_size", &[("pool", pool)]);
    assert_eq!((max(&scrape, "orders"), max(&scrape, "flags")), (3.0, 7.0));
    assert_eq!(
        scalar(
            &scrape,
            "wharf_pool_connections_in_use",
            &[("pool", "flags")]
        ),
        1.0
    );

    drop(orders);
    let text = registry.render();
    assert_well_formed(&text);
    assert!(!text.contains(r#"pool="orders""#), "{text}");
    assert_eq!(registry.snapshot().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn pool_names_are_escaped_in_labels() {
    let (manager, _) = ScriptedManager::new();
    let pool = Pool::builder(manager).name("a\"b\\c\nd").build().unwrap();
    let text = pool.metrics().to_prometheus();
    assert!(
        text.contains(r#"wharf_pool_max_size{pool="a\"b\\c\nd"} 10"#),
        "{text}"
    );
    assert!(text
        .lines()
        .all(|l| l.starts_with('#') || l.starts_with("wharf_pool_")));
}

#[tokio::test(start_paused = true)]
async fn time_spent_preparing_a_connection_counts_as_waiting_not_as_use() {
    let (manager, _script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(1)
        .leak_detection_threshold(ms(150))
        .maintenance_interval(ms(50))
        .on_checkout(|_conn| {
            Box::pin(async {
                // e.g. a `DISCARD ALL` round trip.
                sleep(ms(100)).await;
                Ok(())
            })
        })
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    for _ in 0..4 {
        let conn = pool.get().await.unwrap();
        sleep(ms(10)).await;
        drop(conn);
    }
    let m = pool.metrics();
    // The caller waited for the hook; it held the connection for 10 ms.
    assert_eq!(m.acquire_wait.count(), 5);
    assert_eq!(m.acquire_wait.sum(), ms(500), "acquire_wait");
    assert_eq!(m.in_use_time.count(), 5);
    assert_eq!(m.in_use_time.sum(), ms(40), "in_use_time");
    // Nor does the hook's time count towards a leak: 10 ms held is far
    // under the threshold.
    assert_eq!(m.leaks, 0);
}

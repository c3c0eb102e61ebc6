//! Gauges, counters and latency histograms, and their Prometheus rendering.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::histogram::{AtomicHistogram, Histogram, PROMETHEUS_BOUNDS_SECS};
use crate::{BudgetShare, CircuitMetrics, CircuitState, CloseReason, LaneMetrics};

/// The pool's size at one moment: node-postgres' `totalCount`, `idleCount`
/// and `waitingCount`, and HikariCP's total/idle/active/pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Status {
    /// Connections counted against `max_size`: idle, in use, and those being
    /// opened or checked by keepalive.
    pub size: usize,
    /// Connections idle in the pool.
    pub idle: usize,
    /// Connections handed out to callers.
    pub in_use: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// The current `max_size`.
    pub max_size: usize,
    /// The circuit breaker's state ([`CircuitState::Disabled`] without one).
    pub circuit: CircuitState,
}

/// The pool's counters; every field only grows.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) timeouts: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) created: AtomicU64,
    pub(crate) create_errors: AtomicU64,
    pub(crate) leaks: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) closed: [AtomicU64; CloseReason::ALL.len()],
}

pub(crate) struct Recorder {
    pub(crate) counters: Counters,
    pub(crate) acquire_wait: Timing,
    pub(crate) in_use_time: Timing,
    pub(crate) connect_time: Timing,
    /// Handles into the `metrics` facade's recorder, registered once so the
    /// hot path never builds a key.
    #[cfg(feature = "metrics")]
    pub(crate) facade: crate::facade::Facade,
}

/// One latency histogram: always our own lock-free one, and with the
/// `metrics` feature also the facade's, so each sample is seen by both.
pub(crate) struct Timing {
    local: AtomicHistogram,
    #[cfg(feature = "metrics")]
    facade: ::metrics::Histogram,
}

impl Timing {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn new(pool: &str, family: usize) -> Self {
        Self {
            local: AtomicHistogram::new(),
            #[cfg(feature = "metrics")]
            facade: crate::facade::histogram(pool, family),
        }
    }

    pub(crate) fn record(&self, value: std::time::Duration) {
        self.local.record(value);
        #[cfg(feature = "metrics")]
        self.facade.record(value.as_secs_f64());
    }

    pub(crate) fn snapshot(&self) -> Histogram {
        self.local.snapshot()
    }

    /// Samples recorded so far.
    pub(crate) fn count(&self) -> u64 {
        self.local.count()
    }
}

impl Recorder {
    pub(crate) fn new(pool: &str) -> Self {
        Self {
            counters: Counters::default(),
            acquire_wait: Timing::new(pool, 0),
            in_use_time: Timing::new(pool, 1),
            connect_time: Timing::new(pool, 2),
            #[cfg(feature = "metrics")]
            facade: crate::facade::Facade::new(pool),
        }
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        Self::count(&self.counters.closed[reason.index()]);
    }

    pub(crate) fn snapshot(&self, name: &str, status: Status) -> Metrics {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Metrics {
            name: name.to_owned(),
            status,
            timeouts: load(&c.timeouts),
            rejected: load(&c.rejected),
            created: load(&c.created),
            create_errors: load(&c.create_errors),
            leaks: load(&c.leaks),
            closed: CloseReason::ALL
                .iter()
                .map(|&r| (r, load(&c.closed[r.index()])))
                .collect(),
            acquire_wait: self.acquire_wait.snapshot(),
            in_use_time: self.in_use_time.snapshot(),
            connect_time: self.connect_time.snapshot(),
            circuit: None,
            lanes: Vec::new(),
            budget: None,
            retries: load(&c.retries),
        }
    }
}

/// A snapshot of a pool's metrics, from [`Pool::metrics`](crate::Pool::metrics).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The pool's name ([`Config::name`](crate::Config::name)).
    pub name: String,
    /// The gauges.
    pub status: Status,
    /// `get()` calls that timed out.
    pub timeouts: u64,
    /// `get()` calls refused at once: `max_waiting` callers were waiting, or
    /// a `fail_fast` pool's backend was failing.
    pub rejected: u64,
    /// Connections opened.
    pub created: u64,
    /// Connects that failed (including a failed `on_connect` hook).
    pub create_errors: u64,
    /// Connections reported by leak detection.
    pub leaks: u64,
    /// Connections closed, per reason, in [`CloseReason::ALL`] order.
    pub closed: Vec<(CloseReason, u64)>,
    /// Time from `get()` to having a connection; its count is the number of
    /// successful acquires.
    pub acquire_wait: Histogram,
    /// Time from checkout to return.
    pub in_use_time: Histogram,
    /// Time to open a connection (successful connects only).
    pub connect_time: Histogram,
    /// The circuit breaker's counters, if the pool has one.
    pub circuit: Option<CircuitMetrics>,
    /// Each lane's figures, in the order they were configured.
    pub lanes: Vec<LaneMetrics>,
    /// The pool's share of its shared [`Budget`](crate::Budget), if it has
    /// one.
    pub budget: Option<BudgetShare>,
    /// Attempts [`Pool::retry`](crate::Pool::retry) made beyond the first.
    pub retries: u64,
}

impl Metrics {
    /// Successful `get()` calls.
    pub fn acquired(&self) -> u64 {
        self.acquire_wait.count()
    }

    /// Connections closed for `reason`.
    pub fn closed_for(&self, reason: CloseReason) -> u64 {
        self.closed
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |&(_, n)| n)
    }

    /// Connections closed for any reason.
    pub fn closed_total(&self) -> u64 {
        self.closed.iter().map(|(_, n)| n).sum()
    }

    /// Renders the metrics in the Prometheus text exposition format
    /// (version 0.0.4), every series labelled `pool="<name>"`, ready to
    /// serve from an application's own `/metrics` endpoint.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.write_prometheus(&mut out);
        out
    }

    /// Appends the Prometheus rendering to `out`, so several pools can share
    /// one response. `# HELP`/`# TYPE` lines are written for each family, so
    /// when rendering several pools into one response, group them with
    /// [`render_prometheus`].
    pub fn write_prometheus(&self, out: &mut String) {
        render_prometheus(std::slice::from_ref(self), out);
    }
}

/// A metric family: its name, its help text, and how to read its value.
pub(crate) type Family<F> = (&'static str, &'static str, F);
pub(crate) type GaugeFn = fn(&Status) -> usize;
pub(crate) type CounterFn = fn(&Metrics) -> u64;
pub(crate) type HistogramFn = fn(&Metrics) -> &Histogram;
type ShareFn = fn(&BudgetShare) -> usize;

/// The gauge families, shared by the text renderer and the facade.
pub(crate) const GAUGES: [Family<GaugeFn>; 6] = [
    (
        "wharf_pool_connections",
        "Connections open or opening (counted against max_size).",
        |s| s.size,
    ),
    ("wharf_pool_connections_idle", "Idle connections.", |s| {
        s.idle
    }),
    (
        "wharf_pool_connections_in_use",
        "Connections handed out.",
        |s| s.in_use,
    ),
    (
        "wharf_pool_waiting",
        "Callers waiting for a connection.",
        |s| s.waiting,
    ),
    (
        "wharf_pool_max_size",
        "Configured maximum pool size.",
        |s| s.max_size,
    ),
    (
        "wharf_pool_circuit_state",
        "Circuit breaker state: 0 closed (or no breaker), 1 half-open, 2 open.",
        |s| s.circuit.as_gauge(),
    ),
];

/// The counter families (besides closed-by-reason).
pub(crate) const COUNTERS: [Family<CounterFn>; 9] = [
    (
        "wharf_pool_acquired_total",
        "Successful get() calls.",
        Metrics::acquired,
    ),
    (
        "wharf_pool_timeouts_total",
        "get() calls that timed out.",
        |m| m.timeouts,
    ),
    (
        "wharf_pool_rejected_total",
        "get() calls refused at once (max_waiting reached, or fail_fast while the backend is failing).",
        |m| m.rejected,
    ),
    (
        "wharf_pool_connections_created_total",
        "Connections opened.",
        |m| m.created,
    ),
    (
        "wharf_pool_connect_errors_total",
        "Failed connection attempts.",
        |m| m.create_errors,
    ),
    (
        "wharf_pool_leaks_total",
        "Connections reported by leak detection.",
        |m| m.leaks,
    ),
    (
        "wharf_pool_circuit_opened_total",
        "Times the circuit breaker opened.",
        |m| m.circuit.map_or(0, |c| c.opened),
    ),
    (
        "wharf_pool_circuit_rejected_total",
        "get() calls refused at once by an open circuit.",
        |m| m.circuit.map_or(0, |c| c.rejected),
    ),
    (
        "wharf_pool_retries_total",
        "Attempts Pool::retry made beyond the first.",
        |m| m.retries,
    ),
];

/// The per-lane families: gauges, then counters, labelled `pool` and `lane`.
type LaneFn = fn(&LaneMetrics) -> u64;
const LANE_GAUGES: [Family<LaneFn>; 3] = [
    (
        "wharf_lane_max_in_use",
        "A lane's cap on connections.",
        |l| l.max_in_use as u64,
    ),
    (
        "wharf_lane_in_use",
        "A lane's places taken (connections held or being waited for in the pool).",
        |l| l.in_use as u64,
    ),
    (
        "wharf_lane_waiting",
        "Callers waiting for a place in a lane.",
        |l| l.waiting as u64,
    ),
];
const LANE_COUNTERS: [Family<LaneFn>; 2] = [
    (
        "wharf_lane_acquired_total",
        "Successful get_in() calls of a lane.",
        |l| l.acquired,
    ),
    (
        "wharf_lane_timeouts_total",
        "get_in() calls of a lane that timed out.",
        |l| l.timeouts,
    ),
];

/// The histogram families, in [`Recorder`] field order.
pub(crate) const HISTOGRAMS: [Family<HistogramFn>; 3] = [
    (
        "wharf_pool_acquire_wait_seconds",
        "Time get() waited for a connection.",
        |m| &m.acquire_wait,
    ),
    (
        "wharf_pool_in_use_seconds",
        "Time connections were held by callers.",
        |m| &m.in_use_time,
    ),
    (
        "wharf_pool_connect_seconds",
        "Time to open a connection.",
        |m| &m.connect_time,
    ),
];

/// The counter family of connections closed, labelled by reason.
pub(crate) const CLOSED: (&str, &str) = (
    "wharf_pool_connections_closed_total",
    "Connections closed, by reason.",
);

/// Renders several pools' metrics as one Prometheus text document, each
/// metric family once with a series per pool.
pub fn render_prometheus(pools: &[Metrics], out: &mut String) {
    let label = |m: &Metrics| escape_label(&m.name);
    for (name, help, get) in GAUGES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for m in pools {
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", label(m), get(&m.status));
        }
    }
    for (name, help, get) in COUNTERS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for m in pools {
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", label(m), get(m));
        }
    }
    let (name, help) = CLOSED;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for m in pools {
        for (reason, n) in &m.closed {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",reason=\"{reason}\"}} {n}",
                label(m)
            );
        }
    }
    for (name, help, get) in HISTOGRAMS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for m in pools {
            write_histogram(out, name, &label(m), get(m));
        }
    }
    write_budget_shares(pools, out);
    if pools.iter().any(|m| !m.lanes.is_empty()) {
        let families = LANE_GAUGES
            .iter()
            .map(|f| (f, "gauge"))
            .chain(LANE_COUNTERS.iter().map(|f| (f, "counter")));
        for ((name, help, get), kind) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for m in pools {
                for lane in &m.lanes {
                    let _ = writeln!(
                        out,
                        "{name}{{pool=\"{}\",lane=\"{}\"}} {}",
                        label(m),
                        escape_label(&lane.name),
                        get(lane)
                    );
                }
            }
        }
    }
}

/// Each budgeted pool's guarantee and holding, as gauges.
fn write_budget_shares(pools: &[Metrics], out: &mut String) {
    if pools.iter().all(|m| m.budget.is_none()) {
        return;
    }
    let families: [Family<ShareFn>; 2] = [
        (
            "wharf_pool_budget_held",
            "Units of the shared budget the pool holds.",
            |b| b.held,
        ),
        (
            "wharf_pool_budget_guaranteed",
            "Units of the shared budget guaranteed to the pool.",
            |b| b.guaranteed,
        ),
    ];
    for (name, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for m in pools {
            if let Some(share) = &m.budget {
                let _ = writeln!(
                    out,
                    "{name}{{pool=\"{}\"}} {}",
                    escape_label(&m.name),
                    get(share)
                );
            }
        }
    }
}

fn write_histogram(out: &mut String, name: &str, pool: &str, h: &Histogram) {
    for (bound, count) in PROMETHEUS_BOUNDS_SECS
        .iter()
        .zip(h.cumulative(PROMETHEUS_BOUNDS_SECS))
    {
        let _ = writeln!(
            out,
            "{name}_bucket{{pool=\"{pool}\",le=\"{bound}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{pool=\"{pool}\",le=\"+Inf\"}} {}",
        h.count()
    );
    let _ = writeln!(
        out,
        "{name}_sum{{pool=\"{pool}\"}} {}",
        h.sum().as_secs_f64()
    );
    let _ = writeln!(out, "{name}_count{{pool=\"{pool}\"}} {}", h.count());
}

fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A source of one pool's metrics that does not keep the pool alive.
type Source = Box<dyn Fn() -> Option<Metrics> + Send + Sync>;

/// The pools an application serves on its own `/metrics` endpoint.
///
/// Pools of different managers can be registered side by side; a pool that
/// has been dropped disappears from the output. Rendering takes a snapshot of
/// each pool's atomics and never blocks the pools. No HTTP crate is involved:
/// mount [`render`](Self::render) on whatever server the application runs.
///
/// ```
/// # use std::convert::Infallible;
/// # struct Numbers;
/// # impl wharf::Manager for Numbers {
/// #     type Connection = u32;
/// #     type Error = Infallible;
/// #     async fn connect(&self) -> Result<u32, Infallible> { Ok(0) }
/// #     async fn check(&self, _: &mut u32) -> Result<(), Infallible> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), wharf::ConfigError> {
/// let pool = wharf::Pool::builder(Numbers).name("numbers").build()?;
/// let registry = wharf::MetricsRegistry::new();
/// registry.register(&pool);
///
/// // In an axum handler, say:
/// // ([(CONTENT_TYPE, MetricsRegistry::CONTENT_TYPE)], registry.render())
/// let body = registry.render();
/// assert!(body.contains(r#"wharf_pool_max_size{pool="numbers"}"#));
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct MetricsRegistry {
    sources: parking_lot::Mutex<Vec<Source>>,
}

impl MetricsRegistry {
    /// The `Content-Type` of [`render`](Self::render)'s output.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pool. The registry holds it weakly.
    pub fn register<M: crate::Manager>(&self, pool: &crate::Pool<M>) {
        let weak = pool.downgrade();
        self.sources
            .lock()
            .push(Box::new(move || weak.upgrade().map(|pool| pool.metrics())));
    }

    /// A snapshot of every live registered pool, forgetting dropped ones.
    pub fn snapshot(&self) -> Vec<Metrics> {
        let mut sources = self.sources.lock();
        let mut out = Vec::with_capacity(sources.len());
        sources.retain(|source| match source() {
            Some(metrics) => {
                out.push(metrics);
                true
            }
            None => false,
        });
        out
    }

    /// Every registered pool in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        render_prometheus(&self.snapshot(), &mut out);
        out
    }
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry")
            .field("pools", &self.sources.lock().len())
            .finish()
    }
}

//! `GET /api/stats`: what the dashboard draws. Current figures per pool,
//! the alerts in force, and a history of the last five minutes that
//! [`sample`] records every second, server-side, so a page opened now
//! already shows the recent past.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use super::exporter::{long_transactions, utilization, LONG_TRANSACTION};
use crate::server::Role;
use crate::state::PoolerState;
use crate::views;

/// How often [`sample`] records.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Samples kept per pool: five minutes.
pub const HISTORY_LEN: usize = 300;

/// Clients waiting this long in a row raise an alert.
const WAITING_ALERT: Duration = Duration::from_secs(5);

/// Utilization above this raises an alert.
const UTILIZATION_ALERT: f64 = 0.8;

/// Upper bounds (seconds) at which wait-time histograms are read each
/// second: ten per decade from 1 µs to 100 s, so a quantile of the
/// samples of one second (the difference of two readings) is within 26 %.
fn quantile_bounds() -> &'static [f64] {
    static BOUNDS: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| {
        (0..=80)
            .map(|i| 1e-6 * 10f64.powf(f64::from(i) / 10.0))
            .collect()
    })
}

/// One second of one pool.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    t_ms: u64,
    cl_active: usize,
    cl_waiting: usize,
    sv_active: usize,
    sv_idle: usize,
    tps: f64,
    qps: f64,
    wait_p50_ms: f64,
    wait_p99_ms: f64,
    timeouts: u64,
}

/// One pool's samples and what the next sample is computed from.
#[derive(Debug, Default)]
struct PoolHistory {
    samples: VecDeque<Sample>,
    last: Option<(Instant, u64, u64, Vec<u64>)>,
    waiting_since: Option<Instant>,
}

/// The samples of every pool, keyed `database/user`.
#[derive(Debug, Default)]
pub struct History {
    pools: Mutex<HashMap<String, PoolHistory>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The quantile `q` of the samples counted by `delta` (cumulative counts at
/// [`quantile_bounds`]) out of `total`, in milliseconds.
fn window_quantile(delta: &[u64], total: u64, q: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let bounds = quantile_bounds();
    let i = delta
        .iter()
        .position(|&n| n >= rank)
        .unwrap_or(bounds.len() - 1);
    bounds.get(i).copied().unwrap_or(0.0) * 1000.0
}

/// Records a sample of every pool every [`SAMPLE_EVERY`] until the pooler
/// is gone.
pub async fn sample(state: Weak<PoolerState>, history: Arc<History>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        history.record(&state);
    }
}

impl History {
    /// Takes one sample of every pool now.
    pub fn record(&self, state: &PoolerState) {
        let rows = views::pool_rows(state);
        let now = Instant::now();
        let t_ms = now_ms();
        let mut taken = Vec::new();
        for pool in state.router().pools() {
            let row = rows
                .iter()
                .find(|r| r.database == pool.database() && r.user == pool.user());
            let totals = pool.stats().totals();
            let wait = pool.stats().wait_time.snapshot();
            let counts = wait.cumulative(quantile_bounds());
            let timeouts = pool.metrics().timeouts;
            taken.push((
                format!("{}/{}", pool.database(), pool.user()),
                row.cloned(),
                totals,
                wait.count(),
                counts,
                timeouts,
            ));
        }
        let mut pools = self.pools.lock();
        pools.retain(|name, _| taken.iter().any(|t| t.0 == *name));
        for (name, row, totals, wait_count, counts, timeouts) in taken {
            let h = pools.entry(name).or_default();
            let mut s = Sample {
                t_ms,
                timeouts,
                ..Sample::default()
            };
            if let Some(row) = &row {
                s.cl_active = row.cl_active;
                s.cl_waiting = row.cl_waiting;
                s.sv_active = row.sv_active;
                s.sv_idle = row.sv_idle + row.sv_used;
            }
            if let Some((at, xacts, queries, ref before)) = h.last {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                s.tps = totals.xact_count.saturating_sub(xacts) as f64 / secs;
                s.qps = totals.query_count.saturating_sub(queries) as f64 / secs;
                let delta: Vec<u64> = counts
                    .iter()
                    .zip(before)
                    .map(|(n, b)| n.saturating_sub(*b))
                    .collect();
                let total = wait_count.saturating_sub(before.last().copied().unwrap_or(0));
                // Samples above the last bound are counted in the total only.
                let total = total.max(delta.last().copied().unwrap_or(0));
                s.wait_p50_ms = window_quantile(&delta, total, 0.5);
                s.wait_p99_ms = window_quantile(&delta, total, 0.99);
            }
            let mut counts = counts;
            counts.push(wait_count);
            h.last = Some((now, totals.xact_count, totals.query_count, counts));
            h.waiting_since = match (s.cl_waiting > 0, h.waiting_since) {
                (false, _) => None,
                (true, Some(since)) => Some(since),
                (true, None) => Some(now),
            };
            if h.samples.len() == HISTORY_LEN {
                h.samples.pop_front();
            }
            h.samples.push_back(s);
        }
    }
}

/// The `/api/stats` document.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// wharf's version.
    pub version: &'static str,
    /// Seconds since the pooler started.
    pub uptime_seconds: f64,
    /// When this was taken, ms since the Unix epoch.
    pub now_ms: u64,
    /// Milliseconds between history samples.
    pub sample_interval_ms: u64,
    /// Every pool, sorted by name.
    pub pools: Vec<PoolSnapshot>,
}

/// One pool in `/api/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    /// `database/user`.
    pub name: String,
    /// The database.
    pub database: String,
    /// The pool's user.
    pub user: String,
    /// The pool mode.
    pub mode: &'static str,
    /// The figures now.
    pub current: Current,
    /// The alerts in force.
    pub alerts: Vec<Alert>,
    /// The pool's hosts (one for most pools).
    pub hosts: Vec<HostView>,
    /// The last five minutes, one entry per sample in every array.
    pub history: Series,
}

/// One host of a pool in `/api/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// `host:port`, or the socket path.
    pub addr: String,
    /// Not backing off after failures.
    pub up: bool,
    /// `primary`, `standby`, or empty when the pool does not look.
    pub role: &'static str,
    /// Over `max_replica_lag` when last seen.
    pub lagging: bool,
}

/// A pool's figures now.
#[derive(Debug, Clone, Serialize)]
pub struct Current {
    /// `cl_active` of SHOW POOLS.
    pub cl_active: usize,
    /// `cl_waiting`.
    pub cl_waiting: usize,
    /// `sv_active`.
    pub sv_active: usize,
    /// `sv_idle` + `sv_used`.
    pub sv_idle: usize,
    /// `sv_login`.
    pub sv_login: usize,
    /// The oldest waiting client's wait, seconds.
    pub maxwait_seconds: f64,
    /// The pool's maximum size.
    pub max_size: usize,
    /// Servers in use over `max_size`.
    pub utilization: f64,
    /// Transactions since start (`total_xact_count`).
    pub xacts_total: u64,
    /// Queries since start (`total_query_count`).
    pub queries_total: u64,
    /// Transactions per second over the last sample.
    pub tps: f64,
    /// Median client wait since start, ms.
    pub wait_p50_ms: f64,
    /// 99th percentile client wait since start, ms.
    pub wait_p99_ms: f64,
    /// 99th percentile transaction time since start, ms.
    pub xact_p99_ms: f64,
    /// 99th percentile query time since start, ms.
    pub query_p99_ms: f64,
    /// Acquire timeouts since start (engine).
    pub timeouts_total: u64,
    /// Failed server connects since start (engine).
    pub connect_errors_total: u64,
    /// Clients holding a server for more than 10 s (transaction and
    /// statement pools).
    pub long_transactions: usize,
    /// PAUSE or SUSPEND in force.
    pub paused: bool,
    /// DISABLE in force.
    pub disabled: bool,
    /// No server connect failed since the last success.
    pub reachable: bool,
}

/// Something on a pool that needs a look.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// `utilization`, `waiting`, `timeouts`, `long_transactions`,
    /// `unreachable`, `paused` or `disabled`.
    pub kind: &'static str,
    /// `critical` or `warning`.
    pub severity: &'static str,
    /// What to tell the operator.
    pub message: String,
}

/// A pool's history, column by column.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// Sample times, ms since the Unix epoch.
    pub t: Vec<u64>,
    /// `cl_active`.
    pub cl_active: Vec<usize>,
    /// `cl_waiting`.
    pub cl_waiting: Vec<usize>,
    /// `sv_active`.
    pub sv_active: Vec<usize>,
    /// `sv_idle` + `sv_used`.
    pub sv_idle: Vec<usize>,
    /// Transactions per second.
    pub tps: Vec<f64>,
    /// Queries per second.
    pub qps: Vec<f64>,
    /// Median client wait over the second, ms.
    pub wait_p50_ms: Vec<f64>,
    /// 99th percentile client wait over the second, ms.
    pub wait_p99_ms: Vec<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Everything the dashboard shows, now.
pub fn snapshot(state: &PoolerState, history: &History) -> Snapshot {
    let rows = views::pool_rows(state);
    let long = long_transactions(state, LONG_TRANSACTION);
    let mut pools = Vec::new();
    let histories = history.pools.lock();
    for pool in state.router().pools() {
        let name = format!("{}/{}", pool.database(), pool.user());
        let row = rows
            .iter()
            .find(|r| r.database == pool.database() && r.user == pool.user());
        let metrics = pool.metrics();
        let (failures, last_error) = pool.connect_failures();
        let totals = pool.stats().totals();
        let wait = pool.stats().wait_time.snapshot();
        let h = histories.get(&name);
        let series = Series::of(h);
        let current = Current {
            cl_active: row.map_or(0, |r| r.cl_active),
            cl_waiting: row.map_or(0, |r| r.cl_waiting),
            sv_active: row.map_or(0, |r| r.sv_active),
            sv_idle: row.map_or(0, |r| r.sv_idle + r.sv_used),
            sv_login: row.map_or(0, |r| r.sv_login),
            maxwait_seconds: row.map_or(0.0, |r| r.maxwait.as_secs_f64()),
            max_size: metrics.status.max_size,
            utilization: utilization(&metrics.status),
            xacts_total: totals.xact_count,
            queries_total: totals.query_count,
            tps: series.tps.last().copied().unwrap_or(0.0),
            wait_p50_ms: ms(wait.p50()),
            wait_p99_ms: ms(wait.p99()),
            xact_p99_ms: ms(pool.stats().xact_time.snapshot().p99()),
            query_p99_ms: ms(pool.stats().query_time.snapshot().p99()),
            timeouts_total: metrics.timeouts,
            connect_errors_total: metrics.create_errors,
            long_transactions: long
                .iter()
                .find(|((d, u), _)| *d == pool.database() && *u == pool.user())
                .map_or(0, |(_, n)| *n),
            paused: pool.control().is_paused(),
            disabled: pool.control().is_disabled(),
            reachable: failures == 0,
        };
        let waiting_for = h
            .and_then(|h| h.waiting_since)
            .map_or(Duration::ZERO, |since| since.elapsed())
            .max(row.map_or(Duration::ZERO, |r| r.maxwait));
        let timeouts_before = h.and_then(|h| h.samples.front()).map_or(0, |s| s.timeouts);
        let recent_timeouts = metrics.timeouts.saturating_sub(timeouts_before);
        let unreachable = (failures > 0).then(|| {
            let why = last_error.map_or_else(String::new, |e| format!(": {e}"));
            format!("server unreachable, {failures} connects failed{why}")
        });
        let alerts = alerts(
            &current,
            metrics.status.in_use,
            unreachable,
            waiting_for,
            recent_timeouts,
        );
        let hosts = pool
            .hosts()
            .into_iter()
            .map(|h| HostView {
                addr: h.addr.to_string(),
                up: h.up,
                role: match h.role {
                    Some(Role::Primary) => "primary",
                    Some(Role::Standby) => "standby",
                    None => "",
                },
                lagging: h.lagging,
            })
            .collect();
        pools.push(PoolSnapshot {
            name,
            database: pool.database().to_owned(),
            user: pool.user().to_owned(),
            mode: pool.mode().as_str(),
            current,
            alerts,
            hosts,
            history: series,
        });
    }
    drop(histories);
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.router().stats().uptime().as_secs_f64(),
        now_ms: now_ms(),
        sample_interval_ms: u64::try_from(SAMPLE_EVERY.as_millis()).unwrap_or(1000),
        pools,
    }
}

/// The dashboard's alerts for a pool in the state `current`.
fn alerts(
    current: &Current,
    in_use: usize,
    unreachable: Option<String>,
    waiting_for: Duration,
    recent_timeouts: u64,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let mut alert = |kind, severity, message| {
        alerts.push(Alert {
            kind,
            severity,
            message,
        })
    };
    if let Some(message) = unreachable {
        alert("unreachable", "critical", message);
    }
    if current.paused {
        alert("paused", "warning", "paused: clients wait".to_owned());
    }
    if current.disabled {
        alert(
            "disabled",
            "warning",
            "disabled: new clients refused".to_owned(),
        );
    }
    if current.utilization > UTILIZATION_ALERT {
        alert(
            "utilization",
            "warning",
            format!(
                "{:.0} % of servers in use ({} of {})",
                current.utilization * 100.0,
                in_use,
                current.max_size
            ),
        );
    }
    if current.cl_waiting > 0 && waiting_for >= WAITING_ALERT {
        alert(
            "waiting",
            "critical",
            format!(
                "{} clients waiting for a server, for {:.0} s",
                current.cl_waiting,
                waiting_for.as_secs_f64()
            ),
        );
    }
    if recent_timeouts > 0 {
        alert(
            "timeouts",
            "critical",
            format!("{recent_timeouts} clients timed out waiting for a server in the last 5 min"),
        );
    }
    if current.long_transactions > 0 {
        alert(
            "long_transactions",
            "warning",
            format!(
                "{} clients holding a server for over {} s (idle in transaction?)",
                current.long_transactions,
                LONG_TRANSACTION.as_secs()
            ),
        );
    }
    alerts
}

impl Series {
    /// The series of a pool's samples (empty without any).
    fn of(history: Option<&PoolHistory>) -> Self {
        let mut series = Series::default();
        for s in history.iter().flat_map(|h| h.samples.iter()) {
            series.t.push(s.t_ms);
            series.cl_active.push(s.cl_active);
            series.cl_waiting.push(s.cl_waiting);
            series.sv_active.push(s.sv_active);
            series.sv_idle.push(s.sv_idle);
            series.tps.push(s.tps);
            series.qps.push(s.qps);
            series.wait_p50_ms.push(s.wait_p50_ms);
            series.wait_p99_ms.push(s.wait_p99_ms);
        }
        series
    }
}

//! Turning runs into numbers: the terminal table, the raw samples as CSV,
//! the JSON summary, and (through [`super::svg`]) the charts.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::strategy::{RunResult, Strategy};
use super::{rule_of_thumb, svg, BenchError, Limit, Outcome};

/// Microseconds up to an hour, three significant digits: enough for any
/// request latency, at a fixed few hundred KiB per histogram.
fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the constructor's conditions.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// The latencies of a run's successful requests, in microseconds; `None`
/// when none succeeded.
pub fn latency_histogram(run: &RunResult) -> Option<Histogram<u64>> {
    let mut histogram = new_histogram();
    for sample in run.samples.iter().filter(|s| s.ok) {
        histogram.saturating_record(sample.latency_us.max(1));
    }
    (!histogram.is_empty()).then_some(histogram)
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencyMs {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl LatencyMs {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencyMs {
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p95: ms(histogram.value_at_quantile(0.95)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// One error message and how often it occurred.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    /// The message.
    pub message: String,
    /// Occurrences.
    pub count: u64,
}

/// A run's figures, as printed and as written to the JSON summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// `per-request`, `pool` or `proxy`.
    pub strategy: &'static str,
    /// The in-process pool's size, for `pool`.
    pub pool_size: Option<usize>,
    /// Concurrent clients.
    pub clients: usize,
    /// Requests sent.
    pub requests: u64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed (plus one if the run could not start).
    pub errors: u64,
    /// Wall time of the run in seconds.
    pub elapsed_s: f64,
    /// Successful requests per second.
    pub throughput_rps: f64,
    /// Latency of successful requests.
    pub latency_ms: Option<LatencyMs>,
    /// Connections opened: one per request for `per-request` and `proxy`,
    /// the pool's own for `pool`.
    pub connects: u64,
    /// Connect time (of requests' connects, or of the pool's).
    pub connect_ms: Option<ConnectMs>,
    /// For `pool`: time to open all its connections before the run.
    pub warmup_ms: Option<f64>,
    /// Why the run could not start.
    pub fatal: Option<String>,
    /// Distinct errors, most frequent first.
    pub error_messages: Vec<ErrorCount>,
}

/// Connect times in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConnectMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl RunSummary {
    /// Computes the figures of `run`.
    pub fn of(run: &RunResult) -> Self {
        let histogram = latency_histogram(run);
        let mut connects = new_histogram();
        for us in run.samples.iter().filter_map(|s| s.connect_us) {
            connects.saturating_record(us.max(1));
        }
        let (connect_count, connect_ms, warmup_ms) = match &run.warmup {
            Some(warmup) => (
                warmup.connects,
                Some(ConnectMs {
                    p50: warmup.connect_p50.as_secs_f64() * 1000.0,
                    p99: warmup.connect_p99.as_secs_f64() * 1000.0,
                }),
                Some(warmup.elapsed.as_secs_f64() * 1000.0),
            ),
            None if !connects.is_empty() => (
                connects.len(),
                Some(ConnectMs {
                    p50: connects.value_at_quantile(0.5) as f64 / 1000.0,
                    p99: connects.value_at_quantile(0.99) as f64 / 1000.0,
                }),
                None,
            ),
            None => (0, None, None),
        };
        let mut error_messages: Vec<ErrorCount> = run
            .errors
            .iter()
            .map(|(message, &count)| ErrorCount {
                message: message.clone(),
                count,
            })
            .collect();
        error_messages.sort_by_key(|e| std::cmp::Reverse(e.count));
        RunSummary {
            strategy: run.strategy.name(),
            pool_size: run.pool_size,
            clients: run.clients,
            requests: run.samples.len() as u64,
            ok: run.ok_count(),
            errors: run.error_count(),
            elapsed_s: run.elapsed.as_secs_f64(),
            throughput_rps: run.throughput(),
            latency_ms: histogram.as_ref().map(LatencyMs::of),
            connects: connect_count,
            connect_ms,
            warmup_ms,
            fatal: run.fatal.clone(),
            error_messages,
        }
    }

    fn label(&self) -> String {
        match self.pool_size {
            Some(size) => format!("{} ({size})", self.strategy),
            None => self.strategy.to_owned(),
        }
    }
}

/// What the sweep found.
#[derive(Debug, Clone, Serialize)]
pub struct SweepSummary {
    /// One summary per pool size, smallest first.
    pub runs: Vec<RunSummary>,
    /// The size with the highest throughput.
    pub best_pool_size: Option<usize>,
    /// (cores × 2) + 1 when the database is on this host.
    pub rule_of_thumb_pool_size: Option<usize>,
}

impl SweepSummary {
    /// Summarizes the sweep of `outcome`.
    pub fn of(outcome: &Outcome) -> Self {
        let runs: Vec<RunSummary> = outcome.sweep.iter().map(RunSummary::of).collect();
        let best_pool_size = runs
            .iter()
            .filter(|r| r.ok > 0)
            .max_by(|a, b| a.throughput_rps.total_cmp(&b.throughput_rps))
            .and_then(|r| r.pool_size);
        SweepSummary {
            runs,
            best_pool_size,
            rule_of_thumb_pool_size: outcome
                .plan
                .target
                .is_local
                .then(|| rule_of_thumb(outcome.cores)),
        }
    }
}

/// The JSON summary.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The wharf version that measured.
    pub wharf_version: &'static str,
    /// `user@host:port/dbname` of the database.
    pub database: String,
    /// Whether the database is on this host.
    pub database_is_local: bool,
    /// `user@host:port/dbname` of the pooler, if any.
    pub proxy: Option<String>,
    /// `select`, `tpcb`, `sleep:<secs>` or `sql`.
    pub workload: String,
    /// What a request runs.
    pub workload_description: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds per run, when runs are timed.
    pub duration_s: Option<f64>,
    /// Requests per client, when runs are counted.
    pub transactions_per_client: Option<u64>,
    /// This host's cores.
    pub host_cores: usize,
    /// The strategy comparison.
    pub runs: Vec<RunSummary>,
    /// The pool-size sweep, if one ran.
    pub sweep: Option<SweepSummary>,
}

impl Summary {
    /// Summarizes `outcome`.
    pub fn of(outcome: &Outcome) -> Self {
        let plan = &outcome.plan;
        let (duration_s, transactions_per_client) = match plan.limit {
            Limit::Duration(d) => (Some(d.as_secs_f64()), None),
            Limit::Transactions(n) => (None, Some(n)),
        };
        Summary {
            wharf_version: env!("CARGO_PKG_VERSION"),
            database: plan.target.display.clone(),
            database_is_local: plan.target.is_local,
            proxy: plan.proxy.as_ref().map(|p| p.display.clone()),
            workload: plan.workload.to_string(),
            workload_description: plan.workload.describe(),
            clients: plan.clients,
            duration_s,
            transactions_per_client,
            host_cores: outcome.cores,
            runs: outcome.compare.iter().map(RunSummary::of).collect(),
            sweep: (!outcome.sweep.is_empty()).then(|| SweepSummary::of(outcome)),
        }
    }
}

/// `1.5 s`, `250 ms`.
pub fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        let secs = d.as_secs_f64();
        if secs.fract() == 0.0 {
            format!("{secs:.0} s")
        } else {
            format!("{secs:.1} s")
        }
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Milliseconds with as many decimals as are meaningful at that size.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// An integer with thousands separators.
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_rate(rate: f64) -> String {
    if rate >= 100.0 {
        fmt_count(rate.round() as u64)
    } else {
        format!("{rate:.1}")
    }
}

/// The report printed on the terminal: the comparison table, the sweep
/// table, the conclusions, errors, and `notes`.
pub fn render_text(outcome: &Outcome, notes: &[String]) -> String {
    let plan = &outcome.plan;
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "workload: {} ({}); {} clients; {}",
        plan.workload,
        plan.workload.describe(),
        plan.clients,
        plan.limit.describe()
    );
    let _ = writeln!(
        out,
        "database: {}{}",
        plan.target.display,
        if plan.target.is_local {
            format!(" (on this host, {} cores)", outcome.cores)
        } else {
            String::new()
        }
    );
    if let Some(proxy) = &plan.proxy {
        let _ = writeln!(out, "proxy:    {}", proxy.display);
    }
    let summaries: Vec<RunSummary> = outcome.compare.iter().map(RunSummary::of).collect();
    if !summaries.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>16}",
            "strategy",
            "requests",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "errors",
            "connects",
            "connect p50 ms"
        );
        for s in &summaries {
            write_row(&mut out, s);
        }
        write_comparisons(&mut out, &summaries);
        if summaries.iter().any(|s| s.warmup_ms.is_some()) {
            let _ = writeln!(
                out,
                "(the pool opens its connections before the run: they are counted under \
                 connects, not in the latencies)"
            );
        }
    }
    if !outcome.sweep.is_empty() {
        write_sweep(&mut out, outcome);
    }
    write_errors(&mut out, outcome);
    if !notes.is_empty() {
        let _ = writeln!(out);
        for note in notes {
            let _ = writeln!(out, "note: {note}");
        }
    }
    out
}

fn write_row(out: &mut String, s: &RunSummary) {
    let lat = |f: fn(&LatencyMs) -> f64| s.latency_ms.as_ref().map_or("-".into(), |l| fmt_ms(f(l)));
    let connect = s.connect_ms.map_or("-".into(), |c| fmt_ms(c.p50));
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>16}",
        s.label(),
        fmt_count(s.requests),
        fmt_rate(s.throughput_rps),
        lat(|l| l.p50),
        lat(|l| l.p95),
        lat(|l| l.p99),
        lat(|l| l.max),
        fmt_count(s.errors),
        fmt_count(s.connects),
        connect
    );
}

/// Ratios against `per-request`, from the measured figures only.
fn write_comparisons(out: &mut String, summaries: &[RunSummary]) {
    let Some(base) = summaries
        .iter()
        .find(|s| s.strategy == Strategy::PerRequest.name() && s.ok > 0)
    else {
        return;
    };
    let mut wrote = false;
    for other in summaries
        .iter()
        .filter(|s| s.strategy != base.strategy && s.ok > 0)
    {
        if !wrote {
            let _ = writeln!(out);
            wrote = true;
        }
        let ratio = other.throughput_rps / base.throughput_rps.max(f64::MIN_POSITIVE);
        let p99 = match (&base.latency_ms, &other.latency_ms) {
            (Some(b), Some(o)) => format!(", p99 {} ms -> {} ms", fmt_ms(b.p99), fmt_ms(o.p99)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{} vs per-request: {:.1}x the throughput{p99}",
            other.label(),
            ratio
        );
    }
}

fn write_sweep(out: &mut String, outcome: &Outcome) {
    let sweep = SweepSummary::of(outcome);
    let plan = &outcome.plan;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "pool-size sweep ({} clients, {}):",
        plan.clients,
        match plan.sweep_limit {
            Limit::Duration(d) => format!("{} each", fmt_duration(d)),
            Limit::Transactions(n) => format!("{n} requests per client each"),
        }
    );
    let _ = writeln!(
        out,
        "{:>9} {:>9} {:>8} {:>8} {:>7}",
        "pool size", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for run in &sweep.runs {
        let size = run.pool_size.unwrap_or(0);
        let mut marks = Vec::new();
        if sweep.best_pool_size == Some(size) {
            marks.push("<- best throughput".to_owned());
        }
        if sweep.rule_of_thumb_pool_size == Some(size) {
            marks.push("<- (cores x 2) + 1".to_owned());
        }
        let (p50, p99) = run
            .latency_ms
            .map_or(("-".into(), "-".into()), |l| (fmt_ms(l.p50), fmt_ms(l.p99)));
        let line = format!(
            "{:>9} {:>9} {:>8} {:>8} {:>7}  {}",
            size,
            fmt_rate(run.throughput_rps),
            p50,
            p99,
            fmt_count(run.errors),
            marks.join(" ")
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let best = sweep
        .best_pool_size
        .and_then(|size| sweep.runs.iter().find(|r| r.pool_size == Some(size)));
    if let Some(best) = best {
        let _ = writeln!(
            out,
            "best throughput at pool size {}: {} req/s",
            best.pool_size.unwrap_or(0),
            fmt_rate(best.throughput_rps)
        );
        match sweep.rule_of_thumb_pool_size {
            Some(rule) => {
                let at_rule = sweep.runs.iter().find(|r| r.pool_size == Some(rule));
                let _ = match at_rule {
                    Some(r) => writeln!(
                        out,
                        "(cores x 2) + 1 = {rule} for this host's {} cores: {} req/s, {:.0}% of the best",
                        outcome.cores,
                        fmt_rate(r.throughput_rps),
                        100.0 * r.throughput_rps / best.throughput_rps.max(f64::MIN_POSITIVE)
                    ),
                    None => writeln!(
                        out,
                        "(cores x 2) + 1 = {rule} for this host's {} cores (not among the swept sizes)",
                        outcome.cores
                    ),
                };
            }
            None => {
                let _ = writeln!(
                    out,
                    "the database is not on this host: compare with (its cores x 2) + 1"
                );
            }
        }
    }
    if let Some(largest) = plan.sweep.last().filter(|&&size| size > plan.clients) {
        let _ = writeln!(
            out,
            "(with {} clients, pools above {} connections cannot all be busy; {largest} was swept)",
            plan.clients, plan.clients
        );
    }
}

fn write_errors(out: &mut String, outcome: &Outcome) {
    let runs: Vec<RunSummary> = outcome
        .compare
        .iter()
        .chain(&outcome.sweep)
        .map(RunSummary::of)
        .filter(|s| s.errors > 0)
        .collect();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "errors:");
    for run in runs {
        if let Some(fatal) = &run.fatal {
            let _ = writeln!(out, "  {}: could not start: {fatal}", run.label());
        }
        for error in run.error_messages.iter().take(5) {
            let _ = writeln!(
                out,
                "  {}: {} x {}",
                run.label(),
                fmt_count(error.count),
                error.message
            );
        }
        if run.error_messages.len() > 5 {
            let _ = writeln!(
                out,
                "  {}: ... and {} other messages",
                run.label(),
                run.error_messages.len() - 5
            );
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes the raw samples of `runs` as CSV:
/// `strategy,pool_size,client,start_us,latency_us,ok`.
pub fn write_samples(path: &Path, runs: &[RunResult]) -> Result<(), BenchError> {
    let file = fs::File::create(path).map_err(io_error(path))?;
    let mut w = BufWriter::new(file);
    let mut write = || -> std::io::Result<()> {
        writeln!(w, "strategy,pool_size,client,start_us,latency_us,ok")?;
        for run in runs {
            let size = run.pool_size.map(|s| s.to_string()).unwrap_or_default();
            for s in &run.samples {
                writeln!(
                    w,
                    "{},{size},{},{},{},{}",
                    run.strategy,
                    s.client,
                    s.start_us,
                    s.latency_us,
                    u8::from(s.ok)
                )?;
            }
        }
        w.flush()
    };
    write().map_err(io_error(path))
}

/// Writes every output file of `outcome` into `dir` (created if missing)
/// and returns their paths.
///
/// # Errors
///
/// [`BenchError::Io`] naming the file that could not be written.
pub fn write_files(outcome: &Outcome, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut written = Vec::new();
    let mut put = |name: &str, text: String| -> Result<(), BenchError> {
        let path = dir.join(name);
        fs::write(&path, text).map_err(io_error(&path))?;
        written.push(path);
        Ok(())
    };
    let summary = Summary::of(outcome);
    let json = serde_json::to_string_pretty(&summary).map_err(|e| BenchError::Io {
        path: dir.join("summary.json"),
        source: std::io::Error::other(e),
    })?;
    put("summary.json", json + "\n")?;
    let plan = &outcome.plan;
    let subtitle = |limit: Limit| {
        format!(
            "workload {} · {} clients · {}{}",
            plan.workload,
            plan.clients,
            limit.describe(),
            if plan.target.is_local {
                format!(" · database on this host ({} cores)", outcome.cores)
            } else {
                String::new()
            }
        )
    };
    if !outcome.compare.is_empty() {
        put(
            "latency.svg",
            svg::latency_chart(&outcome.compare, &subtitle(plan.limit)),
        )?;
    }
    if !outcome.sweep.is_empty() {
        let sweep = SweepSummary::of(outcome);
        let (tput, p99) = svg::sweep_charts(&sweep, outcome.cores, &subtitle(plan.sweep_limit));
        put("sweep-throughput.svg", tput)?;
        put("sweep-p99.svg", p99)?;
    }
    if !outcome.compare.is_empty() {
        let path = dir.join("samples.csv");
        write_samples(&path, &outcome.compare)?;
        written.push(path);
    }
    if !outcome.sweep.is_empty() {
        let path = dir.join("sweep-samples.csv");
        write_samples(&path, &outcome.sweep)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::strategy::Sample;
    use super::*;

    fn run_with(latencies_us: &[u64], failures: u64) -> RunResult {
        let mut samples: Vec<Sample> = latencies_us
            .iter()
            .enumerate()
            .map(|(i, &latency_us)| Sample {
                client: 0,
                start_us: i as u64 * 1000,
                latency_us,
                connect_us: Some(latency_us / 2),
                ok: true,
            })
            .collect();
        for i in 0..failures {
            samples.push(Sample {
                client: 1,
                start_us: i,
                latency_us: 5,
                connect_us: None,
                ok: false,
            });
        }
        let mut errors = BTreeMap::new();
        if failures > 0 {
            errors.insert("FATAL: no".to_owned(), failures);
        }
        RunResult {
            strategy: Strategy::PerRequest,
            pool_size: None,
            clients: 2,
            elapsed: Duration::from_secs(2),
            samples,
            errors,
            warmup: None,
            fatal: None,
        }
    }

    #[test]
    fn summaries_use_successful_requests_for_latency_and_throughput() {
        let latencies: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let summary = RunSummary::of(&run_with(&latencies, 3));
        assert_eq!(summary.requests, 103);
        assert_eq!(summary.ok, 100);
        assert_eq!(summary.errors, 3);
        assert_eq!(summary.throughput_rps, 50.0);
        let lat = summary.latency_ms.unwrap();
        assert!((lat.p50 - 50.0).abs() < 0.1, "{lat:?}");
        assert!((lat.p99 - 99.0).abs() < 0.1, "{lat:?}");
        assert!((lat.max - 100.0).abs() < 0.1, "{lat:?}");
        assert_eq!(summary.connects, 100);
        assert_eq!(summary.error_messages[0].count, 3);
    }

    #[test]
    fn a_run_without_successes_has_no_latency() {
        let summary = RunSummary::of(&run_with(&[], 4));
        assert!(summary.latency_ms.is_none());
        assert_eq!(summary.throughput_rps, 0.0);
    }

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_ms(0.4567), "0.46");
        assert_eq!(fmt_ms(45.67), "45.7");
        assert_eq!(fmt_ms(456.7), "457");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250 ms");
    }
}

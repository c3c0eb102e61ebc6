//! The ways of getting a connection for each request, and the closed loop
//! of clients that drives one of them.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use super::workload::Workload;
use super::{describe_pg_error, Limit, Target};

/// How a request gets its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// Connect to the database, run the request, disconnect: the
    /// anti-pattern pooling exists for.
    PerRequest,
    /// Take a connection from an in-process wharf pool and give it back.
    Pool,
    /// Connect to a pooler, run the request, disconnect: what serverless
    /// functions do, since they cannot keep a pool between invocations.
    Proxy,
}

impl Strategy {
    /// Every strategy, in report order.
    pub const ALL: [Strategy; 3] = [Strategy::PerRequest, Strategy::Pool, Strategy::Proxy];

    /// The name used on the command line and in the reports.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::PerRequest => "per-request",
            Strategy::Pool => "pool",
            Strategy::Proxy => "proxy",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.name() == s)
            .ok_or_else(|| format!("unknown strategy {s:?}: expected per-request, pool or proxy"))
    }
}

/// One request as measured by its client.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Which client (0-based) ran it.
    pub client: u32,
    /// When it started, from the start of the run.
    pub start_us: u64,
    /// How long it took, connecting (or waiting for the pool) included.
    pub latency_us: u64,
    /// For strategies that connect per request: how long the connect took.
    pub connect_us: Option<u64>,
    /// Whether it succeeded.
    pub ok: bool,
}

/// How the pool of the `pool` strategy was opened; its connects happen
/// before the measured run and are reported apart.
#[derive(Debug, Clone)]
pub struct PoolWarmup {
    /// Connections the pool opened.
    pub connects: u64,
    /// Time until all `pool_size` connections were open.
    pub elapsed: Duration,
    /// Median time of one connect.
    pub connect_p50: Duration,
    /// 99th percentile of one connect's time.
    pub connect_p99: Duration,
}

/// Everything one run of one strategy produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The strategy.
    pub strategy: Strategy,
    /// The in-process pool's size (`pool` strategy only).
    pub pool_size: Option<usize>,
    /// Concurrent clients.
    pub clients: usize,
    /// From the first request's start to the last one's end.
    pub elapsed: Duration,
    /// Every request, ordered by client and then time.
    pub samples: Vec<Sample>,
    /// Distinct error messages and how often each occurred.
    pub errors: BTreeMap<String, u64>,
    /// The pool's warm-up (`pool` strategy only).
    pub warmup: Option<PoolWarmup>,
    /// Why the run could not start at all (the pool never opened), if so.
    pub fatal: Option<String>,
}

impl RunResult {
    /// Requests that failed, plus one for a run that could not start.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum::<u64>() + u64::from(self.fatal.is_some())
    }

    /// Requests that succeeded.
    pub fn ok_count(&self) -> u64 {
        self.samples.iter().filter(|s| s.ok).count() as u64
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok_count() as f64 / secs
        } else {
            0.0
        }
    }

    /// The label used in tables and chart legends.
    pub fn label(&self) -> String {
        match self.pool_size {
            Some(size) => format!("{} ({size})", self.strategy),
            None => self.strategy.to_string(),
        }
    }
}

/// Where a request gets its connection from.
enum Source {
    /// A fresh connection per request.
    Connect(Arc<tokio_postgres::Config>),
    /// The in-process pool.
    Pool(wharf_postgres::Pool),
}

impl Source {
    /// Runs one request; on success returns the connect time, if it
    /// connected.
    async fn request(
        &self,
        workload: &Workload,
        rng: &mut fastrand::Rng,
    ) -> Result<Option<Duration>, String> {
        match self {
            Source::Connect(config) => {
                let started = Instant::now();
                let (client, connection) = config
                    .connect(NoTls)
                    .await
                    .map_err(|e| describe_pg_error(&e))?;
                let connected = started.elapsed();
                // Driving the connection in this task instead of spawning
                // one keeps a request's cost where it is measured, and
                // waiting for it to end puts the disconnect (Terminate,
                // close) inside the request too, as a real one would pay.
                let work = async move {
                    let result = workload.run(&client, rng).await;
                    drop(client);
                    result
                };
                let (result, _ended) = tokio::join!(work, connection);
                result.map(|()| Some(connected))
            }
            Source::Pool(pool) => {
                let conn = pool.get().await.map_err(|e| e.to_string())?;
                workload.run(&conn, rng).await.map(|()| None)
            }
        }
    }
}

/// The live counters the progress line shows.
#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// Options shared by every run of a benchmark.
pub struct RunSpec<'a> {
    /// The workload each request runs.
    pub workload: &'a Workload,
    /// Concurrent clients.
    pub clients: usize,
    /// When each client stops.
    pub limit: Limit,
    /// Whether to show a progress line (only ever on a terminal).
    pub progress: bool,
}

/// Runs `strategy` against `target` (the pooler for `proxy`) with `spec`'s
/// clients, each sending requests back to back.
pub async fn run(
    strategy: Strategy,
    target: &Target,
    pool_size: Option<usize>,
    spec: &RunSpec<'_>,
) -> RunResult {
    let mut result = RunResult {
        strategy,
        pool_size,
        clients: spec.clients,
        elapsed: Duration::ZERO,
        samples: Vec::new(),
        errors: BTreeMap::new(),
        warmup: None,
        fatal: None,
    };
    let source = match (strategy, pool_size) {
        (Strategy::Pool, Some(size)) => match open_pool(target, size).await {
            Ok((pool, warmup)) => {
                result.warmup = Some(warmup);
                Source::Pool(pool)
            }
            Err(error) => {
                result.fatal = Some(error);
                return result;
            }
        },
        _ => Source::Connect(Arc::new(target.config.clone())),
    };
    let source = Arc::new(source);
    let counters = Arc::new(Counters::default());
    let label = result.label();
    let progress = (spec.progress && std::io::stderr().is_terminal()).then(|| {
        tokio::spawn(show_progress(
            label,
            counters.clone(),
            spec.limit,
            spec.clients,
        ))
    });

    let started = Instant::now();
    let deadline = match spec.limit {
        Limit::Duration(duration) => Some(started + duration),
        Limit::Transactions(_) => None,
    };
    let per_client = match spec.limit {
        Limit::Transactions(n) => n,
        Limit::Duration(_) => u64::MAX,
    };
    let mut tasks = Vec::with_capacity(spec.clients);
    for client in 0..spec.clients {
        let source = source.clone();
        let counters = counters.clone();
        let workload = spec.workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0x5eed_0000 + client as u64);
            let mut samples = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut done = 0u64;
            while done < per_client && deadline.is_none_or(|d| Instant::now() < d) {
                let start = Instant::now();
                let outcome = source.request(&workload, &mut rng).await;
                let latency = start.elapsed();
                let sample = Sample {
                    client: client as u32,
                    start_us: micros(start.duration_since(started)),
                    latency_us: micros(latency),
                    connect_us: outcome.as_ref().ok().and_then(|c| c.map(micros)),
                    ok: outcome.is_ok(),
                };
                match outcome {
                    Ok(_) => counters.ok.fetch_add(1, Ordering::Relaxed),
                    Err(message) => {
                        *errors.entry(message).or_default() += 1;
                        counters.errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
                samples.push(sample);
                done += 1;
            }
            (samples, errors, Instant::now())
        }));
    }
    let mut last_end = started;
    for task in tasks {
        match task.await {
            Ok((samples, errors, ended)) => {
                result.samples.extend(samples);
                for (message, n) in errors {
                    *result.errors.entry(message).or_default() += n;
                }
                last_end = last_end.max(ended);
            }
            Err(error) => {
                *result
                    .errors
                    .entry(format!("client task failed: {error}"))
                    .or_default() += 1;
            }
        }
    }
    result.elapsed = last_end.duration_since(started);
    if let Some(progress) = progress {
        progress.abort();
        let _ = progress.await;
        err!("\r\x1b[2K");
    }
    if let Source::Pool(pool) = &*source {
        pool.close().await;
    }
    result
}

/// How long a request may wait for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens a pool of exactly `size` connections and waits until all are
/// open, so that its connects are not part of the measured requests.
async fn open_pool(
    target: &Target,
    size: usize,
) -> Result<(wharf_postgres::Pool, PoolWarmup), String> {
    let manager = wharf_postgres::PgManager::new(target.config.clone());
    let started = Instant::now();
    let pool = wharf_postgres::Pool::builder(manager)
        .name(format!("bench-{size}"))
        .max_size(size)
        .min_idle(size)
        // Long enough that a small pool under many clients or slow queries
        // queues rather than fails: the queueing is what is measured.
        .acquire_timeout(ACQUIRE_TIMEOUT.max(target.connect_timeout))
        .build()
        .map_err(|e| format!("cannot build a pool of {size}: {e}"))?;
    // Taking every connection at once, each with the connect timeout,
    // fails fast and with the server's reason (e.g. too many clients) when
    // the pool cannot be filled.
    let mut warming = tokio::task::JoinSet::new();
    for _ in 0..size {
        warming.spawn(pool.get_timeout(target.connect_timeout));
    }
    let mut held = Vec::with_capacity(size);
    while let Some(taken) = warming.join_next().await {
        let failure = match taken {
            Ok(Ok(conn)) => {
                held.push(conn);
                continue;
            }
            Ok(Err(error)) => format!("the pool could not open its {size} connections: {error}"),
            Err(error) => format!("warming up the pool: {error}"),
        };
        // Dropping the set also drops connections that other gets took but
        // nobody joined yet; `close` would wait for them.
        drop(warming);
        drop(held);
        pool.close().await;
        return Err(failure);
    }
    drop(held);
    let elapsed = started.elapsed();
    let metrics = pool.metrics();
    Ok((
        pool,
        PoolWarmup {
            connects: metrics.created,
            elapsed,
            connect_p50: metrics.connect_time.p50(),
            connect_p99: metrics.connect_time.p99(),
        },
    ))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Redraws one status line on stderr until aborted.
async fn show_progress(label: String, counters: Arc<Counters>, limit: Limit, clients: usize) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let ok = counters.ok.load(Ordering::Relaxed);
        let errors = counters.errors.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { ok as f64 / secs } else { 0.0 };
        let done = match limit {
            Limit::Duration(d) => format!("{secs:5.1}/{:.1} s", d.as_secs_f64()),
            Limit::Transactions(n) => {
                format!(
                    "{}/{} requests",
                    ok + errors,
                    n.saturating_mul(clients as u64)
                )
            }
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K  {label:<18} {done}  {ok} ok  {errors} errors  {rate:.0}/s"
        );
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_round_trip_through_their_names() {
        for strategy in Strategy::ALL {
            assert_eq!(strategy.name().parse::<Strategy>(), Ok(strategy));
        }
        let err = "pooled".parse::<Strategy>().unwrap_err();
        assert!(err.contains("per-request, pool or proxy"), "{err}");
    }

    #[test]
    fn a_run_that_never_started_counts_as_an_error() {
        let result = RunResult {
            strategy: Strategy::Pool,
            pool_size: Some(4),
            clients: 2,
            elapsed: Duration::ZERO,
            samples: Vec::new(),
            errors: BTreeMap::new(),
            warmup: None,
            fatal: Some("refused".into()),
        };
        assert_eq!(result.error_count(), 1);
        assert_eq!(result.throughput(), 0.0);
        assert_eq!(result.label(), "pool (4)");
    }
}

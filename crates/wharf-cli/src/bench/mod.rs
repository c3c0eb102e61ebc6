//! `wharf bench`: load against any PostgreSQL URL, comparing how requests
//! get their connections (a connect per request, an in-process pool, a
//! pooler), and sweeping pool sizes.
//!
//! Each client is a closed loop: it sends a request, waits for the answer,
//! and sends the next. A request's latency covers everything it waits for:
//! the connect for `per-request` and `proxy`, the wait for a free
//! connection for `pool`.

pub mod report;
pub mod strategy;
pub mod svg;
pub mod workload;

use std::error::Error as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

use strategy::{RunResult, RunSpec, Strategy};
use workload::Workload;

/// `wharf bench`'s command line.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  wharf bench postgres://app:secret@localhost/app -c 32 -T 10s
  wharf bench $DATABASE_URL --proxy-url postgres://app:secret@localhost:6432/app
  wharf bench $DATABASE_URL --sweep-pool-size 2,4,8,16,32,64 -c 64 -T 5s --out results/

The workloads create their tables (wharf_bench_*) if missing. Latencies are
of successful requests; a request's latency includes its connect (per-request,
proxy) or its wait for a pooled connection (pool).")]
pub struct Args {
    /// The database: postgres://user:password@host:port/dbname or
    /// "host=... user=... password=... dbname=...".
    pub url: String,

    /// Concurrent clients, each sending one request after another.
    #[arg(short = 'c', long, default_value_t = 16)]
    pub clients: usize,

    /// How long each run lasts (10s, 500ms, 2m) [default: 10s].
    #[arg(short = 'T', long, value_parser = parse_duration, conflicts_with = "transactions")]
    pub duration: Option<Duration>,

    /// Requests per client in each run, instead of a duration.
    #[arg(short = 't', long)]
    pub transactions: Option<u64>,

    /// Strategies to compare, comma-separated: per-request, pool, proxy
    /// [default: per-request,pool, plus proxy with --proxy-url; none when
    /// --sweep-pool-size is given]
    #[arg(long, value_delimiter = ',')]
    pub strategy: Vec<Strategy>,

    /// Size of the in-process wharf pool of the `pool` strategy.
    #[arg(long, default_value_t = 10)]
    pub pool_size: usize,

    /// A pooler (wharf, PgBouncer) in front of the same database, for the
    /// `proxy` strategy.
    #[arg(long)]
    pub proxy_url: Option<String>,

    /// Pool sizes to sweep with the `pool` strategy, comma-separated
    /// (e.g. 2,4,8,16,32,64,128).
    #[arg(long, value_delimiter = ',')]
    pub sweep_pool_size: Vec<usize>,

    /// What each request runs: select, tpcb or sleep:<secs>.
    #[arg(long, default_value = "select")]
    pub workload: Workload,

    /// Custom SQL for each request, sent as one simple query (instead of
    /// --workload).
    #[arg(long, conflicts_with = "workload")]
    pub sql: Option<String>,

    /// Also write samples (CSV), a summary (JSON) and charts (SVG) here.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// How long a connect may take before it counts as an error.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
}

/// How long each client keeps going.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Until this much time has passed since the run started.
    Duration(Duration),
    /// This many requests per client.
    Transactions(u64),
}

impl Limit {
    /// "10 s" or "20 requests per client".
    pub fn describe(&self) -> String {
        match self {
            Limit::Duration(d) => format!("{} per run", report::fmt_duration(*d)),
            Limit::Transactions(n) => format!("{n} requests per client per run"),
        }
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The command line does not make sense.
    #[error("{0}")]
    Usage(String),
    /// A connection URL does not parse.
    #[error("{which}: {message}")]
    Url {
        /// Which URL (`the database URL`, `--proxy-url`).
        which: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The workload's tables could not be prepared.
    #[error("preparing the workload: {0}")]
    Setup(String),
    /// Writing the output files failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// A database (or pooler) to send requests to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its connection settings, password included.
    pub config: tokio_postgres::Config,
    /// `user@host:port/dbname`, without the password.
    pub display: String,
    /// Whether it is on this host (loopback or a Unix socket), so that this
    /// host's cores are the database's.
    pub is_local: bool,
    /// How long a connect may take.
    pub connect_timeout: Duration,
}

impl Target {
    /// Parses a `postgres://` URL or a libpq `key=value` string.
    ///
    /// # Errors
    ///
    /// [`BenchError::Url`] naming `which` URL; the message never repeats the
    /// URL, which may hold a password.
    pub fn parse(
        which: &'static str,
        url: &str,
        connect_timeout: Duration,
    ) -> Result<Target, BenchError> {
        let manager = wharf_postgres::PgManager::from_url(url).map_err(|e| BenchError::Url {
            which,
            message: e.to_string(),
        })?;
        let mut config = manager.config().clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(connect_timeout);
        }
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(connect_timeout);
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let is_local = !config.get_hosts().is_empty()
            && config.get_hosts().iter().all(|host| match host {
                Host::Tcp(name) => {
                    name == "localhost"
                        || name
                            .trim_matches(|c| c == '[' || c == ']')
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
                Host::Unix(_) => true,
            });
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let display = format!(
            "{}@{}:{port}/{}",
            config.get_user().unwrap_or("?"),
            hosts.join(","),
            config.get_dbname().or(config.get_user()).unwrap_or("?")
        );
        Ok(Target {
            config,
            display,
            is_local,
            connect_timeout,
        })
    }
}

/// Everything a benchmark will do, decided before it starts.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The database.
    pub target: Target,
    /// The pooler for the `proxy` strategy.
    pub proxy: Option<Target>,
    /// Concurrent clients.
    pub clients: usize,
    /// How long each strategy runs.
    pub limit: Limit,
    /// Strategies to compare, in order.
    pub strategies: Vec<Strategy>,
    /// The `pool` strategy's pool size.
    pub pool_size: usize,
    /// Pool sizes to sweep (none: no sweep).
    pub sweep: Vec<usize>,
    /// How long each sweep point runs.
    pub sweep_limit: Limit,
    /// What each request runs.
    pub workload: Workload,
    /// Whether to show progress lines on a terminal.
    pub progress: bool,
}

impl Plan {
    /// Checks the command line and turns it into a plan.
    ///
    /// # Errors
    ///
    /// [`BenchError::Usage`] or [`BenchError::Url`] with what to fix.
    pub fn from_args(args: &Args) -> Result<Plan, BenchError> {
        let target = Target::parse("the database URL", &args.url, args.connect_timeout)?;
        let proxy = args
            .proxy_url
            .as_deref()
            .map(|url| Target::parse("--proxy-url", url, args.connect_timeout))
            .transpose()?;
        if args.clients == 0 {
            return Err(BenchError::Usage("-c/--clients must be at least 1".into()));
        }
        if args.pool_size == 0 || args.sweep_pool_size.contains(&0) {
            return Err(BenchError::Usage("pool sizes must be at least 1".into()));
        }
        let limit = match (args.duration, args.transactions) {
            (_, Some(0)) => {
                return Err(BenchError::Usage(
                    "-t/--transactions must be at least 1".into(),
                ))
            }
            (_, Some(n)) => Limit::Transactions(n),
            (Some(d), None) if d.is_zero() => {
                return Err(BenchError::Usage("-T/--duration must be above 0".into()))
            }
            (Some(d), None) => Limit::Duration(d),
            (None, None) => Limit::Duration(Duration::from_secs(10)),
        };
        let mut strategies = Vec::new();
        if args.strategy.is_empty() {
            if args.sweep_pool_size.is_empty() {
                strategies.extend([Strategy::PerRequest, Strategy::Pool]);
                if proxy.is_some() {
                    strategies.push(Strategy::Proxy);
                }
            }
        } else {
            for strategy in &args.strategy {
                if !strategies.contains(strategy) {
                    strategies.push(*strategy);
                }
            }
        }
        if strategies.contains(&Strategy::Proxy) && proxy.is_none() {
            return Err(BenchError::Usage(
                "the proxy strategy needs --proxy-url: a pooler (wharf, PgBouncer) in front of \
                 the same database"
                    .into(),
            ));
        }
        let mut sweep = args.sweep_pool_size.clone();
        sweep.sort_unstable();
        sweep.dedup();
        let workload = match &args.sql {
            Some(sql) if sql.trim().is_empty() => {
                return Err(BenchError::Usage("--sql is empty".into()))
            }
            Some(sql) => Workload::Sql(sql.clone()),
            None => args.workload.clone(),
        };
        Ok(Plan {
            target,
            proxy,
            clients: args.clients,
            limit,
            strategies,
            pool_size: args.pool_size,
            sweep,
            sweep_limit: limit,
            workload,
            progress: true,
        })
    }
}

/// What a benchmark measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The plan it followed.
    pub plan: Plan,
    /// One run per strategy, in the plan's order.
    pub compare: Vec<RunResult>,
    /// One `pool` run per swept size, smallest first.
    pub sweep: Vec<RunResult>,
    /// This host's cores (`available_parallelism`).
    pub cores: usize,
}

impl Outcome {
    /// Failed requests over every run, plus runs that could not start.
    pub fn errors(&self) -> u64 {
        self.compare
            .iter()
            .chain(&self.sweep)
            .map(RunResult::error_count)
            .sum()
    }
}

/// This host's cores, as the rule of thumb counts them.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The (cores × 2) + 1 rule of thumb for a pool's size.
pub fn rule_of_thumb(cores: usize) -> usize {
    cores * 2 + 1
}

/// Prepares the workload, then runs every strategy and every sweep point
/// of `plan`, one after another.
///
/// # Errors
///
/// [`BenchError::Setup`] when the database cannot be reached or the tables
/// cannot be created; failures of single requests are counted instead.
pub async fn execute(plan: &Plan) -> Result<Outcome, BenchError> {
    prepare(&plan.target, &plan.workload).await?;
    let spec = RunSpec {
        workload: &plan.workload,
        clients: plan.clients,
        limit: plan.limit,
        progress: plan.progress,
    };
    let mut compare = Vec::new();
    for &strategy in &plan.strategies {
        let (target, pool_size) = match strategy {
            Strategy::PerRequest => (&plan.target, None),
            Strategy::Pool => (&plan.target, Some(plan.pool_size)),
            Strategy::Proxy => match &plan.proxy {
                Some(proxy) => (proxy, None),
                None => continue,
            },
        };
        announce(strategy, pool_size, plan.clients, plan.limit);
        compare.push(strategy::run(strategy, target, pool_size, &spec).await);
    }
    let sweep_spec = RunSpec {
        limit: plan.sweep_limit,
        ..spec
    };
    let mut sweep = Vec::new();
    for &size in &plan.sweep {
        announce(Strategy::Pool, Some(size), plan.clients, plan.sweep_limit);
        sweep.push(strategy::run(Strategy::Pool, &plan.target, Some(size), &sweep_spec).await);
    }
    Ok(Outcome {
        plan: plan.clone(),
        compare,
        sweep,
        cores: cores(),
    })
}

fn announce(strategy: Strategy, pool_size: Option<usize>, clients: usize, limit: Limit) {
    let what = match pool_size {
        Some(size) => format!("{strategy} (size {size})"),
        None => strategy.to_string(),
    };
    let how_long = match limit {
        Limit::Duration(d) => report::fmt_duration(d),
        Limit::Transactions(n) => format!("{n} requests each"),
    };
    tracing::debug!(%what, clients, %how_long, "run starts");
    errln!("running {what}: {clients} clients, {how_long}");
}

/// Connects once to create the workload's tables.
async fn prepare(target: &Target, workload: &Workload) -> Result<(), BenchError> {
    let started = Instant::now();
    let (client, connection) = target.config.connect(NoTls).await.map_err(|e| {
        BenchError::Setup(format!(
            "cannot connect to {}: {}",
            target.display,
            describe_pg_error(&e)
        ))
    })?;
    let driver = tokio::spawn(connection);
    let result = workload.setup(&client).await;
    drop(client);
    let _ = driver.await;
    tracing::debug!(elapsed = ?started.elapsed(), "workload prepared");
    result
}

/// The substance of a tokio-postgres error: the server's message and
/// SQLSTATE, or the chain of causes ("error connecting to server:
/// Connection refused"), since its own display is just the kind.
pub fn describe_pg_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

/// Parses `10s`, `500ms`, `2m`, `1.5s`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 10s, 500ms or 2m"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("invalid duration {text:?}: out of range"))
}

/// A multi-threaded runtime for a subcommand; the `Err` is the exit code
/// to return, the reason having been printed.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            errln!("error: cannot start the runtime: {error}");
            ExitCode::FAILURE
        })
}

/// Logs to stderr at `warn` unless `RUST_LOG` says otherwise: the pool and
/// an in-process pooler log every connection at `info`, which would bury
/// the report.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `wharf bench`: runs the plan, prints the report, writes the files.
pub fn run(args: &Args) -> ExitCode {
    init_logging();
    let plan = match Plan::from_args(args) {
        Ok(plan) => plan,
        Err(error) => {
            errln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if plan.strategies.is_empty() && plan.sweep.is_empty() {
        errln!("error: nothing to run: give --strategy or --sweep-pool-size");
        return ExitCode::from(2);
    }
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let outcome = match runtime.block_on(execute(&plan)) {
        Ok(outcome) => outcome,
        Err(error) => {
            errln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    finish(&outcome, args.out.as_deref(), &[])
}

/// Prints the report, writes the files to `out` if given, and turns the
/// error count into the exit code. `notes` are printed under the table.
pub fn finish(outcome: &Outcome, out: Option<&std::path::Path>, notes: &[String]) -> ExitCode {
    out!("{}", report::render_text(outcome, notes));
    if let Some(dir) = out {
        match report::write_files(outcome, dir) {
            Ok(files) => {
                outln!();
                outln!("Files in {}:", dir.display());
                for file in files {
                    outln!("  {}", file.display());
                }
            }
            Err(error) => {
                errln!("error: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let errors = outcome.errors();
    if errors > 0 {
        errln!(
            "error: {errors} request{} failed; see the errors above",
            if errors == 1 { "" } else { "s" }
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").unwrap_err().contains("\"ten\""));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unit"));
    }

    #[test]
    fn a_target_never_shows_its_password_and_knows_when_it_is_local() {
        let t = Target::parse(
            "the database URL",
            "postgres://app:s3cret@127.0.0.1:5433/shop",
            Duration::from_secs(3),
        )
        .unwrap();
        assert_eq!(t.display, "app@127.0.0.1:5433/shop");
        assert!(t.is_local);
        assert_eq!(t.connect_timeout, Duration::from_secs(3));
        let remote = Target::parse(
            "--proxy-url",
            "host=db.internal user=app password=x connect_timeout=2",
            Duration::from_secs(3),
        )
        .unwrap();
        assert!(!remote.is_local);
        assert!(!remote.display.contains('x'), "{}", remote.display);
        assert_eq!(remote.connect_timeout, Duration::from_secs(2));
    }

    #[test]
    fn a_bad_url_is_named_without_repeating_it() {
        let err = Target::parse(
            "--proxy-url",
            "postgres://u:hunter2@",
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("--proxy-url: "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_rule_of_thumb() {
        assert_eq!(rule_of_thumb(2), 5);
        assert_eq!(rule_of_thumb(8), 17);
    }
}

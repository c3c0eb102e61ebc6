//! `wharf demo`: what pooling does, measured on this machine with nothing
//! set up beforehand.
//!
//! It starts a throwaway PostgreSQL from the local server binaries (the
//! test kit's [`PgCluster`]), a wharf pooler in front of it inside this
//! process, runs the three-strategy comparison and a pool-size sweep, and
//! then removes everything, also when interrupted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wharf_pooler::calendar::civil_from_days;
use wharf_testkit::PgCluster;

use crate::bench::strategy::Strategy;
use crate::bench::{self, Limit, Outcome, Plan, Target};

/// `wharf demo`'s command line.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Needs the PostgreSQL server binaries (Debian: apt-get install postgresql);
no server needs to be running. Set WHARF_PG_BIN to use binaries elsewhere.")]
pub struct Args {
    /// Run for a few seconds instead of about a minute (for CI).
    #[arg(long)]
    pub quick: bool,

    /// Where to write the charts, samples and summary
    /// [default: ./wharf-demo-<timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Concurrent clients [default: 32, or 8 with --quick].
    #[arg(short = 'c', long)]
    pub clients: Option<usize>,
}

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("cannot start a throwaway PostgreSQL: {0}")]
    Cluster(#[from] wharf_testkit::Error),
    #[error("cannot start the pooler: {0}")]
    Pooler(String),
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Other(String),
}

/// The sizes the sweep tries: powers of two up to the client count, plus
/// the rule of thumb.
fn sweep_sizes(quick: bool, clients: usize, rule: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = if quick {
        vec![1, 2, 8]
    } else {
        vec![1, 2, 4, 8, 16, 32, 64]
    };
    sizes.retain(|&s| s <= clients.max(1));
    sizes.push(rule);
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// `wharf-demo-YYYYMMDD-HHMMSS` in UTC.
fn default_out_dir() -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    PathBuf::from(format!(
        "wharf-demo-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    ))
}

/// The pooler running inside this process.
struct InProcessPooler {
    port: u16,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl InProcessPooler {
    /// Starts a transaction-mode pooler for `cluster` with `pool_size`
    /// server connections.
    ///
    /// Clients authenticate with SCRAM against the verifier PostgreSQL
    /// itself stores (as PgBouncer's docs advise), so that a login costs
    /// the pooler what it costs the server, and `proxy` and `per-request`
    /// differ only in what a pooler saves. The pooler logs in to the server
    /// with the password from its `[databases]` line.
    async fn start(
        cluster: &PgCluster,
        pool_size: usize,
        clients: usize,
    ) -> Result<Self, DemoError> {
        let dir = std::env::temp_dir().join(format!("wharf-demo-pooler-{}", std::process::id()));
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            DemoError::Pooler(format!("{what} {}: {e}", dir.display()))
        };
        let secret = match stored_secret(cluster).await {
            Some(verifier) => verifier,
            None => cluster.password().to_owned(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| fail("creating", &e))?;
        let userlist = format!("\"{}\" \"{secret}\"\n", cluster.user());
        std::fs::write(dir.join("userlist.txt"), userlist).map_err(|e| fail("writing to", &e))?;
        let mut last_error = String::new();
        // The port is picked by binding port 0 and letting go of it; another
        // process may grab it in between, so try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| DemoError::Pooler(format!("finding a free port: {e}")))?;
            let ini = format!(
                "[databases]\n\
                 postgres = host=127.0.0.1 port={pg} dbname=postgres password={password}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {dir}/userlist.txt\n\
                 pool_mode = transaction\n\
                 default_pool_size = {pool_size}\n\
                 max_client_conn = {max_clients}\n",
                pg = cluster.port(),
                password = cluster.password(),
                max_clients = clients + 100,
                dir = dir.display(),
            );
            let path = dir.join("pgbouncer.ini");
            std::fs::write(&path, ini).map_err(|e| fail("writing to", &e))?;
            let loaded =
                wharf_pooler::config::load(&path).map_err(|e| DemoError::Pooler(e.to_string()))?;
            match wharf_pooler::Pooler::bind(loaded.config).await {
                Ok(pooler) => {
                    let (stop, stopped) = oneshot::channel::<()>();
                    let task = tokio::spawn(pooler.run(async {
                        let _ = stopped.await;
                    }));
                    return Ok(InProcessPooler {
                        port,
                        dir,
                        stop: Some(stop),
                        task: Some(task),
                    });
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(DemoError::Pooler(last_error))
    }

    fn url(&self, cluster: &PgCluster) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres",
            cluster.user(),
            cluster.password(),
            self.port
        )
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// The superuser's SCRAM verifier as PostgreSQL stores it, if it is one.
async fn stored_secret(cluster: &PgCluster) -> Option<String> {
    let config: tokio_postgres::Config = cluster.url("postgres").parse().ok()?;
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.ok()?;
    let driver = tokio::spawn(connection);
    let row = client
        .query_opt(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&cluster.user()],
        )
        .await;
    drop(client);
    let _ = driver.await;
    let secret: Option<String> = row.ok()??.try_get(0).ok()?;
    secret.filter(|s| s.starts_with("SCRAM-SHA-256$"))
}

impl Drop for InProcessPooler {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed
/// when this is called, not when it is first polled, so that an interrupt
/// during startup is caught too.
fn interrupted() -> Result<impl std::future::Future<Output = ()>, DemoError> {
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| DemoError::Other(format!("cannot handle SIGINT: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| DemoError::Other(format!("cannot handle SIGTERM: {e}")))?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// `wharf demo`.
pub fn run(args: &Args) -> ExitCode {
    bench::init_logging();
    let clients = args.clients.unwrap_or(if args.quick { 8 } else { 32 });
    if clients == 0 {
        errln!("error: -c/--clients must be at least 1");
        return ExitCode::from(2);
    }
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    let runtime = match bench::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let (cluster, result) = runtime.block_on(demo(args.quick, clients));
    // The cluster goes only after the pooler and every client are gone.
    drop(runtime);
    if let Some(cluster) = cluster {
        let root = cluster.root_dir().to_owned();
        drop(cluster);
        errln!(
            "stopped the throwaway PostgreSQL and removed {}",
            root.display()
        );
    }
    match result {
        Ok((outcome, notes)) => bench::finish(&outcome, Some(&out), &notes),
        Err(DemoError::Interrupted) => {
            errln!("interrupted: nothing was written");
            ExitCode::from(130)
        }
        Err(error) => {
            errln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

type DemoResult = Result<(Outcome, Vec<String>), DemoError>;

/// Starts the cluster and runs the demo; hands the cluster back so that it
/// is stopped after everything that uses it.
async fn demo(quick: bool, clients: usize) -> (Option<PgCluster>, DemoResult) {
    let stop = match interrupted() {
        Ok(stop) => stop,
        Err(error) => return (None, Err(error)),
    };
    tokio::pin!(stop);
    let cores = bench::cores();
    let rule = bench::rule_of_thumb(cores);
    let sizes = sweep_sizes(quick, clients, rule);
    // Room for every per-request client, the largest pool, the pooler's
    // pool, and psql.
    let max_connections = clients + sizes.iter().max().copied().unwrap_or(0) + rule + 20;
    errln!("starting a throwaway PostgreSQL from the local server binaries...");
    let starting = tokio::task::spawn_blocking(move || {
        PgCluster::builder()
            .max_connections(max_connections as u32)
            .start()
    });
    // If interrupted here, the start finishes in the background and the
    // cluster is dropped (so stopped) when the runtime shuts down.
    let cluster = tokio::select! {
        started = starting => match started {
            Ok(Ok(cluster)) => cluster,
            Ok(Err(error)) => return (None, Err(DemoError::Cluster(error))),
            Err(error) => return (None, Err(DemoError::Other(format!("cluster start failed: {error}")))),
        },
        () = &mut stop => return (None, Err(DemoError::Interrupted)),
    };
    let result = tokio::select! {
        result = with_cluster(&cluster, quick, clients, &sizes) => result,
        () = &mut stop => Err(DemoError::Interrupted),
    };
    (Some(cluster), result)
}

async fn with_cluster(
    cluster: &PgCluster,
    quick: bool,
    clients: usize,
    sizes: &[usize],
) -> DemoResult {
    let cores = bench::cores();
    let rule = bench::rule_of_thumb(cores);
    outln!(
        "PostgreSQL on 127.0.0.1:{} (data directory: {})",
        cluster.port(),
        cluster.data_dir().display()
    );
    let pooler = InProcessPooler::start(cluster, rule, clients).await?;
    outln!(
        "wharf pooler on 127.0.0.1:{} (transaction mode, pool size {rule} = ({cores} cores x 2) + 1)",
        pooler.port
    );
    let connect_timeout = Duration::from_secs(10);
    let (limit, sweep_limit) = if quick {
        (
            Limit::Duration(Duration::from_millis(500)),
            Limit::Duration(Duration::from_millis(300)),
        )
    } else {
        (
            Limit::Duration(Duration::from_secs(8)),
            Limit::Duration(Duration::from_secs(4)),
        )
    };
    let plan = Plan {
        target: Target::parse(
            "the database URL",
            &cluster.url("postgres"),
            connect_timeout,
        )?,
        proxy: Some(Target::parse(
            "the pooler URL",
            &pooler.url(cluster),
            connect_timeout,
        )?),
        clients,
        limit,
        strategies: Strategy::ALL.to_vec(),
        pool_size: rule,
        sweep: sizes.to_vec(),
        sweep_limit,
        workload: bench::workload::Workload::Select,
        progress: true,
    };
    let outcome = bench::execute(&plan).await;
    pooler.stop().await;
    let outcome = outcome?;
    let notes = vec![
        format!(
            "everything ran on this machine's {cores} cores: PostgreSQL, the pooler (inside \
             this process) and the clients compete for them"
        ),
        "per-request and proxy open a TCP connection and authenticate with SCRAM-SHA-256 for \
         every request; per-request also makes PostgreSQL fork a backend each time, which the \
         pooler avoids by keeping its server connections"
            .to_owned(),
        "the throwaway cluster runs with fsync=off and shared_buffers=16MB; nothing was slowed \
         down artificially"
            .to_owned(),
    ];
    Ok((outcome, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_directory_is_timestamped() {
        let dir = default_out_dir();
        let name = dir.to_string_lossy();
        assert!(name.starts_with("wharf-demo-"), "{name}");
        assert_eq!(name.len(), "wharf-demo-20240101-120000".len(), "{name}");
    }

    #[test]
    fn the_sweep_includes_the_rule_of_thumb_and_stays_within_the_clients() {
        assert_eq!(sweep_sizes(false, 32, 5), [1, 2, 4, 5, 8, 16, 32]);
        assert_eq!(sweep_sizes(true, 8, 5), [1, 2, 5, 8]);
        assert_eq!(sweep_sizes(true, 4, 9), [1, 2, 9]);
    }
}

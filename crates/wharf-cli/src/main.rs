//! `wharf`: a PostgreSQL pooler that reads pgbouncer.ini.
//!
//! This binary stays thin: it parses the command line and hands over to the
//! `wharf-pooler` crate, or to its `bench` and `demo` modules.

#![deny(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
mod output;
mod bench;
mod check;
mod demo;
#[cfg(test)]
mod man;
mod service;
mod syslog;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wharf_pooler::config;

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "A multi-threaded PostgreSQL pooler that reads pgbouncer.ini"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pooler with a pgbouncer.ini (or wharf.toml) configuration.
    Serve {
        /// The configuration file: PgBouncer ini, or TOML if it ends in .toml.
        config: PathBuf,
    },
    /// Check a configuration file and every file it names as `serve`
    /// would, and print what each database and user gets.
    Check(check::Args),
    /// Load a PostgreSQL URL and compare a connection per request, an
    /// in-process pool and a pooler; sweep pool sizes.
    Bench(bench::Args),
    /// Show what pooling does on this machine: starts a throwaway
    /// PostgreSQL and a pooler, benchmarks, cleans up.
    Demo(demo::Args),
}

/// Logs to `logfile` when the configuration names one (as PgBouncer does),
/// else to standard error (in colour only on a terminal), and with
/// `syslog = 1` to the system log as well, at PgBouncer's `verbose` level
/// (0: info, 1: debug, 2 and more: trace). `RUST_LOG` overrides the level.
fn init_logging(settings: &config::Settings) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let level = match settings.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let output = match &settings.logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("logfile {}: {e}", path.display()))?;
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .boxed()
        }
        // Colour codes are noise in a file or the journal: only a
        // terminal gets them.
        None => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // As PgBouncer's syslog(3), a system log that cannot be reached does
    // not stop the pooler; it is said once, in the other log.
    let (syslog, unreachable) = match settings.syslog {
        true => match syslog::Syslog::connect(
            std::path::Path::new(syslog::DEV_LOG),
            &settings.syslog_facility,
            &settings.syslog_ident,
        ) {
            // The system log stamps its own time.
            Ok(syslog) => (
                Some(
                    tracing_subscriber::fmt::layer()
                        .without_time()
                        .with_ansi(false)
                        .with_writer(syslog),
                ),
                None,
            ),
            Err(problem) => (None, Some(problem)),
        },
        false => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .with(syslog)
        .try_init()
        .map_err(|e| format!("cannot start logging: {e}"))?;
    if let Some(problem) = unreachable {
        tracing::warn!("syslog = 1, but {problem}: logging without it");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Check(args) => check::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo::run(&args),
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    // First, while this is the only thread: it edits the environment.
    let inherited = service::listen_fds();
    let Some(check::Checked { config, .. }) = check::load(path) else {
        return ExitCode::FAILURE;
    };
    if let Err(err) = init_logging(&config.pgbouncer) {
        errln!("error: {err}");
        return ExitCode::FAILURE;
    }
    let pidfile = config.pgbouncer.pidfile.clone();
    if let Some(pidfile) = &pidfile {
        if let Err(err) = std::fs::write(pidfile, format!("{}\n", std::process::id())) {
            errln!("error: pidfile {}: {err}", pidfile.display());
            return ExitCode::FAILURE;
        }
    }
    let code = run_pooler(config, inherited);
    if let Some(pidfile) = &pidfile {
        let _ = std::fs::remove_file(pidfile);
    }
    code
}

/// The runtime `wharf serve` runs on: `workers` threads, or with 0 one
/// per core past two and a single thread on one or two cores. One thread
/// is a current-thread runtime (as PgBouncer's one process): on a 2-core
/// machine it spent 7 to 22 % less CPU per transaction than two worker
/// threads and served as many or more (docs/BENCHMARKS.md, run 8), since
/// no worker parks and wakes another, and a pooler on so small a machine
/// shares it with its database or its application.
fn pooler_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match workers {
        0 => match std::thread::available_parallelism().map_or(1, usize::from) {
            cores if cores <= 2 => 1,
            cores => cores,
        },
        workers => workers,
    };
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(threads)
        .build()
}

fn run_pooler(config: config::Config, inherited: Vec<std::os::fd::OwnedFd>) -> ExitCode {
    let runtime = match pooler_runtime(config.pgbouncer.workers) {
        Ok(runtime) => runtime,
        Err(err) => {
            errln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let user = config.pgbouncer.user.clone();
        let pooler = match wharf_pooler::Pooler::bind_with(config, inherited).await {
            Ok(pooler) => pooler,
            Err(err) => {
                errln!("error: {err}");
                return ExitCode::FAILURE;
            }
        };
        // After binding, so that ports below 1024 can be had; before the
        // first client, so that none is served as root.
        if let Some(user) = &user {
            if let Err(err) = service::switch_user(user) {
                tracing::error!("{err}");
                errln!("error: {err}");
                return ExitCode::FAILURE;
            }
            tracing::info!(user, "switched user");
        }
        for addr in pooler.local_addrs() {
            tracing::info!(%addr, "listening");
        }
        // SIGHUP reloads, SIGTERM/SIGINT shut down gracefully (twice: now),
        // SIGQUIT at once, SIGUSR1/SIGUSR2 pause and resume. Installed
        // before READY=1: a service manager may signal as soon as it reads
        // it.
        let state = std::sync::Arc::downgrade(&pooler.state());
        let signals = match wharf_pooler::signals::Signals::install() {
            Ok(signals) => tokio::spawn(signals.handle(state)),
            Err(err) => {
                errln!("error: cannot install signal handlers: {err}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(err) = wharf_pooler::sd_notify("READY=1") {
            tracing::warn!(error = %err, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
        pooler.run(std::future::pending()).await;
        signals.abort();
        tracing::info!("shut down");
        ExitCode::SUCCESS
    })
}

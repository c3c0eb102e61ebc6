//! `wharf`: a PostgreSQL pooler that reads pgbouncer.ini.
//!
//! This binary stays thin: it parses the command line and hands over to the
//! `wharf-pooler` crate, or to its `bench` and `demo` modules.

mod bench;
mod demo;

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
    /// Check a configuration file and print the effective settings.
    Check {
        /// The configuration file.
        config: PathBuf,
    },
    /// Load a PostgreSQL URL and compare a connection per request, an
    /// in-process pool and a pooler; sweep pool sizes.
    Bench(bench::Args),
    /// Show what pooling does on this machine: starts a throwaway
    /// PostgreSQL and a pooler, benchmarks, cleans up.
    Demo(demo::Args),
}

/// Logs to `logfile` when the configuration names one (as PgBouncer does),
/// else to standard error, at PgBouncer's `verbose` level (0: info, 1:
/// debug, 2 and more: trace). `RUST_LOG` overrides the level.
fn init_logging(logfile: Option<&std::path::Path>, verbose: u32) -> Result<(), String> {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("logfile {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Check { config } => check(&config),
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo::run(&args),
    }
}

fn load(path: &std::path::Path) -> Option<config::Config> {
    match config::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            Some(loaded.config)
        }
        Err(err) => {
            eprintln!("error: {err}");
            None
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    let tls = match wharf_pooler::tls::TlsContexts::from_settings(&config.pgbouncer) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    for warning in tls.warnings() {
        eprintln!("warning: {warning}");
    }
    println!("{}: OK", path.display());
    println!();
    println!("clients: {}", client_tls(&config));
    println!();
    println!("[databases]");
    for db in &config.databases {
        let mode = config.pool_mode_for(&db.name, "");
        println!(
            "  {:<20} pool_mode = {:<12} prepared statements: {}",
            db.name,
            mode.as_str(),
            prepared_statements(&config, mode)
        );
        println!("  {:<20} server TLS: {}", "", server_tls(&config, db));
        if db.read_routing == Some(true) {
            let routing = if mode == config::PoolMode::Transaction {
                "reads to a standby (prefer-standby), everything else to the primary".to_owned()
            } else {
                format!(
                    "off: pool_mode = {}, only transaction mode routes",
                    mode.as_str()
                )
            };
            println!("  {:<20} read routing: {routing}", "");
        }
    }
    println!();
    print_auth(&config);
    println!();
    println!("{:<28} {:<28} {:<28} changeable", "key", "value", "default");
    for row in config.pgbouncer.describe() {
        println!(
            "{:<28} {:<28} {:<28} {}",
            row.key,
            row.value,
            row.default,
            if row.changeable { "yes" } else { "no" }
        );
    }
    ExitCode::SUCCESS
}

/// What TLS clients get.
fn client_tls(config: &config::Config) -> String {
    let settings = &config.pgbouncer;
    let mode = settings.client_tls_sslmode;
    let what = match mode {
        config::SslMode::Disable => "plain text only (SSLRequest answered 'N')",
        config::SslMode::Allow | config::SslMode::Prefer => {
            "TLS when the client asks, plain otherwise"
        }
        config::SslMode::Require => "TLS required on TCP (Unix sockets stay plain)",
        config::SslMode::VerifyCa | config::SslMode::VerifyFull => {
            "TLS with a client certificate signed by client_tls_ca_file"
        }
    };
    format!("client_tls_sslmode = {}: {what}", mode.as_str())
}

/// What TLS a database's server connections get.
fn server_tls(config: &config::Config, db: &config::Database) -> String {
    let hosts = db.host_ports().unwrap_or_default();
    let on_socket = |(host, _): &(Option<&str>, u16)| host.is_none_or(|h| h.starts_with('/'));
    if hosts.iter().all(on_socket) {
        return "none (Unix socket)".to_owned();
    }
    let sockets = if hosts.iter().any(on_socket) {
        "; its Unix-socket hosts stay plain"
    } else {
        ""
    };
    let mode = config.pgbouncer.server_tls_sslmode;
    let what = match mode {
        config::SslMode::Disable | config::SslMode::Allow => "plain text",
        config::SslMode::Prefer => "TLS if the server offers it, certificate not checked",
        config::SslMode::Require => "TLS required, certificate not checked",
        config::SslMode::VerifyCa => "TLS required, certificate chain checked, host name not",
        config::SslMode::VerifyFull => "TLS required, certificate chain and host name checked",
    };
    format!("{} ({what}{sockets})", mode.as_str())
}

/// How clients authenticate: `auth_type`, and with `hba` the rules that
/// can apply to each database, first match first.
fn print_auth(config: &config::Config) {
    let Some(rules) = config.hba.as_deref() else {
        println!("auth_type = {}", config.pgbouncer.auth_type);
        return;
    };
    println!(
        "auth_type = hba, rules from {} (first match wins; no match is refused):",
        rules.path().display()
    );
    for db in &config.databases {
        let applying: Vec<String> = rules
            .rules()
            .iter()
            .filter(|rule| rule.may_apply_to_database(&db.name))
            .map(|rule| format!("line {}: {rule}", rule.line))
            .collect();
        let summary = match applying.is_empty() {
            true => "no rule: every client is refused".to_owned(),
            false => applying.join("; "),
        };
        println!("  {:<20} {summary}", db.name);
    }
}

/// What happens to a database's named prepared statements.
fn prepared_statements(config: &config::Config, mode: config::PoolMode) -> String {
    let max = config.pgbouncer.max_prepared_statements;
    match mode {
        config::PoolMode::Session => "kept on the client's own server (session mode)".to_owned(),
        _ if max == 0 => {
            "not tracked (max_prepared_statements = 0): named statements fail across servers"
                .to_owned()
        }
        _ => format!("tracked across servers, at most {max} per server"),
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    if let Err(err) = init_logging(
        config.pgbouncer.logfile.as_deref(),
        config.pgbouncer.verbose,
    ) {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    let pidfile = config.pgbouncer.pidfile.clone();
    if let Some(pidfile) = &pidfile {
        if let Err(err) = std::fs::write(pidfile, format!("{}\n", std::process::id())) {
            eprintln!("error: pidfile {}: {err}", pidfile.display());
            return ExitCode::FAILURE;
        }
    }
    let code = run_pooler(config);
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

fn run_pooler(config: config::Config) -> ExitCode {
    let runtime = match pooler_runtime(config.pgbouncer.workers) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let pooler = match wharf_pooler::Pooler::bind(config).await {
            Ok(pooler) => pooler,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        };
        for addr in pooler.local_addrs() {
            tracing::info!(%addr, "listening");
        }
        // SIGHUP reloads, SIGTERM/SIGINT shut down gracefully (twice: now),
        // SIGQUIT at once, SIGUSR1/SIGUSR2 pause and resume.
        let state = std::sync::Arc::downgrade(&pooler.state());
        let signals = tokio::spawn(async move {
            if let Err(err) = wharf_pooler::signals::handle_signals(state).await {
                tracing::error!("cannot install signal handlers: {err}");
            }
        });
        pooler.run(std::future::pending()).await;
        signals.abort();
        tracing::info!("shut down");
        ExitCode::SUCCESS
    })
}

//! `wharf check`: loads everything `wharf serve` would load (the
//! configuration, `auth_file`, the hba file, the TLS files, the log and pid
//! file paths) and prints what each database and user gets.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use wharf_pooler::config::{self, Config, PoolMode, PoolSettings, SslMode};

/// Exit codes, as `wharf check --help` documents them.
pub(crate) const EXIT_INVALID: u8 = 1;
/// `--strict` and at least one warning.
pub(crate) const EXIT_WARNINGS: u8 = 3;

/// `wharf check`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "\
Exit status:
  0  the configuration is usable (warnings, if any, went to standard error)
  1  the configuration, or a file it names, cannot be used: wharf serve would refuse to start
  2  the command line is wrong
  3  --strict, and there were warnings")]
pub(crate) struct Args {
    /// The configuration file: PgBouncer ini, or TOML if it ends in .toml.
    config: PathBuf,
    /// Exit with status 3 when there is any warning (for CI pipelines).
    #[arg(long)]
    strict: bool,
}

/// What `wharf serve` would use, loaded and checked; every problem is an
/// error line on standard error, every warning a warning line.
pub(crate) struct Checked {
    /// The configuration.
    pub(crate) config: Config,
    /// Users in `auth_file`.
    pub(crate) auth_users: usize,
    /// Warnings, already printed.
    pub(crate) warnings: usize,
}

/// Loads `path` and every file it names as `wharf serve` does, printing
/// warnings and errors to standard error; `None` on any error.
pub(crate) fn load(path: &Path) -> Option<Checked> {
    let fail = |err: &dyn std::fmt::Display| {
        errln!("error: {err}");
        None
    };
    let loaded = match config::load(path) {
        Ok(loaded) => loaded,
        Err(err) => return fail(&err),
    };
    let mut warnings = loaded.warnings.len();
    for warning in &loaded.warnings {
        errln!("warning: {warning}");
    }
    let config = loaded.config;
    let auth_users = match config.load_auth_file() {
        Ok(users) => users.len(),
        Err(err) => return fail(&err),
    };
    match wharf_pooler::tls::TlsContexts::from_settings(&config.pgbouncer) {
        Ok(tls) => {
            for warning in tls.warnings() {
                warnings += 1;
                errln!("warning: {warning}");
            }
        }
        Err(err) => return fail(&format_args!("{}{err}", at(&config, err.key()))),
    }
    if let Some(user) = &config.pgbouncer.user {
        if let Err(problem) = crate::service::account(user) {
            return fail(&format_args!("{}{problem}", at(&config, "user")));
        }
    }
    if config.pgbouncer.syslog {
        let facility = &config.pgbouncer.syslog_facility;
        if let Err(problem) = crate::syslog::facility(facility) {
            let at = at(&config, "syslog_facility");
            return fail(&format_args!("{at}syslog_facility: {problem}"));
        }
        let dev_log = Path::new(crate::syslog::DEV_LOG);
        if let Err(problem) = crate::syslog::Syslog::connect(dev_log, facility, "wharf") {
            warnings += 1;
            let at = at(&config, "syslog");
            errln!("warning: {at}syslog: {problem}: serve would log without it");
        }
    }
    for (key, file) in [
        ("logfile", &config.pgbouncer.logfile),
        ("pidfile", &config.pgbouncer.pidfile),
    ] {
        if let Some(file) = file {
            if let Err(problem) = writable_file(file) {
                return fail(&format_args!("{}{key}: {problem}", at(&config, key)));
            }
        }
    }
    Some(Checked {
        config,
        auth_users,
        warnings,
    })
}

/// `FILE:LINE: ` of the line that set `key` (the configuration file
/// alone when no line did), to put before a message about it.
fn at(config: &Config, key: &str) -> String {
    match config.setting_position(key) {
        (file, Some(line)) => format!("{}:{line}: ", file.display()),
        (file, None) => format!("{}: ", file.display()),
    }
}

/// Whether `wharf serve` could create or append to `file`: its directory
/// exists, and the file, if there, opens for appending. (Nothing is
/// created: `check` may run where `serve` will not.)
fn writable_file(file: &Path) -> Result<(), String> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "the directory of \"{}\" does not exist",
            file.display()
        ));
    }
    if file.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(file)
            .map_err(|e| format!("cannot open \"{}\" for writing: {e}", file.display()))?;
    }
    Ok(())
}

/// `wharf check`.
pub(crate) fn run(args: &Args) -> ExitCode {
    let Some(checked) = load(&args.config) else {
        return ExitCode::from(EXIT_INVALID);
    };
    let config = &checked.config;
    outln!("{}: OK", args.config.display());
    outln!();
    outln!("clients: {}", client_tls(config));
    outln!();
    print_plan(config);
    outln!();
    print_auth(config, checked.auth_users);
    if let Some(user) = &config.pgbouncer.user {
        if let Ok(account) = crate::service::account(user) {
            outln!(
                "runs as {} once its sockets are open (wharf serve must start as root or as that user)",
                crate::service::describe(&account)
            );
        }
    }
    outln!();
    outln!("{:<28} {:<28} {:<28} changeable", "key", "value", "default");
    for row in config.pgbouncer.describe() {
        outln!(
            "{:<28} {:<28} {:<28} {}",
            row.key,
            row.value,
            row.default,
            if row.changeable { "yes" } else { "no" }
        );
    }
    if args.strict && checked.warnings > 0 {
        errln!(
            "error: {} warning(s), and --strict makes any warning fail the check",
            checked.warnings
        );
        return ExitCode::from(EXIT_WARNINGS);
    }
    ExitCode::SUCCESS
}

/// Per database, where its servers are and what its pools get; then, per
/// `[users]` entry, what that user's pools get in each database.
fn print_plan(config: &Config) {
    outln!("[databases]");
    for db in &config.databases {
        let mode = config.pool_mode_for(&db.name, "");
        outln!(
            "  {:<20} pool_mode = {:<12} prepared statements: {}",
            db.name,
            mode.as_str(),
            prepared_statements(config, mode)
        );
        outln!("  {:<20} server: {}", "", servers(db));
        let forced = db.user.as_deref().and_then(|u| config.user(u));
        let max_clients = db
            .max_db_client_connections
            .filter(|n| *n > 0)
            .or(Some(config.pgbouncer.max_db_client_connections).filter(|n| *n > 0));
        outln!(
            "  {:<20} {}, max_db_client_connections = {}",
            "",
            limits(&config.settings_of(Some(db), forced)),
            or_unlimited(max_clients)
        );
        outln!("  {:<20} server TLS: {}", "", server_tls(config, db));
        if db.read_routing == Some(true) {
            let routing = if mode == PoolMode::Transaction {
                "reads to a standby (prefer-standby), everything else to the primary".to_owned()
            } else {
                format!(
                    "off: pool_mode = {}, only transaction mode routes",
                    mode.as_str()
                )
            };
            outln!("  {:<20} read routing: {routing}", "");
        }
    }
    if config.users.is_empty() {
        return;
    }
    outln!();
    outln!("[users] (what each user's pools get, per database)");
    for user in &config.users {
        for db in config.databases.iter().filter(|d| d.user.is_none()) {
            outln!(
                "  {:<20} {}",
                format!("{}@{}", user.name, db.name),
                limits(&config.settings_of(Some(db), Some(user)))
            );
        }
    }
}

/// Where a database's servers are.
fn servers(db: &config::Database) -> String {
    let hosts = match db.host_ports() {
        Ok(hosts) => hosts
            .iter()
            .map(|(host, port)| match host {
                Some(dir) if dir.starts_with('/') => format!("{dir}/.s.PGSQL.{port}"),
                Some(host) => format!("{host}:{port}"),
                None => format!("Unix socket, port {port}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(problem) => problem,
    };
    let dbname = match (&db.dbname, db.is_fallback()) {
        (Some(name), _) => name.clone(),
        (None, true) => "the client's".to_owned(),
        (None, false) => db.name.clone(),
    };
    let user = db
        .user
        .as_deref()
        .map_or("the client's".to_owned(), str::to_owned);
    format!("{hosts}, dbname {dbname}, user {user}")
}

/// A pool's size, mode and limits.
fn limits(p: &PoolSettings) -> String {
    format!(
        "pool_mode = {}, pool_size = {} (min {}, reserve {}), max_db_connections = {}, \
         max_user_connections = {}, server_lifetime = {}, query_timeout = {}, \
         query_wait_timeout = {}, idle_transaction_timeout = {}, transaction_timeout = {}, \
         client_idle_timeout = {}",
        p.pool_mode.as_str(),
        p.pool_size,
        p.min_pool_size,
        p.reserve_pool_size,
        or_unlimited(p.max_db_connections),
        or_unlimited(p.max_user_connections),
        secs(Some(p.server_lifetime)),
        secs(p.query_timeout),
        secs(p.query_wait_timeout),
        secs(p.idle_transaction_timeout),
        secs(p.transaction_timeout),
        secs(p.client_idle_timeout),
    )
}

fn or_unlimited(limit: Option<usize>) -> String {
    limit.map_or("unlimited".to_owned(), |n| n.to_string())
}

fn secs(time: Option<Duration>) -> String {
    time.map_or("off".to_owned(), |d| format!("{}s", d.as_secs_f64()))
}

/// What TLS clients get.
fn client_tls(config: &Config) -> String {
    let mode = config.pgbouncer.client_tls_sslmode;
    let what = match mode {
        SslMode::Disable => "plain text only (SSLRequest answered 'N')",
        SslMode::Allow | SslMode::Prefer => "TLS when the client asks, plain otherwise",
        SslMode::Require => "TLS required on TCP (Unix sockets stay plain)",
        SslMode::VerifyCa | SslMode::VerifyFull => {
            "TLS with a client certificate signed by client_tls_ca_file"
        }
    };
    format!("client_tls_sslmode = {}: {what}", mode.as_str())
}

/// What TLS a database's server connections get.
fn server_tls(config: &Config, db: &config::Database) -> String {
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
        SslMode::Disable | SslMode::Allow => "plain text",
        SslMode::Prefer => "TLS if the server offers it, certificate not checked",
        SslMode::Require => "TLS required, certificate not checked",
        SslMode::VerifyCa => "TLS required, certificate chain checked, host name not",
        SslMode::VerifyFull => "TLS required, certificate chain and host name checked",
    };
    format!("{} ({what}{sockets})", mode.as_str())
}

/// How clients authenticate: `auth_type`, and with `hba` the rules that
/// can apply to each database, first match first.
fn print_auth(config: &Config, auth_users: usize) {
    let users = match &config.pgbouncer.auth_file {
        Some(file) => format!("{auth_users} user(s) in {}", file.display()),
        None => "no auth_file".to_owned(),
    };
    let Some(rules) = config.hba.as_deref() else {
        outln!("auth_type = {}, {users}", config.pgbouncer.auth_type);
        return;
    };
    outln!(
        "auth_type = hba, {users}, rules from {} (first match wins; no match is refused):",
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
        outln!("  {:<20} {summary}", db.name);
    }
}

/// What happens to a database's named prepared statements.
fn prepared_statements(config: &Config, mode: PoolMode) -> String {
    let max = config.pgbouncer.max_prepared_statements;
    match mode {
        PoolMode::Session => "kept on the client's own server (session mode)".to_owned(),
        _ if max == 0 => {
            "not tracked (max_prepared_statements = 0): named statements fail across servers"
                .to_owned()
        }
        _ => format!("tracked across servers, at most {max} per server"),
    }
}

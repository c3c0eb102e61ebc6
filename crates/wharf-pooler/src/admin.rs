//! The admin console: PgBouncer's virtual database `pgbouncer` (alias
//! `wharf`), with its `SHOW` commands and process control (PAUSE, RESUME,
//! DISABLE, ENABLE, RECONNECT, KILL, KILL_CLIENT, SUSPEND, WAIT_CLOSE,
//! SET, RELOAD, SHUTDOWN).
//!
//! Users in `admin_users` may run everything, users in `stats_users` only
//! `SHOW`. Over the Unix socket, a client running as the same OS user as
//! the pooler may log in as `pgbouncer` (or as that OS user's name)
//! without a password, and is an admin. Only the simple query protocol is
//! served, one command per query, case-insensitive, with an optional
//! trailing `;`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::frontend::Shared;
use crate::proto::backend::{self, Oid};
use crate::proto::{cstr, read_message, CancelKey, ProtocolError};
use crate::stats::{format_time, ClientEntry, PoolStats, ServerEntry, ServerState, Totals};

/// The version PgBouncer's console reports, which tools parse.
pub const PGBOUNCER_VERSION: &str = "1.25.0";

/// Queries to the console are short; refuse anything bigger.
const MAX_QUERY: usize = 64 * 1024;

/// Whether `database` is the console's virtual database.
pub fn is_console(database: &str) -> bool {
    database == "pgbouncer" || database == "wharf"
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every command (`admin_users`, or the pooler's own OS user over the
    /// Unix socket).
    Admin,
    /// `SHOW` only (`stats_users`).
    Stats,
}

/// The OS user the pooler runs as: its uid and, when `/etc/passwd` names
/// it, its name.
pub fn own_user() -> Option<(u32, Option<String>)> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id: u32 = fields.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_owned())
            })
        });
    Some((uid, name))
}

/// PgBouncer's rule for logging in to the console without a password:
/// over the Unix socket, from a process of the pooler's own OS user, as
/// `pgbouncer` or as that user's name.
pub fn peer_is_own_user(peer_uid: Option<u32>, user: &str) -> bool {
    let (Some(peer_uid), Some((uid, name))) = (peer_uid, own_user()) else {
        return false;
    };
    peer_uid == uid && (user == "pgbouncer" || name.as_deref() == Some(user))
}

/// The role `user` has on the console under the current settings, if any.
pub fn role_of(shared: &Shared, user: &str) -> Option<Role> {
    let config = shared.config();
    let settings = &config.pgbouncer;
    if settings.admin_users.iter().any(|u| u == user) {
        Some(Role::Admin)
    } else if settings.stats_users.iter().any(|u| u == user)
        || settings.auth_type == crate::config::AuthType::Any
    {
        Some(Role::Stats)
    } else {
        None
    }
}

/// A logged-in console session.
pub struct Console {
    /// The login user.
    pub user: String,
    /// What it may do.
    pub role: Role,
    /// Its entry in the client registry (`SHOW CLIENTS`, KILL_CLIENT).
    pub entry: crate::stats::ClientGuard,
}

/// Why a console command failed: sent as an ErrorResponse, the session
/// goes on.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error("invalid command '{0}', use SHOW HELP;")]
    Syntax(String),
    #[error("admin access needed")]
    AdminNeeded,
    #[error("no such database: {0}")]
    NoDatabase(String),
    #[error("client not found")]
    NoClient,
    #[error("invalid client pointer supplied")]
    BadClientId,
    #[error("{0}")]
    Failed(String),
}

/// Serves a console session after login, until the client leaves or is
/// killed.
pub async fn serve<S>(stream: &mut S, shared: &Arc<Shared>, console: Console)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(512);
    backend::auth_ok(&mut out);
    for (name, value) in [
        ("server_version", &*format!("{PGBOUNCER_VERSION}/bouncer")),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
        ("is_superuser", "off"),
        ("application_name", &console.entry.entry.application_name()),
    ] {
        backend::parameter_status(&mut out, name, value);
    }
    backend::backend_key_data(&mut out, CancelKey::random());
    backend::ready_for_query(&mut out, b'I');
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let entry = console.entry.entry.clone();
    // After an extended-protocol message, everything up to the Sync is
    // ignored and the Sync answered, as a server does after an error.
    let mut skipping = false;
    loop {
        let message = tokio::select! {
            message = read_message(stream, MAX_QUERY) => message,
            () = entry.killed() => {
                let mut out = BytesMut::new();
                backend::error(&mut out, "FATAL", "08P01", entry.kill_reason().message());
                let _ = stream.write_all(&out).await;
                return;
            }
        };
        let (tag, body) = match message {
            Ok(message) => message,
            Err(ProtocolError::Closed) => return,
            Err(err) => {
                let mut out = BytesMut::new();
                backend::error(
                    &mut out,
                    "FATAL",
                    "08P01",
                    &format!("invalid message: {err}"),
                );
                let _ = stream.write_all(&out).await;
                return;
            }
        };
        let mut out = BytesMut::new();
        match tag {
            b'X' => return,
            b'Q' => {
                skipping = false;
                let sql = cstr(&body).map(|(s, _)| s).unwrap_or_default();
                run(sql, shared, &console, &mut out).await;
                backend::ready_for_query(&mut out, b'I');
            }
            b'S' => {
                skipping = false;
                backend::ready_for_query(&mut out, b'I');
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F' => {
                if !skipping {
                    backend::error(
                        &mut out,
                        "ERROR",
                        "08P01",
                        "the admin console supports only the simple query protocol",
                    );
                }
                // A FunctionCall is answered by itself, not by a Sync.
                if tag == b'F' {
                    backend::ready_for_query(&mut out, b'I');
                } else {
                    skipping = true;
                }
            }
            _ => {
                backend::error(&mut out, "FATAL", "08P01", "invalid message type");
                let _ = stream.write_all(&out).await;
                return;
            }
        }
        entry.touch();
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Runs one query and writes its results (or error) to `out`.
async fn run(sql: &str, shared: &Arc<Shared>, console: &Console, out: &mut BytesMut) {
    let text = sql.trim().trim_end_matches(';').trim();
    if text.is_empty() {
        backend::empty_query(out);
        return;
    }
    if let Err(err) = execute(text, shared, console, out).await {
        tracing::info!(user = %console.user, command = text, error = %err, "admin console command failed");
        out.clear();
        backend::error(out, "ERROR", "08P01", &err.to_string());
    }
}

/// A word of a command: a bare name (compared case-insensitively by the
/// caller) or a double-quoted identifier.
fn unquote(word: &str) -> String {
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => word.to_owned(),
    }
}

async fn execute(
    text: &str,
    shared: &Arc<Shared>,
    console: &Console,
    out: &mut BytesMut,
) -> Result<(), CommandError> {
    let syntax = || CommandError::Syntax(text.to_owned());
    let mut words = text.split_whitespace();
    let command = words.next().ok_or_else(syntax)?.to_ascii_uppercase();
    if command == "SET" {
        require_admin(console)?;
        return set(text, shared, out);
    }
    let arg = words.next().map(unquote);
    if words.next().is_some() {
        return Err(syntax());
    }
    if command == "SHOW" {
        let what = arg.ok_or_else(syntax)?.to_ascii_uppercase();
        if let Some(why) = not_supported(&what) {
            return Err(CommandError::Failed(format!(
                "SHOW {what} is not supported by wharf: {why}"
            )));
        }
        return show(&what, shared, out).ok_or_else(syntax);
    }
    require_admin(console)?;
    let router = &shared.router;
    let config = shared.config();
    // PgBouncer's rules: a named database must exist, and the console's
    // own database cannot be paused, killed or disabled.
    let user_db = |db: &Option<String>, verb: &str| -> Result<(), CommandError> {
        match db {
            Some(db) if is_console(db) => Err(CommandError::Failed(format!(
                "cannot {verb} admin db: {db}"
            ))),
            Some(db) if config.database(db).is_none() => Err(CommandError::NoDatabase(db.clone())),
            _ => Ok(()),
        }
    };
    let (paused, suspended) = router.global_state();
    let not_held = || -> Result<(), CommandError> {
        if paused || suspended {
            return Err(CommandError::Failed("already suspended/paused".into()));
        }
        Ok(())
    };
    let tag = match command.as_str() {
        "PAUSE" => {
            not_held()?;
            user_db(&arg, "pause")?;
            router.pause(arg.as_deref()).await;
            "PAUSE"
        }
        "RESUME" => {
            match arg.as_deref() {
                None if shared.lifecycle.is_shutting_down() => {
                    return Err(CommandError::Failed("pooler is shutting down".into()));
                }
                None if !paused && !suspended => {
                    return Err(CommandError::Failed(
                        "pooler is not paused/suspended".into(),
                    ));
                }
                Some(db) => {
                    // The console's own database is never paused.
                    if !is_console(db) {
                        user_db(&arg, "resume")?;
                    }
                    if is_console(db) || !router.db_control(db).paused_itself() {
                        return Err(CommandError::Failed(format!("database {db} is not paused")));
                    }
                }
                None => {}
            }
            router.resume(arg.as_deref());
            "RESUME"
        }
        "SUSPEND" if arg.is_none() => {
            not_held()?;
            // SUSPEND must be able to finish every transaction in flight,
            // which a paused database would block.
            if router.any_database_paused() {
                return Err(CommandError::Failed(
                    "cannot suspend with paused databases".into(),
                ));
            }
            router.suspend();
            "SUSPEND"
        }
        "DISABLE" | "ENABLE" => {
            let db = arg
                .clone()
                .ok_or_else(|| CommandError::Failed("a database is required".into()))?;
            user_db(&arg, &command.to_ascii_lowercase())?;
            router.set_disabled(&db, command == "DISABLE");
            if command == "DISABLE" {
                "DISABLE"
            } else {
                "ENABLE"
            }
        }
        "RECONNECT" => {
            user_db(&arg, "reconnect")?;
            router.reconnect(arg.as_deref());
            "RECONNECT"
        }
        "KILL" => {
            not_held()?;
            user_db(&arg, "kill")?;
            router.kill(arg.as_deref());
            "KILL"
        }
        "KILL_CLIENT" => {
            let id: u64 = arg
                .as_deref()
                .and_then(|id| id.parse().ok())
                .ok_or(CommandError::BadClientId)?;
            if !router.kill_client(id) {
                return Err(CommandError::NoClient);
            }
            "KILL_CLIENT"
        }
        "WAIT_CLOSE" => {
            user_db(&arg, "wait in")?;
            router.wait_close(arg.as_deref()).await;
            "WAIT_CLOSE"
        }
        "RELOAD" if arg.is_none() => {
            shared
                .lifecycle
                .reload()
                .await
                .map_err(|err| CommandError::Failed(err.to_string()))?;
            "RELOAD"
        }
        "SHUTDOWN" => {
            use crate::lifecycle::ShutdownMode;
            let mode = match arg.as_deref().map(str::to_ascii_uppercase).as_deref() {
                None => ShutdownMode::Immediate,
                Some("WAIT_FOR_SERVERS") => ShutdownMode::WaitForServers,
                Some("WAIT_FOR_CLIENTS") => ShutdownMode::WaitForClients,
                Some(_) => return Err(syntax()),
            };
            shared.lifecycle.shutdown(mode);
            "SHUTDOWN"
        }
        _ => return Err(syntax()),
    };
    backend::command_complete(out, tag);
    Ok(())
}

fn require_admin(console: &Console) -> Result<(), CommandError> {
    match console.role {
        Role::Admin => Ok(()),
        Role::Stats => Err(CommandError::AdminNeeded),
    }
}

/// `SET key = value` / `SET key TO value`, the value bare or quoted
/// `'like ''this'''`.
fn set(text: &str, shared: &Arc<Shared>, out: &mut BytesMut) -> Result<(), CommandError> {
    let syntax = || CommandError::Syntax(text.to_owned());
    let rest = text.get(3..).ok_or_else(syntax)?.trim_start();
    let key_end = rest
        .find(|c: char| c.is_whitespace() || c == '=')
        .ok_or_else(syntax)?;
    let key = rest[..key_end].to_ascii_lowercase();
    let rest = rest[key_end..].trim_start();
    let rest = match rest.strip_prefix('=') {
        Some(rest) => rest,
        None if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("to") => &rest[2..],
        None => return Err(syntax()),
    }
    .trim();
    let value = match rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None if !rest.is_empty() && !rest.contains(char::is_whitespace) => rest.to_owned(),
        None => return Err(syntax()),
    };
    let mut config = crate::config::Config::clone(&shared.config());
    config
        .pgbouncer
        .set(&key, &value)
        .map_err(|err| CommandError::Failed(err.to_string()))?;
    tracing::info!(%key, %value, "SET from the admin console");
    shared
        .router
        .replace(Arc::new(config), shared.router.secrets());
    shared.router.apply();
    backend::command_complete(out, &format!("SET {key}={value}"));
    Ok(())
}

/// Writes a result set: the columns, the rows, and `SHOW`.
fn rows(out: &mut BytesMut, columns: &[(&str, Oid)], rows: &[Vec<Option<String>>]) {
    backend::row_description(out, columns);
    for row in rows {
        let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
        backend::data_row(out, &values);
    }
    backend::command_complete(out, "SHOW");
}

fn s(v: impl Into<String>) -> Option<String> {
    Some(v.into())
}

fn n(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// Answers `SHOW what`; `None` for an unknown `what`.
fn show(what: &str, shared: &Arc<Shared>, out: &mut BytesMut) -> Option<()> {
    match what {
        "POOLS" => show_pools(shared, out),
        "STATS" => show_stats(shared, out, true, true),
        "STATS_TOTALS" => show_stats(shared, out, true, false),
        "STATS_AVERAGES" => show_stats(shared, out, false, true),
        "TOTALS" => show_totals(shared, out),
        "CLIENTS" => show_clients(shared, out),
        "SERVERS" => show_servers(shared, out),
        "DATABASES" => show_databases(shared, out),
        "USERS" => show_users(shared, out),
        "CONFIG" => show_config(shared, out),
        "LISTS" => show_lists(shared, out),
        "VERSION" => rows(
            out,
            &[("version", Oid::Text)],
            &[vec![s(format!(
                "PgBouncer {PGBOUNCER_VERSION} (wharf {})",
                env!("CARGO_PKG_VERSION")
            ))]],
        ),
        "STATE" => {
            let (paused, suspended) = shared.router.global_state();
            let yes = |b: bool| s(if b { "yes" } else { "no" });
            rows(
                out,
                &[("key", Oid::Text), ("value", Oid::Text)],
                &[
                    vec![s("active"), yes(!paused && !suspended)],
                    vec![s("paused"), yes(paused && !suspended)],
                    vec![s("suspended"), yes(suspended)],
                ],
            );
        }
        "HELP" => {
            backend::notice(out, HELP);
            backend::command_complete(out, "SHOW");
        }
        // wharf has no peers (PgBouncer's `[peers]`) and no DNS cache of
        // its own (names are resolved at each connect): these lists are
        // truly empty.
        "PEERS" => rows(
            out,
            &[
                ("peer_id", Oid::Int4),
                ("host", Oid::Text),
                ("port", Oid::Int4),
                ("pool_size", Oid::Int4),
            ],
            &[],
        ),
        "PEER_POOLS" => rows(
            out,
            &[
                ("peer_id", Oid::Int4),
                ("cl_active_cancel_req", Oid::Int4),
                ("cl_waiting_cancel_req", Oid::Int4),
                ("sv_active_cancel", Oid::Int4),
                ("sv_login", Oid::Int4),
            ],
            &[],
        ),
        "DNS_HOSTS" => rows(
            out,
            &[
                ("hostname", Oid::Text),
                ("ttl", Oid::Int8),
                ("addrs", Oid::Text),
            ],
            &[],
        ),
        "DNS_ZONES" => rows(
            out,
            &[
                ("zonename", Oid::Text),
                ("serial", Oid::Int8),
                ("count", Oid::Int4),
            ],
            &[],
        ),
        _ => return None,
    }
    Some(())
}

/// PgBouncer's SHOW commands that describe its own internals, which wharf
/// does not have, and why.
fn not_supported(what: &str) -> Option<&'static str> {
    match what {
        "FDS" => Some("online restart by passing sockets (-R) is not implemented; run a second process with so_reuseport instead"),
        "SOCKETS" | "ACTIVE_SOCKETS" => Some("it lists PgBouncer's I/O buffer positions; SHOW CLIENTS and SHOW SERVERS list the connections"),
        "MEM" => Some("it lists PgBouncer's slab allocator caches, which wharf does not use"),
        _ => None,
    }
}

const HELP: &str = "Console usage
\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS|LISTS|STATE
\tSHOW PEERS|PEER_POOLS|DNS_HOSTS|DNS_ZONES
\tSET key = arg
\tRELOAD
\tPAUSE [<db>]
\tRESUME [<db>]
\tDISABLE <db>
\tENABLE <db>
\tRECONNECT [<db>]
\tKILL [<db>]
\tKILL_CLIENT <client_id>
\tSUSPEND
\tSHUTDOWN
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS
\tWAIT_CLOSE [<db>]";

/// The admin console's own pool row, as PgBouncer lists it.
const CONSOLE_DB: &str = "pgbouncer";

/// One row of `SHOW POOLS`: a pool's clients and servers by state. The
/// console and the HTTP exporter both read these, so they always agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    /// The database.
    pub database: String,
    /// The pool's user.
    pub user: String,
    /// The pool mode's name.
    pub mode: &'static str,
    /// Clients linked to a server, or idle.
    pub cl_active: usize,
    /// Clients waiting for a server.
    pub cl_waiting: usize,
    /// Cancel requests sent to the server and not yet taken.
    pub cl_active_cancel_req: usize,
    /// Cancel requests waiting for their connection to the server.
    pub cl_waiting_cancel_req: usize,
    /// Servers linked to a client.
    pub sv_active: usize,
    /// Connections to the server carrying a cancel request.
    pub sv_active_cancel: usize,
    /// Servers held back until the cancels on their way to them land.
    pub sv_being_canceled: usize,
    /// Servers idle and ready.
    pub sv_idle: usize,
    /// Servers idle longer than `server_check_delay`.
    pub sv_used: usize,
    /// Servers running the check query.
    pub sv_tested: usize,
    /// Servers logging in.
    pub sv_login: usize,
    /// How long the oldest waiting client has waited.
    pub maxwait: Duration,
}

/// Whether an idle server counts as `used` (PgBouncer's `sv_used`): idle
/// longer than `server_check_delay`, when servers are checked at all.
fn used_servers(shared: &Shared) -> impl Fn(&ServerEntry) -> bool + '_ {
    let config = shared.config();
    let check_delay = match config.pgbouncer.server_check() {
        crate::config::ServerCheck::Disabled => None,
        _ => Some(config.pgbouncer.server_check_delay),
    };
    let stats = shared.router.stats();
    move |server| check_delay.is_some_and(|d| stats.idle_for(server) > d)
}

/// The rows of `SHOW POOLS`, sorted by database then user, the console's
/// own pools included.
pub fn pool_rows(shared: &Shared) -> Vec<PoolRow> {
    let stats = shared.router.stats();
    let used = used_servers(shared);
    let clients = stats.clients();
    let servers = stats.servers();
    let server_pools = shared.router.pools();
    let gauge = |db: &str, user: &str, pick: fn(&PoolStats) -> &AtomicU64| {
        server_pools
            .iter()
            .find(|p| p.database == db && p.user == user)
            .map_or(0, |p| {
                usize::try_from(pick(&p.stats).load(Ordering::Relaxed)).unwrap_or(usize::MAX)
            })
    };
    let mut pools: Vec<(String, String, &'static str)> = server_pools
        .iter()
        .map(|p| (p.database.clone(), p.user.clone(), p.mode().as_str()))
        .collect();
    for c in clients.iter().filter(|c| c.info.admin) {
        let key = (CONSOLE_DB.to_owned(), c.info.user.clone(), "statement");
        if !pools.contains(&key) {
            pools.push(key);
        }
    }
    pools.sort();
    pools.dedup();
    pools
        .into_iter()
        .map(|(db, user, mode)| {
            let mine = |c: &&Arc<ClientEntry>| {
                if c.info.admin {
                    db == CONSOLE_DB && c.info.user == user
                } else {
                    c.info.database == db && c.info.pool_user == user
                }
            };
            let cl: Vec<_> = clients.iter().filter(mine).collect();
            let waiting: Vec<_> = cl.iter().filter_map(|c| c.waiting_for()).collect();
            let maxwait = waiting.iter().max().copied().unwrap_or_default();
            let sv: Vec<_> = servers
                .iter()
                .filter(|s| s.pool.database == db && s.pool.user == user)
                .collect();
            let count = |state: ServerState| sv.iter().filter(|s| s.state() == state).count();
            let idle: Vec<_> = sv
                .iter()
                .filter(|s| s.state() == ServerState::Idle)
                .collect();
            let used = idle.iter().filter(|s| used(s)).count();
            let cancels_active = gauge(&db, &user, |p| &p.cancels_active);
            PoolRow {
                cl_active: cl.len() - waiting.len(),
                cl_waiting: waiting.len(),
                cl_active_cancel_req: cancels_active,
                cl_waiting_cancel_req: gauge(&db, &user, |p| &p.cancels_waiting),
                sv_active: count(ServerState::Active),
                sv_active_cancel: cancels_active,
                sv_being_canceled: count(ServerState::BeingCanceled),
                sv_idle: idle.len() - used,
                sv_used: used,
                sv_tested: count(ServerState::Tested),
                sv_login: count(ServerState::Login),
                maxwait,
                database: db,
                user,
                mode,
            }
        })
        .collect()
}

fn show_pools(shared: &Arc<Shared>, out: &mut BytesMut) {
    let table: Vec<Vec<Option<String>>> = pool_rows(shared)
        .into_iter()
        .map(|p| {
            vec![
                s(p.database),
                s(p.user),
                n(p.cl_active),
                n(p.cl_waiting),
                n(p.cl_active_cancel_req),
                n(p.cl_waiting_cancel_req),
                n(p.sv_active),
                n(p.sv_active_cancel),
                n(p.sv_being_canceled),
                n(p.sv_idle),
                n(p.sv_used),
                n(p.sv_tested),
                n(p.sv_login),
                n(p.maxwait.as_secs()),
                n(p.maxwait.subsec_micros()),
                s(p.mode),
                None,
            ]
        })
        .collect();
    let mut columns = vec![("database", Oid::Text), ("user", Oid::Text)];
    for name in [
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
    ] {
        columns.push((name, Oid::Int4));
    }
    columns.push(("pool_mode", Oid::Text));
    columns.push(("load_balance_hosts", Oid::Text));
    rows(out, &columns, &table);
}

fn stats_columns(totals: bool, averages: bool) -> Vec<(String, Oid)> {
    let mut columns = Vec::new();
    let names = Totals::default().fields();
    if totals {
        for (name, _) in names {
            columns.push((format!("total_{name}"), Oid::Int8));
        }
    }
    if averages {
        for (name, _) in names {
            // PgBouncer shortens these two.
            let name = match name {
                "received" => "recv",
                other => other,
            };
            columns.push((format!("avg_{name}"), Oid::Int8));
        }
    }
    columns
}

fn show_stats(shared: &Arc<Shared>, out: &mut BytesMut, totals: bool, averages: bool) {
    let stats = shared.router.stats();
    let mut columns = vec![("database".to_owned(), Oid::Text)];
    columns.extend(stats_columns(totals, averages));
    // PgBouncer's order of the totals puts server assignments first; ours
    // already does.
    let table: Vec<Vec<Option<String>>> = stats
        .database_totals()
        .into_iter()
        .map(|(db, total)| {
            let mut row = vec![s(db.as_str())];
            if totals {
                row.extend(total.fields().iter().map(|(_, v)| n(v)));
            }
            if averages {
                let avg = stats.database_averages(&db);
                row.extend(avg.fields().iter().map(|(_, v)| n(v)));
            }
            row
        })
        .collect();
    let columns: Vec<(&str, Oid)> = columns.iter().map(|(c, o)| (c.as_str(), *o)).collect();
    rows(out, &columns, &table);
}

fn show_totals(shared: &Arc<Shared>, out: &mut BytesMut) {
    let stats = shared.router.stats();
    let names = stats_columns(true, true);
    let values = stats
        .overall_totals()
        .fields()
        .into_iter()
        .chain(stats.overall_averages().fields())
        .map(|(_, v)| v);
    let table: Vec<Vec<Option<String>>> = names
        .iter()
        .zip(values)
        .map(|((name, _), value)| vec![s(name.as_str()), n(value)])
        .collect();
    rows(out, &[("name", Oid::Text), ("value", Oid::Int8)], &table);
}

const SOCKET_COLUMNS: &[(&str, Oid)] = &[
    ("type", Oid::Text),
    ("user", Oid::Text),
    ("database", Oid::Text),
    ("replication", Oid::Text),
    ("state", Oid::Text),
    ("addr", Oid::Text),
    ("port", Oid::Int4),
    ("local_addr", Oid::Text),
    ("local_port", Oid::Int4),
    ("connect_time", Oid::Timestamptz),
    ("request_time", Oid::Timestamptz),
    ("wait", Oid::Int4),
    ("wait_us", Oid::Int4),
    ("close_needed", Oid::Int4),
    ("ptr", Oid::Text),
    ("link", Oid::Text),
    ("remote_pid", Oid::Int4),
    ("tls", Oid::Text),
    ("application_name", Oid::Text),
    ("prepared_statements", Oid::Int4),
    ("id", Oid::Int8),
];

/// `ptr`/`link` values: clients and servers get distinct made-up
/// addresses from their ids (there is no C struct to point at).
fn client_ptr(id: u64) -> String {
    format!("0x{:x}", 0x1000_0000_0000_u64 + id)
}

fn server_ptr(id: u64) -> String {
    format!("0x{:x}", 0x2000_0000_0000_u64 + id)
}

fn show_clients(shared: &Arc<Shared>, out: &mut BytesMut) {
    let table: Vec<Vec<Option<String>>> = shared
        .router
        .stats()
        .clients()
        .iter()
        .map(|c| {
            let wait = c.waiting_for().unwrap_or_default();
            let link = c.link();
            vec![
                s("C"),
                s(c.info.user.as_str()),
                s(if c.info.admin {
                    CONSOLE_DB
                } else {
                    &c.info.database
                }),
                s("none"),
                s(c.state().as_str()),
                s(c.info.addr.0.as_str()),
                n(c.info.addr.1),
                s(c.info.local_addr.0.as_str()),
                n(c.info.local_addr.1),
                s(format_time(c.connect_time)),
                s(format_time(c.request_time())),
                n(wait.as_secs()),
                n(wait.subsec_micros()),
                n(0),
                s(client_ptr(c.info.id)),
                s(if link == 0 {
                    String::new()
                } else {
                    server_ptr(link)
                }),
                n(c.info.remote_pid),
                s(""),
                s(c.application_name()),
                n(0),
                n(c.info.id),
            ]
        })
        .collect();
    rows(out, SOCKET_COLUMNS, &table);
}

fn show_servers(shared: &Arc<Shared>, out: &mut BytesMut) {
    let stats = shared.router.stats();
    let used = used_servers(shared);
    let table: Vec<Vec<Option<String>>> = stats
        .servers()
        .iter()
        .map(|sv| {
            let state = match sv.state() {
                ServerState::Active => "active",
                ServerState::Tested => "tested",
                ServerState::Login => "new",
                ServerState::BeingCanceled => "being_canceled",
                ServerState::Idle if used(sv) => "used",
                ServerState::Idle => "idle",
            };
            let link = sv.link();
            let app = (link != 0)
                .then(|| stats.client(link))
                .flatten()
                .map(|c| c.application_name())
                .unwrap_or_default();
            let (local, local_port) = sv.local_addr();
            vec![
                s("S"),
                s(sv.pool.user.as_str()),
                s(sv.pool.database.as_str()),
                s("none"),
                s(state),
                s(sv.addr.0.as_str()),
                n(sv.addr.1),
                s(local),
                n(local_port),
                s(format_time(sv.connect_time)),
                s(format_time(sv.request_time())),
                n(0),
                n(0),
                n(u8::from(sv.close_needed())),
                s(server_ptr(sv.id)),
                s(if link == 0 {
                    String::new()
                } else {
                    client_ptr(link)
                }),
                n(sv.remote_pid()),
                s(""),
                s(app),
                n(0),
                n(sv.id),
            ]
        })
        .collect();
    rows(out, SOCKET_COLUMNS, &table);
}

/// One row of `SHOW DATABASES` (the console's own row aside): a
/// database's settings in force and its connection counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseRow {
    /// The name clients connect to.
    pub name: String,
    /// The server's host, if set.
    pub host: Option<String>,
    /// The server's port.
    pub port: u16,
    /// The database on the server.
    pub dbname: String,
    /// The user every client logs in to the server as, if forced.
    pub force_user: Option<String>,
    /// Servers per pool.
    pub pool_size: usize,
    /// Servers kept open per pool.
    pub min_pool_size: usize,
    /// Extra servers for waiting clients.
    pub reserve_pool_size: usize,
    /// Server lifetime in seconds.
    pub server_lifetime: u64,
    /// The pool mode set for the database, if any.
    pub pool_mode: Option<String>,
    /// `load_balance_hosts`, when several hosts are named.
    pub load_balance_hosts: Option<String>,
    /// Most servers for the database (0: unlimited).
    pub max_connections: usize,
    /// Servers open for the database.
    pub current_connections: usize,
    /// Most clients for the database (0: unlimited).
    pub max_client_connections: usize,
    /// Clients connected to the database.
    pub current_client_connections: usize,
    /// Paused by PAUSE of the database.
    pub paused: bool,
    /// Disabled by DISABLE.
    pub disabled: bool,
}

/// The rows of `SHOW DATABASES` but the console's own, in
/// configuration order; databases made from the `*` entry once in use.
pub fn database_rows(shared: &Shared) -> Vec<DatabaseRow> {
    let config = shared.config();
    let settings = &config.pgbouncer;
    let stats = shared.router.stats();
    let clients = stats.clients();
    let servers = stats.servers();
    let mut names: Vec<String> = config
        .databases
        .iter()
        .filter(|d| !d.is_fallback())
        .map(|d| d.name.clone())
        .collect();
    for pool in shared.router.pools() {
        if !names.contains(&pool.database) {
            names.push(pool.database.clone());
        }
    }
    let mut table = Vec::new();
    for name in names {
        let Some(entry) = config.database(&name) else {
            continue;
        };
        let control = shared.router.db_control(&name);
        table.push(DatabaseRow {
            host: entry.host.clone(),
            port: entry.port.unwrap_or(5432),
            dbname: entry.dbname.clone().unwrap_or_else(|| name.clone()),
            force_user: entry.user.clone(),
            pool_size: entry.pool_size.unwrap_or(settings.default_pool_size),
            min_pool_size: entry.min_pool_size.unwrap_or(settings.min_pool_size),
            reserve_pool_size: entry
                .reserve_pool_size
                .unwrap_or(settings.reserve_pool_size),
            server_lifetime: entry
                .server_lifetime
                .filter(|d| !d.is_zero())
                .unwrap_or(settings.server_lifetime)
                .as_secs(),
            pool_mode: entry.pool_mode.map(|m| m.as_str().to_owned()),
            load_balance_hosts: entry
                .host
                .as_deref()
                .filter(|h| h.contains(','))
                .and(entry.load_balance_hosts.clone()),
            max_connections: entry
                .max_db_connections
                .filter(|&n| n > 0)
                .unwrap_or(settings.max_db_connections),
            current_connections: servers.iter().filter(|s| s.pool.database == name).count(),
            max_client_connections: entry
                .max_db_client_connections
                .filter(|&n| n > 0)
                .unwrap_or(settings.max_db_client_connections),
            current_client_connections: clients
                .iter()
                .filter(|c| !c.info.admin && c.info.database == name)
                .count(),
            paused: control.paused_itself(),
            disabled: control.is_disabled(),
            name,
        });
    }
    table
}

fn show_databases(shared: &Arc<Shared>, out: &mut BytesMut) {
    let config = shared.config();
    let settings = &config.pgbouncer;
    let clients = shared.router.stats().clients();
    let mut table: Vec<Vec<Option<String>>> = database_rows(shared)
        .into_iter()
        .map(|d| {
            vec![
                s(d.name),
                d.host,
                n(d.port),
                s(d.dbname),
                d.force_user,
                n(d.pool_size),
                n(d.min_pool_size),
                n(d.reserve_pool_size),
                n(d.server_lifetime),
                d.pool_mode,
                d.load_balance_hosts,
                n(d.max_connections),
                n(d.current_connections),
                n(d.max_client_connections),
                n(d.current_client_connections),
                n(u8::from(d.paused)),
                n(u8::from(d.disabled)),
            ]
        })
        .collect();
    table.push(vec![
        s(CONSOLE_DB),
        None,
        n(settings.listen_port),
        s(CONSOLE_DB),
        s(CONSOLE_DB),
        n(2),
        n(0),
        n(0),
        n(0),
        s("statement"),
        None,
        n(0),
        n(0),
        n(0),
        n(clients.iter().filter(|c| c.info.admin).count()),
        n(0),
        n(0),
    ]);
    rows(
        out,
        &[
            ("name", Oid::Text),
            ("host", Oid::Text),
            ("port", Oid::Int4),
            ("database", Oid::Text),
            ("force_user", Oid::Text),
            ("pool_size", Oid::Int4),
            ("min_pool_size", Oid::Int4),
            ("reserve_pool_size", Oid::Int4),
            ("server_lifetime", Oid::Int4),
            ("pool_mode", Oid::Text),
            ("load_balance_hosts", Oid::Text),
            ("max_connections", Oid::Int4),
            ("current_connections", Oid::Int4),
            ("max_client_connections", Oid::Int4),
            ("current_client_connections", Oid::Int4),
            ("paused", Oid::Int4),
            ("disabled", Oid::Int4),
        ],
        &table,
    );
}

fn show_users(shared: &Arc<Shared>, out: &mut BytesMut) {
    let config = shared.config();
    let settings = &config.pgbouncer;
    let stats = shared.router.stats();
    let clients = stats.clients();
    let servers = stats.servers();
    let mut names: Vec<String> = config.users.iter().map(|u| u.name.clone()).collect();
    names.extend(shared.secrets().keys().cloned());
    names.extend(clients.iter().map(|c| c.info.user.clone()));
    names.extend(servers.iter().map(|s| s.pool.user.clone()));
    names.sort();
    names.dedup();
    let table: Vec<Vec<Option<String>>> = names
        .into_iter()
        .map(|name| {
            let user = config.user(&name);
            vec![
                s(name.as_str()),
                user.and_then(|u| u.pool_size).map(|v| v.to_string()),
                user.and_then(|u| u.reserve_pool_size)
                    .map(|v| v.to_string()),
                user.and_then(|u| u.pool_mode)
                    .map(|m| m.as_str().to_owned()),
                n(user
                    .and_then(|u| u.max_user_connections)
                    .filter(|&n| n > 0)
                    .unwrap_or(settings.max_user_connections)),
                n(servers.iter().filter(|s| s.pool.user == name).count()),
                n(user
                    .and_then(|u| u.max_user_client_connections)
                    .filter(|&n| n > 0)
                    .unwrap_or(settings.max_user_client_connections)),
                n(clients.iter().filter(|c| c.info.user == name).count()),
            ]
        })
        .collect();
    rows(
        out,
        &[
            ("name", Oid::Text),
            ("pool_size", Oid::Text),
            ("reserve_pool_size", Oid::Text),
            ("pool_mode", Oid::Text),
            ("max_user_connections", Oid::Int4),
            ("current_connections", Oid::Int4),
            ("max_user_client_connections", Oid::Int4),
            ("current_client_connections", Oid::Int4),
        ],
        &table,
    );
}

fn show_config(shared: &Arc<Shared>, out: &mut BytesMut) {
    let table: Vec<Vec<Option<String>>> = shared
        .config()
        .describe()
        .into_iter()
        .map(|row| {
            vec![
                s(row.key),
                s(row.value),
                s(row.default),
                s(if row.changeable { "yes" } else { "no" }),
            ]
        })
        .collect();
    rows(
        out,
        &[
            ("key", Oid::Text),
            ("value", Oid::Text),
            ("default", Oid::Text),
            ("changeable", Oid::Text),
        ],
        &table,
    );
}

/// The counts of `SHOW LISTS`, by name.
pub fn lists(shared: &Shared) -> [(&'static str, usize); 14] {
    let config = shared.config();
    let stats = shared.router.stats();
    let clients = stats.clients().len();
    let servers = stats.servers().len();
    let mut users: Vec<String> = config.users.iter().map(|u| u.name.clone()).collect();
    users.extend(shared.secrets().keys().cloned());
    users.sort();
    users.dedup();
    let databases = config.databases.iter().filter(|d| !d.is_fallback()).count() + 1;
    [
        ("databases", databases),
        ("users", users.len()),
        ("peers", 0),
        ("pools", shared.router.pools().len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", clients),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ]
}

fn show_lists(shared: &Arc<Shared>, out: &mut BytesMut) {
    let list = lists(shared);
    let table: Vec<Vec<Option<String>>> = list
        .iter()
        .map(|(name, items)| vec![s(*name), n(items)])
        .collect();
    rows(out, &[("list", Oid::Text), ("items", Oid::Int4)], &table);
}

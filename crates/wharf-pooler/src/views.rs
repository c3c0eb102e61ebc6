//! The rows the admin console's `SHOW` commands and the HTTP endpoint
//! both read, so that they always agree: pools, databases and lists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::state::PoolerState;
use crate::stats::{ClientEntry, PoolStats, ServerEntry, ServerState};

/// The version PgBouncer's console reports, which tools parse.
pub const PGBOUNCER_VERSION: &str = "1.25.0";

/// The admin console's own pool row, as PgBouncer lists it.
pub const CONSOLE_DB: &str = "pgbouncer";

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
pub fn used_servers(state: &PoolerState) -> impl Fn(&ServerEntry) -> bool + '_ {
    let config = state.config();
    let check_delay = match config.pgbouncer.server_check() {
        crate::config::ServerCheck::Disabled => None,
        _ => Some(config.pgbouncer.server_check_delay),
    };
    move |server| check_delay.is_some_and(|d| server.idle_for() > d)
}

/// The rows of `SHOW POOLS`, sorted by database then user, the console's
/// own pools included.
pub fn pool_rows(state: &PoolerState) -> Vec<PoolRow> {
    let stats = state.router().stats();
    let used = used_servers(state);
    let clients = stats.clients();
    let servers = stats.servers();
    let server_pools = state.router().pools();
    let gauge = |db: &str, user: &str, pick: fn(&PoolStats) -> &AtomicU64| {
        server_pools
            .iter()
            .find(|p| p.database() == db && p.user() == user)
            .map_or(0, |p| {
                usize::try_from(pick(p.stats()).load(Ordering::Relaxed)).unwrap_or(usize::MAX)
            })
    };
    let mut pools: Vec<(String, String, &'static str)> = server_pools
        .iter()
        .map(|p| {
            (
                p.database().to_owned(),
                p.user().to_owned(),
                p.mode().as_str(),
            )
        })
        .collect();
    for c in clients.iter().filter(|c| c.info.admin) {
        let key = (CONSOLE_DB.to_owned(), c.info.user.to_string(), "statement");
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
                    db == CONSOLE_DB && *c.info.user == *user
                } else {
                    *c.info.database == *db && *c.info.pool_user == *user
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
pub fn database_rows(state: &PoolerState) -> Vec<DatabaseRow> {
    let config = state.config();
    let settings = &config.pgbouncer;
    let stats = state.router().stats();
    let clients = stats.clients();
    let servers = stats.servers();
    let mut names: Vec<String> = config
        .databases
        .iter()
        .filter(|d| !d.is_fallback())
        .map(|d| d.name.clone())
        .collect();
    for pool in state.router().pools() {
        if !names.iter().any(|n| n == pool.database()) {
            names.push(pool.database().to_owned());
        }
    }
    let mut table = Vec::new();
    for name in names {
        let Some(entry) = config.database(&name) else {
            continue;
        };
        let control = state.router().db_control(&name);
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
                .filter(|c| !c.info.admin && *c.info.database == *name)
                .count(),
            paused: control.paused_itself(),
            disabled: control.is_disabled(),
            name,
        });
    }
    table
}

/// The counts of `SHOW LISTS`, by name.
pub fn lists(state: &PoolerState) -> [(&'static str, usize); 14] {
    let config = state.config();
    let stats = state.router().stats();
    let clients = stats.clients().len();
    let servers = stats.servers().len();
    let mut users: Vec<String> = config.users.iter().map(|u| u.name.clone()).collect();
    users.extend(state.secrets().keys().cloned());
    users.sort();
    users.dedup();
    let databases = config.databases.iter().filter(|d| !d.is_fallback()).count() + 1;
    [
        ("databases", databases),
        ("users", users.len()),
        ("peers", 0),
        ("pools", state.router().pools().len()),
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

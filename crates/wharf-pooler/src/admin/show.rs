//! `SHOW` rendering: PgBouncer's result sets, column for column.

use std::sync::Arc;

use bytes::BytesMut;

use super::columns::{self, Column};
use crate::calendar::format_time;
use crate::net::Peer;
use crate::proto::messages;
use crate::server::Role;
use crate::state::PoolerState;
use crate::stats::ServerState;
use crate::views::{database_rows, lists, pool_rows, used_servers, CONSOLE_DB, PGBOUNCER_VERSION};

/// Writes a result set: the columns, the rows, and `SHOW`.
fn rows(out: &mut BytesMut, columns: &[Column], rows: &[Vec<Option<String>>]) {
    messages::row_description(out, columns);
    for row in rows {
        let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
        messages::data_row(out, &values);
    }
    messages::command_complete(out, "SHOW");
}

fn text(v: impl Into<String>) -> Option<String> {
    Some(v.into())
}

fn num(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// Answers `SHOW what`; `None` for an unknown `what`.
pub(super) fn show(what: &str, state: &Arc<PoolerState>, out: &mut BytesMut) -> Option<()> {
    match what {
        "POOLS" => show_pools(state, out),
        "STATS" => show_stats(state, out, true, true),
        "STATS_TOTALS" => show_stats(state, out, true, false),
        "STATS_AVERAGES" => show_stats(state, out, false, true),
        "TOTALS" => show_totals(state, out),
        "CLIENTS" => show_clients(state, out),
        "SERVERS" => show_servers(state, out),
        "DATABASES" => show_databases(state, out),
        "USERS" => show_users(state, out),
        "CONFIG" => show_config(state, out),
        "LISTS" => show_lists(state, out),
        "HOSTS" => show_hosts(state, out),
        "VERSION" => rows(
            out,
            columns::VERSION,
            &[vec![text(format!(
                "PgBouncer {PGBOUNCER_VERSION} (wharf {})",
                env!("CARGO_PKG_VERSION")
            ))]],
        ),
        "STATE" => {
            let (paused, suspended) = state.router().global_state();
            let yes = |b: bool| text(if b { "yes" } else { "no" });
            rows(
                out,
                columns::STATE,
                &[
                    vec![text("active"), yes(!paused && !suspended)],
                    vec![text("paused"), yes(paused && !suspended)],
                    vec![text("suspended"), yes(suspended)],
                ],
            );
        }
        "HELP" => {
            messages::notice(out, HELP);
            messages::command_complete(out, "SHOW");
        }
        "PEERS" => show_peers(state, out),
        "PEER_POOLS" => show_peer_pools(state, out),
        // wharf has no DNS cache of its own (names are resolved at each
        // connect): these lists are truly empty.
        "DNS_HOSTS" => rows(out, columns::DNS_HOSTS, &[]),
        "DNS_ZONES" => rows(out, columns::DNS_ZONES, &[]),
        _ => return None,
    }
    Some(())
}

/// PgBouncer's SHOW commands that describe its own internals, which wharf
/// does not have, and why.
pub(super) fn not_supported(what: &str) -> Option<&'static str> {
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

/// SHOW PEERS: the `[peers]` entries but this process's own.
fn show_peers(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let config = state.config();
    let table: Vec<Vec<Option<String>>> = state
        .cancels()
        .peer_rows(&config)
        .into_iter()
        .map(|p| vec![num(p.peer_id), p.host, num(p.port), num(p.pool_size)])
        .collect();
    rows(out, columns::PEERS, &table);
}

/// SHOW PEER_POOLS: the cancel requests on their way to each peer.
fn show_peer_pools(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let config = state.config();
    let table: Vec<Vec<Option<String>>> = state
        .cancels()
        .peer_pool_rows(&config)
        .into_iter()
        .map(|p| {
            vec![
                num(p.peer_id),
                num(p.cl_active_cancel_req),
                num(p.cl_waiting_cancel_req),
                num(p.sv_active_cancel),
                num(p.sv_login),
            ]
        })
        .collect();
    rows(out, columns::PEER_POOLS, &table);
}

fn show_pools(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let table: Vec<Vec<Option<String>>> = pool_rows(state)
        .into_iter()
        .map(|p| {
            vec![
                text(p.database),
                text(p.user),
                num(p.cl_active),
                num(p.cl_waiting),
                num(p.cl_active_cancel_req),
                num(p.cl_waiting_cancel_req),
                num(p.sv_active),
                num(p.sv_active_cancel),
                num(p.sv_being_canceled),
                num(p.sv_idle),
                num(p.sv_used),
                num(p.sv_tested),
                num(p.sv_login),
                num(p.maxwait.as_secs()),
                num(p.maxwait.subsec_micros()),
                text(p.mode),
                None,
            ]
        })
        .collect();
    rows(out, columns::POOLS, &table);
}

fn show_stats(state: &Arc<PoolerState>, out: &mut BytesMut, totals: bool, averages: bool) {
    let stats = state.router().stats();
    let columns = match (totals, averages) {
        (true, true) => columns::STATS,
        (true, false) => columns::STATS_TOTALS,
        _ => columns::STATS_AVERAGES,
    };
    let table: Vec<Vec<Option<String>>> = stats
        .database_totals()
        .into_iter()
        .map(|(db, total)| {
            let mut row = vec![text(db.as_str())];
            if totals {
                row.extend(total.fields().iter().map(|(_, v)| num(v)));
            }
            if averages {
                let avg = stats.database_averages(&db);
                row.extend(avg.fields().iter().map(|(_, v)| num(v)));
            }
            row
        })
        .collect();
    rows(out, columns, &table);
}

fn show_totals(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let stats = state.router().stats();
    let names = columns::TOTALS_ROWS
        .iter()
        .map(|name| format!("total_{name}"))
        .chain(
            columns::TOTALS_ROWS
                .iter()
                .map(|name| format!("avg_{name}")),
        );
    let values = stats
        .overall_totals()
        .fields()
        .into_iter()
        .chain(stats.overall_averages().fields())
        .map(|(_, v)| v);
    let table: Vec<Vec<Option<String>>> = names
        .zip(values)
        .map(|(name, value)| vec![text(name), num(value)])
        .collect();
    rows(out, columns::TOTALS, &table);
}

/// `ptr`/`link` values: clients and servers get distinct made-up
/// addresses from their ids (there is no C struct to point at).
fn client_ptr(id: u64) -> String {
    format!("0x{:x}", 0x1000_0000_0000_u64 + id)
}

fn server_ptr(id: u64) -> String {
    format!("0x{:x}", 0x2000_0000_0000_u64 + id)
}

fn show_clients(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let table: Vec<Vec<Option<String>>> = state
        .router()
        .stats()
        .clients()
        .iter()
        .map(|c| {
            let wait = c.waiting_for().unwrap_or_default();
            let link = c.link();
            let (addr, port) = c.info.addr.host_port();
            let (local, local_port) = c
                .info
                .local_addr
                .as_ref()
                .map_or((String::new(), 0), Peer::host_port);
            vec![
                text("C"),
                text(&*c.info.user),
                text(if c.info.admin {
                    CONSOLE_DB
                } else {
                    &c.info.database
                }),
                text(c.info.replication.as_str()),
                text(c.state().as_str()),
                text(addr),
                num(port),
                text(local),
                num(local_port),
                text(format_time(c.connect_time)),
                text(format_time(c.request_time())),
                num(wait.as_secs()),
                num(wait.subsec_micros()),
                num(0),
                text(client_ptr(c.info.id)),
                text(if link == 0 {
                    String::new()
                } else {
                    server_ptr(link)
                }),
                num(c.info.remote_pid),
                text(c.info.tls.as_str()),
                text(c.application_name()),
                num(c.prepared()),
                num(c.info.id),
            ]
        })
        .collect();
    rows(out, columns::SOCKETS, &table);
}

fn show_servers(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let stats = state.router().stats();
    let used = used_servers(state);
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
                text("S"),
                text(sv.pool.user.as_str()),
                text(sv.pool.database.as_str()),
                text(sv.replication().as_str()),
                text(state),
                text(sv.addr.0.as_str()),
                num(sv.addr.1),
                text(local),
                num(local_port),
                text(format_time(sv.connect_time)),
                text(format_time(sv.request_time())),
                num(0),
                num(0),
                num(u8::from(sv.close_needed())),
                text(server_ptr(sv.id)),
                text(if link == 0 {
                    String::new()
                } else {
                    client_ptr(link)
                }),
                num(sv.remote_pid()),
                text(sv.tls()),
                text(app),
                num(sv.prepared()),
                num(sv.id),
            ]
        })
        .collect();
    rows(out, columns::SOCKETS, &table);
}

fn show_databases(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let config = state.config();
    let settings = &config.pgbouncer;
    let clients = state.router().stats().clients();
    let mut table: Vec<Vec<Option<String>>> = database_rows(state)
        .into_iter()
        .map(|d| {
            vec![
                text(d.name),
                d.host,
                num(d.port),
                text(d.dbname),
                d.force_user,
                num(d.pool_size),
                num(d.min_pool_size),
                num(d.reserve_pool_size),
                num(d.server_lifetime),
                d.pool_mode,
                d.load_balance_hosts,
                num(d.max_connections),
                num(d.current_connections),
                num(d.max_client_connections),
                num(d.current_client_connections),
                num(u8::from(d.paused)),
                num(u8::from(d.disabled)),
            ]
        })
        .collect();
    table.push(vec![
        text(CONSOLE_DB),
        None,
        num(settings.listen_port),
        text(CONSOLE_DB),
        text(CONSOLE_DB),
        num(2),
        num(0),
        num(0),
        num(0),
        text("statement"),
        None,
        num(0),
        num(0),
        num(0),
        num(clients.iter().filter(|c| c.info.admin).count()),
        num(0),
        num(0),
    ]);
    rows(out, columns::DATABASES, &table);
}

fn show_users(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let config = state.config();
    let settings = &config.pgbouncer;
    let stats = state.router().stats();
    let clients = stats.clients();
    let servers = stats.servers();
    let mut names: Vec<String> = config.users.iter().map(|u| u.name.clone()).collect();
    names.extend(state.secrets().keys().cloned());
    names.extend(clients.iter().map(|c| c.info.user.to_string()));
    names.extend(servers.iter().map(|s| s.pool.user.clone()));
    names.sort();
    names.dedup();
    let table: Vec<Vec<Option<String>>> = names
        .into_iter()
        .map(|name| {
            let user = config.user(&name);
            vec![
                text(name.as_str()),
                user.and_then(|u| u.pool_size).map(|v| v.to_string()),
                user.and_then(|u| u.reserve_pool_size)
                    .map(|v| v.to_string()),
                user.and_then(|u| u.pool_mode)
                    .map(|m| m.as_str().to_owned()),
                num(user
                    .and_then(|u| u.max_user_connections)
                    .filter(|&n| n > 0)
                    .unwrap_or(settings.max_user_connections)),
                num(servers.iter().filter(|s| s.pool.user == name).count()),
                num(user
                    .and_then(|u| u.max_user_client_connections)
                    .filter(|&n| n > 0)
                    .unwrap_or(settings.max_user_client_connections)),
                num(clients.iter().filter(|c| *c.info.user == *name).count()),
            ]
        })
        .collect();
    rows(out, columns::USERS, &table);
}

fn show_config(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let table: Vec<Vec<Option<String>>> = state
        .config()
        .describe()
        .into_iter()
        .map(|row| {
            vec![
                text(row.key),
                text(row.value),
                text(row.default),
                text(if row.changeable { "yes" } else { "no" }),
            ]
        })
        .collect();
    rows(out, columns::CONFIG, &table);
}

fn show_lists(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let list = lists(state);
    let table: Vec<Vec<Option<String>>> = list
        .iter()
        .map(|(name, items)| vec![text(*name), num(items)])
        .collect();
    rows(out, columns::LISTS, &table);
}

/// `SHOW HOSTS` (wharf's own): each pool's hosts and what is known of
/// them: up or backing off after failures, the role last seen, and whether
/// a standby was over `max_replica_lag`.
fn show_hosts(state: &Arc<PoolerState>, out: &mut BytesMut) {
    let mut table = Vec::new();
    for pool in state.router().pools() {
        for status in pool.hosts() {
            let (host, port) = status.addr.host_port();
            table.push(vec![
                text(pool.database()),
                text(pool.user()),
                text(host),
                num(port),
                text(if status.up { "up" } else { "backing_off" }),
                num(status.failures),
                text(match status.role {
                    Some(Role::Primary) => "primary",
                    Some(Role::Standby) => "standby",
                    None => "",
                }),
                num(u8::from(status.lagging)),
            ]);
        }
    }
    rows(out, columns::HOSTS, &table);
}

//! Every `SHOW`'s columns, names and types, in one table: PgBouncer 1.25's
//! (`doc/usage.md`, and its admin console for the types, which the docs do
//! not give). PgBouncer sends every column as `text`, `int4`, `int8` or
//! `numeric` (timestamps as text, statistics as numeric), and drivers pick
//! their parsers by these types, so they are part of the contract.

use crate::proto::messages::Oid;

/// A column: its name and type.
pub(super) type Column = (&'static str, Oid);

const fn text(name: &'static str) -> Column {
    (name, Oid::Text)
}

const fn int4(name: &'static str) -> Column {
    (name, Oid::Int4)
}

const fn int8(name: &'static str) -> Column {
    (name, Oid::Int8)
}

const fn numeric(name: &'static str) -> Column {
    (name, Oid::Numeric)
}

/// `SHOW POOLS`.
pub(super) const POOLS: &[Column] = &[
    text("database"),
    text("user"),
    int4("cl_active"),
    int4("cl_waiting"),
    int4("cl_active_cancel_req"),
    int4("cl_waiting_cancel_req"),
    int4("sv_active"),
    int4("sv_active_cancel"),
    int4("sv_being_canceled"),
    int4("sv_idle"),
    int4("sv_used"),
    int4("sv_tested"),
    int4("sv_login"),
    int4("maxwait"),
    int4("maxwait_us"),
    text("pool_mode"),
    text("load_balance_hosts"),
];

/// `SHOW STATS`: per database, the totals then the averages, in the order
/// of [`Totals::fields`](crate::stats::Totals::fields). The last pair
/// (`client_login_count`) is wharf's: PgBouncer 1.25 has no such column.
pub(super) const STATS: &[Column] = &[
    text("database"),
    numeric("total_server_assignment_count"),
    numeric("total_xact_count"),
    numeric("total_query_count"),
    numeric("total_received"),
    numeric("total_sent"),
    numeric("total_xact_time"),
    numeric("total_query_time"),
    numeric("total_wait_time"),
    numeric("total_client_parse_count"),
    numeric("total_server_parse_count"),
    numeric("total_bind_count"),
    numeric("total_client_login_count"),
    numeric("avg_server_assignment_count"),
    numeric("avg_xact_count"),
    numeric("avg_query_count"),
    numeric("avg_recv"),
    numeric("avg_sent"),
    numeric("avg_xact_time"),
    numeric("avg_query_time"),
    numeric("avg_wait_time"),
    numeric("avg_client_parse_count"),
    numeric("avg_server_parse_count"),
    numeric("avg_bind_count"),
    numeric("avg_client_login_count"),
];

/// `SHOW STATS_TOTALS`: the totals of `SHOW STATS` without their `total_`
/// prefix, and the byte counts named `bytes_received`/`bytes_sent`, as
/// PgBouncer names them.
pub(super) const STATS_TOTALS: &[Column] = &[
    text("database"),
    numeric("server_assignment_count"),
    numeric("xact_count"),
    numeric("query_count"),
    numeric("bytes_received"),
    numeric("bytes_sent"),
    numeric("xact_time"),
    numeric("query_time"),
    numeric("wait_time"),
    numeric("client_parse_count"),
    numeric("server_parse_count"),
    numeric("bind_count"),
    numeric("client_login_count"),
];

/// `SHOW STATS_AVERAGES`: the averages of `SHOW STATS` without their
/// `avg_` prefix, except the three prepared-statement ones, which keep it
/// in PgBouncer.
pub(super) const STATS_AVERAGES: &[Column] = &[
    text("database"),
    numeric("server_assignment_count"),
    numeric("xact_count"),
    numeric("query_count"),
    numeric("bytes_received"),
    numeric("bytes_sent"),
    numeric("xact_time"),
    numeric("query_time"),
    numeric("wait_time"),
    numeric("avg_client_parse_count"),
    numeric("avg_server_parse_count"),
    numeric("avg_bind_count"),
    numeric("client_login_count"),
];

/// `SHOW TOTALS`: one row per figure.
pub(super) const TOTALS: &[Column] = &[text("name"), numeric("value")];

/// The row names of `SHOW TOTALS`, in the order of
/// [`Totals::fields`](crate::stats::Totals::fields): PgBouncer names them
/// after its counters (`total_client_bytes`, `avg_ps_bind_count`), not
/// after `SHOW STATS`'s columns.
pub(super) const TOTALS_ROWS: [&str; 12] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "client_bytes",
    "server_bytes",
    "xact_time",
    "query_time",
    "wait_time",
    "ps_client_parse_count",
    "ps_server_parse_count",
    "ps_bind_count",
    "client_login_count",
];

/// `SHOW CLIENTS` and `SHOW SERVERS`.
pub(super) const SOCKETS: &[Column] = &[
    text("type"),
    text("user"),
    text("database"),
    text("replication"),
    text("state"),
    text("addr"),
    int4("port"),
    text("local_addr"),
    int4("local_port"),
    // Text, as PgBouncer sends them: a timestamp type with PgBouncer's
    // `2024-05-01 10:20:30 UTC` format breaks drivers that parse it.
    text("connect_time"),
    text("request_time"),
    int4("wait"),
    int4("wait_us"),
    int4("close_needed"),
    text("ptr"),
    text("link"),
    int4("remote_pid"),
    text("tls"),
    text("application_name"),
    int4("prepared_statements"),
    int4("id"),
];

/// `SHOW DATABASES`.
pub(super) const DATABASES: &[Column] = &[
    text("name"),
    text("host"),
    int4("port"),
    text("database"),
    text("force_user"),
    int4("pool_size"),
    int4("min_pool_size"),
    int4("reserve_pool_size"),
    int4("server_lifetime"),
    text("pool_mode"),
    text("load_balance_hosts"),
    int4("max_connections"),
    int4("current_connections"),
    int4("max_client_connections"),
    int4("current_client_connections"),
    int4("paused"),
    int4("disabled"),
];

/// `SHOW USERS` (`pool_size` and `reserve_pool_size` are text in
/// PgBouncer).
pub(super) const USERS: &[Column] = &[
    text("name"),
    text("pool_size"),
    text("reserve_pool_size"),
    text("pool_mode"),
    int4("max_user_connections"),
    int4("current_connections"),
    int4("max_user_client_connections"),
    int4("current_client_connections"),
];

/// `SHOW CONFIG`.
pub(super) const CONFIG: &[Column] = &[
    text("key"),
    text("value"),
    text("default"),
    text("changeable"),
];

/// `SHOW LISTS`.
pub(super) const LISTS: &[Column] = &[text("list"), int4("items")];

/// `SHOW VERSION`.
pub(super) const VERSION: &[Column] = &[text("version")];

/// `SHOW STATE`.
pub(super) const STATE: &[Column] = &[text("key"), text("value")];

/// `SHOW PEERS`.
pub(super) const PEERS: &[Column] = &[
    int4("peer_id"),
    text("host"),
    int4("port"),
    int4("pool_size"),
];

/// `SHOW PEER_POOLS`.
pub(super) const PEER_POOLS: &[Column] = &[
    int4("peer_id"),
    int4("cl_active_cancel_req"),
    int4("cl_waiting_cancel_req"),
    int4("sv_active_cancel"),
    int4("sv_login"),
];

/// `SHOW DNS_HOSTS`.
pub(super) const DNS_HOSTS: &[Column] = &[text("hostname"), int8("ttl"), text("addrs")];

/// `SHOW DNS_ZONES`.
pub(super) const DNS_ZONES: &[Column] = &[text("zonename"), int8("serial"), int4("count")];

/// `SHOW HOSTS` (wharf's own): each pool's hosts.
pub(super) const HOSTS: &[Column] = &[
    text("database"),
    text("user"),
    text("host"),
    int4("port"),
    text("state"),
    int4("failures"),
    text("role"),
    int4("lagging"),
];

//! What PgBouncer 1.25 answers to each `SHOW`, column by column: names
//! from its `doc/usage.md` and types (OIDs) from its admin console, which
//! the docs leave out. The tests hold the pooler to this table through
//! tokio-postgres, psql and psycopg 3.

/// `text`
pub const TEXT: u32 = 25;
/// `int4`
pub const INT4: u32 = 23;
/// `int8`
pub const INT8: u32 = 20;
/// `numeric`
pub const NUMERIC: u32 = 1700;

const STAT_NAMES: [&str; 12] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
    // wharf's own (PgBouncer 1.25 has no such column).
    "client_login_count",
];

/// Every SHOW the console answers with a result set.
pub const SHOWS: &[&str] = &[
    "POOLS",
    "STATS",
    "STATS_TOTALS",
    "STATS_AVERAGES",
    "TOTALS",
    "CLIENTS",
    "SERVERS",
    "DATABASES",
    "USERS",
    "CONFIG",
    "LISTS",
    "VERSION",
    "STATE",
    "PEERS",
    "PEER_POOLS",
    "DNS_HOSTS",
    "DNS_ZONES",
];

fn all(oid: u32, names: &[&str]) -> Vec<(String, u32)> {
    names.iter().map(|n| ((*n).to_owned(), oid)).collect()
}

fn database() -> Vec<(String, u32)> {
    all(TEXT, &["database"])
}

/// `SHOW STATS_TOTALS`'s and `SHOW STATS_AVERAGES`'s names for a figure:
/// no prefix, the bytes as `bytes_received`/`bytes_sent`, and (averages
/// only) `avg_` kept on the prepared-statement counts.
fn unprefixed(name: &str, averages: bool) -> String {
    match name {
        "received" | "sent" => format!("bytes_{name}"),
        "client_parse_count" | "server_parse_count" | "bind_count" if averages => {
            format!("avg_{name}")
        }
        other => other.to_owned(),
    }
}

/// The columns of `SHOW command`: (name, type OID).
pub fn columns(command: &str) -> Vec<(String, u32)> {
    let totals = STAT_NAMES.iter().map(|n| (format!("total_{n}"), NUMERIC));
    let averages = STAT_NAMES.iter().map(|n| {
        let n = if *n == "received" { "recv" } else { n };
        (format!("avg_{n}"), NUMERIC)
    });
    match command {
        "POOLS" => [
            all(TEXT, &["database", "user"]),
            all(
                INT4,
                &[
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
                ],
            ),
            all(TEXT, &["pool_mode", "load_balance_hosts"]),
        ]
        .concat(),
        "STATS" => database()
            .into_iter()
            .chain(totals)
            .chain(averages)
            .collect(),
        "STATS_TOTALS" | "STATS_AVERAGES" => {
            let averages = command == "STATS_AVERAGES";
            let figures = STAT_NAMES
                .iter()
                .map(|n| (unprefixed(n, averages), NUMERIC));
            database().into_iter().chain(figures).collect()
        }
        "TOTALS" => vec![("name".into(), TEXT), ("value".into(), NUMERIC)],
        "CLIENTS" | "SERVERS" => [
            all(
                TEXT,
                &["type", "user", "database", "replication", "state", "addr"],
            ),
            all(INT4, &["port"]),
            all(TEXT, &["local_addr"]),
            all(INT4, &["local_port"]),
            all(TEXT, &["connect_time", "request_time"]),
            all(INT4, &["wait", "wait_us", "close_needed"]),
            all(TEXT, &["ptr", "link"]),
            all(INT4, &["remote_pid"]),
            all(TEXT, &["tls", "application_name"]),
            all(INT4, &["prepared_statements", "id"]),
        ]
        .concat(),
        "DATABASES" => [
            all(TEXT, &["name", "host"]),
            all(INT4, &["port"]),
            all(TEXT, &["database", "force_user"]),
            all(
                INT4,
                &[
                    "pool_size",
                    "min_pool_size",
                    "reserve_pool_size",
                    "server_lifetime",
                ],
            ),
            all(TEXT, &["pool_mode", "load_balance_hosts"]),
            all(
                INT4,
                &[
                    "max_connections",
                    "current_connections",
                    "max_client_connections",
                    "current_client_connections",
                    "paused",
                    "disabled",
                ],
            ),
        ]
        .concat(),
        "USERS" => [
            all(
                TEXT,
                &["name", "pool_size", "reserve_pool_size", "pool_mode"],
            ),
            all(
                INT4,
                &[
                    "max_user_connections",
                    "current_connections",
                    "max_user_client_connections",
                    "current_client_connections",
                ],
            ),
        ]
        .concat(),
        "CONFIG" => all(TEXT, &["key", "value", "default", "changeable"]),
        "LISTS" => [all(TEXT, &["list"]), all(INT4, &["items"])].concat(),
        "VERSION" => all(TEXT, &["version"]),
        "STATE" => all(TEXT, &["key", "value"]),
        "PEERS" => [
            all(INT4, &["peer_id"]),
            all(TEXT, &["host"]),
            all(INT4, &["port", "pool_size"]),
        ]
        .concat(),
        "PEER_POOLS" => all(
            INT4,
            &[
                "peer_id",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active_cancel",
                "sv_login",
            ],
        ),
        "DNS_HOSTS" => [
            all(TEXT, &["hostname"]),
            all(INT8, &["ttl"]),
            all(TEXT, &["addrs"]),
        ]
        .concat(),
        "DNS_ZONES" => [
            all(TEXT, &["zonename"]),
            all(INT8, &["serial"]),
            all(INT4, &["count"]),
        ]
        .concat(),
        other => panic!("no column list for {other}"),
    }
}

/// The column names of `SHOW command`.
pub fn names(command: &str) -> Vec<String> {
    columns(command).into_iter().map(|(n, _)| n).collect()
}

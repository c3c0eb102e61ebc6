//! `GET /metrics`: the Prometheus text format.
//!
//! What PgBouncer's console reports is exported under the names and labels
//! of the prometheus-community `pgbouncer_exporter` (`pgbouncer_pools_*`
//! from `SHOW POOLS`, `pgbouncer_stats_*` from `SHOW STATS`,
//! `pgbouncer_databases_*` from `SHOW DATABASES`, the `SHOW LISTS` counts
//! and two `SHOW CONFIG` limits), computed by the same code as the console,
//! so Grafana dashboards made for PgBouncer work unchanged. What PgBouncer
//! cannot tell is prefixed `wharf_`: latency histograms per pool, the
//! engine's own families (`wharf_pool_*`, pools named `database/user`),
//! utilization, backend reachability, long transactions, the Tokio
//! runtime's load and the uptime.

use std::fmt::{Display, Write as _};
use std::time::Duration;

use wharf::{Histogram, PROMETHEUS_BOUNDS_SECS};

use crate::state::PoolerState;
use crate::views;

/// Clients holding a server longer than this are reported as long (or
/// idle-in-) transactions.
pub const LONG_TRANSACTION: Duration = Duration::from_secs(10);

/// A Prometheus text document being written.
struct Doc(String);

impl Doc {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"");
                escape_into(&mut self.0, value);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one series per row.
    fn gauge_rows<R>(
        &mut self,
        name: &str,
        help: &str,
        rows: &[R],
        labels: impl Fn(&R) -> Vec<(&'static str, String)>,
        value: impl Fn(&R) -> f64,
    ) {
        self.family(name, "gauge", help);
        for row in rows {
            let labels = labels(row);
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.sample(name, &labels, value(row));
        }
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in PROMETHEUS_BOUNDS_SECS
            .iter()
            .zip(h.cumulative(PROMETHEUS_BOUNDS_SECS))
        {
            let le = bound.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, count);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, h.count());
        self.sample(&format!("{name}_sum"), labels, h.sum().as_secs_f64());
        self.sample(&format!("{name}_count"), labels, h.count());
    }
}

fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// The `SHOW POOLS` gauges: (pgbouncer_exporter name suffix, help, value).
type PoolGauge = (&'static str, &'static str, fn(&views::PoolRow) -> f64);

const POOL_GAUGES: &[PoolGauge] = &[
    ("client_active_connections", "Client connections linked to a server connection and able to process queries (cl_active).", |p| p.cl_active as f64),
    ("client_waiting_connections", "Client connections waiting on a server connection (cl_waiting).", |p| p.cl_waiting as f64),
    ("client_active_cancel_connections", "Client connections that have forwarded query cancellations to the server and wait for its answer (cl_active_cancel_req).", |p| p.cl_active_cancel_req as f64),
    ("client_waiting_cancel_connections", "Client connections that have not forwarded query cancellations to the server yet (cl_waiting_cancel_req).", |p| p.cl_waiting_cancel_req as f64),
    ("server_active_connections", "Server connections linked to a client connection (sv_active).", |p| p.sv_active as f64),
    ("server_active_cancel_connections", "Server connections forwarding a cancel request (sv_active_cancel).", |p| p.sv_active_cancel as f64),
    ("server_being_canceled_connections", "Server connections waiting for in-flight cancel requests to complete (sv_being_canceled).", |p| p.sv_being_canceled as f64),
    ("server_idle_connections", "Server connections idle and ready for a client query (sv_idle).", |p| p.sv_idle as f64),
    ("server_used_connections", "Server connections idle more than server_check_delay, needing server_check_query (sv_used).", |p| p.sv_used as f64),
    ("server_testing_connections", "Server connections running server_reset_query or server_check_query (sv_tested).", |p| p.sv_tested as f64),
    ("server_login_connections", "Server connections logging in (sv_login).", |p| p.sv_login as f64),
    ("client_maxwait_seconds", "Age of the oldest unserved client connection (maxwait).", |p| p.maxwait.as_secs_f64()),
];

/// The `SHOW STATS` totals: (pgbouncer_exporter name, help, value).
type StatsCounter = (&'static str, &'static str, fn(&crate::stats::Totals) -> f64);

const STATS_COUNTERS: &[StatsCounter] = &[
    ("pgbouncer_stats_queries_pooled_total", "Total number of SQL queries pooled (total_query_count).", |t| t.query_count as f64),
    ("pgbouncer_stats_queries_duration_seconds_total", "Total number of seconds spent by the pooler when actively connected to PostgreSQL, executing queries (total_query_time).", |t| secs(t.query_time)),
    ("pgbouncer_stats_received_bytes_total", "Total volume in bytes of network traffic received by the pooler (total_received).", |t| t.received as f64),
    ("pgbouncer_stats_sent_bytes_total", "Total volume in bytes of network traffic sent by the pooler (total_sent).", |t| t.sent as f64),
    ("pgbouncer_stats_client_wait_seconds_total", "Time spent by clients waiting for a server in seconds (total_wait_time).", |t| secs(t.wait_time)),
    ("pgbouncer_stats_sql_transactions_pooled_total", "Total number of SQL transactions pooled (total_xact_count).", |t| t.xact_count as f64),
    ("pgbouncer_stats_server_in_transaction_seconds_total", "Total number of seconds spent by the pooler when connected to PostgreSQL in a transaction, either idle in transaction or executing queries (total_xact_time).", |t| secs(t.xact_time)),
    ("pgbouncer_stats_client_parses_total", "Total number of prepared statement Parse messages received from clients (total_client_parse_count).", |t| t.client_parse_count as f64),
    ("pgbouncer_stats_server_parses_total", "Total number of prepared statement Parse messages sent to PostgreSQL (total_server_parse_count).", |t| t.server_parse_count as f64),
    ("pgbouncer_stats_binds_total", "Total number of prepared statements readied for execution with a Bind message (total_bind_count).", |t| t.bind_count as f64),
];

/// The `SHOW DATABASES` gauges.
type DatabaseGauge = (&'static str, &'static str, fn(&views::DatabaseRow) -> f64);

const DATABASE_GAUGES: &[DatabaseGauge] = &[
    (
        "pgbouncer_databases_pool_size",
        "Maximum number of server connections.",
        |d| d.pool_size as f64,
    ),
    (
        "pgbouncer_databases_reserve_pool",
        "Maximum number of additional connections for this database.",
        |d| d.reserve_pool_size as f64,
    ),
    (
        "pgbouncer_databases_max_connections",
        "Maximum number of allowed connections for this database.",
        |d| d.max_connections as f64,
    ),
    (
        "pgbouncer_databases_current_connections",
        "Current number of connections for this database.",
        |d| d.current_connections as f64,
    ),
    (
        "pgbouncer_databases_paused",
        "1 if this database is currently paused, else 0.",
        |d| f64::from(u8::from(d.paused)),
    ),
    (
        "pgbouncer_databases_disabled",
        "1 if this database is currently disabled, else 0.",
        |d| f64::from(u8::from(d.disabled)),
    ),
];

/// The `SHOW LISTS` counts the exporter reports: (list, metric, help).
const LISTS: &[(&str, &str, &str)] = &[
    ("databases", "pgbouncer_databases", "Count of databases."),
    ("users", "pgbouncer_users", "Count of users."),
    ("pools", "pgbouncer_pools", "Count of pools."),
    (
        "free_clients",
        "pgbouncer_free_clients",
        "Count of free clients.",
    ),
    (
        "used_clients",
        "pgbouncer_used_clients",
        "Count of used clients.",
    ),
    (
        "login_clients",
        "pgbouncer_login_clients",
        "Count of clients in login state.",
    ),
    (
        "free_servers",
        "pgbouncer_free_servers",
        "Count of free servers.",
    ),
    (
        "used_servers",
        "pgbouncer_used_servers",
        "Count of used servers.",
    ),
    (
        "dns_names",
        "pgbouncer_cached_dns_names",
        "Count of DNS names in the cache.",
    ),
    (
        "dns_zones",
        "pgbouncer_cached_dns_zones",
        "Count of DNS zones in the cache.",
    ),
    (
        "dns_queries",
        "pgbouncer_in_flight_dns_queries",
        "Count of in-flight DNS queries.",
    ),
];

/// Clients of each pool holding a server longer than `threshold` in a
/// transaction- or statement-mode pool, where holding one that long means
/// a long or idle-in-transaction client (in session mode it is the norm).
pub fn long_transactions(
    state: &PoolerState,
    threshold: Duration,
) -> Vec<((String, String), usize)> {
    let session: Vec<(String, String)> = state
        .router()
        .pools()
        .iter()
        .filter(|p| p.mode() == crate::config::PoolMode::Session)
        .map(|p| (p.database().to_owned(), p.user().to_owned()))
        .collect();
    let mut out: Vec<((String, String), usize)> = Vec::new();
    for client in state.router().stats().clients() {
        if client.info.admin || client.state() != crate::stats::ClientState::Active {
            continue;
        }
        let key = (
            client.info.database.to_string(),
            client.info.pool_user.to_string(),
        );
        if session.contains(&key) || client.since_request() <= threshold {
            continue;
        }
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => out.push((key, 1)),
        }
    }
    out
}

/// Renders every family.
pub fn render(state: &PoolerState) -> String {
    let mut doc = Doc(String::with_capacity(32 * 1024));
    let config = state.config();
    let settings = &config.pgbouncer;

    doc.family("pgbouncer_up", "gauge", "The pgbouncer scrape succeeded.");
    doc.sample("pgbouncer_up", &[], 1);
    doc.family(
        "pgbouncer_version_info",
        "gauge",
        "The pgbouncer version info.",
    );
    doc.sample(
        "pgbouncer_version_info",
        &[("version", views::PGBOUNCER_VERSION)],
        1,
    );

    let pools = views::pool_rows(state);
    for (suffix, help, get) in POOL_GAUGES {
        doc.gauge_rows(
            &format!("pgbouncer_pools_{suffix}"),
            help,
            &pools,
            |p| vec![("database", p.database.clone()), ("user", p.user.clone())],
            get,
        );
    }

    let totals = state.router().stats().database_totals();
    for (name, help, get) in STATS_COUNTERS {
        doc.family(name, "counter", help);
        for (database, t) in &totals {
            doc.sample(name, &[("database", database)], get(t));
        }
    }

    let databases = views::database_rows(state);
    for (name, help, get) in DATABASE_GAUGES {
        doc.gauge_rows(
            name,
            help,
            &databases,
            |d| {
                vec![
                    ("name", d.name.clone()),
                    ("host", d.host.clone().unwrap_or_default()),
                    ("port", d.port.to_string()),
                    ("database", d.dbname.clone()),
                    ("force_user", d.force_user.clone().unwrap_or_default()),
                    ("pool_mode", d.pool_mode.clone().unwrap_or_default()),
                ]
            },
            get,
        );
    }

    let lists = views::lists(state);
    for (list, name, help) in LISTS {
        if let Some((_, n)) = lists.iter().find(|(l, _)| l == list) {
            doc.family(name, "gauge", help);
            doc.sample(name, &[], n);
        }
    }
    for (name, help, value) in [
        (
            "pgbouncer_config_max_client_connections",
            "Config maximum number of client connections.",
            settings.max_client_conn,
        ),
        (
            "pgbouncer_config_max_user_connections",
            "Config maximum number of server connections per user.",
            settings.max_user_connections,
        ),
    ] {
        doc.family(name, "gauge", help);
        doc.sample(name, &[], value);
    }

    render_wharf(&mut doc, state);
    doc.0
}

/// wharf's own families.
fn render_wharf(doc: &mut Doc, state: &PoolerState) {
    doc.family(
        "wharf_pooler_uptime_seconds",
        "gauge",
        "Seconds since the pooler started.",
    );
    doc.sample(
        "wharf_pooler_uptime_seconds",
        &[],
        state.router().stats().uptime().as_secs_f64(),
    );
    doc.family("wharf_pooler_info", "gauge", "The wharf version.");
    doc.sample(
        "wharf_pooler_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    render_tls(doc, state);
    render_hosts(doc, state);
    render_latencies(doc, state);
    let engine = render_pool_health(doc, state);
    render_runtime(doc);
    wharf::render_prometheus(&engine, &mut doc.0);
}

/// Open connections by side and encryption.
fn render_tls(doc: &mut Doc, state: &PoolerState) {
    let stats = state.router().stats();
    let clients = stats.clients();
    let servers = stats.servers();
    let tls_clients = clients.iter().filter(|c| !c.info.tls.is_empty()).count();
    let tls_servers = servers.iter().filter(|s| !s.tls().is_empty()).count();
    doc.family(
        "wharf_pooler_connections",
        "gauge",
        "Open client and server connections, by whether they are TLS.",
    );
    for (side, tls, count) in [
        ("client", "true", tls_clients),
        ("client", "false", clients.len() - tls_clients),
        ("server", "true", tls_servers),
        ("server", "false", servers.len() - tls_servers),
    ] {
        doc.sample(
            "wharf_pooler_connections",
            &[("side", side), ("tls", tls)],
            count,
        );
    }
}

/// Each pool's hosts: up or backing off, role, lag.
fn render_hosts(doc: &mut Doc, state: &PoolerState) {
    let families = [
        (
            "wharf_pooler_host_up",
            "1 while a host takes connections, 0 while it backs off after failures.",
        ),
        (
            "wharf_pooler_host_standby",
            "1 if the host was last seen in recovery, 0 if a primary (pools that check roles).",
        ),
        (
            "wharf_pooler_host_lagging",
            "1 if the standby was over max_replica_lag when last seen.",
        ),
    ];
    let pools = state.router().pools();
    for (name, help) in families {
        doc.family(name, "gauge", help);
        for pool in &pools {
            for host in pool.hosts() {
                let (addr, port) = host.addr.host_port();
                let addr = format!("{addr}:{port}");
                let labels = [
                    ("database", pool.database()),
                    ("user", pool.user()),
                    ("host", addr.as_str()),
                ];
                let value = match name {
                    "wharf_pooler_host_up" => u8::from(host.up),
                    "wharf_pooler_host_lagging" => u8::from(host.lagging),
                    _ => match host.role {
                        Some(crate::server::Role::Standby) => 1,
                        Some(crate::server::Role::Primary) => 0,
                        None => continue,
                    },
                };
                doc.sample(name, &labels, value);
            }
        }
    }
}

/// Per-pool latency histograms: client wait, transaction and query time.
fn render_latencies(doc: &mut Doc, state: &PoolerState) {
    let pool_stats = state.router().stats().pools();
    type Pick = fn(&crate::stats::PoolStats) -> &wharf::AtomicHistogram;
    let histograms: [(&str, &str, Pick); 3] = [
        (
            "wharf_pooler_client_wait_seconds",
            "Time clients waited for a server, per assignment.",
            |p| &p.wait_time,
        ),
        (
            "wharf_pooler_transaction_seconds",
            "Time transactions took, from their first query to their end.",
            |p| &p.xact_time,
        ),
        (
            "wharf_pooler_query_seconds",
            "Time queries took, from the client's message to ReadyForQuery.",
            |p| &p.query_time,
        ),
    ];
    for (name, help, pick) in histograms {
        doc.family(name, "histogram", help);
        for p in &pool_stats {
            let h = pick(p);
            doc.histogram(
                name,
                &[("database", &p.database), ("user", &p.user)],
                &h.snapshot(),
            );
        }
    }
}

/// Per-pool utilization, reachability and long transactions; returns the
/// engine's metrics of every pool, rendered last.
fn render_pool_health(doc: &mut Doc, state: &PoolerState) -> Vec<wharf::Metrics> {
    let server_pools = state.router().pools();
    let engine: Vec<wharf::Metrics> = server_pools.iter().map(|p| p.metrics()).collect();
    let labels = |p: &crate::pool::ServerPool| {
        [
            ("database", p.database().to_owned()),
            ("user", p.user().to_owned()),
        ]
    };
    doc.family(
        "wharf_pooler_pool_utilization_ratio",
        "gauge",
        "Server connections in use over the pool's maximum size.",
    );
    for (p, m) in server_pools.iter().zip(&engine) {
        let [db, user] = labels(p);
        let ratio = utilization(&m.status);
        doc.sample(
            "wharf_pooler_pool_utilization_ratio",
            &[(db.0, &db.1), (user.0, &user.1)],
            ratio,
        );
    }
    doc.family(
        "wharf_pooler_backend_up",
        "gauge",
        "1 while connecting to the pool's server works (no connect failed since the last success), else 0.",
    );
    doc.family(
        "wharf_pooler_connect_failures",
        "gauge",
        "Server connects that failed in a row since the last one that succeeded.",
    );
    for p in &server_pools {
        let [db, user] = labels(p);
        let (failures, _) = p.connect_failures();
        let l = [(db.0, db.1.as_str()), (user.0, user.1.as_str())];
        doc.sample("wharf_pooler_backend_up", &l, u8::from(failures == 0));
        doc.sample("wharf_pooler_connect_failures", &l, failures);
    }
    doc.family(
        "wharf_pooler_routed_transactions_total",
        "counter",
        "Transactions read/write routing sent to the reads pool (to=\"reads\") or the primary (to=\"primary\"); pools that route only.",
    );
    for p in &server_pools {
        let stats = p.stats();
        let (reads, writes) = (
            stats
                .routed_reads
                .load(std::sync::atomic::Ordering::Relaxed),
            stats
                .routed_writes
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if !p.routes_reads() && reads + writes == 0 {
            continue;
        }
        for (to, n) in [("reads", reads), ("primary", writes)] {
            let l = [("database", p.database()), ("user", p.user()), ("to", to)];
            doc.sample("wharf_pooler_routed_transactions_total", &l, n);
        }
    }
    doc.family(
        "wharf_pooler_long_transaction_clients",
        "gauge",
        "Clients holding a server for more than 10 s in a transaction- or statement-mode pool (long or idle-in-transaction).",
    );
    let long = long_transactions(state, LONG_TRANSACTION);
    for p in &server_pools {
        let n = long
            .iter()
            .find(|((d, u), _)| *d == p.database() && *u == p.user())
            .map_or(0, |(_, n)| *n);
        doc.sample(
            "wharf_pooler_long_transaction_clients",
            &[("database", p.database()), ("user", p.user())],
            n,
        );
    }
    engine
}

/// The Tokio runtime's load, per worker thread.
fn render_runtime(doc: &mut Doc) {
    let runtime = tokio::runtime::Handle::current().metrics();
    doc.family(
        "wharf_runtime_workers",
        "gauge",
        "Worker threads of the Tokio runtime.",
    );
    doc.sample("wharf_runtime_workers", &[], runtime.num_workers());
    doc.family(
        "wharf_runtime_alive_tasks",
        "gauge",
        "Tasks alive in the Tokio runtime (about one per client).",
    );
    doc.sample("wharf_runtime_alive_tasks", &[], runtime.num_alive_tasks());
    doc.family(
        "wharf_runtime_global_queue_depth",
        "gauge",
        "Tasks waiting in the runtime's global queue.",
    );
    doc.sample(
        "wharf_runtime_global_queue_depth",
        &[],
        runtime.global_queue_depth(),
    );
    doc.family(
        "wharf_runtime_worker_busy_seconds_total",
        "counter",
        "Time each worker thread spent running tasks (its load).",
    );
    for worker in 0..runtime.num_workers() {
        let id = worker.to_string();
        doc.sample(
            "wharf_runtime_worker_busy_seconds_total",
            &[("worker", &id)],
            runtime.worker_total_busy_duration(worker).as_secs_f64(),
        );
    }
}

/// In use over the maximum size, 0 for a pool of size 0.
pub fn utilization(status: &wharf::Status) -> f64 {
    if status.max_size == 0 {
        0.0
    } else {
        status.in_use as f64 / status.max_size as f64
    }
}

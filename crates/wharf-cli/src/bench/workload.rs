//! What each benchmark request runs: a point select, a TPC-B-like
//! transaction, a `pg_sleep`, or the user's SQL.
//!
//! Every statement goes out over the simple query protocol. That costs one
//! round trip per statement, as `pgbench -M simple` does, and works through
//! any pooler in transaction mode, where named prepared statements would
//! not survive from one transaction to the next.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::Client;

use super::BenchError;

/// Rows in `wharf_bench_accounts`: small enough to create in a moment and
/// to stay in shared buffers, so the select workload measures connection
/// handling rather than I/O.
pub const ACCOUNTS: u32 = 10_000;
/// Tellers of the single branch (as `pgbench` at scale 1).
pub const TELLERS: u32 = 10;

/// The statements each request runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// A read-only point select on `wharf_bench_accounts`.
    Select,
    /// A TPC-B-like read/write transaction on the `wharf_bench_*` tables.
    Tpcb,
    /// `SELECT pg_sleep(secs)`: a slow query that holds its connection.
    Sleep(f64),
    /// The user's SQL, sent as one simple query (it may hold several
    /// statements).
    Sql(String),
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "select" => Ok(Workload::Select),
            "tpcb" => Ok(Workload::Tpcb),
            _ => match s.strip_prefix("sleep:") {
                Some(secs) => match secs.parse::<f64>() {
                    Ok(secs) if (0.0..=3600.0).contains(&secs) => Ok(Workload::Sleep(secs)),
                    _ => Err(format!(
                        "invalid sleep time {secs:?}: expected seconds between 0 and 3600, \
                         as in sleep:0.05"
                    )),
                },
                None => Err(format!(
                    "unknown workload {s:?}: expected select, tpcb or sleep:<secs> \
                     (or custom SQL with --sql)"
                )),
            },
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Select => f.write_str("select"),
            Workload::Tpcb => f.write_str("tpcb"),
            Workload::Sleep(secs) => write!(f, "sleep:{secs}"),
            Workload::Sql(_) => f.write_str("sql"),
        }
    }
}

impl Workload {
    /// One line on what a request does, for the report.
    pub fn describe(&self) -> String {
        match self {
            Workload::Select => {
                format!("point select by primary key on wharf_bench_accounts ({ACCOUNTS} rows)")
            }
            Workload::Tpcb => "TPC-B-like transaction (3 updates, 1 select, 1 insert)".to_owned(),
            Workload::Sleep(secs) => format!("SELECT pg_sleep({secs})"),
            Workload::Sql(sql) => {
                let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
                if one_line.chars().count() > 60 {
                    let cut: String = one_line.chars().take(57).collect();
                    format!("custom SQL: {cut}...")
                } else {
                    format!("custom SQL: {one_line}")
                }
            }
        }
    }

    /// Creates and fills the tables the workload reads, if missing.
    ///
    /// Runs once, on one connection, before any strategy; a table that is
    /// already there with its rows is left alone so that repeated runs do
    /// not pay for it.
    pub async fn setup(&self, client: &Client) -> Result<(), BenchError> {
        if !matches!(self, Workload::Select | Workload::Tpcb) {
            return Ok(());
        }
        let setup = |e: tokio_postgres::Error| BenchError::Setup(super::describe_pg_error(&e));
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS wharf_bench_accounts (\
                   aid integer PRIMARY KEY, bid integer NOT NULL, \
                   abalance integer NOT NULL, filler char(84));\
                 INSERT INTO wharf_bench_accounts (aid, bid, abalance, filler) \
                   SELECT g, 1, 0, '' FROM generate_series(1, {ACCOUNTS}) AS g \
                   WHERE NOT EXISTS (SELECT 1 FROM wharf_bench_accounts);"
            ))
            .await
            .map_err(setup)?;
        if *self == Workload::Tpcb {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS wharf_bench_branches (\
                       bid integer PRIMARY KEY, bbalance integer NOT NULL, filler char(88));\
                     CREATE TABLE IF NOT EXISTS wharf_bench_tellers (\
                       tid integer PRIMARY KEY, bid integer NOT NULL, \
                       tbalance integer NOT NULL, filler char(84));\
                     CREATE TABLE IF NOT EXISTS wharf_bench_history (\
                       tid integer, bid integer, aid integer, delta integer, \
                       mtime timestamp, filler char(22));\
                     INSERT INTO wharf_bench_branches (bid, bbalance) \
                       SELECT 1, 0 WHERE NOT EXISTS (SELECT 1 FROM wharf_bench_branches);\
                     INSERT INTO wharf_bench_tellers (tid, bid, tbalance) \
                       SELECT g, 1, 0 FROM generate_series(1, {TELLERS}) AS g \
                       WHERE NOT EXISTS (SELECT 1 FROM wharf_bench_tellers);"
                ))
                .await
                .map_err(setup)?;
        }
        // Fresh statistics, so the first requests get the index plan.
        client
            .batch_execute("ANALYZE wharf_bench_accounts")
            .await
            .map_err(setup)?;
        Ok(())
    }

    /// Runs one request's statements on `client`.
    ///
    /// The values are random integers made here, so formatting them into
    /// the SQL text is safe.
    pub async fn run(&self, client: &Client, rng: &mut fastrand::Rng) -> Result<(), String> {
        let run = |e: tokio_postgres::Error| super::describe_pg_error(&e);
        match self {
            Workload::Select => {
                let aid = rng.u32(1..=ACCOUNTS);
                client
                    .simple_query(&format!(
                        "SELECT abalance FROM wharf_bench_accounts WHERE aid = {aid}"
                    ))
                    .await
                    .map_err(run)?;
            }
            Workload::Tpcb => {
                let aid = rng.u32(1..=ACCOUNTS);
                let tid = rng.u32(1..=TELLERS);
                let delta = rng.i32(-5000..=5000);
                let steps = [
                    format!(
                        "UPDATE wharf_bench_accounts SET abalance = abalance + {delta} \
                         WHERE aid = {aid}"
                    ),
                    format!("SELECT abalance FROM wharf_bench_accounts WHERE aid = {aid}"),
                    format!(
                        "UPDATE wharf_bench_tellers SET tbalance = tbalance + {delta} \
                         WHERE tid = {tid}"
                    ),
                    format!(
                        "UPDATE wharf_bench_branches SET bbalance = bbalance + {delta} \
                         WHERE bid = 1"
                    ),
                    format!(
                        "INSERT INTO wharf_bench_history (tid, bid, aid, delta, mtime) \
                         VALUES ({tid}, 1, {aid}, {delta}, CURRENT_TIMESTAMP)"
                    ),
                ];
                client.batch_execute("BEGIN").await.map_err(run)?;
                for step in &steps {
                    if let Err(error) = client.simple_query(step).await {
                        // A pooled connection must not go back mid-transaction;
                        // if even the rollback fails the connection is broken
                        // and the pool drops it.
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Err(run(error));
                    }
                }
                client.batch_execute("COMMIT").await.map_err(run)?;
            }
            Workload::Sleep(secs) => {
                client
                    .simple_query(&format!("SELECT pg_sleep({secs})"))
                    .await
                    .map_err(run)?;
            }
            Workload::Sql(sql) => {
                client.simple_query(sql).await.map_err(run)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_named_workloads() {
        assert_eq!("select".parse(), Ok(Workload::Select));
        assert_eq!("tpcb".parse(), Ok(Workload::Tpcb));
        assert_eq!("sleep:0.25".parse(), Ok(Workload::Sleep(0.25)));
        assert_eq!(Workload::Sleep(0.25).to_string(), "sleep:0.25");
    }

    #[test]
    fn rejects_bad_workloads_with_a_hint() {
        let err = "sleep:-1".parse::<Workload>().unwrap_err();
        assert!(err.contains("sleep:0.05"), "{err}");
        let err = "sleep:abc".parse::<Workload>().unwrap_err();
        assert!(err.contains("\"abc\""), "{err}");
        let err = "pgbench".parse::<Workload>().unwrap_err();
        assert!(err.contains("select, tpcb or sleep"), "{err}");
    }

    #[test]
    fn long_custom_sql_is_shortened_in_the_description() {
        let sql = format!("SELECT {}", "1 + ".repeat(40));
        let text = Workload::Sql(sql).describe();
        assert!(text.ends_with("..."), "{text}");
        assert!(text.chars().count() < 80, "{text}");
    }
}

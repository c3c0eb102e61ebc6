//! The admin console from the outside: logins as `admin` (admin_users),
//! `stats` (stats_users) and `bob` (neither), and results as tables, read
//! by tokio-postgres or by psql.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::{Setup, TestPooler};

/// `[pgbouncer]` lines naming the console's users.
pub const CONSOLE_SETTINGS: &str = "admin_users = admin\nstats_users = stats\n";

/// An auth file with the console's users and `postgres`.
pub const CONSOLE_USERLIST: &str =
    "\"postgres\" \"postgres\"\n\"admin\" \"admin\"\n\"stats\" \"stats\"\n\"bob\" \"bob\"\n";

/// A pooler setup with the console's users.
pub fn setup() -> Setup<'static> {
    Setup {
        pgbouncer: CONSOLE_SETTINGS,
        userlist: CONSOLE_USERLIST,
        ..Setup::default()
    }
}

/// A result set: column names and rows (`None` is NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    /// The index of column `name`.
    pub fn col(&self, name: &str) -> usize {
        self.columns
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.columns))
    }

    /// The rows whose column `key` is `value`.
    pub fn rows_where(&self, key: &str, value: &str) -> Vec<&Vec<Option<String>>> {
        let i = self.col(key);
        self.rows
            .iter()
            .filter(|r| r[i].as_deref() == Some(value))
            .collect()
    }

    /// Column `col` of the one row whose `key` is `value`.
    pub fn value(&self, key: &str, value: &str, col: &str) -> String {
        let rows = self.rows_where(key, value);
        assert_eq!(rows.len(), 1, "one row with {key} = {value} in {self:?}");
        rows[0][self.col(col)].clone().unwrap_or_default()
    }

    /// Like [`value`](Self::value), as a number.
    pub fn number(&self, key: &str, value: &str, col: &str) -> i64 {
        let text = self.value(key, value, col);
        text.parse()
            .unwrap_or_else(|_| panic!("{col} = {text:?} is not a number"))
    }

    /// Column `col` of the row where `a` is `va` and `b` is `vb`.
    pub fn value2(&self, a: &str, va: &str, b: &str, vb: &str, col: &str) -> String {
        let (ia, ib) = (self.col(a), self.col(b));
        let rows: Vec<_> = self
            .rows
            .iter()
            .filter(|r| r[ia].as_deref() == Some(va) && r[ib].as_deref() == Some(vb))
            .collect();
        assert_eq!(rows.len(), 1, "one row with {a}={va}, {b}={vb} in {self:?}");
        rows[0][self.col(col)].clone().unwrap_or_default()
    }
}

/// SHOW STATE's value for `key` (`active`, `paused`, `suspended`).
pub async fn state(admin: &Client, key: &str) -> String {
    show(admin, "SHOW STATE").await.value("key", key, "value")
}

/// Logs in to the console as `user` (password = user name).
pub async fn console(pooler: &TestPooler, user: &str) -> Client {
    pooler
        .login(user, user, "pgbouncer")
        .await
        .unwrap_or_else(|e| panic!("{user} logs in to the console: {e}"))
}

/// Runs a console command by the simple protocol and returns its rows.
pub async fn show(client: &Client, sql: &str) -> Table {
    try_show(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Like [`show`], returning the error.
pub async fn try_show(client: &Client, sql: &str) -> Result<Table, tokio_postgres::Error> {
    let messages = tokio::time::timeout(Duration::from_secs(60), client.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql} hung"))?;
    let mut table = Table {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                table.columns = columns.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                table.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    Ok(table)
}

/// The error message of a console command that must fail.
pub async fn show_err(client: &Client, sql: &str) -> String {
    match try_show(client, sql).await {
        Ok(table) => panic!("{sql} should have failed, returned {table:?}"),
        Err(err) => err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_else(|| panic!("{sql}: not an ErrorResponse: {err:?}")),
    }
}

/// Runs one console command with psql (`-A -F|`, headers on, no footer)
/// as `user` over TCP; returns the table or psql's stderr.
pub fn psql_show(pooler: &TestPooler, user: &str, sql: &str) -> Result<Table, String> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={user} dbname=pgbouncer",
        pooler.port
    );
    psql_table(pooler, &conninfo, user, sql)
}

/// psql with `conninfo` and password; parses the `|`-separated output.
pub fn psql_table(
    pooler: &TestPooler,
    conninfo: &str,
    password: &str,
    sql: &str,
) -> Result<Table, String> {
    let mut cmd = super::wire::psql_command(
        &pooler.cluster.bin("psql"),
        conninfo,
        password,
        &["-F", "|", "-P", "footer=off"],
        sql,
    );
    let output = tokio::task::block_in_place(|| cmd.output()).expect("psql runs");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = text.lines();
    let columns = lines
        .next()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .unwrap_or_default();
    let rows = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split('|')
                .map(|v| (!v.is_empty()).then(|| v.to_owned()))
                .collect()
        })
        .collect();
    Ok(Table { columns, rows })
}

/// Waits up to 20 s for `check` to hold, polling.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Driver compatibility (issue 12): real drivers that prepare named
//! statements on their own, through the pooler in transaction mode with more
//! clients than servers, each checking its own results.
//!
//! The driver programs live in `tests/drivers/` (psycopg 3, asyncpg,
//! node-postgres, the PostgreSQL JDBC driver); `tests/drivers/install.sh`
//! installs what they need and compiles `Jdbc.java` (`scripts/test` runs it
//! first). Each program takes the connection from the libpq variables, runs
//! `CLIENTS` concurrent clients, and exits 0 only if every check passed.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{pgbench, shows, start, Setup, TestPooler};

/// Clients per driver: four times the servers.
const CLIENTS: usize = 8;
/// Server connections per pool.
const SERVERS: usize = 2;
/// The pooler of these tests: transaction mode, few servers, prepared
/// statements on. The JDBC driver sends `extra_float_digits` in its startup
/// packet, which PgBouncer's users let through this way.
const POOLER: &str = "pool_mode = transaction\n\
                      default_pool_size = 2\n\
                      max_prepared_statements = 100\n\
                      ignore_startup_parameters = extra_float_digits";
/// A driver program that has not finished by then is killed (the programs
/// give up on their own after `DRIVER_TIMEOUT`, 120 s).
const PATIENCE: Duration = Duration::from_secs(180);

fn drivers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `program args` from `tests/drivers/` against `127.0.0.1:port` with
/// the libpq variables and `CLIENTS`; kills it after [`PATIENCE`].
fn run_driver(port: u16, program: &str, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(drivers_dir())
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", "postgres")
        .env("PGDATABASE", "postgres")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("CLIENTS", CLIENTS.to_string())
        .env("DRIVER_TIMEOUT", "120")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} {args:?} does not start ({e}); run tests/drivers/install.sh")
        });
    // Read both pipes while waiting, so that a chatty program cannot block.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the driver") {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            break child.wait().expect("wait for the killed driver");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    (output, started.elapsed())
}

/// Asserts the driver program passed, showing its output if not.
fn assert_passed(driver: &str, (output, took): &(Output, Duration)) {
    assert!(
        output.status.success(),
        "{driver} through the pooler failed ({status}, after {took:.1?}) with {CLIENTS} clients \
         on {SERVERS} servers\n--- stdout\n{out}\n--- stderr\n{err}",
        status = output.status,
        out = text(&output.stdout),
        err = text(&output.stderr),
    );
}

async fn pooler() -> TestPooler {
    start(Setup {
        pgbouncer: POOLER,
        ..Setup::default()
    })
    .await
}

/// Starts a pooler, runs one driver program through it, checks it passed
/// and that the pooler kept to its servers.
async fn driver_through_pooler(driver: &str, program: &str, args: &[&str]) {
    let pooler = pooler().await;
    let port = pooler.port;
    let result = tokio::task::block_in_place(|| run_driver(port, program, args));
    assert_passed(driver, &result);
    let servers = tokio::task::block_in_place(|| pooler.server_connections());
    assert!(
        servers <= SERVERS,
        "{driver}: {servers} server connections for a pool of {SERVERS}"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_named_prepared_statements_in_transaction_mode() {
    driver_through_pooler("psycopg 3", "python3", &["psycopg_prepared.py"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_named_prepared_statements_in_transaction_mode() {
    driver_through_pooler("asyncpg", "python3", &["asyncpg_prepared.py"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_named_queries_in_transaction_mode() {
    driver_through_pooler("node-postgres", "node", &["node_prepared.js"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_past_prepare_threshold_in_transaction_mode() {
    driver_through_pooler(
        "PostgreSQL JDBC",
        "java",
        &["-cp", "classes:/usr/share/java/postgresql.jar", "Jdbc"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_in_transaction_mode() {
    let pooler = pooler().await;
    tokio::task::block_in_place(|| {
        let bin = pooler.cluster.bin("pgbench");
        pgbench::init(&bin, pooler.cluster.port());
        let clients = CLIENTS.to_string();
        let output = pgbench::run(
            &bin,
            pooler.port,
            &["-M", "prepared", "-S", "-c", &clients, "-T", "3"],
        );
        pgbench::assert_error_free(&output);
        let out = text(&output.stdout);
        let done: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("pgbench: no transaction count in\n{out}"));
        assert!(done > 0, "pgbench -M prepared: no transactions\n{out}");
    });
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_reads_every_console_show() {
    let pooler = start(Setup {
        pgbouncer: &format!("{POOLER}\nadmin_users = postgres"),
        ..Setup::default()
    })
    .await;
    // A client and its server, so that SHOW CLIENTS and SHOW SERVERS have
    // rows with times in them.
    let client = pooler.client().await;
    client.simple_query("SELECT 1").await.expect("a query");
    let port = pooler.port;
    let result = tokio::task::block_in_place(|| {
        let mut command = Command::new("python3");
        command
            .arg("console_shows.py")
            .current_dir(drivers_dir())
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", port.to_string())
            .env("PGUSER", "postgres")
            .env("PGPASSWORD", "postgres")
            .env("PGDATABASE", "pgbouncer")
            .env("PGCONNECT_TIMEOUT", "10");
        let started = Instant::now();
        (command.output().expect("python3 runs"), started.elapsed())
    });
    assert_passed("psycopg reading the console", &result);
    // Each SHOW's columns as psycopg saw them: PgBouncer's names and types.
    let out = text(&result.0.stdout);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("COLUMNS "))
        .unwrap_or_else(|| panic!("no COLUMNS line in\n{out}"));
    let described: serde_json::Value = serde_json::from_str(line).expect("COLUMNS is JSON");
    for command in shows::SHOWS {
        let seen: Vec<(String, u32)> = described[command]
            .as_array()
            .unwrap_or_else(|| panic!("SHOW {command} not described: {line}"))
            .iter()
            .map(|c| {
                let name = c[0].as_str().expect("a name").to_owned();
                let oid = c[1].as_u64().expect("a type OID") as u32;
                (name, oid)
            })
            .collect();
        assert_eq!(
            seen,
            shows::columns(command),
            "SHOW {command} through psycopg"
        );
    }
    drop(client);
    pooler.stop().await;
}

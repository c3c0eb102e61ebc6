//! Replication connections (PgBouncer 1.23): `replication=true` and
//! `replication=database` clients get a server of their own, made from a
//! place in their pool and closed when they leave, with real clients
//! (pg_basebackup, pg_recvlogical, psql).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::console::{console, eventually, setup, show, CONSOLE_USERLIST};
use common::{start_with, wire, Setup, TestPooler};
use wharf_testkit::PgCluster;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// A pooler in front of a cluster with `wal_level = logical`, with the
/// console's users, a `tight` database of one server, and `plain`, a role
/// without REPLICATION.
async fn pooler() -> TestPooler {
    let cluster = blocking(|| PgCluster::builder().setting("wal_level", "logical").start())
        .await
        .expect("PostgreSQL");
    cluster
        .psql(
            "postgres",
            "CREATE ROLE plain LOGIN PASSWORD 'plain'; \
             CREATE TABLE moves (n int); ALTER TABLE moves REPLICA IDENTITY FULL",
        )
        .expect("setup SQL");
    // pg_basebackup and pg_receivewal before PostgreSQL 17 send no dbname:
    // they ask for database "replication", which needs a line of its own.
    let databases = format!(
        "tight = host=127.0.0.1 port={port} dbname=postgres pool_size=1\n\
         replication = host=127.0.0.1 port={port} dbname=postgres",
        port = cluster.port()
    );
    let userlist = format!("{CONSOLE_USERLIST}\"plain\" \"plain\"\n");
    start_with(
        cluster,
        Setup {
            databases: &databases,
            userlist: &userlist,
            ..setup()
        },
    )
    .await
}

/// A libpq connection string to the pooler.
fn conninfo(pooler: &TestPooler, db: &str, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres dbname={db} {extra}",
        pooler.port
    )
}

/// Runs `psql -c sql` on `conninfo`: stdout, or stderr when it fails.
fn psql(pooler: &TestPooler, conninfo: &str, sql: &str) -> Result<String, String> {
    let out = pooler.run_client("psql", &["-X", "-A", "-t", "-d", conninfo, "-c", sql]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Starts a client program on the pooler, its stdout piped.
fn spawn(pooler: &TestPooler, program: &str, args: &[&str]) -> Child {
    Command::new(pooler.cluster.bin(program))
        .args(args)
        .env("PGPASSWORD", "postgres")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client program starts")
}

/// Walsender backends on the cluster.
fn walsenders(pooler: &TestPooler) -> usize {
    pooler
        .cluster
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'",
        )
        .expect("psql")
        .parse()
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_basebackup_takes_a_backup_through_the_pooler() {
    let pooler = pooler().await;
    let target = pooler.dir().join("backup");
    let dbname = conninfo(&pooler, "postgres", "");
    let target_arg = target.to_string_lossy().into_owned();
    let out = pooler.run_client(
        "pg_basebackup",
        &[
            "-d",
            &dbname,
            "-D",
            &target_arg,
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        ],
    );
    assert!(
        out.status.success(),
        "pg_basebackup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        target.join("PG_VERSION").is_file(),
        "no PG_VERSION in the backup"
    );
    assert!(target.join("backup_label").is_file(), "no backup_label");
    // Its servers were made for it and are gone with it.
    eventually("the walsenders to close", || async {
        walsenders(&pooler) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_replication_clients_run_replication_commands_with_their_own_parameters() {
    let pooler = pooler().await;
    let logical = conninfo(
        &pooler,
        "postgres",
        "replication=database application_name=abc options='-c enable_seqscan=off'",
    );
    let system = psql(&pooler, &logical, "IDENTIFY_SYSTEM").expect("IDENTIFY_SYSTEM");
    let direct = pooler
        .cluster
        .psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )
        .unwrap();
    assert!(system.starts_with(&direct), "{system} is not {direct}");
    // A logical walsender takes SQL too, with the client's own settings
    // (an option no pooled session could carry).
    assert_eq!(
        psql(&pooler, &logical, "SHOW application_name").unwrap(),
        "abc"
    );
    assert_eq!(
        psql(&pooler, &logical, "SHOW enable_seqscan").unwrap(),
        "off"
    );
    // A physical one does not: the server's own error reaches the client.
    let physical = conninfo(&pooler, "postgres", "replication=true");
    let err = psql(&pooler, &physical, "SELECT 1").unwrap_err();
    assert!(
        err.contains("cannot execute SQL commands in WAL sender for physical replication"),
        "{err}"
    );
    // Regular clients of the same pool are not disturbed.
    let client = pooler.client().await;
    client
        .simple_query("SELECT 1")
        .await
        .expect("a pooled query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_and_servers_fill_the_replication_column() {
    let pooler = pooler().await;
    let admin = console(&pooler, "admin").await;
    let logical = conninfo(&pooler, "postgres", "replication=database");
    // psql reading an open, silent stdin holds the connection idle.
    let mut holder = Command::new(pooler.cluster.bin("psql"))
        .args(["-X", "-d", &logical])
        .env("PGPASSWORD", "postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("psql starts");
    eventually("a logical client in SHOW CLIENTS", || async {
        show(&admin, "SHOW CLIENTS")
            .await
            .rows_where("replication", "logical")
            .len()
            == 1
    })
    .await;
    // The client is listed from its login on; its server once logged in.
    eventually("its server in SHOW SERVERS", || async {
        show(&admin, "SHOW SERVERS")
            .await
            .rows_where("replication", "logical")
            .len()
            == 1
    })
    .await;
    let servers = show(&admin, "SHOW SERVERS").await;
    let rows = servers.rows_where("replication", "logical");
    assert_eq!(rows.len(), 1, "{servers:?}");
    assert_eq!(rows[0][servers.col("state")].as_deref(), Some("active"));
    let clients = show(&admin, "SHOW CLIENTS").await;
    assert_eq!(
        clients.rows_where("replication", "none").len(),
        1,
        "only the console's own client is a regular one: {clients:?}"
    );
    holder.kill().expect("psql killed");
    let _ = holder.wait();
    eventually("the replication server to close", || async {
        show(&admin, "SHOW SERVERS")
            .await
            .rows_where("replication", "logical")
            .is_empty()
            && walsenders(&pooler) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_client_waits_for_a_place_in_its_pool_and_takes_an_idle_server() {
    let pooler = pooler().await;
    let admin = console(&pooler, "admin").await;
    let holder = pooler
        .connect("postgres", "postgres", "tight")
        .await
        .expect("a client of tight");
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let logical = conninfo(&pooler, "tight", "replication=database");
    let waiting = spawn(
        &pooler,
        "psql",
        &["-X", "-A", "-t", "-d", &logical, "-c", "IDENTIFY_SYSTEM"],
    );
    eventually(
        "the replication client to queue behind pool_size = 1",
        || async {
            show(&admin, "SHOW POOLS")
                .await
                .value("database", "tight", "cl_waiting")
                == "1"
        },
    )
    .await;
    assert_eq!(walsenders(&pooler), 0, "a walsender opened over pool_size");
    holder.batch_execute("COMMIT").await.unwrap();
    let out = blocking(move || waiting.wait_with_output().expect("psql")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The idle server it was given became its walsender: none is left
    // over pool_size, and the regular client gets a new one.
    eventually("the pool to be empty again", || async {
        let pools = show(&admin, "SHOW POOLS").await;
        pools.value("database", "tight", "sv_idle") == "0"
            && pools.value("database", "tight", "sv_active") == "0"
    })
    .await;
    holder.simple_query("SELECT 1").await.expect("a new server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_use_the_servers_and_postgresqls_words() {
    let pooler = pooler().await;
    let unprivileged = format!(
        "host=127.0.0.1 port={} user=plain password=plain dbname=postgres replication=true",
        pooler.port
    );
    let err = psql(&pooler, &unprivileged, "IDENTIFY_SYSTEM").unwrap_err();
    assert!(
        err.contains("must be superuser or replication role to start walsender"),
        "{err}"
    );
    let bad = conninfo(&pooler, "postgres", "replication=maybe");
    let err = psql(&pooler, &bad, "IDENTIFY_SYSTEM").unwrap_err();
    assert!(
        err.contains("invalid value for parameter \"replication\": \"maybe\""),
        "{err}"
    );
    let console_err = psql(
        &pooler,
        &format!(
            "host=127.0.0.1 port={} user=admin password=admin dbname=pgbouncer replication=true",
            pooler.port
        ),
        "SHOW VERSION",
    )
    .unwrap_err();
    assert!(
        console_err.contains("not supported on the admin console"),
        "{console_err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_recvlogical_streams_changes_through_the_pooler() {
    let pooler = pooler().await;
    let dbname = conninfo(&pooler, "postgres", "");
    let out = pooler.run_client(
        "pg_recvlogical",
        &[
            "-d",
            &dbname,
            "--slot",
            "through_wharf",
            "--create-slot",
            "--plugin",
            "test_decoding",
        ],
    );
    assert!(
        out.status.success(),
        "creating the slot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut receiver = spawn(
        &pooler,
        "pg_recvlogical",
        &[
            "-d",
            &dbname,
            "--slot",
            "through_wharf",
            "--start",
            "--no-loop",
            "-f",
            "-",
        ],
    );
    pooler
        .cluster
        .psql("postgres", "INSERT INTO moves VALUES (42)")
        .expect("insert");
    let stdout = receiver.stdout.take().expect("stdout");
    let seen = blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("INSERT"))
    });
    let seen = tokio::time::timeout(Duration::from_secs(30), seen).await;
    receiver.kill().expect("pg_recvlogical killed");
    let _ = receiver.wait();
    let line = seen
        .expect("no change streamed within 30 s")
        .expect("a change");
    assert_eq!(line, "table public.moves: INSERT: n[integer]:42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_replication_rules_match_physical_replication_only() {
    let cluster = blocking(PgCluster::start).await.expect("PostgreSQL");
    let hba = std::env::temp_dir().join(format!("wharf-replication-hba-{}", std::process::id()));
    // As in PostgreSQL: `replication` matches physical replication only,
    // and `all` does not match it; logical replication goes by database.
    std::fs::write(
        &hba,
        "host replication postgres 127.0.0.1/32 md5\n\
         host all all 127.0.0.1/32 reject\n",
    )
    .expect("hba file");
    let settings = format!("auth_type = hba\nauth_hba_file = {}\n", hba.display());
    let pooler = start_with(
        cluster,
        Setup {
            pgbouncer: &settings,
            ..Setup::default()
        },
    )
    .await;
    let physical = conninfo(&pooler, "postgres", "replication=true");
    let system = psql(&pooler, &physical, "IDENTIFY_SYSTEM");
    let logical = conninfo(&pooler, "postgres", "replication=database");
    let logical_err = psql(&pooler, &logical, "IDENTIFY_SYSTEM");
    let regular_err = psql(&pooler, &conninfo(&pooler, "postgres", ""), "SELECT 1");
    let _ = std::fs::remove_file(&hba);
    system.expect("the replication rule lets a physical client in");
    assert!(logical_err.unwrap_err().contains("login rejected"));
    assert!(regular_err.unwrap_err().contains("login rejected"));
}

/// A logical replication client on a raw socket (the pooler trusts it),
/// logged in up to ReadyForQuery.
async fn raw_logical_client(pooler: &TestPooler) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = wire::connect(pooler.port).await;
    let startup = wire::startup_packet(&[
        ("user", "postgres"),
        ("database", "postgres"),
        ("replication", "database"),
    ]);
    stream.write_all(&startup).await.unwrap();
    loop {
        match wire::read_message(&mut stream).await {
            Some((b'Z', _)) => return stream,
            Some((b'R' | b'S' | b'K', _)) => {}
            other => panic!("unexpected message in the welcome: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_and_a_shutdown_waiting_for_servers_end_replication_sessions() {
    let cluster = blocking(PgCluster::start).await.expect("PostgreSQL");
    let mut pooler = start_with(
        cluster,
        Setup {
            pgbouncer: "admin_users = admin\nauth_type = trust\n",
            userlist: CONSOLE_USERLIST,
            ..Setup::default()
        },
    )
    .await;
    let admin = console(&pooler, "admin").await;
    let mut killed = raw_logical_client(&pooler).await;
    let clients = show(&admin, "SHOW CLIENTS").await;
    let id = clients.rows_where("replication", "logical")[0][clients.col("id")]
        .clone()
        .unwrap_or_default();
    show(&admin, &format!("KILL_CLIENT {id}")).await;
    let error = wire::expect_fatal(&mut killed).await;
    assert_eq!(error.message, "admin forced disconnect");
    eventually("its walsender to go", || async { walsenders(&pooler) == 0 }).await;
    // A shutdown that waits for servers does not wait for a walsender:
    // the client is told, as any client between transactions.
    let mut streaming = raw_logical_client(&pooler).await;
    assert_eq!(walsenders(&pooler), 1);
    pooler
        .shared
        .shutdown(wharf_pooler::lifecycle::ShutdownMode::WaitForServers);
    let error = wire::expect_fatal(&mut streaming).await;
    assert_eq!(error.message, "server shutting down");
    assert!(
        pooler.finished(Duration::from_secs(10)).await,
        "the pooler waited for the replication client"
    );
}

//! The admin console's process control: PAUSE/RESUME under pgbench load,
//! DISABLE/ENABLE, RECONNECT and WAIT_CLOSE, KILL, KILL_CLIENT, SUSPEND,
//! SET, RELOAD and SHUTDOWN.

mod common;

use std::time::Duration;

use common::console::{console, eventually, setup, show, show_err, state};
use common::{pgbench, start, TestPooler};
use tokio_postgres::{Client, SimpleQueryMessage};

async fn pid(client: &Client) -> String {
    match &client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .unwrap()[..]
    {
        [_, SimpleQueryMessage::Row(row), ..] | [SimpleQueryMessage::Row(row), ..] => {
            row.get(0).unwrap().to_owned()
        }
        other => panic!("{other:?}"),
    }
}

/// SHOW DATABASES' `paused` for the `postgres` database.
async fn postgres_paused(admin: &Client) -> String {
    show(admin, "SHOW DATABASES")
        .await
        .value("name", "postgres", "paused")
}

fn server_pids(pooler: &TestPooler) -> Vec<String> {
    let out = tokio::task::block_in_place(|| {
        pooler.cluster.psql(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
    })
    .unwrap();
    out.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_holds_pgbench_and_resume_lets_it_finish_without_failures() {
    let pooler = start(setup()).await;
    let bin = pooler.cluster.bin("pgbench");
    tokio::task::block_in_place(|| pgbench::init(&bin, pooler.cluster.port()));
    let bench = pgbench::spawn(bin, pooler.port, &["-c", "8", "-T", "8"]);
    let admin = console(&pooler, "admin").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pause = tokio::time::timeout(Duration::from_secs(30), admin.simple_query("PAUSE"))
        .await
        .expect("PAUSE returns once servers are released");
    pause.unwrap();
    // Every server of the database was released and closed.
    assert!(show(&admin, "SHOW SERVERS").await.rows.is_empty());
    assert_eq!(state(&admin, "paused").await, "yes");
    // pgbench's clients now wait, and a new query is held too.
    eventually("pgbench clients waiting", || async {
        let pools = show(&admin, "SHOW POOLS").await;
        pools.value2("database", "postgres", "user", "postgres", "cl_waiting") != "0"
    })
    .await;
    let client = pooler.client().await;
    let held = tokio::spawn(async move { client.simple_query("SELECT 1").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "a query ran while paused");
    admin.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("RESUME releases the held query")
        .unwrap()
        .unwrap();
    pgbench::assert_clean(&bench.await.unwrap());
    assert_eq!(state(&admin, "active").await, "yes");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_refuses_new_logins_until_enable() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    let existing = pooler.client().await;
    admin.simple_query("DISABLE postgres").await.unwrap();
    assert_eq!(
        show(&admin, "SHOW DATABASES")
            .await
            .value("name", "postgres", "disabled"),
        "1"
    );
    let (_, message) =
        common::wire::refused(pooler.login("postgres", "postgres", "postgres").await);
    assert_eq!(message, "database \"postgres\" is disabled");
    // Clients already in go on.
    existing.simple_query("SELECT 1").await.unwrap();
    admin.simple_query("ENABLE postgres").await.unwrap();
    pooler.serves_a_new_client().await;
    assert_eq!(show_err(&admin, "DISABLE").await, "a database is required");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replaces_servers_and_wait_close_waits_for_it() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    let idle_user = pooler.client().await;
    let holder = pooler.client().await;
    holder.simple_query("BEGIN").await.unwrap();
    let held = pid(&holder).await;
    // With the holder's server taken, this one runs on another.
    let before = pid(&idle_user).await;
    assert_ne!(before, held);
    admin.simple_query("RECONNECT postgres").await.unwrap();
    // The idle server is gone now; the one in a transaction is marked.
    let servers = show(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.value("remote_pid", &held, "close_needed"), "1");
    assert!(servers.rows_where("remote_pid", &before).is_empty());
    let wait = {
        let admin = console(&pooler, "admin").await;
        tokio::spawn(async move { admin.simple_query("WAIT_CLOSE postgres").await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !wait.is_finished(),
        "WAIT_CLOSE returned with a server still to close"
    );
    holder.simple_query("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("WAIT_CLOSE returns once the server is closed")
        .unwrap()
        .unwrap();
    let after = pid(&idle_user).await;
    assert_ne!(after, before);
    assert_ne!(after, held);
    eventually("old backends gone", || async {
        let pids = server_pids(&pooler);
        !pids.contains(&before) && !pids.contains(&held)
    })
    .await;
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_clients_and_servers_and_holds_new_ones_until_resume() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    let a = pooler.client().await;
    let b = pooler.client().await;
    a.simple_query("BEGIN").await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    admin.simple_query("KILL postgres").await.unwrap();
    let err = a.simple_query("SELECT 1").await.unwrap_err();
    match err.as_db_error() {
        Some(db) => assert_eq!(db.message(), "database removed"),
        None => assert!(err.is_closed(), "{err:?}"),
    }
    assert!(b.simple_query("SELECT 1").await.is_err());
    eventually("servers closed", || async {
        server_pids(&pooler).is_empty()
    })
    .await;
    let clients = show(&admin, "SHOW CLIENTS").await;
    assert!(
        clients.rows_where("database", "postgres").is_empty(),
        "{clients:?}"
    );
    assert_eq!(postgres_paused(&admin).await, "1");
    // The console itself survives KILL.
    admin.simple_query("RESUME postgres").await.unwrap();
    pooler.serves_a_new_client().await;
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_disconnects_exactly_that_client() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    let mut victim_config: tokio_postgres::Config = pooler
        .url("postgres", "postgres", "postgres")
        .parse()
        .unwrap();
    victim_config.application_name("victim");
    let (victim, connection) = victim_config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let bystander = pooler.client().await;
    victim.simple_query("BEGIN").await.unwrap();
    let victim_pid = pid(&victim).await;
    let id = show(&admin, "SHOW CLIENTS")
        .await
        .value("application_name", "victim", "id");
    admin
        .simple_query(&format!("KILL_CLIENT {id}"))
        .await
        .unwrap();
    let err = victim.simple_query("SELECT 1").await.unwrap_err();
    match err.as_db_error() {
        Some(db) => assert_eq!(db.message(), "admin forced disconnect"),
        None => assert!(err.is_closed(), "{err:?}"),
    }
    bystander.simple_query("SELECT 1").await.unwrap();
    assert!(show(&admin, "SHOW CLIENTS")
        .await
        .rows_where("id", &id)
        .is_empty());
    // Its server was mid-transaction: closed, not pooled.
    eventually("victim's backend gone", || async {
        !server_pids(&pooler).contains(&victim_pid)
    })
    .await;
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_holds_queries_until_resume() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    let client = pooler.client().await;
    admin.simple_query("SUSPEND").await.unwrap();
    assert_eq!(state(&admin, "suspended").await, "yes");
    let held = tokio::spawn(async move { client.simple_query("SELECT 1").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!held.is_finished());
    admin.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(state(&admin, "active").await, "yes");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_changeable_settings_only() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    admin
        .simple_query("SET default_pool_size = 7")
        .await
        .unwrap();
    admin
        .simple_query("set server_check_query to 'select 2'")
        .await
        .unwrap();
    let config = show(&admin, "SHOW CONFIG").await;
    assert_eq!(config.value("key", "default_pool_size", "value"), "7");
    assert_eq!(
        config.value("key", "server_check_query", "value"),
        "select 2"
    );
    assert_eq!(
        show_err(&admin, "SET listen_port = 1").await,
        "listen_port: cannot be changed at runtime"
    );
    assert!(show_err(&admin, "SET default_pool_size = lots")
        .await
        .contains("invalid value"));
    // Asking for encryption without a certificate to offer is refused,
    // and the old mode stays.
    let refused = show_err(&admin, "SET client_tls_sslmode = require").await;
    assert!(
        refused.contains("client_tls_sslmode = require needs client_tls_key_file"),
        "{refused}"
    );
    assert_eq!(
        show(&admin, "SHOW CONFIG")
            .await
            .value("key", "client_tls_sslmode", "value"),
        "disable"
    );
    assert_eq!(
        show(&admin, "SHOW CONFIG")
            .await
            .value("key", "listen_port", "value"),
        pooler.port.to_string()
    );
    pooler.stop().await;
}

/// `SET max_client_conn` on the console applies to the next client: no
/// restart, no RELOAD. The console's own connection counts, as in
/// PgBouncer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_max_client_conn_applies_to_new_clients_at_once() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    let first = pooler.client().await;
    admin.simple_query("SET max_client_conn = 2").await.unwrap();
    let err = match pooler.connect("postgres", "postgres", "postgres").await {
        Ok(_) => panic!("a third client got in with max_client_conn = 2"),
        Err(err) => err,
    };
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(
        (db.code().code(), db.message()),
        ("53300", "no more connections allowed (max_client_conn)")
    );
    admin.simple_query("SET max_client_conn = 3").await.unwrap();
    let third = pooler.client().await;
    third.simple_query("SELECT 1").await.unwrap();
    first.simple_query("SELECT 1").await.unwrap();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_shutdown() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    admin.simple_query("RELOAD").await.unwrap();
    assert!(show_err(&admin, "SHUTDOWN NOW")
        .await
        .starts_with("invalid command"));
    let _ = admin.simple_query("SHUTDOWN").await;
    eventually("the pooler stops accepting clients", || async {
        pooler
            .connect("postgres", "postgres", "postgres")
            .await
            .is_err()
    })
    .await;
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_suspend_and_kill_refuse_what_pgbouncer_refuses() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    let refused = [
        ("RESUME", "pooler is not paused/suspended"),
        ("RESUME postgres", "database postgres is not paused"),
        ("RESUME nosuch", "no such database: nosuch"),
        ("PAUSE pgbouncer", "cannot pause admin db: pgbouncer"),
        ("KILL wharf", "cannot kill admin db: wharf"),
        ("PAUSE nosuch", "no such database: nosuch"),
        ("DISABLE", "a database is required"),
    ];
    for (command, message) in refused {
        assert_eq!(show_err(&admin, command).await, message, "{command}");
    }

    admin.simple_query("PAUSE postgres").await.unwrap();
    assert_eq!(
        show_err(&admin, "SUSPEND").await,
        "cannot suspend with paused databases"
    );
    // A database paused by name stays paused through a pooler-wide
    // PAUSE and RESUME.
    admin.simple_query("PAUSE").await.unwrap();
    for command in ["PAUSE", "KILL", "SUSPEND", "PAUSE postgres"] {
        assert_eq!(
            show_err(&admin, command).await,
            "already suspended/paused",
            "{command}"
        );
    }
    admin.simple_query("RESUME").await.unwrap();
    assert_eq!(postgres_paused(&admin).await, "1");
    admin.simple_query("RESUME postgres").await.unwrap();
    pooler.serves_a_new_client().await;

    admin.simple_query("SUSPEND").await.unwrap();
    assert_eq!(show_err(&admin, "PAUSE").await, "already suspended/paused");
    admin.simple_query("RESUME").await.unwrap();

    // A pooler-wide KILL pauses each database, to be resumed by name, as
    // in PgBouncer; the pooler itself is not paused.
    assert_eq!(
        show_err(&admin, "RESUME pgbouncer").await,
        "database pgbouncer is not paused"
    );
    admin.simple_query("KILL").await.unwrap();
    assert_eq!(
        show_err(&admin, "RESUME").await,
        "pooler is not paused/suspended"
    );
    assert_eq!(
        show_err(&admin, "SUSPEND").await,
        "cannot suspend with paused databases"
    );
    admin.simple_query("RESUME postgres").await.unwrap();
    // Every refusal left the session usable.
    assert_eq!(state(&admin, "active").await, "yes");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_lets_go_of_min_pool_size_servers_until_resume() {
    let pgbouncer = format!("{}min_pool_size = 2\n", common::console::CONSOLE_SETTINGS);
    let pooler = start(common::Setup {
        pgbouncer: &pgbouncer,
        ..setup()
    })
    .await;
    let admin = console(&pooler, "admin").await;
    // A pool (and its minimum) exists once a client has used it.
    pooler.serves_a_new_client().await;
    // (The client's own server may come on top of the two.)
    eventually("min_pool_size servers open", || async {
        server_pids(&pooler).len() >= 2
    })
    .await;
    admin.simple_query("PAUSE postgres").await.unwrap();
    assert!(server_pids(&pooler).is_empty());
    // A paused database stays without servers: it may be restarting.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        server_pids(&pooler).is_empty(),
        "servers reopened during PAUSE"
    );
    admin.simple_query("RESUME postgres").await.unwrap();
    eventually("min_pool_size servers back", || async {
        server_pids(&pooler).len() == 2
    })
    .await;
    pooler.stop().await;
}

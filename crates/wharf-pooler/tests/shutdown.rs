//! SHUTDOWN in PgBouncer's three modes: listeners close first, then
//! WAIT_FOR_CLIENTS lets every client finish, WAIT_FOR_SERVERS cuts no
//! transaction, and immediate ends everything.

mod common;

use std::time::Duration;

use common::{pgbench, start, Setup, TestPooler};
use wharf_pooler::lifecycle::ShutdownMode;

/// Whether a new client can connect (the listener is open).
async fn accepts(pooler: &TestPooler) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", pooler.port))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_clients_lets_running_clients_finish_then_exits() {
    let mut pooler = start(Setup::default()).await;
    let bin = pooler.cluster.bin("pgbench");
    pgbench::init(&bin, pooler.cluster.port());
    let bench = pgbench::spawn(bin, pooler.port, &["-c", "4", "-T", "3"]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pooler.shared.shutdown(ShutdownMode::WaitForClients);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!accepts(&pooler).await, "still accepting new clients");
    assert!(
        !pooler.finished(Duration::from_millis(300)).await,
        "exited with clients still connected"
    );
    pgbench::assert_clean(&bench.await.expect("pgbench task"));
    assert!(
        pooler.finished(Duration::from_secs(5)).await,
        "did not exit after the last client"
    );
}

/// While WAIT_FOR_CLIENTS drains the pooler, its clients go on queueing
/// for servers, and one queued longer than `query_wait_notify` is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_queued_during_wait_for_clients_is_told_it_is_queued() {
    use common::wire::{login_trusted, query, read_replies};
    use tokio::io::AsyncWriteExt;
    let mut pooler = start(Setup {
        pgbouncer: "auth_type = trust\ndefault_pool_size = 1\nquery_wait_notify = 1\n",
        ..Setup::default()
    })
    .await;
    let holder = pooler.client().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut waiter = login_trusted(pooler.port, "postgres", "postgres").await;
    pooler.shared.shutdown(ShutdownMode::WaitForClients);
    tokio::time::sleep(Duration::from_millis(200)).await;
    waiter.write_all(&query("SELECT 1")).await.expect("sent");
    let notice = tokio::time::timeout(Duration::from_secs(5), read_replies(&mut waiter, 0, 1))
        .await
        .expect("told it is queued while the pooler drains");
    assert_eq!(notice.tags, "N");
    holder.batch_execute("COMMIT").await.unwrap();
    let replies = read_replies(&mut waiter, 1, usize::MAX).await;
    assert_eq!(replies.rows, ["1"], "{replies:?}");
    drop(holder);
    drop(waiter);
    assert!(
        pooler.finished(Duration::from_secs(5)).await,
        "did not exit after the last client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_servers_finishes_open_transactions_and_closes_idle_clients() {
    let mut pooler = start(Setup::default()).await;
    let idle = pooler.watched_client().await;
    idle.client.simple_query("SELECT 1").await.unwrap();
    let busy = pooler.watched_client().await;
    busy.client
        .batch_execute("BEGIN; CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
        .await
        .unwrap();
    pooler.shared.shutdown(ShutdownMode::WaitForServers);
    // A client between transactions is told at once.
    let ended = tokio::time::timeout(Duration::from_secs(5), idle.ended)
        .await
        .expect("the idle client is closed")
        .expect("task");
    let err = ended.expect_err("closed with an error");
    let db = err.as_db_error().expect("a pooler error");
    assert_eq!(
        (db.code().code(), db.message()),
        ("08P01", "server shutting down")
    );
    assert!(!accepts(&pooler).await, "still accepting new clients");
    assert!(!pooler.finished(Duration::from_millis(300)).await);
    // The open transaction is not cut: it goes on and commits.
    busy.client
        .batch_execute("INSERT INTO kept VALUES (2); COMMIT")
        .await
        .expect("the transaction in flight completes");
    let ended = tokio::time::timeout(Duration::from_secs(5), busy.ended)
        .await
        .expect("the client is closed once its transaction ends")
        .expect("task");
    assert!(ended.is_err(), "closed with the shutdown error");
    assert!(
        pooler.finished(Duration::from_secs(5)).await,
        "did not exit once every server was released"
    );
    let rows = pooler
        .cluster
        .psql("postgres", "SELECT count(*) FROM kept")
        .unwrap();
    assert_eq!(rows, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_servers_in_session_mode_waits_for_the_transaction() {
    let mut pooler = start(Setup {
        pgbouncer: "pool_mode = session",
        ..Setup::default()
    })
    .await;
    let busy = pooler.watched_client().await;
    busy.client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    pooler.shared.shutdown(ShutdownMode::WaitForServers);
    assert!(!pooler.finished(Duration::from_millis(300)).await);
    busy.client.batch_execute("COMMIT").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), busy.ended)
        .await
        .expect("closed after its transaction")
        .expect("task");
    assert!(ended.is_err());
    assert!(pooler.finished(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_shutdown_ends_everything_at_once() {
    let mut pooler = start(Setup::default()).await;
    let busy = pooler.client().await;
    let query = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(10)").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    pooler.shared.shutdown(ShutdownMode::WaitForClients);
    assert!(!pooler.finished(Duration::from_millis(200)).await);
    // A stronger mode takes over the one in progress.
    pooler.shared.shutdown(ShutdownMode::Immediate);
    assert!(pooler.finished(Duration::from_secs(2)).await);
    let result = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("the client is cut")
        .expect("task");
    assert!(result.is_err());
}

/// Logs in over the pooler's Unix socket.
async fn unix_login(
    pooler: &TestPooler,
    user: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(pooler.dir())
        .port(pooler.port)
        .user(user)
        .password(user)
        .dbname(db);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_pooler_keeps_its_unix_socket_for_the_console_only() {
    let mut pooler = start(Setup {
        pgbouncer: "admin_users = admin\n",
        userlist: "\"postgres\" \"postgres\"\n\"admin\" \"admin\"\n",
        ..Setup::default()
    })
    .await;
    let staying = pooler.client().await;
    staying.simple_query("SELECT 1").await.unwrap();
    pooler.shared.shutdown(ShutdownMode::WaitForClients);
    let mut closed = false;
    for _ in 0..100 {
        if !accepts(&pooler).await {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the TCP listener is still open");
    // The console over the Unix socket still answers, and sees the client
    // the pooler waits for.
    let admin = unix_login(&pooler, "admin", "pgbouncer")
        .await
        .expect("console login over the Unix socket while draining");
    let rows = admin.simple_query("SHOW CLIENTS").await.unwrap();
    let clients = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(clients, 2, "the waiting client and the console itself");
    // A database login there is refused.
    let err = unix_login(&pooler, "postgres", "postgres")
        .await
        .expect_err("a database login while draining");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert_eq!(message.as_deref(), Some("pooler is shutting down"));
    staying
        .simple_query("SELECT 1")
        .await
        .expect("the old client still works");
    // The console session does not hold the pooler up once the last
    // database client has gone; the socket file goes with it.
    drop(staying);
    assert!(
        pooler.finished(Duration::from_secs(5)).await,
        "did not exit after the last database client"
    );
    let socket = pooler.dir().join(format!(".s.PGSQL.{}", pooler.port));
    assert!(!socket.exists(), "{} is left behind", socket.display());
    drop(admin);
}

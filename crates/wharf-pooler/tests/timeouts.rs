//! PgBouncer's timeouts with real servers: what the client is told (SQLSTATE
//! and message), and that a server left mid-transaction is never reused.

mod common;

use std::time::Duration;

use common::{start, Setup, TestPooler};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The first column of the first row.
async fn value(client: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

/// The SQLSTATE and message of a server (here: pooler) error.
fn db_error(err: &tokio_postgres::Error) -> (String, String) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not an error from the pooler: {err}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Waits until the watched client's connection ends, and returns the error
/// the pooler ended it with.
async fn ended_with(watched: common::Watched) -> (String, String) {
    let ended = tokio::time::timeout(Duration::from_secs(10), watched.ended)
        .await
        .expect("the pooler closes the client")
        .expect("connection task");
    match ended {
        Err(err) => db_error(&err),
        Ok(()) => panic!("the connection closed without an error"),
    }
}

/// Whether a server backend with this pid still exists, waiting up to 5 s
/// for it to go.
async fn backend_gone(pooler: &TestPooler, pid: &str) -> bool {
    for _ in 0..50 {
        let n = pooler
            .cluster
            .psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
            )
            .expect("psql");
        if n == "0" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_closes_the_client_and_discards_its_server() {
    let pooler = start(Setup {
        pgbouncer: "query_timeout = 0.3\ndefault_pool_size = 1",
        ..Setup::default()
    })
    .await;
    let client = pooler.client().await;
    let pid = value(&client, "SELECT pg_backend_pid()").await.unwrap();
    let err = client
        .simple_query("SELECT pg_sleep(3)")
        .await
        .expect_err("query_timeout ends the query");
    assert_eq!(
        db_error(&err),
        ("08P01".to_owned(), "query timeout".to_owned())
    );
    // The only server is still busy sleeping: a new client must get a new
    // one, not the one the timed-out query left mid-statement.
    let other = pooler.client().await;
    let next = tokio::time::timeout(
        Duration::from_secs(2),
        value(&other, "SELECT pg_backend_pid()"),
    )
    .await
    .expect("served at once by a new server")
    .unwrap();
    assert_ne!(next, pid, "the timed-out server was reused");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_ends_a_leaked_transaction_and_its_server() {
    let pooler = start(Setup {
        pgbouncer: "idle_transaction_timeout = 0.3",
        ..Setup::default()
    })
    .await;
    let watched = pooler.watched_client().await;
    watched
        .client
        .batch_execute("BEGIN; CREATE TABLE leaked (x int); INSERT INTO leaked VALUES (1)")
        .await
        .unwrap();
    let pid = value(&watched.client, "SELECT pg_backend_pid()")
        .await
        .unwrap();
    // The client forgets to COMMIT and sits there.
    assert_eq!(
        ended_with(watched).await,
        ("08P01".to_owned(), "idle transaction timeout".to_owned())
    );
    assert!(
        backend_gone(&pooler, &pid).await,
        "the server left inside the transaction was kept"
    );
    let client = pooler.client().await;
    let exists = value(&client, "SELECT to_regclass('leaked') IS NOT NULL")
        .await
        .unwrap();
    assert_eq!(exists, "f", "the leaked transaction was committed");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_timeout_ends_a_busy_transaction() {
    let pooler = start(Setup {
        pgbouncer: "transaction_timeout = 0.5\nidle_transaction_timeout = 5",
        ..Setup::default()
    })
    .await;
    let client = pooler.client().await;
    client.batch_execute("BEGIN").await.unwrap();
    let pid = value(&client, "SELECT pg_backend_pid()").await.unwrap();
    let started = std::time::Instant::now();
    // Never idle for long, yet the transaction as a whole runs out.
    let err = loop {
        match client.simple_query("SELECT pg_sleep(0.05)").await {
            Ok(_) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "transaction_timeout never fired"
            ),
            Err(err) => break err,
        }
    };
    if let Some(db) = err.as_db_error() {
        assert_eq!(
            (db.code().code(), db.message()),
            ("08P01", "transaction timeout")
        );
    } else {
        // The error reached the connection between two queries.
        assert!(client.is_closed(), "{err}");
    }
    assert!(backend_gone(&pooler, &pid).await);
    // Outside a transaction the same client pattern is never cut.
    let other = pooler.client().await;
    for _ in 0..15 {
        other.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
    }
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_closes_an_idle_client() {
    let pooler = start(Setup {
        pgbouncer: "client_idle_timeout = 0.3",
        ..Setup::default()
    })
    .await;
    let watched = pooler.watched_client().await;
    // Busy clients are not idle.
    for _ in 0..6 {
        watched.client.simple_query("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ended_with(watched).await,
        ("08P01".to_owned(), "client_idle_timeout".to_owned())
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_tells_a_waiting_client() {
    let pooler = start(Setup {
        pgbouncer: "query_wait_timeout = 0.3\ndefault_pool_size = 1\nreserve_pool_timeout = 0",
        ..Setup::default()
    })
    .await;
    let holder = pooler.client().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = pooler.client().await;
    let err = tokio::time::timeout(Duration::from_secs(10), waiter.simple_query("SELECT 2"))
        .await
        .expect("the wait ends")
        .expect_err("no server within query_wait_timeout");
    assert_eq!(
        db_error(&err),
        ("08P01".to_owned(), "query_wait_timeout".to_owned())
    );
    holder.batch_execute("COMMIT").await.unwrap();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_replaces_old_servers_between_transactions() {
    let pooler = start(Setup {
        pgbouncer: "server_lifetime = 0.3\ndefault_pool_size = 1",
        ..Setup::default()
    })
    .await;
    let client = pooler.client().await;
    let first = value(&client, "SELECT pg_backend_pid()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = value(&client, "SELECT pg_backend_pid()").await.unwrap();
    assert_ne!(first, second, "a server outlived server_lifetime");
    assert!(backend_gone(&pooler, &first).await);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_servers() {
    let pooler = start(Setup {
        pgbouncer: "server_idle_timeout = 0.3",
        ..Setup::default()
    })
    .await;
    let client = pooler.client().await;
    client.simple_query("SELECT 1").await.unwrap();
    assert!(pooler.server_connections() >= 1);
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = pooler.server_connections();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "idle servers outlived server_idle_timeout");
    // The client itself stays, and gets a new server.
    client.simple_query("SELECT 1").await.unwrap();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_check_query_replaces_a_server_that_died_while_idle() {
    let pooler = start(Setup {
        pgbouncer: "server_check_delay = 0\nserver_check_query = SELECT 1\ndefault_pool_size = 1",
        ..Setup::default()
    })
    .await;
    let client = pooler.client().await;
    let pid = value(&client, "SELECT pg_backend_pid()").await.unwrap();
    pooler
        .cluster
        .psql("postgres", &format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    assert!(backend_gone(&pooler, &pid).await);
    // Without the check the client would get the dead server and an error.
    let next = value(&client, "SELECT pg_backend_pid()").await.unwrap();
    assert_ne!(next, pid);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connect_timeout_fails_a_server_that_never_answers() {
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let databases = format!("silent = host=127.0.0.1 port={silent_port} dbname=postgres");
    let pooler = start(Setup {
        pgbouncer: "server_connect_timeout = 0.3\nserver_login_retry = 0.2",
        databases: &databases,
        ..Setup::default()
    })
    .await;
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        pooler.connect("postgres", "postgres", "silent"),
    )
    .await
    .expect("the login ends");
    let Err(err) = result else {
        panic!("logged in through a server that never answered");
    };
    let (code, message) = db_error(&err);
    assert_eq!(code, "08006", "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    hold.abort();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_retry_answers_at_once_while_logins_fail_then_recovers() {
    let mut pooler = start(Setup {
        pgbouncer: "server_login_retry = 0.5",
        ..Setup::default()
    })
    .await;
    let client = pooler.client().await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    tokio::task::block_in_place(|| pooler.cluster.stop()).unwrap();
    // The idle server died with the cluster; logins now fail.
    let failing = pooler.client().await;
    let started = std::time::Instant::now();
    let err = failing
        .simple_query("SELECT 1")
        .await
        .expect_err("no server while the cluster is down");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    tokio::task::block_in_place(|| pooler.cluster.start_again()).unwrap();
    // Within a few server_login_retry periods clients are served again.
    let mut served = false;
    for _ in 0..40 {
        if let Ok(client) = pooler.connect("postgres", "postgres", "postgres").await {
            if client.simple_query("SELECT 1").await.is_ok() {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(served, "never recovered after the server came back");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodb_idle_timeout_drops_unused_fallback_pools() {
    let pooler = start(Setup {
        pgbouncer: "autodb_idle_timeout = 0.3",
        databases: "",
        ..Setup::default()
    })
    .await;
    // Re-written with a `*` entry: the harness's ini has only `postgres`.
    let ini = std::fs::read_to_string(pooler.ini()).unwrap();
    let pg = pooler.cluster.port();
    std::fs::write(
        pooler.ini(),
        ini.replace(
            "[pgbouncer]",
            &format!("* = host=127.0.0.1 port={pg}\n[pgbouncer]"),
        ),
    )
    .unwrap();
    pooler.shared.reload().await.expect("reload");
    let named = pooler.client().await;
    value(&named, "SELECT 1").await.unwrap();
    drop(named);
    let client = pooler
        .login("postgres", "postgres", "template1")
        .await
        .expect("routed by *");
    value(&client, "SELECT 1").await.unwrap();
    let pools = |db: &str| {
        pooler
            .shared
            .router()
            .pools()
            .iter()
            .filter(|p| p.database() == db)
            .count()
    };
    assert_eq!(pools("template1"), 1);
    // In use: kept however long.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(pools("template1"), 1, "a pool in use was dropped");
    drop(client);
    let mut left = 1;
    for _ in 0..50 {
        left = pools("template1");
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the unused autodb pool was kept");
    assert_eq!(pools("postgres"), 1, "only autodb pools are dropped");
    let on_template1 = || {
        pooler
            .cluster
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'template1'",
            )
            .unwrap()
    };
    let mut servers = String::new();
    for _ in 0..50 {
        servers = on_template1();
        if servers == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(servers, "0", "the dropped pool's servers stayed open");
    pooler.stop().await;
}

/// A proxy to the real server that passes sessions through but swallows
/// cancel requests, holding their connections open (a server that does
/// not take the cancel).
async fn cancel_swallowing_proxy(upstream: u16) -> u16 {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut client, _)) = listener.accept().await {
            let mut head = [0u8; 8];
            if client.read_exact(&mut head).await.is_err() {
                continue;
            }
            let code = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            if code == 80_877_102 {
                held.push(client);
                continue;
            }
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                use tokio::io::AsyncWriteExt;
                if server.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_wait_timeout_gives_up_on_a_cancel_the_server_does_not_take() {
    use common::wire;
    use tokio::io::AsyncWriteExt;
    let cluster = tokio::task::spawn_blocking(|| wharf_testkit::PgCluster::builder().start())
        .await
        .unwrap()
        .expect("throwaway PostgreSQL");
    let proxy = cancel_swallowing_proxy(cluster.port()).await;
    let databases = format!("proxied = host=127.0.0.1 port={proxy} dbname=postgres");
    let pooler = common::start_with(
        cluster,
        Setup {
            pgbouncer: "auth_type = trust\ncancel_wait_timeout = 0.3",
            databases: &databases,
            ..Setup::default()
        },
    )
    .await;
    let mut session = wire::connect(pooler.port).await;
    session
        .write_all(&wire::startup_packet(&[
            ("user", "postgres"),
            ("database", "proxied"),
        ]))
        .await
        .unwrap();
    let mut key = None;
    loop {
        match wire::read_message(&mut session).await {
            Some((b'K', body)) => key = Some(body),
            Some((b'Z', _)) => break,
            Some(_) => {}
            None => panic!("login failed"),
        }
    }
    let key = key.expect("BackendKeyData");
    session
        .write_all(&wire::query("SELECT pg_sleep(2)"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut cancel = wire::connect(pooler.port).await;
    let mut packet = 16i32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&key);
    cancel.write_all(&packet).await.unwrap();
    let started = std::time::Instant::now();
    // The swallowed cancel would hold this connection for ever.
    wire::read_to_close(&mut cancel).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the cancel request was held {:?}",
        started.elapsed()
    );
    pooler.stop().await;
}

/// `query_wait_notify` (PgBouncer 1.25): a client queued longer than that
/// hears a NOTICE once per wait, and its query then runs;
/// `login_notify_message`: a NOTICE right after login. Read by psql, which
/// prints notices on its standard error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_clients_and_new_logins_get_notices() {
    const QUEUED: &str = "No server connection available in postgres backend, client being queued";
    let pooler = std::sync::Arc::new(
        start(Setup {
            pgbouncer: "default_pool_size = 1\nquery_wait_notify = 1\n\
                        login_notify_message = welcome to wharf\n",
            ..Setup::default()
        })
        .await,
    );
    // A free server: no queue notice, the login one only.
    let out = tokio::task::block_in_place(|| pooler.psql(&["-c", "SELECT 'free'"]));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("NOTICE:  welcome to wharf"), "{err}");
    assert!(!err.contains(QUEUED), "{err}");

    // The only server held in a transaction for 2.5 s: the queued psql
    // hears the notice once after 1 s, then gets the server.
    let holder = pooler.client().await;
    holder.simple_query("BEGIN").await.unwrap();
    holder.simple_query("SELECT 1").await.unwrap();
    let queued = {
        let pooler = pooler.clone();
        tokio::task::spawn_blocking(move || pooler.psql(&["-c", "SELECT 'served'"]))
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    holder.simple_query("COMMIT").await.unwrap();
    let out = queued.await.expect("psql task");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "served",
        "{err}"
    );
    assert_eq!(err.matches(QUEUED).count(), 1, "{err}");
    drop(holder);
    std::sync::Arc::into_inner(pooler)
        .expect("the only handle")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_wait_of_a_session_gets_its_own_notice_time() {
    use common::wire::{login_trusted, query, read_replies};
    use tokio::io::AsyncWriteExt;
    let pooler = start(Setup {
        pgbouncer: "auth_type = trust\ndefault_pool_size = 1\nquery_wait_notify = 2\n",
        ..Setup::default()
    })
    .await;
    let holder = pooler.client().await;
    let mut waiter = login_trusted(pooler.port, "postgres", "postgres").await;
    let start = tokio::time::Instant::now();
    // Waits of `hold` each, the first at `start`, then at `start + 1.6 s`:
    // the second ends 2.4 s after the first began, past the notice time
    // the first would have had, but 0.8 s into its own.
    let mut notices = Vec::new();
    for (begin, hold) in [(0, 300), (1600, 800), (2600, 3000)] {
        holder.batch_execute("BEGIN").await.unwrap();
        tokio::time::sleep_until(start + Duration::from_millis(begin)).await;
        waiter.write_all(&query("SELECT 1")).await.expect("sent");
        tokio::time::sleep(Duration::from_millis(hold)).await;
        holder.batch_execute("COMMIT").await.unwrap();
        let replies = read_replies(&mut waiter, 1, usize::MAX).await;
        assert_eq!(replies.rows, ["1"], "{replies:?}");
        notices.push(replies.tags.matches('N').count());
    }
    assert_eq!(notices, [0, 0, 1], "notices per wait");
    pooler.stop().await;
}

/// A client held by PAUSE waits before any queue for a server, and hears
/// `query_wait_notify`'s notice all the same, once; its query runs after
/// the RESUME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_held_by_pause_is_told_it_is_queued() {
    use common::console::{console, CONSOLE_USERLIST};
    use common::wire::{login_trusted, query, read_replies};
    use tokio::io::AsyncWriteExt;
    let pooler = start(Setup {
        pgbouncer: "auth_type = trust\nadmin_users = admin\nquery_wait_notify = 1\n",
        userlist: CONSOLE_USERLIST,
        ..Setup::default()
    })
    .await;
    let admin = console(&pooler, "admin").await;
    let mut waiter = login_trusted(pooler.port, "postgres", "postgres").await;
    admin.simple_query("PAUSE postgres").await.unwrap();
    waiter.write_all(&query("SELECT 1")).await.expect("sent");
    let notice = tokio::time::timeout(Duration::from_secs(5), read_replies(&mut waiter, 0, 1))
        .await
        .expect("told it is queued while paused");
    assert_eq!(notice.tags, "N");
    // Long enough for a second notice, were one sent.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    admin.simple_query("RESUME postgres").await.unwrap();
    let replies = read_replies(&mut waiter, 1, usize::MAX).await;
    assert_eq!(replies.rows, ["1"], "{replies:?}");
    assert_eq!(replies.tags, "TDCZ", "one notice per wait: {replies:?}");
    drop(admin);
    pooler.stop().await;
}

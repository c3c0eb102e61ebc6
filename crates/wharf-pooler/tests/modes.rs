//! Pooling modes end to end: what session, transaction and statement
//! pooling give clients, under load and when a server dies.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{pgbench, start, Setup, TestPooler};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Turns a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
}

/// The single value a simple query returned (`None` for SQL NULL).
async fn simple_opt(client: &Client, sql: &str) -> Option<String> {
    let messages = within(sql, client.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 1, "{sql}: one row");
    assert_eq!(rows[0].len(), 1, "{sql}: one column");
    rows[0].get(0).map(str::to_owned)
}

async fn simple_value(client: &Client, sql: &str) -> String {
    simple_opt(client, sql).await.expect("not NULL")
}

async fn backend_pid(client: &Client) -> i32 {
    simple_value(client, "SELECT pg_backend_pid()")
        .await
        .parse()
        .expect("a pid")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs pgbench through the pooler and checks it ran cleanly; returns the
/// number of transactions it processed.
fn pgbench_through(pooler: &TestPooler, extra: &[&str]) -> u64 {
    let output = pgbench::run(&pooler.cluster.bin("pgbench"), pooler.port, extra);
    pgbench::assert_error_free(&output);
    let out = String::from_utf8_lossy(&output.stdout);
    out.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("pgbench {extra:?}: no transaction count in\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_session_state_and_resets_it_for_the_next_client() {
    let pooler = start(Setup {
        pgbouncer: "pool_mode = session\ndefault_pool_size = 1",
        ..Setup::default()
    })
    .await;
    let default_work_mem =
        tokio::task::block_in_place(|| pooler.cluster.psql("postgres", "SHOW work_mem")).unwrap();
    assert_ne!(default_work_mem, "17MB");
    let mut first = pooler.client().await;
    let pid = backend_pid(&first).await;
    within(
        "session state",
        first.batch_execute(
            "SET work_mem = '17MB';\
             CREATE TEMP TABLE session_tmp (a int);\
             INSERT INTO session_tmp VALUES (1)",
        ),
    )
    .await
    .unwrap();
    // A named prepared statement lives as long as the session.
    let statement = first
        .prepare("SELECT count(*) FROM session_tmp WHERE a >= $1")
        .await
        .unwrap();
    for round in 0..3 {
        let tx = first.transaction().await.unwrap();
        tx.execute("INSERT INTO session_tmp VALUES (2)", &[])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(simple_value(&first, "SHOW work_mem").await, "17MB");
        let row = first.query_one(&statement, &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 2 + round);
        assert_eq!(backend_pid(&first).await, pid);
    }
    assert_eq!(
        simple_value(&first, "SELECT count(*) FROM pg_prepared_statements").await,
        "1"
    );

    // With the only server held by the first client, the second waits.
    let second = pooler.client().await;
    let mut waiting = tokio::spawn(async move {
        let pid = backend_pid(&second).await;
        (second, pid)
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "the second client got a server while the first still had it"
    );
    drop(statement);
    drop(first);
    let (second, second_pid) = within("second client", waiting).await.unwrap();
    assert_eq!(second_pid, pid, "the same server, reset");
    assert_eq!(
        simple_value(&second, "SHOW work_mem").await,
        default_work_mem
    );
    assert_eq!(
        simple_opt(&second, "SELECT to_regclass('pg_temp.session_tmp')::text").await,
        None
    );
    assert_eq!(
        simple_value(&second, "SELECT count(*) FROM pg_prepared_statements").await,
        "0"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_runs_pgbench_with_prepared_statements() {
    let pooler = start(Setup {
        pgbouncer: "pool_mode = session\ndefault_pool_size = 4",
        ..Setup::default()
    })
    .await;
    tokio::task::block_in_place(|| {
        pgbench::init(&pooler.cluster.bin("pgbench"), pooler.cluster.port());
        let done = pgbench_through(
            &pooler,
            &["-M", "prepared", "-c", "4", "-j", "2", "-t", "200"],
        );
        assert_eq!(done, 800);
        let done = pgbench_through(
            &pooler,
            &["-M", "prepared", "-S", "-c", "4", "-j", "2", "-T", "2"],
        );
        assert!(done > 0);
    });
    pooler.stop().await;
}

/// The server connections, one line each: client backends other than
/// psql's (the asking one, and earlier ones whose backends may still be
/// on their way out).
const SERVERS: &str = "SELECT pid, state, backend_start, left(query, 40) \
     FROM pg_stat_activity WHERE backend_type = 'client backend' \
     AND application_name <> 'psql'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_serves_200_clients_on_5_servers() {
    const CLIENTS: usize = 200;
    const TRANSACTIONS: usize = 5;
    let pooler = Arc::new(
        start(Setup {
            pgbouncer: "default_pool_size = 5\nmax_client_conn = 300",
            max_connections: 50,
            ..Setup::default()
        })
        .await,
    );
    let setup = pooler.client().await;
    within(
        "create",
        setup.batch_execute("CREATE TABLE hits (client int, n int, pid int)"),
    )
    .await
    .unwrap();
    drop(setup);

    // Watch the server side the whole time.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let pooler = pooler.clone();
        let running = running.clone();
        tokio::task::spawn_blocking(move || {
            // Each sample: the server connections, one line each.
            let mut samples = Vec::new();
            while running.load(Ordering::SeqCst) {
                samples.push(pooler.cluster.psql("postgres", SERVERS).expect("psql"));
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        })
    };

    let errors = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..CLIENTS {
        let pooler = pooler.clone();
        let errors = errors.clone();
        clients.spawn(async move {
            let result: Result<(), tokio_postgres::Error> = async {
                let mut client = pooler.client().await;
                for n in 0..TRANSACTIONS {
                    let tx = client.transaction().await?;
                    let id = id as i32;
                    let n = n as i32;
                    tx.execute(
                        "INSERT INTO hits VALUES ($1, $2, pg_backend_pid())",
                        &[&id, &n],
                    )
                    .await?;
                    let row = tx
                        .query_typed_one(
                            "SELECT count(*) FROM hits WHERE client = $1",
                            &[(&id as &(dyn ToSql + Sync), Type::INT4)],
                        )
                        .await?;
                    assert_eq!(row.get::<_, i64>(0), i64::from(n) + 1);
                    tokio::task::yield_now().await;
                    tx.commit().await?;
                }
                Ok(())
            }
            .await;
            if let Err(err) = result {
                eprintln!("client {id}: {err}");
                errors.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let joined = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(done) = clients.join_next().await {
            done.expect("client task");
        }
    })
    .await;
    running.store(false, Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    assert!(joined.is_ok(), "clients still running after 120s");
    assert_eq!(errors.load(Ordering::SeqCst), 0, "client errors");
    assert!(!samples.is_empty());
    let over: Vec<&String> = samples.iter().filter(|s| s.lines().count() > 5).collect();
    assert!(
        over.is_empty(),
        "more than 5 server connections in {} of {} samples:\n{}",
        over.len(),
        samples.len(),
        over.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n--\n")
    );

    let check = pooler.client().await;
    assert_eq!(
        simple_value(&check, "SELECT count(*) FROM hits").await,
        (CLIENTS * TRANSACTIONS).to_string()
    );
    assert_eq!(
        simple_value(
            &check,
            "SELECT count(*) FROM (SELECT client FROM hits GROUP BY client \
             HAVING count(*) = 5 AND count(DISTINCT n) = 5) c"
        )
        .await,
        CLIENTS.to_string()
    );
    let servers: usize = simple_value(&check, "SELECT count(DISTINCT pid) FROM hits")
        .await
        .parse()
        .unwrap();
    assert!((1..=5).contains(&servers), "{servers} servers used");
    drop(check);
    Arc::try_unwrap(pooler)
        .ok()
        .expect("no other owner")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_runs_pgbench_simple_and_extended() {
    let pooler = start(Setup {
        pgbouncer: "default_pool_size = 5",
        ..Setup::default()
    })
    .await;
    tokio::task::block_in_place(|| {
        pgbench::init(&pooler.cluster.bin("pgbench"), pooler.cluster.port());
        for mode in ["simple", "extended"] {
            let done = pgbench_through(
                &pooler,
                &["-M", mode, "-S", "-c", "20", "-j", "2", "-T", "3"],
            );
            assert!(done > 0, "{mode}: no transactions");
            // The write transaction too (BEGIN ... END, five statements).
            let done = pgbench_through(&pooler, &["-M", mode, "-c", "20", "-j", "2", "-t", "20"]);
            assert_eq!(done, 400, "{mode}");
        }
        let servers = pooler.cluster.psql("postgres", SERVERS).unwrap();
        assert!(
            servers.lines().count() <= 5,
            "server connections:\n{servers}"
        );
    });
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_allows_single_statements_and_refuses_transactions() {
    let pooler = start(Setup {
        pgbouncer: "pool_mode = statement\ndefault_pool_size = 2",
        ..Setup::default()
    })
    .await;
    let client = pooler.client().await;
    assert_eq!(simple_value(&client, "SELECT 40 + 2").await, "42");
    within(
        "autocommit statements",
        client.batch_execute("CREATE TABLE st (a int); INSERT INTO st VALUES (1), (2)"),
    )
    .await
    .unwrap();
    let row = within(
        "extended",
        client.query_typed_one(
            "SELECT sum(a) + $1 FROM st",
            &[(&10i64 as &(dyn ToSql + Sync), Type::INT8)],
        ),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, i64>(0), 13);
    // A whole transaction in one Query ends outside it: allowed.
    assert_eq!(
        simple_value(&client, "BEGIN; SELECT count(*) FROM st; COMMIT")
            .await
            .as_str(),
        "2"
    );
    let err = within("bad statement", client.simple_query("SELECT 1/0"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(
        simple_value(&client, "SELECT 'still here'").await,
        "still here"
    );

    // A transaction left open is refused, and the client is disconnected.
    let mut watched = pooler.watched_client().await;
    let begun = within("BEGIN", watched.client.simple_query("BEGIN")).await;
    let next = within(
        "in the transaction",
        watched.client.simple_query("SELECT 1"),
    )
    .await;
    let ended = within("connection end", &mut watched.ended).await.unwrap();
    let mut messages = Vec::new();
    for err in [begun.err(), next.err(), ended.err()].into_iter().flatten() {
        messages.push(
            err.as_db_error()
                .map_or_else(|| err.to_string(), |db| db.message().to_owned()),
        );
    }
    assert!(
        messages
            .iter()
            .any(|m| m == "transaction blocks not allowed in statement pooling mode"),
        "errors seen: {messages:?}"
    );
    assert!(watched.client.is_closed());

    // psql: BEGIN then more statements.
    let output =
        tokio::task::block_in_place(|| pooler.psql(&["-c", "BEGIN; SELECT 1", "-c", "COMMIT"]));
    assert!(!output.status.success());
    let err = text(&output.stderr);
    assert!(err.contains("statement pooling mode"), "psql: {err}");
    assert!(!text(&output.stdout).contains("COMMIT"));

    // Nothing of it stayed: autocommit clients go on working.
    let fresh = pooler.client().await;
    assert_eq!(simple_value(&fresh, "SELECT count(*) FROM st").await, "2");
    assert_eq!(
        simple_value(&client, "SELECT 'and this one'").await,
        "and this one"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_transaction_fails_its_client_promptly() {
    let pooler = start(Setup {
        pgbouncer: "default_pool_size = 1",
        ..Setup::default()
    })
    .await;

    // Killed while the client waits for an answer.
    let waiting = pooler.watched_client().await;
    within("BEGIN", waiting.client.batch_execute("BEGIN"))
        .await
        .unwrap();
    let pid = backend_pid(&waiting.client).await;
    let sleeping = {
        let client = waiting.client;
        tokio::spawn(async move {
            let result = client.simple_query("SELECT pg_sleep(60)").await;
            (client, result)
        })
    };
    // Wait until the server is in the sleep, then end it from outside.
    tokio::task::block_in_place(|| {
        let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND query LIKE '%pg_sleep(60)%' AND state = 'active'");
        for _ in 0..200 {
            if pooler.cluster.psql("postgres", &sql).unwrap() == "1" {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let killed = pooler
            .cluster
            .psql("postgres", &format!("SELECT pg_terminate_backend({pid})"))
            .unwrap();
        assert_eq!(killed, "t");
    });
    let (client, result) = within("the client's error", sleeping).await.unwrap();
    let err = result.expect_err("the query of a killed server fails");
    assert_eq!(
        err.code(),
        Some(&SqlState::ADMIN_SHUTDOWN),
        "the server's own error reaches the client: {err}"
    );
    let after = within("after", client.simple_query("SELECT 1")).await;
    assert!(after.is_err());
    assert!(client.is_closed());
    within("connection end", waiting.ended).await.unwrap().ok();

    // Killed while the client is idle in its transaction.
    let mut idle = pooler.watched_client().await;
    within("BEGIN", idle.client.batch_execute("BEGIN"))
        .await
        .unwrap();
    let idle_pid = backend_pid(&idle.client).await;
    assert_ne!(idle_pid, pid, "the killed server was not reused");
    tokio::task::block_in_place(|| {
        pooler
            .cluster
            .psql(
                "postgres",
                &format!("SELECT pg_terminate_backend({idle_pid})"),
            )
            .unwrap()
    });
    // The client hears of it without asking.
    let ended = within("connection end", &mut idle.ended).await.unwrap();
    let err = ended.expect_err("the connection ends in an error");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    let after = within("after", idle.client.simple_query("SELECT 1")).await;
    assert!(after.is_err());

    // The next client gets a new, working server.
    let next = pooler.client().await;
    let next_pid = backend_pid(&next).await;
    assert!(next_pid != pid && next_pid != idle_pid);
    within(
        "BEGIN",
        next.batch_execute("BEGIN; CREATE TABLE survived (a int); COMMIT"),
    )
    .await
    .unwrap();
    assert_eq!(
        simple_value(
            &next,
            "SELECT count(*) FROM pg_class WHERE relname = 'survived'"
        )
        .await,
        "1"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_delivers_notifications_to_a_listening_client() {
    let pooler = start(Setup {
        pgbouncer: "pool_mode = session",
        ..Setup::default()
    })
    .await;
    let (listener, mut connection) = tokio_postgres::connect(
        &pooler.url("postgres", "postgres", "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("listener connects");
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN wharf_events").await.unwrap();

    let notifier = pooler.client().await;
    notifier
        .batch_execute("NOTIFY wharf_events, 'hello through the pooler'")
        .await
        .unwrap();
    // The notification arrives while the listener is idle: the pooler must
    // relay server messages nobody asked for in session mode.
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), notifications.recv())
        .await
        .expect("notification relayed")
        .expect("listener connection alive");
    assert_eq!(
        got,
        (
            "wharf_events".to_owned(),
            "hello through the pooler".to_owned()
        )
    );
    pooler.stop().await;
}

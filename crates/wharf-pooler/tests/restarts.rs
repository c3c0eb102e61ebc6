//! PostgreSQL restarting under the pooler (issue 14): a query running when
//! the server goes away ends with the server's error (or the pooler's word
//! that the server closed the connection), the next transaction runs on a
//! fresh server once PostgreSQL is back, and a cancel request sent while the
//! server is gone is answered rather than left hanging.

mod common;

use std::time::{Duration, Instant};

use common::{start, Setup, TestPooler};
use tokio_postgres::{Client, NoTls};

/// Turns a hang into a failure; the interrupted query would sleep 60 s.
const ANSWER: Duration = Duration::from_secs(20);
/// The query the restart interrupts.
const LONG: &str = "SELECT pg_sleep(60)::text";

/// How PostgreSQL goes away.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Fast shutdown: backends send FATAL 57P01 before they exit.
    Fast,
    /// A crash: every process SIGKILLed, sockets closed without a word.
    Crash,
}

/// A pooler in `pool_mode` that retries failed server logins after half a
/// second (PgBouncer's default, 15 s, would slow the tests down).
async fn pooler(pool_mode: &str) -> TestPooler {
    start(Setup {
        pgbouncer: &format!(
            "pool_mode = {pool_mode}\ndefault_pool_size = 2\nserver_login_retry = 0.5\n"
        ),
        ..Setup::default()
    })
    .await
}

/// Waits until a new client's transaction runs: logins that failed while
/// the server was down are retried only after `server_login_retry`, and
/// until then clients are told so, as PgBouncer does.
async fn serves_again(pooler: &TestPooler) {
    let deadline = Instant::now() + ANSWER;
    loop {
        let outcome = match pooler.connect("postgres", "postgres", "postgres").await {
            Ok(client) => text(&client, "BEGIN; SELECT 'back'; COMMIT").await,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(answer) => return assert_eq!(answer, "back"),
            Err(err) if Instant::now() > deadline => panic!("never served again: {err}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The first column of the first row, by the simple protocol (one message,
/// so a transaction-mode pooler runs it on one server).
async fn text(client: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    common::first_text(client, sql, ANSWER).await
}

/// Waits until the server runs [`LONG`] (asked over its own socket).
fn wait_until_running(pooler: &TestPooler) {
    let deadline = Instant::now() + ANSWER;
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{LONG}'"
    );
    while pooler.cluster.psql("postgres", &sql).expect("psql") == "0" {
        assert!(Instant::now() < deadline, "{LONG:?} never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop_cluster(pooler: &mut TestPooler, how: Stop) {
    match how {
        Stop::Fast => pooler.cluster.stop(),
        Stop::Crash => pooler.cluster.kill(),
    }
    .expect("the cluster stops");
}

/// What the interrupted query got: the server's error for a fast shutdown,
/// a closed connection (by the pooler's error or without one) for a crash.
fn assert_interrupted(how: Stop, err: &tokio_postgres::Error) {
    match (how, err.as_db_error()) {
        (Stop::Fast, Some(db)) => {
            assert_eq!(db.code().code(), "57P01", "{db:?}");
            assert_eq!(
                db.message(),
                "terminating connection due to administrator command"
            );
        }
        (Stop::Crash, Some(db)) => assert!(
            db.message()
                .contains("server closed the connection unexpectedly")
                || db.code().code().starts_with("08"),
            "{db:?}"
        ),
        (Stop::Crash, None) => assert!(
            err.is_closed() || err.to_string().contains("closed"),
            "{err}"
        ),
        (Stop::Fast, None) => panic!("expected the server's error, got {err}"),
    }
}

/// A query runs, PostgreSQL goes away `how` and comes back: the query ends
/// promptly with an error, and both the same client (if the pooler kept it)
/// and a new one run their next transaction.
async fn restart_under_a_running_query(pool_mode: &str, how: Stop) {
    let mut pooler = pooler(pool_mode).await;
    // An idle server in the pool too: it dies with the cluster and must not
    // be handed to the next transaction.
    let idle = pooler.client().await;
    assert_eq!(text(&idle, "SELECT 'idle'").await.unwrap(), "idle");
    let client = pooler.client().await;
    let running = tokio::spawn(async move {
        let result = text(&client, LONG).await;
        (client, result)
    });
    tokio::task::block_in_place(|| {
        wait_until_running(&pooler);
        stop_cluster(&mut pooler, how);
    });
    let started = Instant::now();
    let (client, result) = tokio::time::timeout(ANSWER, running)
        .await
        .expect("the interrupted query ends")
        .expect("query task");
    let err = result.expect_err("the query outlived its server");
    eprintln!(
        "{pool_mode}/{how:?}: the query got {err:?} after {:?}",
        started.elapsed()
    );
    assert_interrupted(how, &err);
    tokio::task::block_in_place(|| pooler.cluster.start_again()).expect("the cluster restarts");

    // A client the pooler kept goes on; a closed one is replaced by a new
    // login, as a driver's pool would.
    for (name, kept) in [("interrupted", client), ("idle", idle)] {
        if kept.is_closed() {
            eprintln!("{pool_mode}/{how:?}: the {name} client was closed");
            continue;
        }
        let answer = text(&kept, "BEGIN; SELECT 'again'; COMMIT").await;
        assert_eq!(answer.expect(name), "again", "{pool_mode}/{how:?}: {name}");
    }
    for _ in 0..3 {
        let fresh = pooler.client().await;
        let answer = text(&fresh, "BEGIN; SELECT 'fresh'; COMMIT").await;
        assert_eq!(
            answer.expect("a new client"),
            "fresh",
            "{pool_mode}/{how:?}"
        );
    }
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_restart_in_transaction_mode() {
    restart_under_a_running_query("transaction", Stop::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_in_transaction_mode() {
    restart_under_a_running_query("transaction", Stop::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_restart_in_session_mode() {
    restart_under_a_running_query("session", Stop::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_in_session_mode() {
    restart_under_a_running_query("session", Stop::Crash).await;
}

/// Sends a cancel request with `token` and waits until the pooler closes
/// the connection, which is all the answer a cancel request gets
/// (tokio-postgres reads to the end).
async fn cancel_is_answered(token: &tokio_postgres::CancelToken, what: &str) {
    let started = Instant::now();
    let sent = tokio::time::timeout(ANSWER, token.cancel_query(NoTls))
        .await
        .unwrap_or_else(|_| panic!("the cancel for {what} was left hanging"));
    eprintln!("cancel for {what}: {sent:?} after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_the_server_is_gone_is_answered() {
    for pool_mode in ["transaction", "session"] {
        let mut pooler = pooler(pool_mode).await;
        // A client that never had a server, and one whose server dies.
        let bystander = pooler.client().await;
        let client = pooler.client().await;
        let token = client.cancel_token();
        let running = tokio::spawn(async move { text(&client, LONG).await });
        tokio::task::block_in_place(|| {
            wait_until_running(&pooler);
            pooler.cluster.kill().expect("the cluster dies");
        });
        cancel_is_answered(&token, "a query whose server died").await;
        cancel_is_answered(&bystander.cancel_token(), "an idle client").await;
        let result = tokio::time::timeout(ANSWER, running)
            .await
            .expect("the interrupted query ends")
            .expect("query task");
        assert!(
            result.is_err(),
            "{pool_mode}: the query outlived its server"
        );
        // While the server is still down, a client waiting for one.
        let waiting = pooler.client().await;
        let token = waiting.cancel_token();
        let pending = tokio::spawn(async move { waiting.simple_query("SELECT 1").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel_is_answered(&token, "a client waiting for a server").await;
        let waited = tokio::time::timeout(ANSWER, pending)
            .await
            .expect("a query with no server to run on hung")
            .expect("query task");
        assert!(waited.is_err(), "{pool_mode}: a query ran with no server");
        tokio::task::block_in_place(|| pooler.cluster.start_again()).expect("restart");
        serves_again(&pooler).await;
        pooler.stop().await;
    }
}

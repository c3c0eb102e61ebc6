//! Cancel requests through the pooler: a client's key cancels its own
//! running query and nothing else, never another client's query on a server
//! it no longer (or not yet) holds; a server a cancel is on its way to is
//! held back until it lands, and SHOW POOLS counts both.

mod common;

use std::time::Duration;

use common::console::{console, eventually, show, CONSOLE_SETTINGS, CONSOLE_USERLIST};
use common::{start, wire, Setup, TestPooler};
use tokio::io::AsyncWriteExt;
use tokio_postgres::{Client, NoTls};

/// Turns a hang into a failure; the cancelled query would run 30 s.
const ANSWER: Duration = Duration::from_secs(15);

/// A direct connection to the server, to watch what runs there.
async fn observer(pooler: &TestPooler) -> Client {
    let (client, connection) =
        tokio_postgres::connect(&pooler.cluster.connection_string("postgres"), NoTls)
            .await
            .expect("direct connection to the server");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Waits until the server runs `query` (from the pooler's connections).
async fn wait_until_running(observer: &Client, query: &str) {
    let deadline = tokio::time::Instant::now() + ANSWER;
    loop {
        let running: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1",
                &[&query],
            )
            .await
            .unwrap()
            .get(0);
        if running > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{query:?} never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first column of the first row, by the simple protocol (one message,
/// so a transaction-mode pooler runs it on one server).
async fn text(client: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    common::first_text(client, sql, ANSWER).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_clients_query_and_no_other() {
    let pooler = start(Setup::default()).await;
    let watch = observer(&pooler).await;
    let a = pooler.client().await;
    let b = pooler.client().await;
    let long = "SELECT pg_sleep(30)::text";
    // Long enough to be seen running before the cancel goes out.
    let short = "SELECT pg_sleep(2)::text || 'done'";
    let token = a.cancel_token();
    let cancel = async {
        wait_until_running(&watch, long).await;
        wait_until_running(&watch, short).await;
        token
            .cancel_query(NoTls)
            .await
            .expect("cancel request sent");
    };
    let (a_result, b_result, ()) = tokio::join!(text(&a, long), text(&b, short), cancel);
    let err = a_result.expect_err("the long query was cancelled");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57014");
    assert_eq!(db.message(), "canceling statement due to user request");
    assert_eq!(b_result.expect("the other client's query"), "done");
    // Both clients go on as before.
    assert_eq!(text(&a, "SELECT 'a'").await.unwrap(), "a");
    assert_eq!(text(&b, "SELECT 'b'").await.unwrap(), "b");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_a_client_not_in_a_query_cancels_nothing() {
    // One server: b runs on the very server a used a moment ago.
    let pooler = start(Setup {
        pgbouncer: "default_pool_size = 1\n",
        ..Setup::default()
    })
    .await;
    let watch = observer(&pooler).await;
    let a = pooler.client().await;
    let b = pooler.client().await;
    let a_pid = text(&a, "SELECT pg_backend_pid()::text").await.unwrap();
    let query = "SELECT pg_backend_pid()::text || ' ' || pg_sleep(2)::text";
    let a_token = a.cancel_token();
    let cancels = async {
        wait_until_running(&watch, query).await;
        a_token
            .cancel_query(NoTls)
            .await
            .expect("cancel request sent");
        // A made-up key is ignored too.
        let mut raw = wire::connect(pooler.port).await;
        let mut packet = 16i32.to_be_bytes().to_vec();
        packet.extend_from_slice(&80_877_102i32.to_be_bytes());
        packet.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0x0a, 0xbc, 0xde, 0xf0]);
        raw.write_all(&packet).await.unwrap();
        assert!(
            wire::read_to_close(&mut raw).await.is_empty(),
            "a cancel request gets no answer"
        );
    };
    let (b_result, ()) = tokio::join!(text(&b, query), cancels);
    assert_eq!(
        b_result.expect("b's query is not cancelled"),
        format!("{a_pid} ")
    );
    assert_eq!(text(&a, "SELECT 'a'").await.unwrap(), "a");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_waiting_for_the_only_server_spares_its_holder() {
    let pooler = start(Setup {
        pgbouncer: "pool_mode = transaction\ndefault_pool_size = 1\n",
        ..Setup::default()
    })
    .await;
    let watch = observer(&pooler).await;
    let a = pooler.client().await;
    let b = pooler.client().await;
    // b holds the only server for a whole transaction.
    b.batch_execute("BEGIN").await.unwrap();
    let query = "SELECT pg_sleep(2)::text || 'slept'";
    let a_token = a.cancel_token();
    let a_waits = async {
        wait_until_running(&watch, query).await;
        // a asks for the server b holds, and cancels while it waits.
        let a_query = text(&a, "SELECT 'a got its turn'");
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            a_token
                .cancel_query(NoTls)
                .await
                .expect("cancel request sent");
        };
        let (a_result, ()) = tokio::join!(a_query, cancel);
        a_result
    };
    let b_runs = async {
        let slept = text(&b, query).await;
        b.batch_execute("COMMIT").await.unwrap();
        slept
    };
    let (b_result, a_result) = tokio::join!(b_runs, a_waits);
    assert_eq!(b_result.expect("b's query is not cancelled"), "slept");
    // Nothing of a's was running, so there was nothing to cancel.
    assert_eq!(a_result.expect("a's query runs after b"), "a got its turn");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_gets_through_when_every_client_place_is_taken() {
    let pooler = start(Setup {
        pgbouncer: "max_client_conn = 1\n",
        ..Setup::default()
    })
    .await;
    let a = pooler.client().await;
    let long = "SELECT pg_sleep(30)::text";
    let token = a.cancel_token();
    let cancel = async {
        // Wait until the query runs: the observer cannot come through the
        // pooler (it is full), so it watches the server directly.
        let watch = observer(&pooler).await;
        wait_until_running(&watch, long).await;
        token
            .cancel_query(NoTls)
            .await
            .expect("cancel request sent");
    };
    let (result, ()) = tokio::join!(text(&a, long), cancel);
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert_eq!(text(&a, "SELECT 'still here'").await.unwrap(), "still here");
    pooler.stop().await;
}

/// The server's postmaster stopped with SIGSTOP until dropped: it still
/// accepts connections (the kernel's backlog) but takes no cancel request,
/// while the backends already running go on.
struct StoppedPostmaster(String);

impl StoppedPostmaster {
    fn stop(pooler: &TestPooler) -> Self {
        let pid_file = pooler.cluster.data_dir().join("postmaster.pid");
        let pid = std::fs::read_to_string(pid_file)
            .expect("postmaster.pid")
            .lines()
            .next()
            .expect("a pid")
            .trim()
            .to_owned();
        signal("STOP", &pid);
        Self(pid)
    }
}

impl Drop for StoppedPostmaster {
    fn drop(&mut self) {
        signal("CONT", &self.0);
    }
}

fn signal(name: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

async fn pools_column(admin: &Client, column: &str) -> String {
    show(admin, "SHOW POOLS")
        .await
        .value2("database", "postgres", "user", "postgres", column)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_held_back_until_the_cancel_on_its_way_lands() {
    let pgbouncer = format!("{CONSOLE_SETTINGS}pool_mode = transaction\ndefault_pool_size = 1\n");
    let pooler = start(Setup {
        pgbouncer: &pgbouncer,
        userlist: CONSOLE_USERLIST,
        ..Setup::default()
    })
    .await;
    let admin = console(&pooler, "admin").await;
    let watch = observer(&pooler).await;
    let a = pooler.client().await;
    let b = pooler.client().await;
    let a_pid = text(&a, "SELECT pg_backend_pid()::text").await.unwrap();
    let query = "SELECT pg_sleep(1.5)::text || 'slept'";
    let token = a.cancel_token();
    let a_runs = tokio::spawn(async move { text(&a, query).await });
    wait_until_running(&watch, query).await;

    let postmaster = StoppedPostmaster::stop(&pooler);
    let cancel = tokio::spawn(async move { token.cancel_query(NoTls).await });
    eventually("the cancel counted as sent", || async {
        pools_column(&admin, "cl_active_cancel_req").await == "1"
            && pools_column(&admin, "sv_active_cancel").await == "1"
    })
    .await;
    // The cancel has not landed, so a's query ends on its own; its server
    // is then held back, and b, wanting the only server, waits.
    assert_eq!(a_runs.await.unwrap().expect("a's query"), "slept");
    eventually("the server held back", || async {
        pools_column(&admin, "sv_being_canceled").await == "1"
    })
    .await;
    // Held back is not idle.
    assert_eq!(pools_column(&admin, "sv_idle").await, "0");
    let servers = show(&admin, "SHOW SERVERS").await;
    assert_eq!(
        servers.value("database", "postgres", "state"),
        "being_canceled"
    );
    let b_runs = tokio::spawn(async move { text(&b, "SELECT pg_backend_pid()::text").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !b_runs.is_finished(),
        "b got the server a cancel is on its way to"
    );

    drop(postmaster);
    cancel.await.unwrap().expect("cancel request sent");
    let b_pid = b_runs.await.unwrap().expect("b's query is not cancelled");
    assert_eq!(b_pid, a_pid, "the same, only server");
    for column in [
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active_cancel",
        "sv_being_canceled",
    ] {
        assert_eq!(pools_column(&admin, column).await, "0", "{column}");
    }
    pooler.stop().await;
}

//! A database that is down gives callers a clear error within the acquire
//! timeout, and the pool recovers once it is back.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{pool, start_db};
use wharf_mysql::mysql_async::prelude::*;
use wharf_mysql::{MysqlManager, Pool};

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// Far beyond the acquire timeout: only a hang, not slowness, trips it.
const HANG: Duration = Duration::from_secs(30);

fn assert_refused(error: &wharf::Error) {
    let wharf::Error::Timeout {
        waited, last_error, ..
    } = error
    else {
        panic!("expected a timeout, got: {error}");
    };
    assert!(*waited >= ACQUIRE_TIMEOUT, "{error}");
    assert!(last_error.is_some(), "the cause is attached: {error}");
    let message = error.to_string();
    assert!(
        message.contains("last connect error") && message.contains("refused"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_gives_a_clear_error_and_the_pool_recovers() {
    let mut db = start_db().await;
    let pool = pool(&db, |b| {
        b.max_size(2)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .validate_after(Duration::ZERO)
    });
    let mut conn = pool.get().await.unwrap();
    conn.query_drop("DO 1").await.unwrap();
    drop(conn);

    tokio::task::block_in_place(|| db.kill()).unwrap();
    let error = tokio::time::timeout(HANG, pool.get())
        .await
        .expect("get() gave up by itself")
        .expect_err("the server is down");
    assert_refused(&error);

    tokio::task::block_in_place(|| db.start_again()).unwrap();
    let deadline = tokio::time::Instant::now() + HANG;
    let mut conn = loop {
        match pool.get().await {
            Ok(conn) => break conn,
            Err(error) if tokio::time::Instant::now() < deadline => {
                eprintln!("still waiting for the restarted server: {error}");
            }
            Err(error) => panic!("the pool did not recover: {error}"),
        }
    };
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answered_gives_a_clear_error() {
    // A port that was free a moment ago; nothing listens on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("mysql://wharf:wharf@127.0.0.1:{port}/test");
    let pool = Pool::builder(MysqlManager::from_url(&url).unwrap())
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .build()
        .unwrap();

    let error = tokio::time::timeout(HANG, pool.get())
        .await
        .expect("get() gave up by itself")
        .expect_err("nothing listens there");
    assert_refused(&error);
}

//! Queries through the pool, connection reuse, and what a returned
//! connection keeps.

mod common;

use std::time::Duration;

use common::{admin, connection_id, pool, start_db, wait_for_connections};
use wharf_mysql::mysql_async::prelude::*;
use wharf_mysql::{MysqlManager, Pool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_run_through_the_pool_and_connections_are_reused() {
    let db = start_db().await;
    // The URL as a user would write it, so mysql_async's defaults apply
    // (including its switch to the Unix socket for a local server).
    let pool = Pool::builder(MysqlManager::from_url(&db.url("test")).unwrap())
        .max_size(2)
        .build()
        .unwrap();

    let mut conn = pool.get().await.unwrap();
    let two: Option<i64> = conn.query_first("SELECT 1 + 1").await.unwrap();
    assert_eq!(two, Some(2));
    let (user, database): (String, String) = conn
        .query_first("SELECT CURRENT_USER(), DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((user.as_str(), database.as_str()), ("wharf@%", "test"));
    let first_id = connection_id(&mut conn).await;
    assert_eq!(pool.status().in_use, 1);
    drop(conn);

    let status = pool.status();
    assert_eq!((status.size, status.idle, status.in_use), (1, 1, 0));
    let mut again = pool.get().await.unwrap();
    assert_eq!(
        connection_id(&mut again).await,
        first_id,
        "the idle connection is reused, not a new one opened"
    );
    drop(again);

    let mut admin = admin(&db).await;
    assert_eq!(
        wait_for_connections(&mut admin, |ids| ids.len() == 1).await,
        vec![first_id],
        "the server sees exactly the pool's one connection"
    );
    pool.close().await;
    assert_eq!(
        wait_for_connections(&mut admin, <[u64]>::is_empty).await,
        Vec::<u64>::new(),
        "closing the pool closes its connections on the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_persists_between_checkouts() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(1));

    let mut conn = pool.get().await.unwrap();
    conn.query_drop("SET @left_behind = 42").await.unwrap();
    drop(conn);

    let mut conn = pool.get().await.unwrap();
    let value: Option<i64> = conn.query_first("SELECT @left_behind").await.unwrap();
    assert_eq!(
        value,
        Some(42),
        "documented: the pool does not reset sessions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_hook_can_reset_sessions() {
    let db = start_db().await;
    let pool = pool(&db, |b| {
        b.max_size(1).on_checkout(|conn| {
            Box::pin(async move {
                conn.reset().await?;
                Ok(())
            })
        })
    });

    let mut conn = pool.get().await.unwrap();
    conn.query_drop("SET @left_behind = 42").await.unwrap();
    let id = connection_id(&mut conn).await;
    drop(conn);

    let mut conn = pool.get().await.unwrap();
    assert_eq!(connection_id(&mut conn).await, id, "same connection");
    let value: Option<Option<i64>> = conn.query_first("SELECT @left_behind").await.unwrap();
    assert_eq!(value, Some(None), "COM_RESET_CONNECTION cleared it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_reported_as_the_last_connect_error() {
    let db = start_db().await;
    let url = format!("mysql://wharf:wrong@{}:{}/test", db.host(), db.port());
    let pool = Pool::builder(MysqlManager::from_url(&url).unwrap())
        .acquire_timeout(Duration::from_millis(500))
        .build()
        .unwrap();

    let error = pool.get().await.unwrap_err();
    assert!(matches!(error, wharf::Error::Timeout { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("Access denied"), "{message}");
}

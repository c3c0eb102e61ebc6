//! The pool shortcuts of `PoolExt`: each statement takes a connection, runs
//! and gives it back, whatever the outcome.

mod common;

use std::time::Duration;

use common::{assert_settled, cluster, pool};
use wharf_postgres::tokio_postgres::error::SqlState;
use wharf_postgres::{Error, PgManager, PoolExt};
use wharf_testkit::PgCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortcuts_run_statements_and_return_the_connection() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres")).unwrap(),
        "shortcuts",
        2,
    );

    let created = pool
        .execute("CREATE TABLE items (id int PRIMARY KEY, name text)", &[])
        .await
        .unwrap();
    assert_eq!(created, 0);
    let inserted = pool
        .execute(
            "INSERT INTO items VALUES ($1, $2), ($3, $4)",
            &[&1i32, &"one", &2i32, &"two"],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 2);

    let rows = pool
        .query("SELECT id, name FROM items ORDER BY id", &[])
        .await
        .unwrap();
    let items: Vec<(i32, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(items, [(1, "one".to_owned()), (2, "two".to_owned())]);

    let row = pool
        .query_one("SELECT name FROM items WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "two");

    let found = pool
        .query_opt("SELECT name FROM items WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(found.map(|row| row.get::<_, String>(0)), Some("one".into()));
    let missing = pool
        .query_opt("SELECT name FROM items WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    assert!(missing.is_none());

    assert_settled(&pool).await;
    assert!(pool.status().size >= 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_and_the_connection_still_comes_back() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres")).unwrap(),
        "shortcut_errors",
        1,
    );

    let err = pool
        .query("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE), "{err:?}");
    // tokio-postgres alone would display "db error".
    assert!(
        err.to_string().contains("no_such_table"),
        "message should carry the server's words: {err}"
    );

    let err = pool
        .query_one("SELECT 1 WHERE false", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Postgres(_)), "{err:?}");
    assert!(
        err.to_string().contains("unexpected number of rows"),
        "{err}"
    );

    let err = pool
        .query_opt("SELECT generate_series(1, 2)", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Postgres(_)), "{err:?}");

    // Wrong parameter count is caught before anything runs.
    let err = pool.execute("SELECT $1::int", &[]).await.unwrap_err();
    assert!(matches!(err, Error::Postgres(_)), "{err:?}");

    // With max_size 1, any of the above keeping its connection would make
    // this time out.
    let row = pool.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    assert_settled(&pool).await;
    assert_eq!(pool.status().size, 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortcut_futures_are_send_and_share_the_pool() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres"))
            .unwrap()
            .statement_cache(4),
        "shortcut_tasks",
        3,
    );

    let mut tasks = Vec::new();
    for i in 0..30i64 {
        let pool = pool.clone();
        // tokio::spawn only compiles for Send futures.
        tasks.push(tokio::spawn(async move {
            let row = pool.query_one("SELECT $1::bigint * 3", &[&i]).await?;
            Ok::<i64, Error>(row.get(0))
        }));
    }
    for (i, task) in (0..30i64).zip(tasks) {
        assert_eq!(task.await.unwrap().unwrap(), i * 3);
    }
    assert_settled(&pool).await;
    assert!(pool.status().size <= 3);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_errors_come_through_as_such() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool =
        wharf_postgres::Pool::builder(PgManager::from_url(&cluster.url("postgres")).unwrap())
            .max_size(1)
            .acquire_timeout(Duration::from_millis(300))
            .build()
            .unwrap();

    let held = pool.get().await.unwrap();
    let err = pool.query("SELECT 1", &[]).await.unwrap_err();
    assert!(
        matches!(err, Error::Pool(wharf::Error::Timeout { .. })),
        "{err:?}"
    );
    drop(held);

    pool.close().await;
    let err = pool.execute("SELECT 1", &[]).await.unwrap_err();
    assert!(matches!(err, Error::Pool(wharf::Error::Closed)), "{err:?}");
}

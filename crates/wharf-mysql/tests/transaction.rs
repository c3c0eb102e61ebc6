//! `transaction()`: commit on success, rollback on error, one connection
//! throughout.

mod common;

use std::time::Duration;

use common::{admin, connection_id, create_table, ids_in_t, pool, start_db};
use tokio::sync::oneshot;
use wharf_mysql::mysql_async::prelude::*;

/// An application's own error type, to show that `transaction` returns the
/// closure's error as it is.
#[derive(Debug)]
enum AppError {
    Db(wharf_mysql::Error),
    OutOfStock,
}

impl From<wharf_mysql::Error> for AppError {
    fn from(error: wharf_mysql::Error) -> Self {
        AppError::Db(error)
    }
}

/// So that `?` works on queries inside the closure.
impl From<wharf_mysql::mysql_async::Error> for AppError {
    fn from(error: wharf_mysql::mysql_async::Error) -> Self {
        AppError::Db(error.into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_makes_the_rows_visible_only_at_the_end() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(2));
    let mut admin = admin(&db).await;
    create_table(&mut admin).await;

    let (inserted_tx, inserted) = oneshot::channel::<u64>();
    let (checked_tx, checked) = oneshot::channel::<()>();
    let transaction = tokio::spawn({
        let pool = pool.clone();
        async move {
            wharf_mysql::transaction(&pool, |tx| {
                Box::pin(async move {
                    tx.query_drop("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
                        .await?;
                    let id: u64 = tx.query_first("SELECT CONNECTION_ID()").await?.unwrap();
                    inserted_tx.send(id).unwrap();
                    checked.await.unwrap();
                    let count: Option<i64> = tx.query_first("SELECT COUNT(*) FROM t").await?;
                    Ok::<_, wharf_mysql::Error>((id, count))
                })
            })
            .await
        }
    });

    let tx_connection = inserted.await.unwrap();
    let mut other = pool.get().await.unwrap();
    assert_ne!(connection_id(&mut other).await, tx_connection);
    assert!(
        ids_in_t(&mut other).await.is_empty(),
        "uncommitted rows are invisible to other connections"
    );
    drop(other);
    checked_tx.send(()).unwrap();

    let (id, count) = transaction.await.unwrap().unwrap();
    assert_eq!(id, tx_connection);
    assert_eq!(count, Some(2), "the transaction sees its own rows");
    assert_eq!(ids_in_t(&mut admin).await, vec![1, 2], "committed");

    assert_eq!(pool.status().in_use, 0);
    let mut conn = pool.get().await.unwrap();
    let in_transaction: Option<i64> = conn.query_first("SELECT @@in_transaction").await.unwrap();
    assert_eq!(in_transaction, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_from_the_closure_rolls_back_and_is_returned() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(1));
    let mut admin = admin(&db).await;
    create_table(&mut admin).await;

    let result: Result<(), AppError> = wharf_mysql::transaction(&pool, |tx| {
        Box::pin(async move {
            tx.query_drop("INSERT INTO t VALUES (1, 'a')").await?;
            Err(AppError::OutOfStock)
        })
    })
    .await;
    assert!(matches!(result, Err(AppError::OutOfStock)), "{result:?}");
    assert!(ids_in_t(&mut admin).await.is_empty(), "rolled back");

    // A database error inside reaches the caller through its own type too.
    let result: Result<(), AppError> = wharf_mysql::transaction(&pool, |tx| {
        Box::pin(async move {
            tx.query_drop("INSERT INTO t VALUES (2, 'b')").await?;
            tx.query_drop("INSERT INTO no_such_table VALUES (1)")
                .await?;
            Ok(())
        })
    })
    .await;
    match result {
        Err(AppError::Db(error)) => {
            assert_eq!(
                error.as_server_error().map(|e| e.code),
                Some(1146),
                "{error}"
            );
        }
        other => panic!("expected a database error, got {other:?}"),
    }
    assert!(ids_in_t(&mut admin).await.is_empty(), "rolled back");

    // The rollback succeeded, so the connection was kept, outside any
    // transaction.
    let status = pool.status();
    assert_eq!((status.size, status.idle), (1, 1));
    let mut conn = pool.get().await.unwrap();
    let in_transaction: Option<i64> = conn.query_first("SELECT @@in_transaction").await.unwrap();
    assert_eq!(in_transaction, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_rolls_back_the_earlier_ones() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(1));
    let mut admin = admin(&db).await;
    create_table(&mut admin).await;
    admin
        .query_drop("INSERT INTO t VALUES (5, 'x')")
        .await
        .unwrap();

    let result = wharf_mysql::transaction(&pool, |tx| {
        Box::pin(async move {
            tx.query_drop("INSERT INTO t VALUES (1, 'a')").await?;
            tx.query_drop("UPDATE t SET v = 'changed' WHERE id = 5")
                .await?;
            tx.query_drop("INSERT INTO t VALUES (5, 'duplicate')")
                .await?;
            Ok::<_, wharf_mysql::Error>(())
        })
    })
    .await;

    let error = result.expect_err("duplicate key");
    let server_error = error.as_server_error().expect("a server error");
    assert_eq!(server_error.code, 1062, "{error}");
    assert_eq!(ids_in_t(&mut admin).await, vec![5]);
    let v: Option<String> = admin
        .query_first("SELECT v FROM t WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("x"), "the update was rolled back too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_means_a_pool_error() {
    let db = start_db().await;
    let pool = pool(&db, |b| {
        b.max_size(1).acquire_timeout(Duration::from_millis(200))
    });
    let _held = pool.get().await.unwrap();

    let error = wharf_mysql::transaction(&pool, |_tx| {
        Box::pin(async move { Ok::<_, wharf_mysql::Error>(()) })
    })
    .await
    .expect_err("no connection to be had");
    assert!(
        matches!(
            error,
            wharf_mysql::Error::Pool(wharf::Error::Timeout { .. })
        ),
        "{error}"
    );
}

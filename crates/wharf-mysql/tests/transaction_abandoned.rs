//! A transaction that never reaches COMMIT or ROLLBACK (a panic in the
//! closure, a cancelled future, a checkout dropped mid-transaction) leaves
//! neither an open transaction in the pool nor a leaked connection.

mod common;

use std::time::Duration;

use common::{admin, connection_id, create_table, ids_in_t, pool, start_db, wait_for_connections};
use tokio::sync::oneshot;
use wharf_mysql::mysql_async::prelude::*;
use wharf_mysql::mysql_async::Conn;
use wharf_mysql::Pool;

/// Runs a failing statement: the driver keeps no transaction status after
/// an error, so the pool's own `has_broken` check cannot tell that a
/// transaction is open, and only `transaction()`'s guard stands between the
/// connection and the next caller.
async fn forget_transaction_status(tx: &mut Conn) {
    tx.query_drop("SELECT no_such_column FROM t")
        .await
        .expect_err("no such column");
    assert!(tx.last_ok_packet().is_none());
}

/// What must hold after a transaction on connection `abandoned` that
/// inserted row 1 was cut short, in a pool of one connection.
async fn assert_cleaned_up(pool: &Pool, admin: &mut Conn, abandoned: u64) {
    assert_eq!(pool.status().in_use, 0, "the slot came back");
    // Only one connection may exist, so getting one proves no slot leaked.
    let mut conn = pool.get_timeout(Duration::from_secs(5)).await.unwrap();
    assert_ne!(
        connection_id(&mut conn).await,
        abandoned,
        "the connection left mid-transaction was not reused"
    );
    let in_transaction: Option<i64> = conn.query_first("SELECT @@in_transaction").await.unwrap();
    assert_eq!(in_transaction, Some(0));
    assert!(
        ids_in_t(&mut conn).await.is_empty(),
        "row 1 was rolled back"
    );

    let left = wait_for_connections(admin, |ids| !ids.contains(&abandoned)).await;
    assert!(
        !left.contains(&abandoned),
        "the server still has the abandoned connection: {left:?}"
    );
    // Had the server kept the transaction, its lock on row 1 would make this
    // wait, and fail after the lock timeout.
    conn.query_drop("SET SESSION innodb_lock_wait_timeout = 2")
        .await
        .unwrap();
    conn.query_drop("INSERT INTO t VALUES (1, 'again')")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_closure_closes_the_connection() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(1));
    let mut admin = admin(&db).await;
    create_table(&mut admin).await;

    let (id_tx, id_rx) = oneshot::channel();
    let task = tokio::spawn({
        let pool = pool.clone();
        async move {
            wharf_mysql::transaction(&pool, |tx| {
                Box::pin(async move {
                    tx.query_drop("INSERT INTO t VALUES (1, 'a')").await?;
                    id_tx.send(connection_id(tx).await).unwrap();
                    forget_transaction_status(tx).await;
                    if tx.affected_rows() < 100 {
                        panic!("bug in the transaction's code");
                    }
                    Ok::<_, wharf_mysql::Error>(())
                })
            })
            .await
        }
    });
    let error = task.await.expect_err("the task panicked");
    assert!(error.is_panic());
    let abandoned = id_rx.await.unwrap();

    assert_cleaned_up(&pool, &mut admin, abandoned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_transaction_closes_the_connection() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(1));
    let mut admin = admin(&db).await;
    create_table(&mut admin).await;

    let (id_tx, id_rx) = oneshot::channel();
    let (_never_tx, never) = oneshot::channel::<()>();
    let transaction = wharf_mysql::transaction(&pool, |tx| {
        Box::pin(async move {
            tx.query_drop("INSERT INTO t VALUES (1, 'a')").await?;
            id_tx.send(connection_id(tx).await).unwrap();
            forget_transaction_status(tx).await;
            // Stands for a slow step the caller stops waiting for.
            let _ = never.await;
            Ok::<_, wharf_mysql::Error>(())
        })
    });
    let outcome = tokio::time::timeout(Duration::from_millis(300), transaction).await;
    assert!(outcome.is_err(), "the transaction was cut short");
    let abandoned = id_rx.await.unwrap();

    assert_cleaned_up(&pool, &mut admin, abandoned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_dropped_inside_its_own_transaction_is_not_reused() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(1));
    let mut admin = admin(&db).await;
    create_table(&mut admin).await;

    let mut conn = pool.get().await.unwrap();
    let abandoned = connection_id(&mut conn).await;
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.query_drop("INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    drop(conn);

    assert_cleaned_up(&pool, &mut admin, abandoned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_whose_transaction_ended_is_reused() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(1));
    let mut admin = admin(&db).await;
    create_table(&mut admin).await;

    let mut conn = pool.get().await.unwrap();
    let id = connection_id(&mut conn).await;
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.query_drop("INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    conn.query_drop("COMMIT").await.unwrap();
    drop(conn);

    let mut conn = pool.get().await.unwrap();
    assert_eq!(connection_id(&mut conn).await, id);
    assert_eq!(ids_in_t(&mut conn).await, vec![1]);
}

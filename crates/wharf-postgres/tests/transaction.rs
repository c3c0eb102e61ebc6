//! `transaction`: commit, rollback on error, and no connection handed back
//! mid-transaction after a panic or a cancellation.

mod common;

use std::time::Duration;

use common::{assert_settled, await_backend_states, backend_states, cluster, pool, psql};
use wharf_postgres::tokio_postgres::error::SqlState;
use wharf_postgres::{transaction, Error, PgManager, Pool, PoolExt};
use wharf_testkit::PgCluster;

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error(transparent)]
    Db(#[from] Error),
}

impl From<wharf_postgres::tokio_postgres::Error> for AppError {
    fn from(error: wharf_postgres::tokio_postgres::Error) -> Self {
        AppError::Db(error.into())
    }
}

async fn setup(app: &str) -> (PgCluster, Pool) {
    let cluster = cluster(PgCluster::builder()).await;
    psql(
        &cluster,
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL); \
         INSERT INTO accounts VALUES (1, 100), (2, 0)",
    );
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres")).unwrap(),
        app,
        2,
    );
    (cluster, pool)
}

fn balances(cluster: &PgCluster) -> String {
    psql(
        cluster,
        "SELECT string_agg(balance::text, ',' ORDER BY id) FROM accounts",
    )
}

async fn transfer(pool: &Pool, amount: i64) -> Result<i64, AppError> {
    transaction(pool, |tx| {
        Box::pin(async move {
            tx.execute(
                "UPDATE accounts SET balance = balance + $1 WHERE id = 2",
                &[&amount],
            )
            .await?;
            let row = tx
                .query_one(
                    "UPDATE accounts SET balance = balance - $1 WHERE id = 1 RETURNING balance",
                    &[&amount],
                )
                .await?;
            let left: i64 = row.get(0);
            if left < 0 {
                return Err(AppError::InsufficientFunds);
            }
            Ok(left)
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_when_the_closure_succeeds() {
    let (cluster, pool) = setup("tx_commit").await;

    assert_eq!(transfer(&pool, 30).await.unwrap(), 70);
    assert_eq!(balances(&cluster), "70,30");

    // The connection came back, outside any transaction.
    assert_settled(&pool).await;
    assert_eq!(pool.status().size, 1);
    assert_eq!(backend_states(&cluster, "tx_commit"), ["idle"]);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_back_when_the_closure_fails() {
    let (cluster, pool) = setup("tx_rollback").await;

    let err = transfer(&pool, 130).await.unwrap_err();
    assert!(matches!(err, AppError::InsufficientFunds), "{err:?}");
    assert_eq!(balances(&cluster), "100,0");

    // A server-side error inside the closure rolls back too.
    let err = transaction(&pool, |tx| {
        Box::pin(async move {
            tx.execute("UPDATE accounts SET balance = 1 WHERE id = 1", &[])
                .await?;
            tx.execute("INSERT INTO accounts VALUES (2, 5)", &[])
                .await?;
            Ok::<_, Error>(())
        })
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err:?}");
    assert_eq!(balances(&cluster), "100,0");

    // A rolled-back connection is fine to keep: the same one serves again.
    assert_settled(&pool).await;
    assert_eq!(pool.status().size, 1);
    assert_eq!(backend_states(&cluster, "tx_rollback"), ["idle"]);
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.info().id, 1);
    drop(conn);

    assert_eq!(transfer(&pool, 100).await.unwrap(), 0);
    assert_eq!(balances(&cluster), "0,100");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_leaves_no_open_transaction_behind() {
    let (cluster, pool) = setup("tx_panic").await;

    let task = tokio::spawn({
        let pool = pool.clone();
        async move {
            transaction(&pool, |tx| {
                Box::pin(async move {
                    let updated = tx
                        .execute("UPDATE accounts SET balance = 0 WHERE id = 1", &[])
                        .await?;
                    if updated == 1 {
                        panic!("bug in the middle of a transaction");
                    }
                    Ok::<_, Error>(())
                })
            })
            .await
        }
    });
    let joined = task.await;
    assert!(joined.is_err_and(|err| err.is_panic()));

    // The connection was closed, not returned: nothing is in use, nothing
    // idle, and its backend is gone rather than "idle in transaction".
    assert_settled(&pool).await;
    assert_eq!(pool.status().size, 0, "{:?}", pool.status());
    let states = await_backend_states(&cluster, "tx_panic", &[]).await;
    assert!(states.is_empty(), "backends left: {states:?}");
    assert_eq!(balances(&cluster), "100,0");
    assert_eq!(pool.metrics().closed_for(wharf::CloseReason::Discarded), 1);

    // The pool carries on with a fresh connection.
    assert_eq!(transfer(&pool, 10).await.unwrap(), 90);
    assert_eq!(pool.get().await.unwrap().info().id, 2);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_transaction_closes_its_connection() {
    let (cluster, pool) = setup("tx_cancel").await;

    let outcome = tokio::time::timeout(
        Duration::from_millis(300),
        transaction(&pool, |tx| {
            Box::pin(async move {
                tx.execute("UPDATE accounts SET balance = 0 WHERE id = 1", &[])
                    .await?;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, Error>(())
            })
        }),
    )
    .await;
    assert!(outcome.is_err(), "the transaction should have been cut off");

    assert_settled(&pool).await;
    assert_eq!(pool.status().size, 0, "{:?}", pool.status());
    let states = await_backend_states(&cluster, "tx_cancel", &[]).await;
    assert!(states.is_empty(), "backends left: {states:?}");
    assert_eq!(balances(&cluster), "100,0");

    // Shortcuts and transactions keep working.
    let row = pool
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    pool.close().await;
}

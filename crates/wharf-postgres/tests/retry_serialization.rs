//! `Pool::retry` with the adapter's classifier against a real PostgreSQL:
//! two transactions update the same row concurrently at REPEATABLE READ;
//! the second to update fails with 40001 and is run again, and no update
//! is lost.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cluster, pg_config, psql};
use tokio::sync::Barrier;
use tokio_postgres::error::SqlState;
use tokio_postgres::IsolationLevel;
use wharf::{RetryBudget, RetryPolicy};
use wharf_postgres::{classify, Error, PgManager, Pool};
use wharf_testkit::PgCluster;

/// Reads the counter, waits for the other transaction to have read it too
/// (first attempt only, so a retry never waits for a partner that is done),
/// then writes it back incremented.
async fn increment(pool: &Pool, policy: &RetryPolicy<Error>, barrier: Arc<Barrier>) -> u32 {
    let attempts = AtomicU32::new(0);
    pool.retry(policy, |conn| {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let barrier = barrier.clone();
        Box::pin(async move {
            let tx = conn
                .client_mut()
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .start()
                .await?;
            let n: i32 = tx
                .query_one("SELECT n FROM counter WHERE id = 1", &[])
                .await?
                .get(0);
            if attempt == 1 {
                barrier.wait().await;
            }
            tx.execute("UPDATE counter SET n = $1 WHERE id = 1", &[&(n + 1)])
                .await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        })
    })
    .await
    .expect("the increment succeeds, retried if need be");
    attempts.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serialization_failure_under_concurrent_updates_is_retried_and_no_update_is_lost() {
    let cluster = cluster(PgCluster::builder()).await;
    psql(
        &cluster,
        "CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL); INSERT INTO counter VALUES (1, 0)",
    );
    let pool = Pool::builder(PgManager::new(pg_config(&cluster, "retry")))
        .max_size(2)
        .build()
        .unwrap();
    let codes = Arc::new(Mutex::new(Vec::new()));
    let seen = codes.clone();
    let policy = RetryPolicy::new(move |err: &Error| {
        seen.lock().unwrap().push(err.code().cloned());
        classify(err)
    })
    .max_attempts(5)
    .deadline(Duration::from_secs(60))
    .budget(Arc::new(RetryBudget::new(1.0, 10)));

    let barrier = Arc::new(Barrier::new(2));
    let (a, b) = tokio::join!(
        increment(&pool, &policy, barrier.clone()),
        increment(&pool, &policy, barrier),
    );
    let mut attempts = [a, b];
    attempts.sort_unstable();
    assert_eq!(attempts, [1, 2], "the second writer ran twice");
    assert_eq!(
        *codes.lock().unwrap(),
        vec![Some(SqlState::T_R_SERIALIZATION_FAILURE)]
    );
    assert_eq!(pool.metrics().retries, 1);
    assert_eq!(psql(&cluster, "SELECT n FROM counter WHERE id = 1"), "2");
    pool.close().await;
}

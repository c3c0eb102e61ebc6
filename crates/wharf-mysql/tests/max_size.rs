//! The pool never opens more than `max_size` connections, counted on the
//! server itself.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{admin, connection_id, pool, start_db, wharf_connections};
use wharf_mysql::mysql_async::prelude::*;

const MAX_SIZE: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_callers_share_max_size_connections() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(MAX_SIZE));

    let tasks: Vec<_> = (0..8 * MAX_SIZE)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.unwrap();
                // Held across a server-side sleep, so callers overlap.
                let (id, open): (u64, u64) = conn
                    .query_first(
                        "SELECT CONNECTION_ID(), (SELECT COUNT(*) \
                         FROM information_schema.PROCESSLIST WHERE USER = 'wharf')",
                    )
                    .await
                    .unwrap()
                    .unwrap();
                conn.query_drop("DO SLEEP(0.02)").await.unwrap();
                (id, open)
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut most_open = 0;
    for task in tasks {
        let (id, open) = task.await.unwrap();
        ids.insert(id);
        most_open = most_open.max(open);
    }

    assert_eq!(ids.len(), MAX_SIZE, "distinct connections used: {ids:?}");
    assert!(
        most_open <= MAX_SIZE as u64,
        "the server saw {most_open} connections of the pool at once"
    );
    assert_eq!(pool.status().size, MAX_SIZE);
    assert_eq!(pool.metrics().created, MAX_SIZE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_beyond_max_size_waits_for_a_returned_connection() {
    let db = start_db().await;
    let pool = pool(&db, |b| b.max_size(MAX_SIZE));
    let mut admin = admin(&db).await;

    let mut held = Vec::new();
    for _ in 0..MAX_SIZE {
        held.push(pool.get().await.unwrap());
    }
    let error = pool
        .get_timeout(Duration::from_millis(200))
        .await
        .expect_err("every connection is in use");
    assert!(matches!(error, wharf::Error::Timeout { .. }), "{error}");
    assert_eq!(wharf_connections(&mut admin).await.len(), MAX_SIZE);

    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            connection_id(&mut conn).await
        }
    });
    while pool.status().waiting == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut returned = held.pop().unwrap();
    let returned_id = connection_id(&mut returned).await;
    drop(returned);

    assert_eq!(
        waiter.await.unwrap(),
        returned_id,
        "the waiter got the returned connection rather than a new one"
    );
    assert_eq!(wharf_connections(&mut admin).await.len(), MAX_SIZE);
}

//! `max_size` holds under concurrency, counted by the pool and by the server.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wharf_redis::{Pool, RedisManager};
use wharf_testkit::redis::RedisServer;

const MAX_SIZE: usize = 4;
const TASKS: usize = 32;
const ROUNDS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_more_than_max_size_connections() {
    let redis = RedisServer::start().unwrap();
    let pool = Pool::builder(RedisManager::new(redis.url()).unwrap())
        .max_size(MAX_SIZE)
        .acquire_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let holding = Arc::new(AtomicUsize::new(0));
    let most_held = Arc::new(AtomicUsize::new(0));

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let pool = pool.clone();
        let holding = holding.clone();
        let most_held = most_held.clone();
        tasks.push(tokio::spawn(async move {
            let mut client_ids = HashSet::new();
            for _ in 0..ROUNDS {
                let mut conn = pool.get().await.unwrap();
                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                most_held.fetch_max(now, Ordering::SeqCst);
                assert!(pool.status().size <= MAX_SIZE, "{:?}", pool.status());
                // CLIENT ID names the server-side connection.
                let id: i64 = redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async(&mut *conn)
                    .await
                    .unwrap();
                client_ids.insert(id);
                let _: i64 = redis::cmd("INCR")
                    .arg("total")
                    .query_async(&mut *conn)
                    .await
                    .unwrap();
                // Hold the connection across a yield so that tasks overlap.
                tokio::time::sleep(Duration::from_millis(1)).await;
                holding.fetch_sub(1, Ordering::SeqCst);
            }
            client_ids
        }));
    }
    let mut client_ids = HashSet::new();
    for task in tasks {
        client_ids.extend(task.await.unwrap());
    }

    eprintln!(
        "{TASKS} tasks x {ROUNDS} rounds over max_size {MAX_SIZE}: {} server connections, \
         at most {} held at once, {:?}",
        client_ids.len(),
        most_held.load(Ordering::SeqCst),
        pool.status()
    );
    assert_eq!(
        redis.command(&["GET", "total"]).unwrap(),
        (TASKS * ROUNDS).to_string()
    );
    assert!(client_ids.len() <= MAX_SIZE, "{client_ids:?}");
    assert!(most_held.load(Ordering::SeqCst) <= MAX_SIZE);
    // With 32 tasks queueing, the pool grows to its limit.
    assert_eq!(most_held.load(Ordering::SeqCst), MAX_SIZE);
    assert!(redis.connected_clients().unwrap() <= MAX_SIZE);
    let status = pool.status();
    assert_eq!((status.in_use, status.waiting), (0, 0), "{status:?}");
    assert_eq!(pool.metrics().acquired(), (TASKS * ROUNDS) as u64);
    pool.close().await;
}

//! The reserve: extra connections beyond `max_size` once the oldest caller
//! has waited `reserve_timeout` (PgBouncer's reserve pool).

mod common;

use std::time::Duration;

use common::{settle, ScriptedManager};
use wharf::{CloseReason, Pool};

fn pool(manager: ScriptedManager, reserve: usize) -> Pool<ScriptedManager> {
    Pool::builder(manager)
        .max_size(2)
        .reserve_size(reserve)
        .reserve_timeout(Duration::from_secs(5))
        .maintenance_interval(Duration::from_secs(1))
        .acquire_timeout(Duration::from_secs(60))
        .validate_after(None)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_reserve_opens_only_after_the_oldest_caller_waited_reserve_timeout() {
    let (manager, script) = ScriptedManager::new();
    let pool = pool(manager, 1);
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let start = tokio::time::Instant::now();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let conn = pool.get().await.unwrap();
            (tokio::time::Instant::now(), conn)
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(pool.status().size, 2, "the reserve opened too early");
    let (got_at, c) = waiter.await.unwrap();
    let waited = got_at - start;
    assert!(
        (Duration::from_secs(5)..=Duration::from_secs(6)).contains(&waited),
        "served after {waited:?}"
    );
    assert_eq!(pool.status().size, 3);
    assert_eq!(script.alive(), 3);
    drop((a, b, c));
    settle().await;
    // Nobody waits any more: the reserve connection is not kept.
    assert_eq!(pool.status().size, 2);
    assert_eq!(pool.metrics().closed_for(CloseReason::Resized), 1);
}

#[tokio::test(start_paused = true)]
async fn without_a_reserve_callers_wait_for_a_return() {
    let (manager, _script) = ScriptedManager::new();
    let pool = pool(manager, 0);
    let _a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.map(|c| c.info().id) })
    };
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(pool.status().size, 2);
    assert_eq!(pool.status().waiting, 1);
    let b_id = b.info().id;
    drop(b);
    assert_eq!(waiter.await.unwrap().unwrap(), b_id);
}

#[tokio::test(start_paused = true)]
async fn a_reserve_connection_returned_while_others_wait_serves_them() {
    let (manager, _script) = ScriptedManager::new();
    let pool = pool(manager, 1);
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let first = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.unwrap().info().id })
    };
    let reserve = first.await.unwrap();
    assert_eq!(pool.status().size, 3);
    let reserve_id = reserve.info().id;
    drop(reserve);
    // Handed to the next waiter rather than closed.
    assert_eq!(second.await.unwrap(), reserve_id);
    drop((a, b));
}

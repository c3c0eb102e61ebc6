//! Settings a running pool can change (`set_idle_timeout`,
//! `set_max_lifetime`, `set_validate_after`), as a pooler's RELOAD needs:
//! they apply without rebuilding the pool and never close a connection in
//! use.

mod common;

use std::time::Duration;

use common::{assert_balanced, settle, ScriptedManager};
use tokio::time::sleep;
use wharf::{CloseReason, Pool};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn a_new_idle_timeout_applies_to_connections_already_idle() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(2)
        .idle_timeout(None::<Duration>)
        .max_lifetime(None::<Duration>)
        .maintenance_interval(secs(1))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    settle().await;
    sleep(secs(60)).await;
    assert_eq!(pool.status().idle, 1, "evicted with idle_timeout off");

    pool.set_idle_timeout(Some(secs(10)));
    sleep(secs(2)).await;
    assert_eq!(
        pool.metrics().closed_for(CloseReason::Idle),
        1,
        "idle for 60 s, over the new 10 s"
    );
    assert_eq!(pool.status().size, 0);

    pool.set_idle_timeout(None);
    drop(pool.get().await.unwrap());
    settle().await;
    sleep(secs(60)).await;
    assert_eq!(pool.status().idle, 1, "idle_timeout turned off again");
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_new_max_lifetime_retires_old_connections_but_never_one_in_use() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(2)
        .idle_timeout(None::<Duration>)
        .max_lifetime(None::<Duration>)
        .lifetime_jitter(0.0)
        .maintenance_interval(secs(1))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    drop(pool.get().await.unwrap());
    settle().await;
    sleep(secs(30)).await;

    pool.set_max_lifetime(Some(secs(20)));
    sleep(secs(2)).await;
    assert_eq!(
        pool.metrics().closed_for(CloseReason::Lifetime),
        1,
        "the idle one, 30 s old, is over the new 20 s"
    );
    // The one in use is left alone, and retired once it is back.
    assert_eq!(pool.status().in_use, 1);
    drop(held);
    sleep(secs(2)).await;
    assert_eq!(pool.metrics().closed_for(CloseReason::Lifetime), 2);

    // New connections get the new lifetime.
    drop(pool.get().await.unwrap());
    settle().await;
    sleep(secs(15)).await;
    assert_eq!(pool.status().idle, 1);
    sleep(secs(7)).await;
    assert_eq!(pool.metrics().closed_for(CloseReason::Lifetime), 3);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_new_validate_after_changes_when_connections_are_checked() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(1)
        .validate_after(None::<Duration>)
        .idle_timeout(None::<Duration>)
        .max_lifetime(None::<Duration>)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    sleep(secs(5)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(script.checks(), 0, "checked with validate_after off");

    pool.set_validate_after(Some(Duration::ZERO));
    drop(pool.get().await.unwrap());
    assert_eq!(
        script.checks(),
        1,
        "every get() checks with validate_after 0"
    );
    assert_balanced(&pool, &script);
}

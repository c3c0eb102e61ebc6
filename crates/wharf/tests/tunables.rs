//! Settings a running pool can change (`set_idle_timeout`,
//! `set_max_lifetime`, `set_validate_after`, `set_min_idle`,
//! `set_reserve`, `set_connect_timeout`, `set_connect_backoff`,
//! `set_validation_timeout`), as a pooler's RELOAD needs: they apply
//! without rebuilding the pool and never close a connection in use.

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

#[tokio::test(start_paused = true)]
async fn a_new_min_idle_opens_connections_at_once_and_is_capped_by_resize() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(4)
        .min_idle(0)
        .build()
        .unwrap();
    settle().await;
    assert_eq!(pool.status().size, 0);

    pool.set_min_idle(3);
    pool.ready().await.unwrap();
    assert_eq!(pool.status().idle, 3);

    // Shrinking caps it; growing again brings the set value back.
    pool.resize(2).unwrap();
    settle().await;
    assert_eq!(pool.status().size, 2);
    pool.resize(4).unwrap();
    pool.ready().await.unwrap();
    assert_eq!(pool.status().idle, 3);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_new_reserve_lets_long_waiters_have_extra_connections() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_timeout(secs(10)).await.map(drop) })
    };
    sleep(secs(2)).await;
    assert!(!waiter.is_finished(), "no reserve yet: the waiter waits");

    pool.set_reserve(1, secs(1));
    sleep(secs(2)).await;
    assert!(
        waiter.is_finished(),
        "waited over 1 s: served from the reserve"
    );
    waiter.await.unwrap().unwrap();
    drop(held);
    settle().await;
    // The reserve connection nobody waits for is closed on return.
    assert_eq!(pool.status().size, 1);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_new_connect_timeout_and_backoff_apply_to_the_next_connects() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(1)
        .connect_timeout(secs(30))
        .connect_backoff(secs(20))
        .connect_backoff_max(secs(20))
        .build()
        .unwrap();
    script.hang(true);
    pool.set_connect_timeout(secs(1));
    pool.set_connect_backoff(Duration::from_millis(100), Duration::from_millis(100));
    // The hung connect gives up after the new 1 s, and attempts follow
    // each other at most the new 100 ms (plus jitter) apart.
    let err = pool.get_timeout(secs(5)).await.unwrap_err();
    assert!(matches!(err, wharf::Error::Timeout { .. }), "{err:?}");
    let attempts = script.attempts();
    assert!(
        (3..=5).contains(&attempts),
        "{attempts} attempts in 5 s with a 1 s connect timeout"
    );
    script.hang(false);
    sleep(secs(1)).await;
    drop(pool.get().await.unwrap());
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_new_validation_timeout_bounds_the_next_checks() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(1)
        .validate_after(Some(Duration::from_millis(500)))
        .validation_timeout(secs(60))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    sleep(secs(1)).await;
    script.hang_checks(true);
    pool.set_validation_timeout(secs(1));
    let start = tokio::time::Instant::now();
    let conn = pool.get_timeout(secs(30)).await;
    // The idle one's check is given up; a fresh one (not checked) is
    // handed out instead.
    assert!(conn.is_ok());
    assert!(
        start.elapsed() < secs(5),
        "the hung check was given up after the new 1 s, not 60 s: {:?}",
        start.elapsed()
    );
    script.hang_checks(false);
    drop(conn);
    assert_eq!(pool.metrics().closed_for(CloseReason::FailedCheck), 1);
    assert_balanced(&pool, &script);
}

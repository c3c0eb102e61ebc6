//! `try_get`: an idle connection handed out without a future, or nothing,
//! and then nothing queued, opened or taken.

mod common;

use std::time::Duration;

use common::{assert_balanced, poll_once, scripted, settle};
use tokio::time::sleep;
use wharf::BreakerConfig;

#[tokio::test(start_paused = true)]
async fn an_empty_pool_gives_nothing_and_opens_nothing() {
    let (builder, script) = scripted();
    let pool = builder.max_size(2).build().unwrap();
    assert!(pool.try_get().is_none());
    settle().await;
    assert_eq!(script.attempts(), 0, "try_get opened a connection");
    assert_eq!(pool.status().size, 0);
}

#[tokio::test(start_paused = true)]
async fn the_most_recently_used_idle_connection_is_handed_out() {
    let (builder, script) = scripted();
    let pool = builder.max_size(2).build().unwrap();
    let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    let newest = b.id;
    drop(a);
    drop(b);
    let conn = pool.try_get().expect("an idle connection");
    assert_eq!(conn.id, newest);
    assert_eq!(pool.status().in_use, 1);
    assert_eq!(
        pool.metrics().acquire_wait.count(),
        3,
        "the checkout was not counted"
    );
    drop(conn);
    settle().await;
    assert_eq!(pool.status().idle, 2);
    assert_balanced(&pool, &script);
}

/// Pins the hand-off order as `try_get` sees it. (`take_ready`'s own
/// check for waiters covers a race no test here can stage: an idle
/// connection and a waiter at once.)
#[tokio::test(start_paused = true)]
async fn a_connection_returned_while_a_caller_waits_goes_to_that_caller() {
    let (builder, _script) = scripted();
    let pool = builder.max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let mut waiter = Box::pin(pool.get());
    assert!(poll_once(&mut waiter).await.is_pending());
    // The connection goes to the waiter, not to a caller that came later.
    drop(held);
    assert!(pool.try_get().is_none());
    let served = waiter.await.unwrap();
    drop(served);
    settle().await;
    assert!(pool.try_get().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_connection_due_for_a_check_is_left_to_get() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(1)
        .validate_after(Duration::from_millis(500))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    assert!(
        pool.try_get().is_some(),
        "a fresh connection needs no check"
    );
    sleep(Duration::from_secs(1)).await;
    assert!(pool.try_get().is_none());
    assert_eq!(pool.status().idle, 1, "the connection was taken");
    let conn = pool.get().await.unwrap();
    assert_eq!(script.checks(), 1);
    drop(conn);
}

#[tokio::test(start_paused = true)]
async fn an_expired_connection_is_left_to_get() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .max_lifetime(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    sleep(Duration::from_secs(2)).await;
    assert!(pool.try_get().is_none());
}

#[tokio::test(start_paused = true)]
async fn hooks_and_breakers_leave_the_checkout_to_get() {
    let (builder, _script) = scripted();
    async fn accept(_: &mut common::FakeConn) -> Result<(), wharf::BoxError> {
        Ok(())
    }
    let pool = builder.max_size(1).on_checkout_fn(accept).build().unwrap();
    drop(pool.get().await.unwrap());
    assert!(pool.try_get().is_none());

    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .circuit_breaker(BreakerConfig::default())
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    assert!(pool.try_get().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_closed_pool_gives_nothing() {
    let (builder, _script) = scripted();
    let pool = builder.max_size(1).build().unwrap();
    drop(pool.get().await.unwrap());
    pool.close().await;
    assert!(pool.try_get().is_none());
}

//! Resizing: growing lets waiters have new connections at once; shrinking
//! closes idle excess at once and retires connections in use when they come
//! back, never under their user; `resize(0)` is refused.

mod common;

use std::time::Duration;

use common::{assert_balanced, scripted, settle};
use tokio::time::sleep;
use wharf::{CloseReason, ConfigError};

#[tokio::test(start_paused = true)]
async fn growing_lets_waiters_have_new_connections_at_once() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();
    let first = tokio::spawn(pool.get());
    let second = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 2);
    assert_eq!(script.attempts(), 1, "no room to open more");

    pool.resize(3).unwrap();
    settle().await;
    let a = first.await.unwrap().unwrap();
    let b = second.await.unwrap().unwrap();
    let mut ids = [a.info().id, b.info().id];
    ids.sort_unstable();
    assert_eq!(ids, [2, 3], "both got new connections");
    let status = pool.status();
    assert_eq!((status.size, status.in_use, status.max_size), (3, 3, 3));
    drop((held, a, b));
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn shrinking_closes_idle_excess_at_once_least_recently_used_first() {
    let (builder, script) = scripted();
    let pool = builder.max_size(4).validate_after(None).build().unwrap();
    let conns = [
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
    ];
    let ids: Vec<u64> = conns.iter().map(|c| c.info().id).collect();
    // Returned in order: ids[3] is the most recently used.
    for conn in conns {
        drop(conn);
        sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(pool.status().idle, 4);

    pool.resize(2).unwrap();
    // At once, without letting anything else run.
    let status = pool.status();
    assert_eq!((status.size, status.idle, status.max_size), (2, 2, 2));
    assert_eq!(script.alive(), 2);
    assert_eq!(pool.metrics().closed_for(CloseReason::Resized), 2);

    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert_eq!(
        [a.info().id, b.info().id],
        [ids[3], ids[2]],
        "the busiest stayed"
    );
    drop((a, b));
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn shrinking_retires_connections_in_use_when_returned_never_under_their_user() {
    let (builder, script) = scripted();
    let pool = builder.max_size(3).validate_after(None).build().unwrap();
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let c = pool.get().await.unwrap();

    pool.resize(1).unwrap();
    settle().await;
    assert_eq!(script.alive(), 3, "nothing closed under its user");
    assert_eq!(pool.metrics().closed_for(CloseReason::Resized), 0);
    assert_eq!(pool.status().size, 3);
    // Still usable.
    assert_eq!([a.id, b.id, c.id], [1, 2, 3]);

    drop(a);
    assert_eq!(pool.metrics().closed_for(CloseReason::Resized), 1);
    assert_eq!((pool.status().size, script.alive()), (2, 2));
    drop(b);
    assert_eq!(pool.metrics().closed_for(CloseReason::Resized), 2);
    assert_eq!((pool.status().size, script.alive()), (1, 1));
    drop(c);
    assert_eq!(
        pool.metrics().closed_for(CloseReason::Resized),
        2,
        "the last one fits the new size and is kept"
    );
    assert_eq!(pool.status().idle, 1);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn after_shrinking_waiters_are_served_within_the_new_size() {
    let (builder, script) = scripted();
    let pool = builder.max_size(2).validate_after(None).build().unwrap();
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let waiter = tokio::spawn(pool.get());
    settle().await;

    pool.resize(1).unwrap();
    drop(a);
    settle().await;
    assert!(
        !waiter.is_finished(),
        "a connection above the new size was handed out"
    );
    assert_eq!(script.attempts(), 2, "nor was a new one opened");
    assert_eq!(pool.status().size, 1);

    let b_id = b.info().id;
    drop(b);
    let conn = waiter.await.unwrap().unwrap();
    assert_eq!(conn.info().id, b_id);
    drop(conn);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_connect_in_flight_during_a_shrink_does_not_leave_the_pool_oversized() {
    let (builder, script) = scripted();
    script.set_connect_delay(Duration::from_millis(100));
    let pool = builder.max_size(2).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();
    // A caller starts a second connect, then gives up.
    assert!(tokio::time::timeout(Duration::from_millis(10), pool.get())
        .await
        .is_err());
    assert_eq!(pool.status().size, 2, "the connect is in flight");

    pool.resize(1).unwrap();
    sleep(Duration::from_millis(100)).await;
    settle().await;
    let status = pool.status();
    assert!(
        status.size <= status.max_size,
        "the late connection was kept above the new size: {status:?}"
    );
    assert_eq!(script.alive(), 1);
    assert_eq!(pool.metrics().closed_for(CloseReason::Resized), 1);
    drop(held);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_connect_in_flight_during_a_shrink_is_not_handed_out_above_the_new_size() {
    let (builder, script) = scripted();
    script.set_connect_delay(Duration::from_millis(100));
    let pool = builder.max_size(2).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.info().id;
    let waiter = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(
        pool.status().size,
        2,
        "a connect for the waiter is in flight"
    );

    pool.resize(1).unwrap();
    sleep(Duration::from_millis(100)).await;
    settle().await;
    assert!(
        !waiter.is_finished(),
        "the waiter was handed a connection above the new size"
    );
    assert_eq!(pool.metrics().closed_for(CloseReason::Resized), 1);
    assert_eq!((pool.status().size, script.alive()), (1, 1));

    drop(held);
    let conn = waiter.await.unwrap().unwrap();
    assert_eq!(conn.info().id, held_id);
    drop(conn);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn resize_caps_min_idle_and_restores_it_when_growing_again() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(4)
        .min_idle(3)
        .validate_after(None)
        .build()
        .unwrap();
    pool.ready().await.unwrap();
    assert_eq!(pool.status().idle, 3);

    pool.resize(2).unwrap();
    assert_eq!(pool.status().idle, 2);
    // Maintenance rounds do not try to top up beyond the new size.
    sleep(Duration::from_secs(3)).await;
    settle().await;
    assert_eq!(pool.status().size, 2);
    assert_eq!(script.attempts(), 3);

    pool.resize(4).unwrap();
    settle().await;
    assert_eq!(pool.status().idle, 3, "min_idle is 3 again");
    assert_eq!(script.attempts(), 4);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn resize_to_zero_is_refused_and_changes_nothing() {
    let (builder, _script) = scripted();
    let pool = builder.max_size(3).build().unwrap();
    assert_eq!(pool.resize(0), Err(ConfigError::ZeroMaxSize));
    assert_eq!(pool.status().max_size, 3);
    pool.resize(5).unwrap();
    assert_eq!(pool.status().max_size, 5);
    assert_eq!(pool.config().max_size, 3, "config keeps the built value");
}

#[tokio::test(start_paused = true)]
async fn close_idle_closes_the_least_recently_used_idle_connections_only() {
    let (builder, script) = scripted();
    let pool = builder.max_size(3).validate_after(None).build().unwrap();
    let (a, b, c) = (
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
    );
    let (a_id, b_id) = (a.info().id, b.info().id);
    drop(a);
    drop(b);
    // a went back first, so it is the least recently used.
    assert_eq!(pool.close_idle(1), 1);
    assert_eq!(pool.status().idle, 1);
    assert_eq!(pool.get().await.unwrap().info().id, b_id);
    assert_ne!(a_id, b_id);
    assert_eq!(pool.close_idle(5), 1, "only idle connections are closed");
    assert_eq!(pool.status().in_use, 1);
    assert_eq!(pool.metrics().closed_for(CloseReason::Idle), 2);
    drop(c);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_weak_pool_does_not_keep_the_pool_open() {
    let (builder, _script) = scripted();
    let pool = builder.max_size(1).build().unwrap();
    let weak = pool.downgrade();
    assert!(weak.upgrade().is_some());
    drop(pool);
    assert!(weak.upgrade().is_none());
}

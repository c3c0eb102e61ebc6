//! Sizing: never more than `max_size` connections, counting those being
//! opened; `min_idle` (idle) and `min_size` (in total) connections opened
//! in the background (and `ready()` waits for them) and topped up again
//! after connections close;
//! `max_connecting` bounds connects in flight.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{assert_balanced, scripted, settle, Script, ScriptedManager};
use tokio::time::{sleep, Instant};
use wharf::{CloseReason, Error, Pool};

fn max_connecting_seen(script: &Script) -> usize {
    script.max_connecting_seen.load(Ordering::SeqCst)
}

/// Starts `n` callers that each hold a connection for `hold`.
fn callers(
    pool: &Pool<ScriptedManager>,
    n: usize,
    hold: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let get = pool.get();
            tokio::spawn(async move {
                let conn = get.await.unwrap();
                sleep(hold).await;
                drop(conn);
            })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn connections_being_opened_count_against_max_size() {
    let (builder, script) = scripted();
    script.set_connect_delay(Duration::from_millis(100));
    // Plenty of connect concurrency: only max_size can stop a fourth connect.
    let pool = builder.max_size(3).max_connecting(8).build().unwrap();
    let tasks = callers(&pool, 20, Duration::from_millis(30));
    settle().await;

    let status = pool.status();
    assert_eq!(status.size, 3, "three connects in flight count as three");
    assert_eq!(status.waiting, 20);
    assert_eq!(script.alive(), 0);
    assert_eq!(script.attempts(), 3);
    assert_eq!(max_connecting_seen(&script), 3);

    while !tasks.iter().all(|t| t.is_finished()) {
        sleep(Duration::from_millis(5)).await;
        let status = pool.status();
        assert!(status.size <= 3, "{status:?}");
        assert!(script.alive() <= 3, "{} alive", script.alive());
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        script.attempts(),
        3,
        "twenty callers shared three connections"
    );
    assert_eq!(pool.metrics().acquired(), 20);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn min_idle_is_opened_in_the_background_and_ready_waits_for_it() {
    let (builder, script) = scripted();
    script.set_connect_delay(Duration::from_millis(100));
    let pool = builder.max_size(5).min_idle(3).build().unwrap();
    assert_eq!(pool.status().idle, 0, "build() does not wait");

    let start = Instant::now();
    pool.ready().await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "ready() waited"
    );
    let status = pool.status();
    assert_eq!((status.size, status.idle, status.in_use), (3, 3, 0));
    assert_eq!(script.attempts(), 3, "min_idle, not max_size");

    // Already ready: returns at once.
    let start = Instant::now();
    pool.ready().await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn min_size_counts_connections_in_use_where_min_idle_does_not() {
    let (builder, script) = scripted();
    let pool = builder.max_size(6).min_size(3).build().unwrap();
    pool.ready().await.unwrap();
    assert_eq!(pool.status().size, 3);
    // Two taken: three are still open, so none is added.
    let held = (pool.get().await.unwrap(), pool.get().await.unwrap());
    sleep(Duration::from_secs(2)).await;
    let status = pool.status();
    assert_eq!((status.size, status.idle, status.in_use), (3, 1, 2));
    drop(held);

    // min_idle keeps that many idle on top of those in use.
    let (builder, _) = scripted();
    let idle = builder.max_size(6).min_idle(3).build().unwrap();
    idle.ready().await.unwrap();
    let held = (idle.get().await.unwrap(), idle.get().await.unwrap());
    sleep(Duration::from_secs(2)).await;
    assert_eq!(idle.status().size, 5);
    drop(held);

    // A closed connection is replaced to keep min_size.
    pool.get().await.unwrap().discard();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(pool.status().size, 3);
    assert_eq!(script.attempts(), 4);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn ready_fails_with_the_connect_error_when_min_idle_cannot_be_opened() {
    let (builder, script) = scripted();
    script.refuse(true);
    let pool = builder
        .max_size(2)
        .min_idle(1)
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = pool.ready().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string()
            .ends_with("last connect error: connection refused"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn min_idle_is_topped_up_after_a_broken_connection_is_closed() {
    let (builder, script) = scripted();
    let pool = builder.max_size(4).min_idle(2).build().unwrap();
    pool.ready().await.unwrap();
    assert_eq!(script.attempts(), 2);

    let conn = pool.get().await.unwrap();
    script.break_conn(conn.info().id);
    drop(conn);
    assert_eq!(pool.metrics().closed_for(CloseReason::Broken), 1);
    settle().await;
    let status = pool.status();
    assert_eq!((status.size, status.idle), (2, 2));
    assert_eq!(script.attempts(), 3, "one replacement");
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn min_idle_is_topped_up_after_every_connection_expires() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(4)
        .min_idle(2)
        .max_lifetime(Duration::from_secs(60))
        .lifetime_jitter(0.0)
        .idle_timeout(None)
        .build()
        .unwrap();
    pool.ready().await.unwrap();

    sleep(Duration::from_secs(61)).await;
    settle().await;
    assert_eq!(pool.metrics().closed_for(CloseReason::Lifetime), 2);
    let status = pool.status();
    assert_eq!(
        (status.size, status.idle),
        (2, 2),
        "replaced in the background"
    );
    assert_eq!(script.attempts(), 4);
    let conn = pool.get().await.unwrap();
    assert!(conn.info().id > 2, "a fresh connection");
    drop(conn);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_taken_are_replaced_up_to_min_idle_within_max_size() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(3)
        .min_idle(2)
        .maintenance_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    pool.ready().await.unwrap();
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert_eq!(pool.status().idle, 0);

    sleep(Duration::from_secs(1)).await;
    settle().await;
    let status = pool.status();
    assert_eq!(status.idle, 1, "topped up only as far as max_size allows");
    assert_eq!(status.size, 3);

    sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(script.attempts(), 3, "no attempts beyond max_size");
    drop((a, b));
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn max_connecting_bounds_concurrent_connects() {
    let (builder, script) = scripted();
    script.set_connect_delay(Duration::from_millis(100));
    let pool = builder.max_size(10).max_connecting(3).build().unwrap();
    let tasks = callers(&pool, 10, Duration::from_secs(1));
    settle().await;
    assert_eq!(
        script.attempts(),
        3,
        "three connects started, the rest wait"
    );

    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(script.attempts(), 10);
    assert_eq!(max_connecting_seen(&script), 3);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn connects_are_serialised_with_max_connecting_one() {
    let (builder, script) = scripted();
    script.set_connect_delay(Duration::from_millis(100));
    let pool = builder.max_size(4).max_connecting(1).build().unwrap();
    let start = Instant::now();
    let tasks = callers(&pool, 4, Duration::from_secs(10));
    settle().await;
    sleep(Duration::from_millis(250)).await;
    assert_eq!(pool.status().in_use, 2, "one connection every 100 ms");
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(max_connecting_seen(&script), 1);
    assert!(start.elapsed() >= Duration::from_millis(400));
    let times = script.attempt_times.lock().clone();
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(100), "{times:?}");
    }
}

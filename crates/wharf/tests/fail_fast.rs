//! `fail_fast`: while the backend refuses connections and the pool has
//! none, callers are answered at once with the connect error, and one probe
//! per backoff period finds out when the backend is back.

mod common;

use std::time::Duration;

use common::{assert_balanced, scripted, settle};
use tokio::time::{sleep, Instant};
use wharf::Error;

#[tokio::test(start_paused = true)]
async fn callers_get_the_connect_error_at_once_while_the_backend_is_down() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(2)
        .fail_fast(true)
        .acquire_timeout(Duration::from_secs(30))
        .connect_backoff(Duration::from_millis(100))
        .connect_backoff_max(Duration::from_secs(1))
        .build()
        .unwrap();
    script.refuse(true);

    // The first caller waits for the first connect, which fails: it is told
    // at once, not after acquire_timeout.
    let start = Instant::now();
    let err = pool.get().await.expect_err("the backend refuses");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    match &err {
        Error::Unavailable { last_error } => {
            assert_eq!(
                last_error.as_ref().map(|e| e.to_string()).as_deref(),
                Some("connection refused")
            )
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    assert!(err
        .to_string()
        .contains("last connect error: connection refused"));

    // Later callers are refused without waiting at all.
    let start = Instant::now();
    for _ in 0..5 {
        assert!(matches!(pool.get().await, Err(Error::Unavailable { .. })));
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(pool.metrics().rejected >= 6);

    // The backend comes back: a probe finds out within the backoff cap, and
    // callers are served again.
    script.refuse(false);
    let attempts = script.attempts();
    sleep(Duration::from_secs(2)).await;
    settle().await;
    assert!(
        script.attempts() > attempts,
        "no probe after the backend came back"
    );
    let conn = pool.get().await.expect("served once the backend is back");
    drop(conn);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn probes_stop_when_nobody_asks() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(2)
        .fail_fast(true)
        .connect_backoff(Duration::from_millis(100))
        .connect_backoff_max(Duration::from_millis(400))
        .build()
        .unwrap();
    script.refuse(true);
    assert!(pool.get().await.is_err());
    sleep(Duration::from_secs(5)).await;
    let attempts = script.attempts();
    sleep(Duration::from_secs(30)).await;
    assert_eq!(script.attempts(), attempts, "probing with nobody waiting");
}

#[tokio::test(start_paused = true)]
async fn a_pool_with_live_connections_keeps_callers_waiting_for_them() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(2)
        .fail_fast(true)
        .validate_after(None)
        .acquire_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    script.refuse(true);
    // The second slot's connect fails, but a connection exists: wait for it.
    let waiter = tokio::spawn(pool.get());
    sleep(Duration::from_secs(1)).await;
    assert!(
        !waiter.is_finished(),
        "failed fast despite a live connection"
    );
    let held_id = held.info().id;
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap().info().id, held_id);
}

#[tokio::test(start_paused = true)]
async fn without_fail_fast_callers_wait_and_see_the_error_in_their_timeout() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(1)
        .acquire_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    script.refuse(true);
    let start = Instant::now();
    let err = pool.get().await.expect_err("the backend refuses");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_failing_connect_fails_the_waiting_caller() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(2)
        .max_connecting(4)
        .fail_fast(true)
        .acquire_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    script.set_connect_delay(Duration::from_millis(50));
    script.refuse(true);
    let start = Instant::now();
    let err = pool.get().await.expect_err("the backend refuses");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

//! Acquire timeouts and backpressure: `acquire_timeout` and `get_timeout`
//! fail after exactly the wait asked for, with an error that explains what the
//! pool was doing; `max_waiting` refuses at once; a waiter that gives up
//! leaves the queue.

mod common;

use std::time::Duration;

use common::{assert_balanced, scripted, settle};
use tokio::time::{sleep, Instant};
use wharf::Error;

#[tokio::test(start_paused = true)]
async fn get_fails_after_exactly_acquire_timeout_with_a_message_naming_the_pool_state() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .acquire_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    // A more patient caller stays queued, so the failing one reports it.
    let patient = tokio::spawn(pool.get_timeout(Duration::from_secs(60)));
    settle().await;
    assert_eq!(pool.status().waiting, 1);

    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    match &err {
        Error::Timeout {
            waited,
            status,
            last_error,
        } => {
            assert_eq!(*waited, Duration::from_secs(2));
            assert_eq!((status.in_use, status.max_size), (1, 1));
            assert_eq!(status.idle, 0);
            assert_eq!(status.waiting, 1, "the patient caller is still queued");
            assert!(last_error.is_none(), "no connect has failed");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "timed out after 2s waiting for a connection: 1/1 in use, 0 idle, 1 waiting"
    );
    assert_eq!(pool.metrics().timeouts, 1);

    let held_id = held.info().id;
    drop(held);
    let conn = patient.await.unwrap().unwrap();
    assert_eq!(conn.info().id, held_id);
}

#[tokio::test(start_paused = true)]
async fn timeout_error_carries_the_last_connect_error() {
    let (builder, script) = scripted();
    script.refuse(true);
    let pool = builder
        .max_size(2)
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();

    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        err.to_string(),
        "timed out after 1s waiting for a connection: 0/2 in use, 0 idle, 0 waiting; \
         last connect error: connection refused"
    );
    let source = std::error::Error::source(&err).expect("the connect error is the source");
    assert_eq!(source.to_string(), "connection refused");
    // Backoff starts at 100 ms, so the pool retried while the caller waited.
    assert!(script.attempts() >= 2, "attempts: {}", script.attempts());
    let metrics = pool.metrics();
    assert_eq!(metrics.timeouts, 1);
    assert_eq!(metrics.create_errors, script.attempts());

    // Once a connect succeeds the old error is forgotten.
    script.refuse(false);
    let a = pool.get_timeout(Duration::from_secs(60)).await.unwrap();
    let b = pool.get_timeout(Duration::from_secs(60)).await.unwrap();
    let err = pool.get().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "timed out after 1s waiting for a connection: 2/2 in use, 0 idle, 0 waiting"
    );
    drop((a, b));
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn get_timeout_uses_its_own_wait_instead_of_acquire_timeout() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.info().id;

    let start = Instant::now();
    let err = pool
        .get_timeout(Duration::from_millis(250))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert!(
        matches!(err, Error::Timeout { waited, .. } if waited == Duration::from_millis(250)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("timed out after 250ms waiting for a connection: 1/1 in use"),
        "{err}"
    );

    // Within its wait, it gets a connection returned meanwhile.
    tokio::spawn(async move {
        sleep(Duration::from_millis(100)).await;
        drop(held);
    });
    let start = Instant::now();
    let conn = pool.get_timeout(Duration::from_millis(250)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(conn.info().id, held_id);
}

#[tokio::test(start_paused = true)]
async fn max_waiting_refuses_at_once_with_queue_full_and_counts_it() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).max_waiting(2).build().unwrap();
    let held = pool.get().await.unwrap();
    let first = tokio::spawn(pool.get());
    let second = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 2);

    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "refused without waiting");
    match &err {
        Error::QueueFull {
            max_waiting,
            status,
        } => {
            assert_eq!(*max_waiting, 2);
            assert_eq!(status.waiting, 2);
            assert_eq!((status.in_use, status.max_size), (1, 1));
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "too many callers waiting for a connection: 2 waiting, max_waiting = 2; 1/1 in use"
    );
    let metrics = pool.metrics();
    assert_eq!(metrics.rejected, 1);
    assert_eq!(metrics.timeouts, 0);
    assert_eq!(
        pool.status().waiting,
        2,
        "the refused caller was not queued"
    );

    // The queued callers are still served, and with the queue drained get()
    // is accepted again.
    drop(held);
    drop(first.await.unwrap().unwrap());
    drop(second.await.unwrap().unwrap());
    let again = pool.get().await.unwrap();
    drop(again);
    assert_eq!(pool.metrics().rejected, 1);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_times_out_leaves_the_queue() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.info().id;
    let hasty = tokio::spawn(pool.get_timeout(Duration::from_secs(1)));
    let patient = tokio::spawn(pool.get_timeout(Duration::from_secs(10)));
    settle().await;
    assert_eq!(pool.status().waiting, 2);

    sleep(Duration::from_secs(1)).await;
    settle().await;
    assert!(hasty.is_finished());
    assert!(matches!(hasty.await.unwrap(), Err(Error::Timeout { .. })));
    assert_eq!(
        pool.status().waiting,
        1,
        "the timed-out waiter left the queue"
    );
    assert_eq!(pool.metrics().timeouts, 1);

    // The returned connection goes to the waiter still there.
    drop(held);
    let conn = patient.await.unwrap().unwrap();
    assert_eq!(conn.info().id, held_id);
    assert_eq!(pool.status().waiting, 0);
    drop(conn);
    assert_eq!(pool.status().idle, 1);
    assert_balanced(&pool, &script);
}

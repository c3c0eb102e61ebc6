//! Cancellation: a `get()` future dropped at any point (queued, while its
//! connect is in flight, during the pre-checkout check, just as a connection
//! was handed to it, losing a `select!`, aborted, under `tokio::time::timeout`)
//! loses neither a slot nor a connection, and a connection handed to a caller
//! that has gone passes to the next one.

mod common;

use std::time::Duration;

use common::{assert_balanced, poll_once, scripted, settle};
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, Instant};
use wharf::CloseReason;

#[tokio::test(start_paused = true)]
async fn a_get_dropped_while_queued_leaves_the_queue_and_takes_nothing() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.info().id;

    assert!(timeout(Duration::from_millis(10), pool.get())
        .await
        .is_err());
    assert_eq!(pool.status().waiting, 0);

    drop(held);
    let status = pool.status();
    assert_eq!((status.idle, status.in_use), (1, 0));
    assert_balanced(&pool, &script);
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.info().id, held_id);
    assert_eq!(script.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_get_dropped_while_its_connect_is_in_flight_leaves_the_new_connection_idle() {
    let (builder, script) = scripted();
    script.set_connect_delay(Duration::from_millis(100));
    let pool = builder.max_size(1).validate_after(None).build().unwrap();

    assert!(timeout(Duration::from_millis(10), pool.get())
        .await
        .is_err());
    let status = pool.status();
    assert_eq!(status.waiting, 0);
    assert_eq!(status.size, 1, "the connect carries on, holding its slot");
    assert_eq!(script.attempts(), 1);

    sleep(Duration::from_millis(100)).await;
    settle().await;
    let status = pool.status();
    assert_eq!((status.size, status.idle, status.in_use), (1, 1, 0));
    assert_balanced(&pool, &script);

    let start = Instant::now();
    let conn = pool.get().await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "the connection was ready");
    assert_eq!(conn.info().id, 1);
    assert_eq!(script.attempts(), 1, "no second connect");
}

#[tokio::test(start_paused = true)]
async fn a_get_dropped_during_its_pre_checkout_check_closes_that_connection_and_frees_its_slot() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(1)
        .validate_after(Duration::ZERO)
        .build()
        .unwrap();
    let first_id = pool.get().await.unwrap().info().id;
    assert_eq!(pool.status().idle, 1);

    script.hang_checks(true);
    let doomed = tokio::spawn(timeout(Duration::from_secs(1), pool.get()));
    settle().await;
    assert_eq!(script.checks(), 2, "the second get is stuck in its check");
    // Someone else queues meanwhile.
    let next = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 1);
    script.hang_checks(false);

    sleep(Duration::from_secs(1)).await;
    assert!(doomed.await.unwrap().is_err(), "the hung get timed out");
    // The connection in an unknown state was closed, not returned, and its
    // slot went to a fresh connection for the next caller.
    assert_eq!(pool.metrics().closed_for(CloseReason::FailedCheck), 1);
    let conn = next.await.unwrap().unwrap();
    assert_ne!(conn.info().id, first_id);
    assert_eq!(script.alive(), 1);
    drop(conn);
    assert_balanced(&pool, &script);
    assert_eq!(pool.status().size, 1);
}

#[tokio::test(start_paused = true)]
async fn a_get_dropped_just_after_being_handed_a_connection_passes_it_to_the_next_waiter() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.info().id;

    let mut gone = Box::pin(pool.get());
    assert!(poll_once(&mut gone).await.is_pending());
    let next = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 2);

    // Handed to `gone`, which is dropped before it runs again.
    drop(held);
    assert_eq!(pool.status().waiting, 1);
    assert_eq!(
        pool.status().in_use,
        1,
        "in gone's hands, as far as the pool knows"
    );
    drop(gone);

    let conn = next.await.unwrap().unwrap();
    assert_eq!(conn.info().id, held_id);
    drop(conn);
    assert_eq!(pool.status().idle, 1);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_get_dropped_just_after_being_handed_a_connection_with_nobody_waiting_leaves_it_idle() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();
    let mut gone = Box::pin(pool.get());
    assert!(poll_once(&mut gone).await.is_pending());

    drop(held);
    drop(gone);
    let status = pool.status();
    assert_eq!((status.idle, status.in_use, status.waiting), (1, 0, 0));
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn an_aborted_task_that_was_just_handed_a_connection_passes_it_on() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.info().id;
    let doomed = tokio::spawn(pool.get());
    settle().await;
    let next = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 2);

    // No yield in between: handed over, then cancelled before it runs.
    drop(held);
    doomed.abort();
    assert!(doomed.await.unwrap_err().is_cancelled());

    let conn = next.await.unwrap().unwrap();
    assert_eq!(conn.info().id, held_id);
    drop(conn);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_get_losing_a_biased_select_after_being_served_gives_the_connection_back() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();

    let (stop, stopped) = oneshot::channel::<()>();
    let get = pool.get();
    let racer = tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = stopped => None,
            got = get => Some(got),
        }
    });
    settle().await;
    assert_eq!(pool.status().waiting, 1);

    // Both branches become ready in the same step; the other one wins.
    drop(held);
    stop.send(()).unwrap();
    assert!(racer.await.unwrap().is_none(), "the stop branch should win");

    let status = pool.status();
    assert_eq!((status.idle, status.in_use, status.waiting), (1, 0, 0));
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_firing_as_the_connection_comes_back_loses_nothing() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.info().id;
    tokio::spawn(async move {
        sleep(Duration::from_secs(1)).await;
        drop(held);
    });

    // Either side may win the race at the 1 s mark; neither may leak.
    match timeout(Duration::from_secs(1), pool.get()).await {
        Ok(got) => {
            let conn = got.unwrap();
            assert_eq!(conn.info().id, held_id);
            assert_eq!(pool.status().in_use, 1);
        }
        Err(_elapsed) => {}
    }
    settle().await;
    let status = pool.status();
    assert_eq!((status.idle, status.in_use, status.waiting), (1, 0, 0));
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiters_among_many_leave_every_remaining_waiter_served() {
    let (builder, script) = scripted();
    let pool = builder.max_size(2).validate_after(None).build().unwrap();
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();

    let waiters: Vec<_> = (0..6)
        .map(|_| {
            let get = pool.get();
            tokio::spawn(async move { get.await.map(|conn| conn.info().id) })
        })
        .collect();
    settle().await;
    assert_eq!(pool.status().waiting, 6);
    for (i, waiter) in waiters.iter().enumerate() {
        if i % 2 == 0 {
            waiter.abort();
        }
    }
    settle().await;
    assert_eq!(pool.status().waiting, 3);

    drop(a);
    drop(b);
    let mut served = 0;
    for (i, waiter) in waiters.into_iter().enumerate() {
        match waiter.await {
            Ok(got) => {
                assert_eq!(i % 2, 1);
                got.unwrap();
                served += 1;
            }
            Err(err) => assert!(err.is_cancelled() && i % 2 == 0),
        }
    }
    assert_eq!(served, 3);
    assert_eq!(pool.status().idle, 2);
    assert_eq!(script.attempts(), 2);
    assert_balanced(&pool, &script);
}

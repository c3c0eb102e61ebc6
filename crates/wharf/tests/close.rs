//! Closing: `close()` refuses new callers at once, wakes every waiter with
//! `Closed`, waits (up to `close_timeout`) for connections in use and closes
//! everything; dropping the last `Pool` clone closes the pool and stops its
//! background tasks.

mod common;

use std::time::Duration;

use common::{scripted, settle};
use tokio::runtime::Handle;
use tokio::time::{sleep, Instant};
use wharf::{CloseReason, Error};

fn alive_tasks() -> usize {
    Handle::current().metrics().num_alive_tasks()
}

#[tokio::test(start_paused = true)]
async fn after_close_get_fails_with_closed_at_once() {
    let (builder, script) = scripted();
    let pool = builder.max_size(2).build().unwrap();
    drop(pool.get().await.unwrap());
    assert!(!pool.is_closed());

    pool.close().await;
    assert!(pool.is_closed());
    let start = Instant::now();
    assert!(matches!(pool.get().await, Err(Error::Closed)));
    assert!(matches!(
        pool.get_timeout(Duration::from_secs(5)).await,
        Err(Error::Closed)
    ));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(script.alive(), 0);
    assert_eq!(pool.status().size, 0);
    assert_eq!(pool.metrics().timeouts, 0);
}

#[tokio::test(start_paused = true)]
async fn close_wakes_every_waiter_with_closed() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(pool.get())).collect();
    settle().await;
    assert_eq!(pool.status().waiting, 3);

    let closing = tokio::spawn({
        let pool = pool.clone();
        async move { pool.close().await }
    });
    settle().await;
    assert_eq!(pool.status().waiting, 0);
    for waiter in waiters {
        assert!(waiter.is_finished(), "a waiter was left waiting");
        assert!(matches!(waiter.await.unwrap(), Err(Error::Closed)));
    }
    assert!(
        !closing.is_finished(),
        "close waits for the held connection"
    );

    drop(held);
    closing.await.unwrap();
    assert_eq!(script.alive(), 0);
    assert_eq!(pool.metrics().closed_for(CloseReason::Closed), 1);
}

#[tokio::test(start_paused = true)]
async fn close_waits_for_connections_in_use_to_come_back() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(3)
        .close_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let idle = pool.get().await.unwrap();
    let held = pool.get().await.unwrap();
    drop(idle);
    tokio::spawn(async move {
        sleep(Duration::from_secs(5)).await;
        // Usable right up to its return.
        assert!(!held.dirty);
        drop(held);
    });

    let start = Instant::now();
    pool.close().await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(script.alive(), 0);
    let status = pool.status();
    assert_eq!((status.size, status.idle, status.in_use), (0, 0, 0));
    assert_eq!(pool.metrics().closed_for(CloseReason::Closed), 2);
}

#[tokio::test(start_paused = true)]
async fn close_stops_waiting_after_close_timeout_but_never_closes_a_connection_under_its_user() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(2)
        .close_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    drop(pool.get().await.unwrap());
    assert_eq!(script.alive(), 2);

    let start = Instant::now();
    pool.close().await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(script.alive(), 1, "the idle one closed, the held one not");
    assert_eq!(pool.status().in_use, 1);

    sleep(Duration::from_secs(60)).await;
    assert_eq!(script.alive(), 1);
    drop(held);
    assert_eq!(script.alive(), 0, "closed when it came back");
    assert_eq!(pool.status().size, 0);
    assert_eq!(pool.metrics().closed_for(CloseReason::Closed), 2);
}

#[tokio::test(start_paused = true)]
async fn close_closes_everything_and_closing_twice_is_fine() {
    let (builder, script) = scripted();
    let pool = builder.max_size(3).build().unwrap();
    let conns = [
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
    ];
    drop(conns);
    assert_eq!(pool.status().idle, 3);

    pool.close().await;
    assert_eq!(script.alive(), 0);
    assert_eq!(pool.metrics().closed_for(CloseReason::Closed), 3);

    let start = Instant::now();
    pool.close().await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(pool.is_closed());
    assert_eq!(pool.metrics().closed_total(), 3, "nothing closed twice");
    assert_eq!(pool.status().size, 0);
}

#[tokio::test(start_paused = true)]
async fn a_connect_finishing_after_close_is_closed_at_once() {
    let (builder, script) = scripted();
    script.set_connect_delay(Duration::from_millis(100));
    let pool = builder.max_size(1).build().unwrap();
    let waiter = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(script.attempts(), 1);

    pool.close().await;
    assert!(matches!(waiter.await.unwrap(), Err(Error::Closed)));
    sleep(Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(script.alive(), 0);
    assert_eq!(pool.status().size, 0);
    assert_eq!(pool.metrics().closed_for(CloseReason::Closed), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_pool_clone_closes_idle_connections_and_stops_background_tasks() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(4)
        .min_idle(2)
        .maintenance_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    pool.ready().await.unwrap();
    let held = pool.get().await.unwrap();
    // The janitor tops the idle set up again.
    sleep(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(pool.status().idle, 2);
    assert_eq!(script.alive(), 3);

    let clone = pool.clone();
    drop(pool);
    settle().await;
    assert_eq!(script.alive(), 3, "a clone still holds the pool open");
    assert!(
        alive_tasks() >= 1,
        "the janitor runs while the pool is open"
    );

    drop(clone);
    assert_eq!(script.alive(), 1, "idle connections close at once");
    let attempts = script.attempts();
    sleep(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(
        script.attempts(),
        attempts,
        "no connects after the pool is gone"
    );
    assert_eq!(script.alive(), 1, "the connection in use is left alone");

    drop(held);
    assert_eq!(script.alive(), 0);
    sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(alive_tasks(), 0, "the janitor and connectors stopped");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_pool_clone_wakes_waiters_with_closed() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let waiter = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 1);

    drop(pool);
    settle().await;
    assert!(waiter.is_finished());
    assert!(matches!(waiter.await.unwrap(), Err(Error::Closed)));
    drop(held);
    assert_eq!(script.alive(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_pool_while_connects_fail_stops_retrying() {
    let (builder, script) = scripted();
    script.refuse(true);
    let pool = builder
        .max_size(2)
        .min_idle(1)
        .connect_backoff(Duration::from_millis(100))
        .connect_backoff_max(Duration::from_secs(1))
        .build()
        .unwrap();
    sleep(Duration::from_secs(3)).await;
    assert!(script.attempts() >= 2, "the pool keeps retrying");
    assert_eq!(alive_tasks(), 2, "the janitor and one probing connector");

    drop(pool);
    settle().await;
    let attempts = script.attempts();
    sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(script.attempts(), attempts);
    assert_eq!(alive_tasks(), 0, "the retrying connector stopped");
}

//! Fairness: waiters are served first come, first served, a returned or new
//! connection goes to the oldest waiter rather than to a newcomer (no
//! barging), and idle connections are reused most-recently-used first.

mod common;

use std::time::Duration;

use common::{assert_balanced, poll_once, scripted, settle};
use tokio::sync::mpsc;
use tokio::time::sleep;
use wharf::CloseReason;

#[tokio::test(start_paused = true)]
async fn waiters_are_served_strictly_in_arrival_order() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();

    let (served, mut order) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for caller in 0..6 {
        let get = pool.get();
        let served = served.clone();
        tasks.push(tokio::spawn(async move {
            let conn = get.await.unwrap();
            served.send(caller).unwrap();
            sleep(Duration::from_millis(10)).await;
            drop(conn);
        }));
        // Each caller is queued before the next one arrives.
        settle().await;
        assert_eq!(pool.status().waiting, caller + 1);
    }
    drop(served);

    drop(held);
    for task in tasks {
        task.await.unwrap();
    }
    let mut seen = Vec::new();
    while let Some(caller) = order.recv().await {
        seen.push(caller);
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(script.attempts(), 1, "one connection served everyone");
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_returned_connection_goes_to_the_oldest_waiter_not_to_a_newcomer() {
    let (builder, script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.info().id;
    let oldest = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 1);

    // The connection comes back and, in the same step, before the oldest
    // waiter has run again, a newcomer asks for one.
    drop(held);
    let mut newcomer = Box::pin(pool.get());
    assert!(
        poll_once(&mut newcomer).await.is_pending(),
        "the newcomer took the connection meant for the oldest waiter"
    );
    assert_eq!(pool.status().waiting, 1, "the newcomer queued");

    let conn = oldest.await.unwrap().unwrap();
    assert_eq!(conn.info().id, held_id);
    assert!(poll_once(&mut newcomer).await.is_pending());

    drop(conn);
    let conn = newcomer.await.unwrap();
    assert_eq!(conn.info().id, held_id);
    drop(conn);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_newly_opened_connection_goes_to_the_oldest_waiter() {
    let (builder, script) = scripted();
    script.set_connect_delay(Duration::from_millis(100));
    let pool = builder.max_size(1).validate_after(None).build().unwrap();

    let first = tokio::spawn(pool.get());
    settle().await;
    sleep(Duration::from_millis(50)).await;
    let second = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 2);
    assert_eq!(script.attempts(), 1, "max_size 1: one connect for both");

    sleep(Duration::from_millis(50)).await;
    settle().await;
    assert!(
        first.is_finished(),
        "the first caller got the new connection"
    );
    assert!(!second.is_finished());
    let conn = first.await.unwrap().unwrap();
    assert_eq!(conn.info().id, 1);
    drop(conn);
    let conn = second.await.unwrap().unwrap();
    assert_eq!(conn.info().id, 1);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_reused_most_recently_used_first() {
    let (builder, script) = scripted();
    let pool = builder.max_size(3).validate_after(None).build().unwrap();
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let c = pool.get().await.unwrap();
    let (a_id, b_id, c_id) = (a.info().id, b.info().id, c.info().id);
    assert_eq!(pool.metrics().created, 3);

    // Returned b, then c, then a: a is the most recently used.
    drop(b);
    sleep(Duration::from_millis(1)).await;
    drop(c);
    sleep(Duration::from_millis(1)).await;
    drop(a);

    let first = pool.get().await.unwrap();
    let second = pool.get().await.unwrap();
    let third = pool.get().await.unwrap();
    assert_eq!(
        [first.info().id, second.info().id, third.info().id],
        [a_id, c_id, b_id]
    );
    assert_eq!(pool.metrics().created, 3, "all reused, none opened");
    drop((first, second, third));
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_connection_fails_its_check_keeps_its_place() {
    let (builder, script) = scripted();
    script.set_connect_delay(Duration::from_millis(100));
    let pool = builder
        .max_size(1)
        .validate_after(Duration::ZERO)
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    let first = tokio::spawn(pool.get());
    settle().await;
    let second = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(pool.status().waiting, 2);

    // The first waiter is handed a dead connection; the pool closes it and
    // opens a replacement, which is still the first waiter's turn.
    script.fail_checks(true);
    drop(held);
    settle().await;
    script.fail_checks(false);
    assert_eq!(pool.metrics().closed_for(CloseReason::FailedCheck), 1);

    sleep(Duration::from_millis(100)).await;
    settle().await;
    assert!(
        first.is_finished() && !second.is_finished(),
        "the replacement went to a caller who arrived later"
    );
    let conn = first.await.unwrap().unwrap();
    assert_eq!(conn.info().id, 2);
    drop(conn);
    drop(second.await.unwrap().unwrap());
    assert_balanced(&pool, &script);
}

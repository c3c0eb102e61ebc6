//! Async hooks given as async closures or `async fn`s, without `Box::pin`:
//! `on_connect_fn`, `on_connect_with`, `on_checkout_fn`, `on_checkout_with`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{scripted, FakeConn};
use tokio::time::sleep;
use wharf::{BoxError, CloseReason};

async fn mark_dirty(conn: &mut FakeConn) -> Result<(), BoxError> {
    // Awaits while holding the borrow, as a real `SET ...` would.
    sleep(Duration::from_millis(5)).await;
    conn.dirty = true;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn on_connect_fn_runs_an_async_closure_on_each_new_connection_before_use() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(2)
        .on_connect_fn(async |conn| {
            sleep(Duration::from_millis(5)).await;
            conn.dirty = true;
            Ok(())
        })
        .build()
        .unwrap();
    let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    assert!(a.dirty && b.dirty, "both went through the hook");
    drop((a, b));
    let again = pool.get().await.unwrap();
    assert!(again.dirty);
    assert_eq!(
        script.attempts(),
        2,
        "the hook runs per connection, not per get"
    );
}

#[tokio::test(start_paused = true)]
async fn on_checkout_fn_takes_an_async_fn_and_runs_it_on_every_checkout() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .on_checkout_fn(mark_dirty)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    assert!(conn.dirty);
    conn.dirty = false;
    drop(conn);
    assert!(
        pool.get().await.unwrap().dirty,
        "ran again on the next checkout"
    );
}

#[tokio::test(start_paused = true)]
async fn the_with_variants_lend_their_state_to_every_call() {
    let (builder, _script) = scripted();
    let connects = Arc::new(AtomicU64::new(0));
    let checkouts = Arc::new(AtomicU64::new(0));
    let pool = builder
        .max_size(1)
        .on_connect_with(connects.clone(), async |count, _conn| {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .on_checkout_with(checkouts.clone(), async |count, conn| {
            sleep(Duration::from_millis(1)).await;
            count.fetch_add(1, Ordering::SeqCst);
            conn.dirty = true;
            Ok(())
        })
        .build()
        .unwrap();
    for _ in 0..3 {
        assert!(pool.get().await.unwrap().dirty);
    }
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    assert_eq!(checkouts.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failing_async_checkout_hook_closes_the_connection_and_the_caller_gets_another() {
    let (builder, script) = scripted();
    let refusals = Arc::new(AtomicU64::new(1));
    let pool = builder
        .max_size(1)
        .on_checkout_with(refusals, async |left, _conn| {
            if left.fetch_sub(1, Ordering::SeqCst) > 0 {
                return Err("refused".into());
            }
            Ok(())
        })
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.info().id, 2, "the first was refused and closed");
    assert_eq!(pool.metrics().closed_for(CloseReason::FailedCheck), 1);
    assert_eq!(script.attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_async_connect_hook_counts_as_a_failed_connect() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .acquire_timeout(Duration::from_millis(50))
        .on_connect_fn(async |_conn| Err("no such role".into()))
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(err.to_string().contains("no such role"), "{err}");
    assert!(pool.metrics().create_errors >= 1);
}

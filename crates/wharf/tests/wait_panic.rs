//! A waiter whose wait cannot start (no timers on its runtime) leaves the
//! queue: the connection it would have been handed is not lost.

mod common;

use std::panic::AssertUnwindSafe;

use common::scripted;

#[test]
fn a_wait_that_panics_on_a_runtime_without_timers_leaves_the_queue() {
    let timers = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (pool, held) = timers.block_on(async {
        let (builder, _script) = scripted();
        let pool = builder.max_size(1).build().unwrap();
        let held = pool.get().await.unwrap();
        (pool, held)
    });
    let no_timers = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let waited = std::panic::catch_unwind(AssertUnwindSafe(|| {
        no_timers.block_on(pool.get()).map(drop)
    }));
    assert!(
        waited.is_err(),
        "the wait was expected to panic without timers"
    );
    drop(held);
    timers.block_on(async {
        assert!(
            pool.try_get().is_some(),
            "the returned connection went to a waiter that is gone"
        );
        assert_eq!(pool.status().waiting, 0);
    });
}

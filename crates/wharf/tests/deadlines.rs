//! `acquire_timeout` without a timer per waiter: one deadline watcher per
//! pool, started by the first waiter and gone when nobody waits.

mod common;

use std::time::Duration;

use common::{scripted, settle};
use tokio::runtime::Handle;
use tokio::time::{sleep, Instant};
use wharf::Error;

fn alive_tasks() -> usize {
    Handle::current().metrics().num_alive_tasks()
}

#[tokio::test(start_paused = true)]
async fn a_later_caller_with_a_shorter_timeout_times_out_first_and_on_time() {
    let (builder, _script) = scripted();
    let pool = builder.max_size(1).validate_after(None).build().unwrap();
    let _held = pool.get().await.unwrap();
    let start = Instant::now();
    let patient = tokio::spawn(pool.get_timeout(Duration::from_secs(10)));
    settle().await;
    let hasty = tokio::spawn(pool.get_timeout(Duration::from_secs(1)));
    settle().await;
    assert_eq!(pool.status().waiting, 2);

    let err = hasty.await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(
        matches!(err, Error::Timeout { waited, .. } if waited == Duration::from_secs(1)),
        "{err:?}"
    );
    assert_eq!(pool.status().waiting, 1, "the patient one still waits");

    assert!(patient.await.unwrap().is_err());
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(pool.metrics().timeouts, 2);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_watcher_runs_only_while_callers_wait() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .validate_after(None)
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    settle().await;
    let idle_tasks = alive_tasks();

    let waiter = tokio::spawn(pool.get());
    settle().await;
    assert_eq!(alive_tasks(), idle_tasks + 2, "the waiter and the watcher");
    drop(held);
    drop(waiter.await.unwrap().unwrap());
    // It wakes once more at the deadline it was set for, finds nobody
    // waiting, and ends.
    sleep(Duration::from_secs(2)).await;
    assert_eq!(alive_tasks(), idle_tasks);
}

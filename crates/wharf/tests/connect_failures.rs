//! `Pool::connect_failures`: connects failing in a row since the last
//! success, for health checks that ask whether the backend is reachable.

mod common;

use std::time::Duration;

use common::scripted;
use tokio::time::sleep;

#[tokio::test(start_paused = true)]
async fn failures_count_until_a_connect_succeeds() {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(2)
        .acquire_timeout(Duration::from_secs(1))
        .connect_backoff(Duration::from_millis(100))
        .connect_backoff_max(Duration::from_millis(200))
        .build()
        .unwrap();
    assert_eq!(pool.connect_failures().0, 0);
    assert!(pool.connect_failures().1.is_none());

    script.refuse(true);
    assert!(pool.get().await.is_err());
    let (failures, last) = pool.connect_failures();
    assert!(failures >= 2, "{failures} failures");
    assert_eq!(
        last.map(|e| e.to_string()).as_deref(),
        Some("connection refused")
    );

    script.refuse(false);
    let conn = pool.get().await.expect("the backend is back");
    drop(conn);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(pool.connect_failures().0, 0);
    assert!(pool.connect_failures().1.is_none());
}

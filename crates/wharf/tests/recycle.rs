//! `Manager::recycle`: connections coming back from a caller are reset in
//! the background before anyone else gets them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, Instant};
use wharf::{CloseReason, Manager, Pool};

const RESET_TAKES: Duration = Duration::from_millis(10);

/// Connections are lists of session settings; a reset empties one.
#[derive(Clone, Default)]
struct Resetting {
    resets: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
}

impl Manager for Resetting {
    type Connection = Vec<&'static str>;
    type Error = std::io::Error;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        Ok(Vec::new())
    }

    async fn check(&self, _conn: &mut Self::Connection) -> Result<(), Self::Error> {
        Ok(())
    }

    fn recycles(&self) -> bool {
        true
    }

    async fn recycle(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        sleep(RESET_TAKES).await;
        self.resets.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("server closed the connection"));
        }
        conn.clear();
        Ok(())
    }
}

fn pool(manager: &Resetting) -> Pool<Resetting> {
    Pool::builder(manager.clone())
        .max_size(1)
        .validate_after(None)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_next_caller_gets_a_returned_connection_only_once_it_is_reset() {
    let manager = Resetting::default();
    let pool = pool(&manager);
    let mut conn = pool.get().await.unwrap();
    conn.push("SET search_path = tenant_1");
    drop(conn);
    assert_eq!(pool.status().idle, 0, "out being reset");

    let start = Instant::now();
    let conn = pool.get().await.unwrap();
    assert_eq!(
        start.elapsed(),
        RESET_TAKES,
        "served when the reset was done"
    );
    assert!(conn.is_empty(), "{conn:?}");
    assert_eq!(conn.info().id, 1, "the same connection");
    assert_eq!(manager.resets.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_failing_its_reset_is_closed_and_replaced() {
    let manager = Resetting::default();
    manager.fail.store(true, Ordering::SeqCst);
    let pool = pool(&manager);
    drop(pool.get().await.unwrap());
    sleep(RESET_TAKES * 2).await;
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::FailedCheck), 1);
    assert_eq!(m.status.size, 0);

    manager.fail.store(false, Ordering::SeqCst);
    assert_eq!(pool.get().await.unwrap().info().id, 2);
}

#[tokio::test(start_paused = true)]
async fn a_connection_still_being_reset_when_the_pool_closes_is_closed() {
    let manager = Resetting::default();
    let pool = pool(&manager);
    drop(pool.get().await.unwrap());
    pool.close().await;
    sleep(RESET_TAKES * 2).await;
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::Closed), 1);
    assert_eq!(m.status.size, 0);
}

//! The shared-connection pool (`wharf::shared`) with a scripted opener on
//! Tokio's paused clock: least-loaded leases, growth past
//! `per_connection` one connection at a time, the cap, idle shrink,
//! replacement of failed connections, and open failures.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wharf::shared::{Open, SharedError, SharedPool, SharedSettings};

/// Connections are numbers; opening takes 10 ms; `fail` makes opens
/// fail, `unhealthy` makes checks fail, `closed` marks one as closed.
#[derive(Default)]
struct Script {
    opened: AtomicUsize,
    fail: AtomicBool,
    unhealthy: AtomicBool,
    closed: AtomicUsize,
}

#[derive(Clone, Default)]
struct Opener(Arc<Script>);

#[derive(Debug, thiserror::Error)]
#[error("refused")]
struct Refused;

impl Open for Opener {
    type Conn = usize;
    type Error = Refused;

    async fn open(&self) -> Result<(usize, String), Refused> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if self.0.fail.load(Ordering::SeqCst) {
            return Err(Refused);
        }
        let n = self.0.opened.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((n, format!("conn {n}")))
    }

    async fn check(&self, _conn: &usize) -> bool {
        !self.0.unhealthy.load(Ordering::SeqCst)
    }

    fn is_open(&self, conn: &usize) -> bool {
        self.0.closed.load(Ordering::SeqCst) != *conn
    }
}

fn settings(min: usize, max: usize, per: usize) -> SharedSettings {
    SharedSettings {
        min_connections: min,
        max_connections: max,
        per_connection: per,
        idle_timeout: Duration::from_secs(60),
        maintenance_interval: Duration::from_secs(1),
        check_idle: false,
        connect_timeout: Duration::from_secs(5),
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_leases_fill_connections_to_per_connection_before_opening_more() {
    let opener = Opener::default();
    let pool = SharedPool::start(opener.clone(), settings(1, 8, 50))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move { pool.lease().await.unwrap() }));
    }
    let mut leases = Vec::new();
    for task in tasks {
        leases.push(task.await.unwrap());
    }
    let status = pool.status();
    let loads: Vec<usize> = status.connections.iter().map(|c| c.in_flight).collect();
    assert_eq!(loads, vec![50; 4], "{status:?}");
    assert_eq!(opener.0.opened.load(Ordering::SeqCst), 4);
    drop(leases);
    assert_eq!(pool.status().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn max_connections_caps_growth_and_the_least_loaded_is_leased() {
    let pool = SharedPool::start(Opener::default(), settings(0, 2, 1))
        .await
        .unwrap();
    let a = pool.lease().await.unwrap();
    let b = pool.lease().await.unwrap();
    let c = pool.lease().await.unwrap();
    let d = pool.lease().await.unwrap();
    assert_eq!((*a.conn(), *b.conn()), (1, 2));
    assert_ne!(c.conn(), d.conn(), "over the cap, still spread by load");
    assert_eq!(pool.status().connections.len(), 2);
    drop((a, c));
    let e = pool.lease().await.unwrap();
    assert_eq!(*e.conn(), 1, "the emptied connection is the least loaded");
    // Holds keep a lease counted after the lease itself is gone.
    let hold = e.hold();
    drop(e);
    assert_eq!(pool.status().in_flight(), 3);
    drop(hold);
    assert_eq!(pool.status().in_flight(), 2);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_close_down_to_min_connections() {
    let mut s = settings(1, 4, 1);
    s.idle_timeout = Duration::from_secs(10);
    let pool = SharedPool::start(Opener::default(), s).await.unwrap();
    let leases = vec![
        pool.lease().await.unwrap(),
        pool.lease().await.unwrap(),
        pool.lease().await.unwrap(),
    ];
    drop(leases);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        pool.status().connections.len(),
        3,
        "closed before idle_timeout"
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    let status = pool.status();
    assert_eq!(status.connections.len(), 1, "{status:?}");
    assert_eq!(status.closed_idle, 2);
}

#[tokio::test(start_paused = true)]
async fn failed_connections_are_replaced() {
    let opener = Opener::default();
    let mut s = settings(1, 2, 10);
    s.check_idle = true;
    let pool = SharedPool::start(opener.clone(), s).await.unwrap();
    // Reported by a caller.
    let lease = pool.lease().await.unwrap();
    assert_eq!(*lease.conn(), 1);
    lease.report_broken();
    let next = pool.lease().await.unwrap();
    assert_eq!(*next.conn(), 2, "a failed connection gets no new lease");
    drop((lease, next));
    // Seen closed without I/O.
    opener.0.closed.store(2, Ordering::SeqCst);
    assert_eq!(*pool.lease().await.unwrap().conn(), 3);
    // Failing its check while idle; the pool is topped up again.
    opener.0.unhealthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    opener.0.unhealthy.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = pool.status();
    assert_eq!(status.replaced, 3, "{status:?}");
    assert_eq!(status.connections.len(), 1);
    assert!(status.connections[0].id >= 4);
}

#[tokio::test(start_paused = true)]
async fn open_failures_fall_back_to_open_connections_or_fail() {
    let opener = Opener::default();
    opener.0.fail.store(true, Ordering::SeqCst);
    let pool = SharedPool::start(opener.clone(), settings(1, 2, 1))
        .await
        .unwrap();
    assert!(matches!(
        pool.lease().await,
        Err(SharedError::Open(Refused))
    ));
    opener.0.fail.store(false, Ordering::SeqCst);
    let a = pool.lease().await.unwrap();
    opener.0.fail.store(true, Ordering::SeqCst);
    let b = pool
        .lease()
        .await
        .expect("the open connection, over per_connection");
    assert_eq!(a.conn(), b.conn());
    assert!(pool.status().open_failures >= 2);
    pool.close();
    assert!(matches!(pool.lease().await, Err(SharedError::Closed)));
}

#[tokio::test]
async fn settings_out_of_range_are_refused() {
    for s in [settings(0, 0, 1), settings(3, 2, 1), settings(0, 1, 0)] {
        let started = SharedPool::start(Opener::default(), s).await;
        assert!(matches!(started, Err(SharedError::Settings(_))));
    }
}

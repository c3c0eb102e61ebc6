//! Connection health: `validate_after` checks before checkout, `validation_timeout`,
//! `has_broken` on every return, and background keepalive checks.

mod common;

use std::time::Duration;

use common::{assert_balanced, settle, FakeConn, ScriptError, ScriptedManager};
use tokio::time::{sleep, Instant};
use wharf::{CloseReason, Manager, Pool};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Checks out `n` connections at once and returns them, oldest id first, so
/// the pool ends up with `n` idle connections (the last returned on top).
async fn open_idle(pool: &Pool<ScriptedManager>, n: usize) -> Vec<u64> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.expect("connect"));
    }
    let ids = held.iter().map(|c| c.id).collect();
    drop(held);
    settle().await;
    ids
}

#[tokio::test(start_paused = true)]
async fn only_connections_idle_past_validate_after_are_checked() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(2)
        .validate_after(ms(500))
        .build()
        .unwrap();

    // A brand-new connection is not checked.
    let conn = pool.get().await.unwrap();
    let id = conn.id;
    drop(conn);
    assert_eq!(script.checks(), 0);

    // Used 100 ms ago: handed out as is.
    sleep(ms(100)).await;
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.id, id);
    assert_eq!(script.checks(), 0, "a recently used connection was checked");
    drop(conn);

    // Idle 499 ms: still under the bound.
    sleep(ms(499)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(script.checks(), 0);

    // Idle 600 ms: checked once, then handed out.
    sleep(ms(600)).await;
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.id, id);
    assert_eq!(script.checks(), 1, "an idle connection was not checked");
    drop(conn);

    // The check counts as activity: right after it, no second check.
    drop(pool.get().await.unwrap());
    assert_eq!(script.checks(), 1);
    assert_eq!(pool.metrics().closed_total(), 0);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn validate_after_none_never_checks_and_zero_always_checks() {
    let (manager, script) = ScriptedManager::new();
    let never = Pool::builder(manager)
        .validate_after(None::<Duration>)
        .build()
        .unwrap();
    drop(never.get().await.unwrap());
    sleep(Duration::from_secs(60)).await;
    drop(never.get().await.unwrap());
    assert_eq!(script.checks(), 0);

    let (manager, script) = ScriptedManager::new();
    let always = Pool::builder(manager)
        .validate_after(Duration::ZERO)
        .build()
        .unwrap();
    for _ in 0..3 {
        drop(always.get().await.unwrap());
    }
    assert_eq!(script.checks(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failed_check_closes_the_connection_and_get_moves_on_to_the_next() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(3)
        .validate_after(ms(500))
        .build()
        .unwrap();
    let ids = open_idle(&pool, 2).await;
    assert_eq!(ids, [1, 2]);

    sleep(Duration::from_secs(1)).await;
    // Connection 2 is on top of the idle stack (most recently returned).
    script.break_conn(2);
    let conn = pool
        .get()
        .await
        .expect("the caller never sees the failed check");
    assert_eq!(conn.id, 1, "the next idle connection was not used");
    assert_eq!(script.checks(), 2, "both idle connections were checked");

    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::FailedCheck), 1);
    assert_eq!(m.closed_total(), 1);
    assert_eq!(m.created, 2, "no new connection was needed");
    drop(conn);
    assert_balanced(&pool, &script);
    assert_eq!(pool.status().size, 1);
}

#[tokio::test(start_paused = true)]
async fn when_every_idle_connection_fails_its_check_get_opens_a_new_one() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(3)
        .validate_after(ms(500))
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    open_idle(&pool, 3).await;
    sleep(Duration::from_secs(1)).await;

    script.break_all();
    let start = Instant::now();
    let conn = pool
        .get()
        .await
        .expect("the caller never sees the failed checks");
    assert_eq!(conn.id, 4, "a new connection was not opened");
    assert_eq!(start.elapsed(), Duration::ZERO, "no waiting for anything");
    assert_eq!(script.checks(), 3);

    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::FailedCheck), 3);
    assert_eq!(m.created, 4);
    assert_eq!(m.timeouts, 0);
    assert_eq!(m.acquired(), 4);
    drop(conn);
    assert_balanced(&pool, &script);
    assert_eq!(pool.status().size, 1);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_is_bounded_by_validation_timeout() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(2)
        .validate_after(ms(500))
        .validation_timeout(Duration::from_secs(2))
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    open_idle(&pool, 1).await;
    sleep(Duration::from_secs(1)).await;

    script.hang_checks(true);
    let start = Instant::now();
    let conn = pool
        .get()
        .await
        .expect("a hung check must not fail the caller");
    let waited = start.elapsed();
    assert_eq!(conn.id, 2, "the hung connection was handed out");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100),
        "waited {waited:?}, expected the 2s validation timeout"
    );
    assert_eq!(pool.metrics().closed_for(CloseReason::FailedCheck), 1);
    drop(conn);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn has_broken_runs_on_every_return() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager).max_size(4).build().unwrap();

    let healthy = pool.get().await.unwrap();
    let broken = pool.get().await.unwrap();
    script.break_conn(broken.id);
    drop(broken);
    drop(healthy);
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::Broken), 1);
    assert_eq!(m.closed_total(), 1);
    assert_eq!(pool.status().size, 1);
    assert_eq!(pool.status().idle, 1);
    assert_balanced(&pool, &script);

    // break_all: every connection open so far is closed on return, even the
    // one that was fine a moment ago; connections opened later are kept.
    let held: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(pool.get().await.unwrap());
        }
        v
    };
    let mut ids: Vec<u64> = held.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 3, 4]);
    script.break_all();
    let fresh = pool.get().await.unwrap();
    assert_eq!(fresh.id, 5);
    drop(held);
    drop(fresh);
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::Broken), 4);
    assert_eq!(pool.status().size, 1);
    assert_eq!(pool.get().await.unwrap().id, 5);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn keepalive_checks_idle_connections_and_closes_dead_ones_before_use() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(3)
        // No checks on checkout: only keepalive can find the dead one.
        .validate_after(None::<Duration>)
        .keepalive_interval(Duration::from_secs(5))
        .maintenance_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    open_idle(&pool, 3).await;

    sleep(ms(4500)).await;
    assert_eq!(script.checks(), 0, "checked before keepalive_interval");
    sleep(Duration::from_secs(1)).await;
    assert_eq!(script.checks(), 3, "each idle connection checked once");
    assert_eq!(pool.status().idle, 3);

    script.break_conn(2);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(script.checks(), 6);
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::FailedCheck), 1);
    assert_eq!(pool.status().size, 2);
    assert_eq!(script.alive(), 2, "the dead connection was not closed");

    // Nobody ever gets the dead connection.
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert!(a.id != 2 && b.id != 2);
    assert_eq!(pool.metrics().closed_total(), 1);
    drop((a, b));
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn keepalive_is_off_by_default() {
    assert_eq!(wharf::Config::default().keepalive_interval, None);
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(3)
        .maintenance_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    open_idle(&pool, 3).await;
    // Long enough for keepalive to have run many times, short of the
    // default idle timeout (10 min).
    sleep(Duration::from_secs(300)).await;
    assert_eq!(script.checks(), 0);
    assert_eq!(pool.status().idle, 3);
    assert_eq!(pool.metrics().closed_total(), 0);
}

/// The scripted manager, with checks that take a while (a real round trip).
#[derive(Clone)]
struct SlowChecks {
    inner: ScriptedManager,
    delay: Duration,
}

impl Manager for SlowChecks {
    type Connection = FakeConn;
    type Error = ScriptError;

    async fn connect(&self) -> Result<FakeConn, ScriptError> {
        self.inner.connect().await
    }

    async fn check(&self, conn: &mut FakeConn) -> Result<(), ScriptError> {
        sleep(self.delay).await;
        self.inner.check(conn).await
    }

    fn has_broken(&self, conn: &mut FakeConn) -> bool {
        self.inner.has_broken(conn)
    }
}

#[tokio::test(start_paused = true)]
async fn keepalive_does_not_bring_back_connections_beyond_a_shrunk_max_size() {
    let (inner, script) = ScriptedManager::new();
    let manager = SlowChecks {
        inner,
        delay: Duration::from_secs(1),
    };
    let pool = Pool::builder(manager)
        .max_size(3)
        .validate_after(None::<Duration>)
        .keepalive_interval(Duration::from_secs(5))
        .maintenance_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut held: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(pool.get().await.unwrap());
        }
        v
    };
    drop(held.pop());

    // At t=5 the idle one is taken out for its (1 s) keepalive check, the
    // other two are in use; meanwhile the pool is shrunk to one, with no
    // idle connection to close.
    sleep(ms(5500)).await;
    let s = pool.status();
    assert_eq!(
        (s.size, s.idle, s.in_use),
        (3, 0, 2),
        "not out for keepalive"
    );
    pool.resize(1).unwrap();
    assert_eq!(pool.metrics().closed_total(), 0);

    // The check passes, but the pool has no room for the connection.
    sleep(Duration::from_secs(1)).await;
    assert_eq!(script.checks(), 1);
    let s = pool.status();
    assert_eq!((s.size, s.idle, s.in_use), (2, 0, 2), "{s:?}");
    assert_eq!(pool.metrics().closed_for(CloseReason::Resized), 1);

    drop(held);
    let s = pool.status();
    assert!(s.size <= s.max_size, "pool left above max_size: {s:?}");
    assert_eq!((s.size, s.idle), (1, 1), "{s:?}");
    assert_eq!(pool.metrics().closed_for(CloseReason::Resized), 2);
    assert_eq!(script.alive(), 1);
}

#[tokio::test(start_paused = true)]
async fn keepalive_leaves_connections_not_being_checked_available() {
    let (inner, script) = ScriptedManager::new();
    let manager = SlowChecks {
        inner,
        delay: Duration::from_secs(1),
    };
    let pool = Pool::builder(manager)
        .max_size(3)
        .validate_after(None::<Duration>)
        .keepalive_interval(Duration::from_secs(5))
        .maintenance_interval(Duration::from_secs(1))
        .acquire_timeout(ms(500))
        .build()
        .unwrap();
    let held: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(pool.get().await.unwrap());
        }
        v
    };
    drop(held);

    // At t=5 keepalive starts checking (1 s per check). A caller arriving
    // meanwhile gets one of the connections not under check at once,
    // rather than waiting behind checks of connections queued for one.
    sleep(ms(5100)).await;
    let start = Instant::now();
    let conn = pool
        .get()
        .await
        .expect("a connection not being checked is available");
    assert_eq!(start.elapsed(), Duration::ZERO);
    let second = pool.get().await.expect("and so is the other");
    assert_eq!(start.elapsed(), Duration::ZERO);
    drop((conn, second));

    // Every connection still gets its check, none is lost.
    sleep(Duration::from_secs(10)).await;
    assert!(script.checks() >= 3, "{} checks", script.checks());
    let s = pool.status();
    assert_eq!((s.size, s.idle), (3, 3), "{s:?}");
    assert_eq!(script.alive(), 3);
    assert_eq!(pool.metrics().closed_total(), 0);
}

//! Connection lifetimes: `idle_timeout` down to `min_idle`, jittered
//! `max_lifetime` (never under the user), `max_uses`, all driven by the
//! maintenance task on `maintenance_interval`.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_balanced, settle, ScriptedManager};
use parking_lot::Mutex;
use tokio::time::{sleep, Instant};
use wharf::{CloseReason, Pool};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Checks out `n` connections at the same instant and returns them all.
async fn open_idle(pool: &Pool<ScriptedManager>, n: usize) {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.expect("connect"));
    }
    drop(held);
    settle().await;
}

type CloseLog = Arc<Mutex<Vec<(u64, CloseReason, Instant)>>>;

fn close_log() -> CloseLog {
    Arc::new(Mutex::new(Vec::new()))
}

fn logging(log: &CloseLog) -> impl Fn(&mut common::FakeConn, CloseReason) + Send + Sync + 'static {
    let log = log.clone();
    move |conn, reason| log.lock().push((conn.id, reason, Instant::now()))
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_evicts_down_to_min_idle_and_no_further() {
    let (manager, script) = ScriptedManager::new();
    let log = close_log();
    let pool = Pool::builder(manager)
        .max_size(5)
        .min_idle(2)
        .idle_timeout(secs(10))
        .max_lifetime(None::<Duration>)
        .maintenance_interval(secs(1))
        .on_close(logging(&log))
        .build()
        .unwrap();
    pool.ready().await.unwrap();
    open_idle(&pool, 5).await;
    assert_eq!(pool.status().idle, 5);

    sleep(ms(9500)).await;
    assert_eq!(pool.status().idle, 5, "evicted before idle_timeout");
    assert_eq!(pool.metrics().closed_for(CloseReason::Idle), 0);

    sleep(secs(1)).await;
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::Idle), 3);
    assert_eq!(m.status.idle, 2);
    assert_eq!(m.status.size, 2);
    // The ones idle longest (the bottom of the stack) go first.
    let evicted: BTreeSet<u64> = log.lock().iter().map(|&(id, _, _)| id).collect();
    assert_eq!(evicted, BTreeSet::from([1, 2, 3]));

    // Never below min_idle, however long they sit, and nothing replaced.
    sleep(secs(3600)).await;
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::Idle), 3);
    assert_eq!(m.status.idle, 2);
    assert_eq!(m.created, 5);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_spares_connections_in_use_and_recently_used() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(3)
        .idle_timeout(secs(10))
        .maintenance_interval(secs(1))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    open_idle(&pool, 2).await; // ids 2 and 3 idle
    sleep(secs(6)).await;
    // Use 3 again: its idle clock restarts.
    drop(pool.get().await.unwrap());
    sleep(ms(4500)).await;
    let m = pool.metrics();
    assert_eq!(
        m.closed_for(CloseReason::Idle),
        1,
        "only connection 2 timed out"
    );
    assert_eq!(m.status.in_use, 1);
    assert_eq!(m.status.idle, 1);
    assert_eq!(pool.get().await.unwrap().id, 3);
    assert_eq!(held.id, 1);
    drop(held);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_retires_idle_connections() {
    let (manager, script) = ScriptedManager::new();
    let log = close_log();
    let pool = Pool::builder(manager)
        .max_size(2)
        .max_lifetime(secs(30))
        .lifetime_jitter(0.0)
        .idle_timeout(None::<Duration>)
        .maintenance_interval(secs(1))
        .on_close(logging(&log))
        .build()
        .unwrap();
    let t0 = Instant::now();
    open_idle(&pool, 2).await;

    sleep(ms(29_500)).await;
    assert_eq!(pool.status().idle, 2);
    sleep(secs(1)).await;
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::Lifetime), 2);
    assert_eq!(m.status.size, 0);
    for &(_, reason, at) in log.lock().iter() {
        assert_eq!(reason, CloseReason::Lifetime);
        assert_eq!(
            at - t0,
            secs(30),
            "retired at the first tick past the lifetime"
        );
    }
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_never_closes_a_connection_under_its_user() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(2)
        .max_lifetime(secs(30))
        .lifetime_jitter(0.0)
        .maintenance_interval(secs(1))
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    sleep(secs(120)).await;
    // Still ours, still counted, still alive.
    conn.dirty = true;
    assert_eq!(script.alive(), 1);
    let m = pool.metrics();
    assert_eq!(m.closed_total(), 0);
    assert_eq!(m.status.in_use, 1);
    assert_eq!(m.status.size, 1);

    // Retired the moment it comes back.
    drop(conn);
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::Lifetime), 1);
    assert_eq!(m.status.size, 0);
    assert_eq!(pool.get().await.unwrap().id, 2);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn an_expired_idle_connection_is_not_handed_out_between_maintenance_rounds() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(2)
        .max_lifetime(secs(30))
        .lifetime_jitter(0.0)
        .validate_after(None::<Duration>)
        // Maintenance would not run before the lifetime ends.
        .maintenance_interval(secs(3600))
        .build()
        .unwrap();
    open_idle(&pool, 1).await;
    sleep(secs(31)).await;
    assert_eq!(pool.status().idle, 1, "maintenance ran early");
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.id, 2);
    assert_eq!(pool.metrics().closed_for(CloseReason::Lifetime), 1);
    drop(conn);
    assert_balanced(&pool, &script);
}

/// Opens `n` connections at one instant with the given jitter and returns
/// after all have expired, with the times at which they were retired, as
/// offsets from their creation.
async fn lifetime_expiries(n: usize, jitter: f64) -> Vec<Duration> {
    fastrand::seed(0x5eed);
    let (manager, script) = ScriptedManager::new();
    let log = close_log();
    let pool = Pool::builder(manager)
        .max_size(n)
        .max_lifetime(secs(100))
        .lifetime_jitter(jitter)
        .idle_timeout(None::<Duration>)
        .maintenance_interval(secs(1))
        .on_close(logging(&log))
        .build()
        .unwrap();
    let t0 = Instant::now();
    open_idle(&pool, n).await;
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "connections not opened together"
    );
    sleep(secs(101)).await;
    assert_eq!(pool.metrics().closed_for(CloseReason::Lifetime), n as u64);
    assert_balanced(&pool, &script);
    let log = log.lock();
    log.iter().map(|&(_, _, at)| at - t0).collect()
}

#[tokio::test(start_paused = true)]
async fn lifetime_jitter_spreads_expiry_over_several_maintenance_rounds() {
    let expiries = lifetime_expiries(20, 0.5).await;
    let rounds: BTreeSet<Duration> = expiries.iter().copied().collect();
    assert!(
        rounds.len() >= 5,
        "20 connections expired in only {} rounds: {rounds:?}",
        rounds.len()
    );
    // Shortened by at most half, and never lengthened.
    assert!(
        expiries
            .iter()
            .all(|&e| (secs(50)..=secs(100)).contains(&e)),
        "{expiries:?}"
    );
    let spread = *rounds.last().unwrap() - *rounds.first().unwrap();
    assert!(spread >= secs(10), "spread over only {spread:?}");
}

#[tokio::test(start_paused = true)]
async fn without_jitter_connections_opened_together_expire_together() {
    let expiries = lifetime_expiries(20, 0.0).await;
    let rounds: BTreeSet<Duration> = expiries.iter().copied().collect();
    assert_eq!(rounds, BTreeSet::from([secs(100)]));
}

#[tokio::test(start_paused = true)]
async fn max_uses_retires_a_connection_after_n_checkouts() {
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(1)
        .max_uses(3u64)
        .build()
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..7 {
        let conn = pool.get().await.unwrap();
        seen.push((conn.id, conn.info().uses));
    }
    assert_eq!(
        seen,
        [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 1)],
        "(id, uses) per checkout"
    );
    let m = pool.metrics();
    assert_eq!(m.closed_for(CloseReason::MaxUses), 2);
    assert_eq!(m.closed_total(), 2);
    assert_eq!(m.created, 3);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn maintenance_interval_drives_eviction() {
    let (manager, script) = ScriptedManager::new();
    let log = close_log();
    let pool = Pool::builder(manager)
        .max_size(2)
        .idle_timeout(secs(1))
        .maintenance_interval(secs(10))
        .on_close(logging(&log))
        .build()
        .unwrap();
    let t0 = Instant::now();
    open_idle(&pool, 2).await;

    // Idle far past the timeout, but no maintenance round yet.
    sleep(secs(9)).await;
    assert_eq!(pool.status().idle, 2);
    assert_eq!(pool.metrics().closed_total(), 0);

    sleep(secs(2)).await;
    assert_eq!(pool.status().idle, 0);
    let log = log.lock();
    assert_eq!(log.len(), 2);
    assert!(log
        .iter()
        .all(|&(_, reason, at)| reason == CloseReason::Idle && at - t0 == secs(10)));
    drop(log);
    assert_balanced(&pool, &script);
}

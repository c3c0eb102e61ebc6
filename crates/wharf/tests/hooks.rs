//! Hooks: `on_connect`, `on_checkout`, `on_checkin` and `on_close` (with the
//! reason for every path that closes a connection), and `Pooled::detach`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_balanced, settle, FakeConn, ScriptedManager};
use parking_lot::Mutex;
use tokio::time::sleep;
use wharf::{BoxError, Builder, CloseReason, Error, Pool};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

type CloseLog = Arc<Mutex<Vec<(u64, CloseReason)>>>;

/// A builder whose `on_close` hook records `(connection id, reason)`.
fn recording(
    configure: impl FnOnce(Builder<ScriptedManager>) -> Builder<ScriptedManager>,
) -> (Pool<ScriptedManager>, Arc<common::Script>, CloseLog) {
    let (manager, script) = ScriptedManager::new();
    let log: CloseLog = Arc::default();
    let sink = log.clone();
    let builder = Pool::builder(manager).on_close(move |conn: &mut FakeConn, reason| {
        sink.lock().push((conn.id, reason));
    });
    let pool = configure(builder).build().unwrap();
    (pool, script, log)
}

/// Asserts the `on_close` log and that the metrics count the same reasons.
#[track_caller]
fn assert_closed(pool: &Pool<ScriptedManager>, log: &CloseLog, expected: &[(u64, CloseReason)]) {
    let log = log.lock().clone();
    assert_eq!(log, expected, "on_close calls");
    let m = pool.metrics();
    for reason in CloseReason::ALL {
        let want = expected.iter().filter(|(_, r)| *r == reason).count() as u64;
        assert_eq!(m.closed_for(reason), want, "closed_for({reason})");
    }
}

#[tokio::test(start_paused = true)]
async fn on_connect_runs_once_per_new_connection_before_anyone_uses_it() {
    let (manager, script) = ScriptedManager::new();
    let runs = Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    let pool = Pool::builder(manager)
        .max_size(3)
        .on_connect(move |conn| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                // Takes a while, like a real `SET ...` round trip.
                sleep(Duration::from_millis(5)).await;
                conn.dirty = true;
                Ok(())
            })
        })
        .build()
        .unwrap();

    let first = pool.get().await.unwrap();
    assert!(first.dirty, "handed out before on_connect finished");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let second = pool.get().await.unwrap();
    assert!(second.dirty);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    drop((first, second));

    // Reuse does not run it again.
    for _ in 0..5 {
        assert!(pool.get().await.unwrap().dirty);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(pool.metrics().created, 2);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_failing_on_connect_is_a_failed_connect_and_its_error_reaches_the_caller() {
    fastrand::seed(1);
    let (manager, script) = ScriptedManager::new();
    let pool = Pool::builder(manager)
        .max_size(2)
        .acquire_timeout(secs(1))
        .connect_backoff(Duration::from_millis(100))
        .connect_backoff_max(Duration::from_millis(200))
        .on_connect(|_conn| {
            Box::pin(async {
                Err(BoxError::from(
                    "SET search_path failed: schema \"app\" does not exist",
                ))
            })
        })
        .build()
        .unwrap();

    let err = pool.get().await.expect_err("on_connect always fails");
    let Error::Timeout { last_error, .. } = &err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert_eq!(
        last_error.as_ref().map(|e| e.to_string()).as_deref(),
        Some("SET search_path failed: schema \"app\" does not exist")
    );
    assert!(
        err.to_string().ends_with(
            "; last connect error: SET search_path failed: schema \"app\" does not exist"
        ),
        "{err}"
    );
    let m = pool.metrics();
    assert!(
        m.create_errors >= 2,
        "retried with backoff: {}",
        m.create_errors
    );
    assert_eq!(m.create_errors, script.attempts());
    assert_eq!(m.created, 0);
    assert_eq!(m.timeouts, 1);
    // The connections the hook refused were dropped, not leaked.
    assert_eq!(script.alive(), 0);
    assert_eq!(pool.status().size, 0);
}

#[tokio::test(start_paused = true)]
async fn on_checkout_runs_per_checkout_and_a_failure_hands_the_caller_another() {
    let refuse_first = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let (flag, counter) = (refuse_first.clone(), runs.clone());
    let (pool, script, log) = recording(|b| {
        b.max_size(2).on_checkout(move |conn| {
            counter.fetch_add(1, Ordering::SeqCst);
            let refuse = flag.load(Ordering::SeqCst) && conn.id == 1;
            Box::pin(async move {
                if refuse {
                    Err("DISCARD ALL failed".into())
                } else {
                    Ok(())
                }
            })
        })
    });

    for _ in 0..3 {
        assert_eq!(pool.get().await.unwrap().id, 1);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3, "once per checkout");

    refuse_first.store(true, Ordering::SeqCst);
    let conn = pool
        .get()
        .await
        .expect("the caller never sees the hook's failure");
    assert_eq!(conn.id, 2);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        5,
        "ran on 1 (refused) and on 2"
    );
    drop(conn);
    assert_closed(&pool, &log, &[(1, CloseReason::FailedCheck)]);
    assert_eq!(pool.metrics().acquired(), 4);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn on_checkin_returning_false_closes_the_connection() {
    let (pool, script, log) = recording(|b| b.max_size(2).on_checkin(|conn| !conn.dirty));
    let clean = pool.get().await.unwrap();
    let mut dirty = pool.get().await.unwrap();
    dirty.dirty = true;
    let (clean_id, dirty_id) = (clean.id, dirty.id);
    drop(dirty);
    drop(clean);
    assert_closed(&pool, &log, &[(dirty_id, CloseReason::Rejected)]);
    assert_eq!(pool.status().idle, 1);
    assert_eq!(pool.get().await.unwrap().id, clean_id);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn on_close_gets_idle_and_lifetime() {
    let (pool, script, log) = recording(|b| {
        b.max_size(2)
            .idle_timeout(secs(10))
            .max_lifetime(secs(15))
            .lifetime_jitter(0.0)
            .maintenance_interval(secs(1))
    });
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    drop(a); // idle from t=0
    sleep(secs(8)).await;
    drop(b); // idle from t=8: would time out at 18, expires at 15
    sleep(secs(20)).await;
    assert_closed(
        &pool,
        &log,
        &[(1, CloseReason::Idle), (2, CloseReason::Lifetime)],
    );
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn on_close_gets_max_uses_broken_and_discarded() {
    let (pool, script, log) = recording(|b| b.max_size(3).max_uses(2u64));
    drop(pool.get().await.unwrap());
    drop(pool.get().await.unwrap()); // second use of 1
    let broken = pool.get().await.unwrap();
    assert_eq!(broken.id, 2);
    script.break_conn(2);
    drop(broken);
    let discarded = pool.get().await.unwrap();
    assert_eq!(discarded.id, 3);
    discarded.discard();
    assert_closed(
        &pool,
        &log,
        &[
            (1, CloseReason::MaxUses),
            (2, CloseReason::Broken),
            (3, CloseReason::Discarded),
        ],
    );
    assert_eq!(pool.status().size, 0);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn on_close_gets_failed_check_from_validation_and_keepalive() {
    let (pool, script, log) = recording(|b| {
        b.max_size(2)
            .validate_after(Duration::from_millis(500))
            .keepalive_interval(secs(10))
            .maintenance_interval(secs(1))
    });
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    drop((a, b));
    sleep(secs(1)).await;
    script.break_conn(2);
    // Checked before checkout: 2 fails, 1 is handed out.
    assert_eq!(pool.get().await.unwrap().id, 1);
    assert_closed(&pool, &log, &[(2, CloseReason::FailedCheck)]);

    // Keepalive finds the other one dead while idle.
    script.break_conn(1);
    sleep(secs(11)).await;
    assert_closed(
        &pool,
        &log,
        &[(2, CloseReason::FailedCheck), (1, CloseReason::FailedCheck)],
    );
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn on_close_gets_closed_for_idle_and_in_use_connections_on_close() {
    let (pool, script, log) = recording(|b| b.max_size(2).close_timeout(secs(5)));
    let held = pool.get().await.unwrap();
    drop(pool.get().await.unwrap()); // 2 idle
    let closer = tokio::spawn({
        let pool = pool.clone();
        async move { pool.close().await }
    });
    settle().await;
    assert_closed(&pool, &log, &[(2, CloseReason::Closed)]);
    assert!(
        !closer.is_finished(),
        "close() waits for connections in use"
    );
    drop(held);
    closer.await.unwrap();
    assert_closed(
        &pool,
        &log,
        &[(2, CloseReason::Closed), (1, CloseReason::Closed)],
    );
    assert_eq!(script.alive(), 0);
}

#[tokio::test(start_paused = true)]
async fn on_close_gets_resized_for_idle_and_returned_connections() {
    let (pool, script, log) = recording(|b| b.max_size(3));
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    drop(pool.get().await.unwrap()); // 3 idle
    pool.resize(1).unwrap();
    assert_closed(&pool, &log, &[(3, CloseReason::Resized)]);
    drop(a); // size 2 > 1: retired
    assert_closed(
        &pool,
        &log,
        &[(3, CloseReason::Resized), (1, CloseReason::Resized)],
    );
    drop(b); // size 1: kept
    assert_closed(
        &pool,
        &log,
        &[(3, CloseReason::Resized), (1, CloseReason::Resized)],
    );
    assert_eq!(pool.status().idle, 1);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn detach_takes_the_connection_out_of_the_pool_for_good() {
    let (pool, script, log) = recording(|b| b.max_size(1).acquire_timeout(secs(1)));
    let conn = pool.get().await.unwrap();
    assert_eq!(pool.status().size, 1);
    let mut owned: FakeConn = conn.detach();
    owned.dirty = true;

    let s = pool.status();
    assert_eq!((s.size, s.in_use, s.idle), (0, 0, 0), "{s:?}");
    // Its slot is free for a new connection right away.
    let next = pool
        .get()
        .await
        .expect("the detached connection's slot was not freed");
    assert_eq!(next.id, 2);
    assert_eq!(script.alive(), 2, "the detached connection was closed");
    drop(next);

    // The pool never closes, or even sees, the detached connection.
    assert_closed(&pool, &log, &[]);
    pool.close().await;
    assert_closed(&pool, &log, &[(2, CloseReason::Closed)]);
    assert_eq!(script.alive(), 1);
    assert_eq!(owned.id, 1);
    drop(owned);
    assert_eq!(script.alive(), 0);
    let m = pool.metrics();
    assert_eq!(m.created, 2);
    assert_eq!(m.closed_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_on_connect_is_bounded_by_connect_timeout() {
    fastrand::seed(2);
    let (manager, script) = ScriptedManager::new();
    let hang = Arc::new(AtomicBool::new(true));
    let hanging = hang.clone();
    let pool = Pool::builder(manager)
        .max_size(2)
        .max_connecting(1)
        .connect_timeout(secs(2))
        .connect_backoff(Duration::from_millis(100))
        .acquire_timeout(secs(3))
        .on_connect(move |_conn| {
            let hang = hanging.load(Ordering::SeqCst);
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
        })
        .build()
        .unwrap();

    let err = pool.get().await.expect_err("on_connect hangs");
    assert!(
        err.to_string()
            .ends_with("; last connect error: connect timed out after 2s"),
        "{err}"
    );
    assert!(pool.metrics().create_errors >= 1);
    assert!(script.attempts() >= 2, "the connector is stuck in the hook");

    hang.store(false, Ordering::SeqCst);
    let conn = pool
        .get_timeout(secs(10))
        .await
        .expect("connects work again once the hook returns");
    drop(conn);
    sleep(secs(5)).await;
    assert_balanced(&pool, &script);
}

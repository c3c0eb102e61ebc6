//! Connect failures: jittered exponential backoff up to `connect_backoff_max`,
//! a single probe while the backend is down, the last connect error in
//! timeouts, recovery, and `connect_timeout`.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{assert_balanced, ScriptedManager};
use tokio::time::{sleep, Instant};
use wharf::{ConnectTimeout, Error, Pool};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn mean(gaps: &[Duration]) -> Duration {
    gaps.iter().sum::<Duration>() / gaps.len() as u32
}

#[tokio::test(start_paused = true)]
async fn retries_are_spaced_by_growing_jittered_delays_below_the_cap() {
    fastrand::seed(0xbacc0ff);
    let (manager, script) = ScriptedManager::new();
    script.refuse(true);
    let initial = ms(100);
    let cap = secs(2);
    let pool = Pool::builder(manager)
        .max_size(4)
        .max_connecting(2)
        .connect_backoff(initial)
        .connect_backoff_max(cap)
        .acquire_timeout(secs(60))
        .build()
        .unwrap();
    let err = pool.get().await.expect_err("connects are refused");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");

    let times = script.attempt_times.lock().clone();
    assert!(times.len() >= 20, "only {} attempts in 60s", times.len());
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, &gap) in gaps.iter().enumerate() {
        // The gap after the (i+1)th failure is drawn below
        // min(cap, initial * 2^i).
        let ceiling = initial.saturating_mul(1 << i.min(20)).min(cap);
        assert!(
            gap <= ceiling,
            "gap {i} is {gap:?}, above its ceiling {ceiling:?}: {gaps:?}"
        );
    }
    assert!(gaps.iter().all(|&g| g <= cap));
    // Jittered: not a fixed schedule.
    let distinct: BTreeSet<Duration> = gaps.iter().copied().collect();
    assert!(distinct.len() > gaps.len() / 2, "too regular: {gaps:?}");
    // Growing: the early retries come much faster than the late ones.
    let early = mean(&gaps[..3]);
    let late = mean(&gaps[8..]);
    assert!(
        late > early * 2,
        "early mean {early:?}, late mean {late:?}: {gaps:?}"
    );
    assert!(
        late > ms(500) && late < ms(1500),
        "late mean {late:?} not about cap/2"
    );
}

#[tokio::test(start_paused = true)]
async fn only_one_connect_is_in_flight_while_failing_and_recovery_serves_everyone() {
    fastrand::seed(1);
    let (manager, script) = ScriptedManager::new();
    script.refuse(true);
    script.set_connect_delay(ms(50));
    let pool = Pool::builder(manager)
        .max_size(10)
        .max_connecting(4)
        .connect_backoff(ms(10))
        .connect_backoff_max(ms(200))
        .acquire_timeout(secs(60))
        .build()
        .unwrap();

    let get_and_hold = |pool: &Pool<ScriptedManager>| {
        let get = pool.get();
        tokio::spawn(async move {
            let conn = get.await?;
            let id = conn.id;
            sleep(secs(1)).await;
            drop(conn);
            Ok::<u64, Error>(id)
        })
    };
    // Ten callers arrive at once, before anyone knows the backend is down:
    // max_connecting connects go out together, and all fail.
    let mut waiters: Vec<_> = (0..10).map(|_| get_and_hold(&pool)).collect();
    sleep(ms(60)).await;
    assert_eq!(script.attempts(), 4);
    assert_eq!(pool.metrics().create_errors, 4);
    assert_eq!(script.max_connecting_seen.load(Ordering::SeqCst), 4);

    // From now on, one probe at a time, however many callers queue.
    script.max_connecting_seen.store(0, Ordering::SeqCst);
    sleep(secs(2)).await;
    waiters.extend((0..11).map(|_| get_and_hold(&pool)));
    sleep(secs(3)).await;
    assert_eq!(pool.status().waiting, 21);
    assert!(
        script.attempts() >= 20,
        "kept probing: {}",
        script.attempts()
    );
    assert_eq!(
        script.max_connecting_seen.load(Ordering::SeqCst),
        1,
        "more than one connect in flight while failing"
    );
    // Every attempt but (at most) the one in flight has failed.
    let in_flight = script.attempts() - pool.metrics().create_errors;
    assert!(in_flight <= 1, "{in_flight} attempts in flight");

    // The backend is back: the probe succeeds, the pool ramps up to
    // max_connecting, refills to max_size and serves every waiter.
    script.refuse(false);
    let mut served = Vec::new();
    for waiter in waiters {
        served.push(waiter.await.unwrap().expect("every waiter is served"));
    }
    assert_eq!(served.len(), 21);
    assert_eq!(
        script.max_connecting_seen.load(Ordering::SeqCst),
        4,
        "did not ramp back up to max_connecting"
    );
    let m = pool.metrics();
    assert_eq!(m.created, 10);
    assert_eq!(m.status.size, 10);
    assert_eq!(m.status.idle, 10);
    assert_eq!(m.timeouts, 0);
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn waiters_that_time_out_see_the_last_connect_error() {
    fastrand::seed(2);
    let (manager, script) = ScriptedManager::new();
    script.refuse(true);
    let pool = Pool::builder(manager)
        .max_size(4)
        .acquire_timeout(secs(1))
        .build()
        .unwrap();
    let gets: Vec<_> = (0..5).map(|_| tokio::spawn(pool.get())).collect();
    for get in gets {
        let err = get.await.unwrap().expect_err("connects are refused");
        let Error::Timeout {
            last_error, waited, ..
        } = &err
        else {
            panic!("expected a timeout, got {err:?}");
        };
        assert_eq!(*waited, secs(1));
        let last = last_error.as_ref().expect("the connect error is carried");
        assert_eq!(last.to_string(), "connection refused");
        assert!(std::error::Error::source(&err).is_some());
        assert!(
            err.to_string()
                .ends_with("; last connect error: connection refused"),
            "{err}"
        );
    }
    assert_eq!(pool.metrics().timeouts, 5);
    assert!(pool.metrics().create_errors >= 1);

    // A success clears it: a later timeout (pool exhausted) carries none.
    script.refuse(false);
    let held: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            // Past the backoff the failures built up.
            v.push(pool.get_timeout(secs(30)).await.unwrap());
        }
        v
    };
    let err = pool.get().await.expect_err("pool exhausted");
    assert!(
        matches!(
            err,
            Error::Timeout {
                last_error: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("last connect error"), "{err}");
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn after_an_outage_the_pool_refills_to_min_idle() {
    fastrand::seed(3);
    let (manager, script) = ScriptedManager::new();
    script.refuse(true);
    let pool = Pool::builder(manager)
        .max_size(5)
        .min_idle(3)
        .connect_backoff(ms(50))
        .connect_backoff_max(ms(500))
        .acquire_timeout(secs(2))
        .build()
        .unwrap();
    let err = pool.ready().await.expect_err("connects are refused");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert_eq!(pool.status().size, 0);

    script.refuse(false);
    pool.ready()
        .await
        .expect("refills once the backend is back");
    sleep(secs(1)).await;
    let s = pool.status();
    assert_eq!((s.size, s.idle), (3, 3), "{s:?}");
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_connect_is_bounded_by_connect_timeout() {
    fastrand::seed(4);
    let (manager, script) = ScriptedManager::new();
    script.hang(true);
    let pool = Pool::builder(manager)
        .max_size(2)
        .connect_timeout(secs(2))
        .connect_backoff(ms(100))
        .acquire_timeout(secs(3))
        .build()
        .unwrap();
    let err = pool.get().await.expect_err("connects hang");
    let Error::Timeout { last_error, .. } = &err else {
        panic!("expected a timeout, got {err:?}");
    };
    let last = last_error.as_ref().expect("the connect timeout is carried");
    assert_eq!(last.to_string(), "connect timed out after 2s");
    assert_eq!(
        last.downcast_ref::<ConnectTimeout>().map(|t| t.0),
        Some(secs(2))
    );
    assert!(
        err.to_string()
            .contains("last connect error: connect timed out after 2s"),
        "{err}"
    );

    // The second attempt started only after the first was given up on.
    let times = script.attempt_times.lock().clone();
    assert!(times.len() >= 2, "{times:?}");
    let first_gap = times[1] - times[0];
    assert!(
        first_gap >= secs(2) && first_gap <= secs(2) + ms(100),
        "{first_gap:?}"
    );
    assert!(pool.metrics().create_errors >= 1);
    assert_eq!(
        pool.status().size,
        1,
        "only the attempt in flight is counted"
    );

    script.hang(false);
    let start = Instant::now();
    let conn = pool.get().await.expect("connects work again");
    assert!(
        start.elapsed() <= secs(2) + ms(200),
        "{:?}",
        start.elapsed()
    );
    drop(conn);
    assert_balanced(&pool, &script);
}

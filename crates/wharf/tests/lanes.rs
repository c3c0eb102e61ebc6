//! Lanes: named shares of one pool's connections. A lane never holds more
//! than its `max_in_use`, queues its own callers first come, first served,
//! times them out with its own timeout, and leaves the other lanes (and
//! plain `get()`) their connections.

mod common;

use std::time::Duration;

use common::{assert_balanced, poll_once, scripted, settle, ScriptedManager};
use tokio::time::{sleep, Instant};
use wharf::{BreakerConfig, ConfigError, Error, LaneConfig, Pool};

fn fast_and_slow() -> (Pool<ScriptedManager>, std::sync::Arc<common::Script>) {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(4)
        .acquire_timeout(Duration::from_secs(30))
        .lane("fast", 3)
        .lane("slow", 2)
        .build()
        .unwrap();
    (pool, script)
}

#[tokio::test(start_paused = true)]
async fn a_full_slow_lane_queues_its_callers_while_the_fast_lane_gets_connections() {
    let (pool, script) = fast_and_slow();
    let slow: Vec<_> = vec![
        pool.get_in("slow").await.unwrap(),
        pool.get_in("slow").await.unwrap(),
    ];
    let mut third_slow = Box::pin(pool.get_in("slow"));
    assert!(poll_once(&mut third_slow).await.is_pending());

    // Two connections are left, and both go to the fast lane at once.
    let fast_a = pool.get_in("fast").await.expect("fast lane not blocked");
    let fast_b = pool.get_in("fast").await.expect("fast lane not blocked");
    assert_eq!(pool.status().in_use, 4);
    assert_eq!(
        pool.status().waiting,
        0,
        "the slow caller waits in its lane"
    );
    let lanes = pool.metrics().lanes;
    assert_eq!((lanes[1].in_use, lanes[1].waiting), (2, 1));
    assert_eq!((lanes[0].in_use, lanes[0].waiting), (2, 0));

    // A slow connection coming back lets the next slow caller in.
    drop(slow);
    let third = third_slow.await.expect("served once a place is free");
    drop((third, fast_a, fast_b));
    settle().await;
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_lane_serves_its_callers_in_arrival_order() {
    let (pool, _script) = fast_and_slow();
    let held = [
        pool.get_in("slow").await.unwrap(),
        pool.get_in("slow").await.unwrap(),
    ];
    let order = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for caller in 0..4 {
        let pool = pool.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let conn = pool.get_in("slow").await.unwrap();
            order.lock().push(caller);
            sleep(Duration::from_millis(10)).await;
            drop(conn);
        }));
        settle().await;
    }
    drop(held);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_lane_times_out_after_its_own_acquire_timeout() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(4)
        .acquire_timeout(Duration::from_secs(30))
        .lane_config(LaneConfig::new("slow", 1).acquire_timeout(Duration::from_secs(2)))
        .build()
        .unwrap();
    let _held = pool.get_in("slow").await.unwrap();
    let start = Instant::now();
    let err = pool.get_in("slow").await.expect_err("the lane is full");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    match &err {
        Error::LaneTimeout {
            lane,
            waited,
            in_use,
            max_in_use,
            waiting,
        } => {
            assert_eq!(lane, "slow");
            assert_eq!(*waited, Duration::from_secs(2));
            assert_eq!((*in_use, *max_in_use, *waiting), (1, 1, 0));
        }
        other => panic!("expected LaneTimeout, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "timed out after 2s waiting in lane \"slow\": 1/1 of its connections in use, 0 waiting"
    );
    let lane = &pool.metrics().lanes[0];
    assert_eq!((lane.acquired, lane.timeouts), (1, 1));
    assert_eq!(
        pool.metrics().timeouts,
        0,
        "the pool itself never timed out"
    );
}

#[tokio::test(start_paused = true)]
async fn the_lane_timeout_covers_the_wait_for_a_connection_too() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .acquire_timeout(Duration::from_secs(30))
        .lane_config(LaneConfig::new("slow", 1).acquire_timeout(Duration::from_secs(2)))
        .build()
        .unwrap();
    let _plain = pool.get().await.unwrap();
    let start = Instant::now();
    let err = pool.get_in("slow").await.expect_err("no connection");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(pool.metrics().lanes[0].timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_lane_is_an_error() {
    let (pool, _script) = fast_and_slow();
    match pool.get_in("reports").await {
        Err(Error::UnknownLane(name)) => assert_eq!(name, "reports"),
        other => panic!("expected UnknownLane, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_leaves_the_lane_and_a_returned_or_detached_connection_frees_its_place() {
    let (pool, script) = fast_and_slow();
    let a = pool.get_in("slow").await.unwrap();
    let b = pool.get_in("slow").await.unwrap();
    let mut waiting = Box::pin(pool.get_in("slow"));
    assert!(poll_once(&mut waiting).await.is_pending());
    assert_eq!(pool.metrics().lanes[1].waiting, 1);
    drop(waiting);
    assert_eq!(pool.metrics().lanes[1].waiting, 0);

    let _kept = a.detach();
    assert_eq!(pool.metrics().lanes[1].in_use, 1);
    drop(b);
    assert_eq!(pool.metrics().lanes[1].in_use, 0);
    drop(pool.get_in("slow").await.unwrap());
    drop(_kept);
    settle().await;
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn lanes_are_published_with_the_metrics() {
    let (pool, _script) = fast_and_slow();
    let _held = pool.get_in("slow").await.unwrap();
    let text = pool.metrics().to_prometheus();
    assert!(
        text.contains("wharf_lane_in_use{pool=\"default\",lane=\"slow\"} 1"),
        "{text}"
    );
    assert!(text.contains("wharf_lane_max_in_use{pool=\"default\",lane=\"fast\"} 3"));
    assert!(text.contains("wharf_lane_acquired_total{pool=\"default\",lane=\"slow\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_refuses_lane_callers_too() {
    let (builder, _script) = scripted();
    let pool = builder
        .lane("slow", 1)
        .circuit_breaker(BreakerConfig {
            min_calls: 1,
            ..BreakerConfig::default()
        })
        .build()
        .unwrap();
    pool.get_in("slow").await.unwrap().report_failure();
    assert!(matches!(
        pool.get_in("slow").await,
        Err(Error::CircuitOpen { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn lanes_that_cannot_work_are_refused() {
    let cases = [
        (
            vec![LaneConfig::new("a", 0)],
            "max_in_use must be at least 1",
        ),
        (
            vec![LaneConfig::new("a", 5)],
            "max_in_use must not exceed the pool's max_size",
        ),
        (
            vec![LaneConfig::new("a", 1), LaneConfig::new("a", 2)],
            "two lanes have this name",
        ),
    ];
    for (lanes, expected) in cases {
        let (mut builder, _script) = scripted();
        builder = builder.max_size(4);
        for lane in lanes {
            builder = builder.lane_config(lane);
        }
        match builder.build().unwrap_err() {
            ConfigError::BadLane { reason, .. } => assert_eq!(reason, expected),
            other => panic!("expected BadLane, got {other:?}"),
        }
    }
}

/// Holds one caller's place in the count of a lane's holders.
struct Holding<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_cancelling_at_random_never_exceed_a_lane_cap_and_leave_nothing_behind() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let (builder, script) = scripted();
    let pool = builder
        .max_size(6)
        .acquire_timeout(Duration::from_secs(60))
        .lane("fast", 4)
        .lane("slow", 2)
        .build()
        .unwrap();
    let holders = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let most = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut rng = fastrand::Rng::with_seed(0x1a_4e5);
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let pool = pool.clone();
            let (holders, most) = (holders.clone(), most.clone());
            let seeds: Vec<u64> = (0..40).map(|_| rng.u64(..)).collect();
            tokio::spawn(async move {
                let lane = task % 2;
                let name = ["fast", "slow"][lane];
                for seed in seeds {
                    // Some callers give up while queued (in the lane or the
                    // pool), the others hold their connection a moment.
                    let patience = Duration::from_micros(seed % 400);
                    let Ok(Ok(conn)) = tokio::time::timeout(patience, pool.get_in(name)).await
                    else {
                        continue;
                    };
                    let now = holders[lane].fetch_add(1, Ordering::SeqCst) + 1;
                    let holding = Holding(&holders[lane]);
                    most[lane].fetch_max(now, Ordering::SeqCst);
                    if seed % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    // Counted out before the place is given back, so that
                    // the next holder is never counted alongside it.
                    drop(holding);
                    if seed % 7 == 0 {
                        conn.discard();
                    } else {
                        drop(conn);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        most[0].load(Ordering::SeqCst) <= 4,
        "fast lane above its cap"
    );
    assert!(
        most[1].load(Ordering::SeqCst) <= 2,
        "slow lane above its cap"
    );
    for lane in pool.metrics().lanes {
        assert_eq!((lane.in_use, lane.waiting), (0, 0), "{lane:?}");
    }
    settle().await;
    let status = pool.status();
    assert_eq!((status.in_use, status.waiting), (0, 0), "{status:?}");
    assert_balanced(&pool, &script);
}

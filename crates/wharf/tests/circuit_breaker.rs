//! The circuit breaker: closed until the failure rate over the window
//! reaches the threshold (with enough calls), then open (every `get()`
//! refused at once with the last failure), then half-open after `open_for`
//! (a limited number of probes let through), closed again by a probe that
//! succeeds or opened again by one that fails.

mod common;

use std::time::Duration;

use common::{assert_balanced, scripted, settle, ScriptedManager};
use tokio::time::{sleep, Instant};
use wharf::{BreakerConfig, CircuitState, Error, Failure, Pool};

const OPEN_FOR: Duration = Duration::from_secs(5);

fn breaker(min_calls: u32, probes: u32) -> BreakerConfig {
    BreakerConfig {
        failure_rate: 0.5,
        min_calls,
        window: Duration::from_secs(10),
        open_for: OPEN_FOR,
        half_open_probes: probes,
    }
}

/// One connection, a 1 s acquire timeout, and `breaker(3, 1)`: a held
/// checkout makes every other `get()` time out.
fn single_connection_pool() -> Pool<ScriptedManager> {
    let (builder, _script) = scripted();
    builder
        .max_size(1)
        .acquire_timeout(Duration::from_secs(1))
        .circuit_breaker(breaker(3, 1))
        .build()
        .unwrap()
}

fn pool_with(config: BreakerConfig) -> (Pool<ScriptedManager>, std::sync::Arc<common::Script>) {
    let (builder, script) = scripted();
    let pool = builder
        .max_size(4)
        .acquire_timeout(Duration::from_secs(1))
        .connect_backoff(Duration::from_millis(100))
        .connect_backoff_max(Duration::from_millis(100))
        .circuit_breaker(config)
        .build()
        .unwrap();
    (pool, script)
}

/// One checkout whose work succeeds or fails.
async fn call(pool: &Pool<ScriptedManager>, fails: bool) {
    let mut conn = pool.get().await.expect("the circuit lets the call through");
    if fails {
        conn.report_failure();
    }
}

/// Opens the circuit of a pool built with `breaker(2, _)` or, when one
/// more checkout is outstanding, `breaker(3, _)`.
async fn open(pool: &Pool<ScriptedManager>) {
    call(pool, true).await;
    call(pool, true).await;
    assert_eq!(pool.status().circuit, CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_pool_without_a_breaker_reports_it_disabled_and_ignores_reported_failures() {
    let (builder, _script) = scripted();
    let pool = builder.build().unwrap();
    for _ in 0..50 {
        pool.get().await.unwrap().report_failure();
    }
    assert_eq!(pool.status().circuit, CircuitState::Disabled);
    assert!(pool.metrics().circuit.is_none());
}

#[tokio::test(start_paused = true)]
async fn failures_below_min_calls_keep_the_circuit_closed() {
    let (pool, _script) = pool_with(breaker(4, 1));
    for _ in 0..3 {
        call(&pool, true).await;
    }
    assert_eq!(pool.status().circuit, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_below_the_threshold_keeps_the_circuit_closed() {
    let (pool, _script) = pool_with(breaker(4, 1));
    for fails in [false, false, true, false, false, true, false] {
        call(&pool, fails).await;
    }
    assert_eq!(pool.status().circuit, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_circuit_opens_when_the_failure_rate_reaches_the_threshold() {
    let (pool, _script) = pool_with(breaker(4, 1));
    for fails in [false, true, false] {
        call(&pool, fails).await;
    }
    assert_eq!(pool.status().circuit, CircuitState::Closed);
    call(&pool, true).await; // 2 of 4
    assert_eq!(pool.status().circuit, CircuitState::Open);
    assert_eq!(pool.metrics().circuit.unwrap().opened, 1);
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_refuses_at_once_with_the_last_failure() {
    let (pool, _script) = pool_with(breaker(2, 1));
    open(&pool).await;
    sleep(Duration::from_secs(1)).await;

    let start = Instant::now();
    let err = pool.get().await.expect_err("the circuit is open");
    assert_eq!(start.elapsed(), Duration::ZERO);
    match &err {
        Error::CircuitOpen {
            retry_in,
            last_failure,
        } => {
            assert_eq!(*retry_in, OPEN_FOR - Duration::from_secs(1));
            assert!(matches!(last_failure, Some(Failure::Reported)));
        }
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "circuit open: get() refused for 4s more; last failure: the caller reported a failure"
    );
    let with_timeout = pool.get_timeout(Duration::from_secs(9)).await;
    assert!(matches!(with_timeout, Err(Error::CircuitOpen { .. })));
    assert_eq!(pool.metrics().circuit.unwrap().rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn calls_older_than_the_window_no_longer_count() {
    let (pool, _script) = pool_with(breaker(2, 1));
    call(&pool, true).await;
    sleep(Duration::from_secs(11)).await;
    call(&pool, true).await;
    assert_eq!(
        pool.status().circuit,
        CircuitState::Closed,
        "the first failure has left the window"
    );
    call(&pool, true).await;
    assert_eq!(pool.status().circuit, CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn successes_spread_over_the_window_all_count_against_the_failures() {
    let (pool, _script) = pool_with(breaker(4, 1));
    for _ in 0..3 {
        call(&pool, false).await;
        sleep(Duration::from_secs(2)).await;
    }
    call(&pool, false).await;
    for _ in 0..3 {
        call(&pool, true).await;
    }
    assert_eq!(pool.status().circuit, CircuitState::Closed, "3 of 7 failed");
    call(&pool, true).await;
    assert_eq!(pool.status().circuit, CircuitState::Open, "4 of 8 failed");
}

#[tokio::test(start_paused = true)]
async fn successes_older_than_the_window_no_longer_dilute_failures() {
    let (pool, _script) = pool_with(breaker(2, 1));
    for _ in 0..10 {
        call(&pool, false).await;
    }
    // Maintenance ticks (every second) put those calls in their bucket.
    sleep(Duration::from_secs(11)).await;
    call(&pool, true).await;
    call(&pool, true).await;
    assert_eq!(
        pool.status().circuit,
        CircuitState::Open,
        "2 of 2 in the window"
    );
}

#[tokio::test(start_paused = true)]
async fn after_open_for_one_probe_goes_through_and_its_success_closes_the_circuit() {
    let (pool, script) = pool_with(breaker(2, 1));
    open(&pool).await;
    sleep(OPEN_FOR).await;

    let probe = pool.get().await.expect("the probe is let through");
    assert_eq!(pool.status().circuit, CircuitState::HalfOpen);
    let err = pool.get().await.expect_err("only one probe at a time");
    assert!(
        matches!(err, Error::CircuitOpen { retry_in, .. } if retry_in.is_zero()),
        "{err:?}"
    );
    drop(probe);
    assert_eq!(pool.status().circuit, CircuitState::Closed);
    let circuit = pool.metrics().circuit.unwrap();
    assert_eq!(
        (circuit.opened, circuit.half_opened, circuit.closed),
        (1, 1, 1)
    );
    drop(pool.get().await.expect("closed again"));
    settle().await;
    assert_balanced(&pool, &script);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_the_circuit_for_another_open_for() {
    let (pool, _script) = pool_with(breaker(2, 1));
    open(&pool).await;
    sleep(OPEN_FOR).await;
    call(&pool, true).await;
    assert_eq!(pool.status().circuit, CircuitState::Open);
    match pool.get().await {
        Err(Error::CircuitOpen { retry_in, .. }) => assert_eq!(retry_in, OPEN_FOR),
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_eq!(pool.metrics().circuit.unwrap().opened, 2);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_exactly_the_configured_number_of_probes_through() {
    let (pool, _script) = pool_with(breaker(2, 2));
    open(&pool).await;
    sleep(OPEN_FOR).await;
    let first = pool.get().await.expect("probe 1");
    let second = pool.get().await.expect("probe 2");
    assert!(matches!(pool.get().await, Err(Error::CircuitOpen { .. })));
    // The first probe to come back decides; the other's outcome belongs to
    // a finished half-open phase and counts for nothing.
    drop(first);
    assert_eq!(pool.status().circuit, CircuitState::Closed);
    let mut second = second;
    second.report_failure();
    drop(second);
    assert_eq!(pool.status().circuit, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_get_is_cancelled_frees_its_place() {
    let pool = single_connection_pool();
    // Held from before the outage, so that the probe has to queue.
    let held = pool.get().await.unwrap();
    for _ in 0..2 {
        assert!(matches!(pool.get().await, Err(Error::Timeout { .. })));
    }
    assert_eq!(pool.status().circuit, CircuitState::Open);
    sleep(OPEN_FOR).await;

    let mut probe = Box::pin(pool.get_timeout(Duration::from_secs(60)));
    assert!(common::poll_once(&mut probe).await.is_pending());
    assert_eq!(pool.status().circuit, CircuitState::HalfOpen);
    assert!(matches!(pool.get().await, Err(Error::CircuitOpen { .. })));
    drop(probe);

    let mut probe = Box::pin(pool.get_timeout(Duration::from_secs(60)));
    assert!(
        common::poll_once(&mut probe).await.is_pending(),
        "the cancelled probe's place was given back"
    );
    drop(held); // a success from before the outage: decides nothing
    assert_eq!(pool.status().circuit, CircuitState::HalfOpen);
    drop(probe.await.expect("the probe gets the returned connection"));
    assert_eq!(pool.status().circuit, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn connect_errors_alone_open_the_circuit_with_the_connect_error_as_cause() {
    let (pool, script) = pool_with(breaker(2, 1));
    script.refuse(true);
    // Keep a caller waiting so that connects are attempted.
    let waiter = tokio::spawn(pool.get_timeout(Duration::from_secs(60)));
    sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.status().circuit, CircuitState::Open);
    let err = pool.get().await.expect_err("open");
    assert_eq!(
        err.connect_error().map(ToString::to_string).as_deref(),
        Some("connection refused")
    );
    assert!(err
        .to_string()
        .ends_with("last failure: connect failed: connection refused"));
    script.refuse(false);
    drop(
        waiter
            .await
            .unwrap()
            .expect("already admitted, served when back"),
    );
}

#[tokio::test(start_paused = true)]
async fn acquire_timeouts_count_as_failures() {
    let pool = single_connection_pool();
    // The held checkout is one call, each timed-out one another.
    let _held = pool.get().await.unwrap();
    assert!(matches!(pool.get().await, Err(Error::Timeout { .. })));
    assert_eq!(pool.status().circuit, CircuitState::Closed, "1 of 2 failed");
    assert!(matches!(pool.get().await, Err(Error::Timeout { .. })));
    match pool.get().await {
        Err(Error::CircuitOpen {
            last_failure: Some(Failure::AcquireTimeout(waited)),
            ..
        }) => assert_eq!(waited, Duration::from_secs(1)),
        other => panic!("expected CircuitOpen after timeouts, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn refusals_for_load_do_not_count_as_failures() {
    let (builder, _script) = scripted();
    let pool = builder
        .max_size(1)
        .min_idle(1)
        .max_waiting(0)
        .circuit_breaker(breaker(2, 1))
        .build()
        .unwrap();
    pool.ready().await.unwrap();
    let _held = pool.get().await.unwrap();
    for _ in 0..5 {
        assert!(matches!(pool.get().await, Err(Error::QueueFull { .. })));
    }
    assert_eq!(pool.status().circuit, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_connection_held_since_before_the_outage_does_not_close_the_open_circuit() {
    let (pool, _script) = pool_with(breaker(3, 1));
    let long_held = pool.get().await.unwrap();
    open(&pool).await;
    drop(long_held); // a success, but from a call let in while closed
    assert_eq!(pool.status().circuit, CircuitState::Open);
}

#[derive(Debug, thiserror::Error)]
enum WorkError {
    #[error("query failed")]
    Query,
    #[error(transparent)]
    Pool(#[from] Error),
}

#[tokio::test(start_paused = true)]
async fn run_counts_its_errors_as_failures_and_its_results_as_successes() {
    let (pool, _script) = pool_with(breaker(3, 1));
    let ok = pool
        .run(|conn| Box::pin(async move { Ok::<_, WorkError>(conn.id) }))
        .await;
    assert!(ok.is_ok());
    for _ in 0..2 {
        let err = pool
            .run(|_| Box::pin(async { Err::<(), _>(WorkError::Query) }))
            .await;
        assert!(matches!(err, Err(WorkError::Query)));
    }
    assert_eq!(pool.status().circuit, CircuitState::Open, "2 of 3 failed");
    let refused = pool
        .run(|_| Box::pin(async { Ok::<_, WorkError>(()) }))
        .await;
    match refused {
        Err(WorkError::Pool(Error::CircuitOpen {
            last_failure: Some(Failure::Work(message)),
            ..
        })) => assert_eq!(message, "query failed"),
        other => panic!("expected the open circuit, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_circuit_state_is_published_with_the_metrics() {
    let (pool, _script) = pool_with(breaker(2, 1));
    open(&pool).await;
    let _ = pool.get().await;
    let text = pool.metrics().to_prometheus();
    assert!(
        text.contains("wharf_pool_circuit_state{pool=\"default\"} 2"),
        "{text}"
    );
    assert!(text.contains("wharf_pool_circuit_opened_total{pool=\"default\"} 1"));
    assert!(text.contains("wharf_pool_circuit_rejected_total{pool=\"default\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn out_of_range_settings_are_refused() {
    for bad in [
        BreakerConfig {
            failure_rate: 1.5,
            ..BreakerConfig::default()
        },
        BreakerConfig {
            min_calls: 0,
            ..BreakerConfig::default()
        },
        BreakerConfig {
            half_open_probes: 0,
            ..BreakerConfig::default()
        },
    ] {
        let (builder, _script) = scripted();
        let err = builder.circuit_breaker(bad).build().unwrap_err();
        assert_eq!(err, wharf::ConfigError::BadBreaker);
    }
}

/// Randomized, on the multi-thread runtime: the circuit opens and closes
/// many times under failures and cancelled checkouts, and once callers are
/// healthy a probe closes it and the books balance. (A probe whose `get()`
/// is cancelled is checked deterministically above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_storm_of_failures_and_cancellations_healthy_callers_close_the_circuit() {
    let (builder, script) = scripted();
    let open_for = Duration::from_millis(20);
    let pool = builder
        .max_size(2)
        .acquire_timeout(Duration::from_secs(60))
        .circuit_breaker(BreakerConfig {
            failure_rate: 0.5,
            min_calls: 5,
            window: Duration::from_secs(60),
            open_for,
            half_open_probes: 2,
        })
        .build()
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(0xb4_ea6e);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let pool = pool.clone();
            let seeds: Vec<u64> = (0..60).map(|_| rng.u64(..)).collect();
            tokio::spawn(async move {
                for seed in seeds {
                    let patience = Duration::from_micros(seed % 300);
                    let Ok(Ok(mut conn)) = tokio::time::timeout(patience, pool.get()).await else {
                        // Refused by the circuit, or cancelled while queued.
                        tokio::task::yield_now().await;
                        continue;
                    };
                    if seed % 3 != 0 {
                        conn.report_failure();
                    }
                    // Held a while, so that probes queue behind it and some
                    // of them give up while queued.
                    if seed % 5 == 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let circuit = pool.metrics().circuit.unwrap();
    assert!(
        circuit.opened >= 1,
        "two calls in three failed: {circuit:?}"
    );

    // Healthy callers from now on: the circuit closes as soon as a probe
    // is let through, whatever the storm left behind.
    let mut closed = false;
    for _ in 0..100 {
        tokio::time::sleep(open_for).await;
        if let Ok(conn) = pool.get().await {
            drop(conn);
            if pool.status().circuit == CircuitState::Closed {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "stuck: {:?}", pool.metrics().circuit);
    settle().await;
    assert_balanced(&pool, &script);
}

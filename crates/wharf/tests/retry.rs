//! `Pool::retry`: idempotent work run again after transient failures, with
//! full-jitter backoff, a cap on attempts, a total deadline, a budget that
//! caps retries to a share of calls, and a classifier that decides what is
//! retried, which connections are closed and what the breaker hears.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{scripted, ScriptedManager};
use tokio::time::Instant;
use wharf::{
    BreakerConfig, CircuitState, CloseReason, Error, ErrorClass, Pool, RetryBudget, RetryPolicy,
};

#[derive(Debug, thiserror::Error)]
enum WorkError {
    #[error("could not serialize access")]
    Conflict,
    #[error("connection reset")]
    Reset,
    #[error("syntax error")]
    Syntax,
    #[error(transparent)]
    Pool(#[from] Error),
}

fn classify(err: &WorkError) -> ErrorClass {
    match err {
        WorkError::Conflict => ErrorClass::Transient,
        WorkError::Reset => ErrorClass::Connection,
        WorkError::Syntax | WorkError::Pool(_) => ErrorClass::Permanent,
    }
}

fn pool() -> Pool<ScriptedManager> {
    let (builder, _script) = scripted();
    builder
        .max_size(2)
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Runs `policy` over work that fails with `failures` in order, then
/// succeeds; returns the result and how many attempts ran.
async fn run_failing(
    pool: &Pool<ScriptedManager>,
    policy: &RetryPolicy<WorkError>,
    failures: fn(u32) -> Option<WorkError>,
) -> (Result<u32, WorkError>, u32) {
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let result = pool
        .retry(policy, move |_conn| {
            let attempt = counter.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                match failures(attempt) {
                    Some(err) => Err(err),
                    None => Ok(attempt),
                }
            })
        })
        .await;
    (result, attempts.load(Ordering::SeqCst))
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_until_the_work_succeeds() {
    let pool = pool();
    let policy = RetryPolicy::new(classify).max_attempts(5);
    let (result, attempts) =
        run_failing(&pool, &policy, |n| (n < 3).then_some(WorkError::Conflict)).await;
    assert_eq!(result.unwrap(), 3);
    assert_eq!(attempts, 3);
    assert_eq!(pool.metrics().retries, 2);
    assert_eq!(
        pool.metrics().closed_total(),
        0,
        "transient: connections kept"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_returned_at_once() {
    let pool = pool();
    let policy = RetryPolicy::new(classify);
    let (result, attempts) = run_failing(&pool, &policy, |_| Some(WorkError::Syntax)).await;
    assert!(matches!(result, Err(WorkError::Syntax)));
    assert_eq!(attempts, 1);
    assert_eq!(pool.metrics().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn attempts_stop_at_max_attempts_with_the_last_error() {
    let pool = pool();
    let policy = RetryPolicy::new(classify).max_attempts(3);
    let (result, attempts) = run_failing(&pool, &policy, |_| Some(WorkError::Conflict)).await;
    assert!(matches!(result, Err(WorkError::Conflict)));
    assert_eq!(attempts, 3);
}

#[tokio::test(start_paused = true)]
async fn backoff_waits_a_random_delay_below_a_doubling_ceiling() {
    let pool = pool();
    let initial = Duration::from_millis(100);
    let policy = RetryPolicy::new(classify)
        .max_attempts(6)
        .backoff(initial, Duration::from_millis(400))
        .deadline(Duration::from_secs(60));
    let times = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = times.clone();
    let _ = pool
        .retry(&policy, move |_conn| {
            seen.lock().push(Instant::now());
            Box::pin(async { Err::<(), _>(WorkError::Conflict) })
        })
        .await;
    let times = times.lock();
    assert_eq!(times.len(), 6);
    let ceilings = [100, 200, 400, 400, 400].map(Duration::from_millis);
    for (pair, ceiling) in times.windows(2).zip(ceilings) {
        let delay = pair[1] - pair[0];
        assert!(delay < ceiling, "{delay:?} not below {ceiling:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_would_end_past_the_deadline() {
    let pool = pool();
    drop(pool.get().await.unwrap()); // warm: the first attempt needs no wait
    let policy = RetryPolicy::new(classify)
        .max_attempts(10)
        .deadline(Duration::ZERO);
    let (result, attempts) = run_failing(&pool, &policy, |_| Some(WorkError::Conflict)).await;
    assert!(matches!(result, Err(WorkError::Conflict)));
    assert_eq!(attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_connection_is_cut_to_what_is_left_of_the_deadline() {
    let pool = pool();
    let _a = pool.get().await.unwrap();
    let _b = pool.get().await.unwrap();
    let policy = RetryPolicy::new(classify).deadline(Duration::from_secs(2));
    let start = Instant::now();
    let (result, attempts) = run_failing(&pool, &policy, |_| None).await;
    assert!(matches!(
        result,
        Err(WorkError::Pool(Error::Timeout { .. }))
    ));
    assert_eq!(attempts, 0);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_retries_to_a_share_of_calls() {
    let pool = pool();
    // One retry banked, and a fifth of a retry per call after that.
    let budget = Arc::new(RetryBudget::new(0.2, 1));
    let policy = RetryPolicy::new(classify)
        .max_attempts(3)
        .budget(budget.clone());
    let mut total = 0;
    for _ in 0..10 {
        let (_, attempts) = run_failing(&pool, &policy, |_| Some(WorkError::Conflict)).await;
        total += attempts;
    }
    // 10 calls: the banked retry, then one per five calls deposited (the
    // first call's deposit only refills what was banked, at the cap).
    assert_eq!(total, 10 + 2, "retries beyond the budget were made");
    assert_eq!(pool.metrics().retries, 2);
    assert_eq!(budget.available(), 0);
}

/// Two connections and a breaker that opens after two calls.
fn pool_with_breaker() -> Pool<ScriptedManager> {
    let (builder, _script) = scripted();
    builder
        .max_size(2)
        .circuit_breaker(BreakerConfig {
            min_calls: 2,
            ..BreakerConfig::default()
        })
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn connection_failures_close_the_connection_and_count_against_the_breaker() {
    let pool = pool_with_breaker();
    let policy = RetryPolicy::new(classify).max_attempts(2);
    let (result, attempts) = run_failing(&pool, &policy, |_| Some(WorkError::Reset)).await;
    assert!(matches!(result, Err(WorkError::Reset)));
    assert_eq!(attempts, 2);
    assert_eq!(pool.metrics().closed_for(CloseReason::Discarded), 2);
    assert_eq!(pool.status().circuit, CircuitState::Open);

    // A pool error ends the retry at once: an open circuit is not hammered.
    let (result, attempts) = run_failing(&pool, &policy, |_| None).await;
    assert!(matches!(
        result,
        Err(WorkError::Pool(Error::CircuitOpen { .. }))
    ));
    assert_eq!(attempts, 0);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_do_not_count_against_the_breaker() {
    let pool = pool_with_breaker();
    let policy = RetryPolicy::new(classify).max_attempts(4);
    let (result, _) = run_failing(&pool, &policy, |n| (n < 4).then_some(WorkError::Conflict)).await;
    assert!(result.is_ok());
    assert_eq!(pool.status().circuit, CircuitState::Closed);
}

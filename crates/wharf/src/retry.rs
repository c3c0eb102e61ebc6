//! Running work on a pooled connection: [`Pool::run`], whose errors count
//! against the circuit breaker, and [`Pool::retry`], which runs idempotent
//! work again after transient failures.
//!
//! The retry policy is written here rather than taken from a crate: what it
//! needs beyond a backoff schedule (a classifier that also says whether to
//! keep the connection and whether the breaker should hear of it, a budget
//! shared by every caller of a policy, attempts that each take a fresh
//! connection within one deadline) is most of the code either way, and the
//! backoff is the pool's own full-jitter one (`connector.rs`). `backoff` is
//! unmaintained; `backon` retries a closure but has no budget and no say in
//! the connection's fate.

use std::fmt::Display;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, Instant};

use crate::breaker::Failure;
use crate::connector::backoff_delay;
use crate::error::HumanDuration;
use crate::metrics::Recorder;
use crate::pool::Shared;
use crate::{Error, Manager, Pool, Pooled};

/// The future a closure given to [`Pool::run`] or [`Pool::retry`] returns:
/// boxed, because it borrows the connection it is handed.
pub type WorkFuture<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// What a failed attempt means, as a [`RetryPolicy`]'s classifier says.
/// The adapters supply classifiers for their databases'
/// errors (`wharf_postgres::classify`, `wharf_mysql::classify`,
/// `wharf_redis::classify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Doing it again will fail again (bad SQL, a constraint violated):
    /// returned at once, not counted against the circuit breaker.
    Permanent,
    /// Worth another attempt on a healthy connection (a serialization
    /// failure, a deadlock, a lock wait timeout): retried; the connection
    /// goes back to the pool and the breaker does not count it.
    Transient,
    /// The connection or the server failed (reset, closed, shutting
    /// down): retried on another connection; this one is closed and the
    /// breaker counts the failure.
    Connection,
}

/// Caps retries to a share of calls, so that a failing backend is not
/// hit with several times its normal load: each call deposits `ratio` of a
/// retry, each retry withdraws a whole one, and at most `burst` retries
/// are banked (it starts full). Shared by every clone of the
/// [`RetryPolicy`] it is in, and by policies given the same one.
///
/// ```
/// let budget = wharf::RetryBudget::new(0.1, 2);
/// assert_eq!(budget.available(), 2);
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a retry: integer atomics, and no drift.
    balance: AtomicI64,
    deposit: i64,
    cap: i64,
}

const WHOLE: i64 = 1000;

impl RetryBudget {
    /// A budget of `ratio` retries per call (0.2: one retry per five
    /// calls), at most `burst` of them banked.
    pub fn new(ratio: f64, burst: u32) -> Self {
        let cap = i64::from(burst) * WHOLE;
        Self {
            balance: AtomicI64::new(cap),
            deposit: (ratio.clamp(0.0, 1000.0) * WHOLE as f64) as i64,
            cap,
        }
    }

    /// Whole retries the budget allows right now.
    pub fn available(&self) -> u32 {
        (self.balance.load(Ordering::Relaxed) / WHOLE) as u32
    }

    fn deposit(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + self.deposit).min(self.cap))
            });
    }

    fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= WHOLE).then_some(b - WHOLE)
            })
            .is_ok()
    }
}

type Classifier<E> = Arc<dyn Fn(&E) -> ErrorClass + Send + Sync>;

/// How [`Pool::retry`] retries: at most `max_attempts` attempts, waiting a
/// random delay below an exponentially growing ceiling between them ("full
/// jitter"), all within a total `deadline`, and only while the budget
/// allows.
///
/// Defaults: 3 attempts, backoff from 10 ms up to 1 s, a 10 s deadline, and
/// a budget of 0.2 retries per call with 10 banked. Clones share the
/// budget.
pub struct RetryPolicy<E> {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    deadline: Duration,
    budget: Arc<RetryBudget>,
    classify: Classifier<E>,
}

impl<E> Clone for RetryPolicy<E> {
    fn clone(&self) -> Self {
        Self {
            max_attempts: self.max_attempts,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            deadline: self.deadline,
            budget: self.budget.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<E> std::fmt::Debug for RetryPolicy<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("deadline", &self.deadline)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl<E> RetryPolicy<E> {
    /// The default policy, with `classify` telling which errors to retry.
    pub fn new(classify: impl Fn(&E) -> ErrorClass + Send + Sync + 'static) -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            deadline: Duration::from_secs(10),
            budget: Arc::new(RetryBudget::new(0.2, 10)),
            classify: Arc::new(classify),
        }
    }

    /// Sets how many attempts in all (the first included); at least 1.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the first delay's ceiling, doubled after each attempt up to
    /// `max`.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets the time from the call to the end of its last attempt: no
    /// attempt starts (nor backoff sleep) that would end past it, and
    /// waiting for a connection is cut to what is left. A running attempt
    /// is not interrupted.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Draws retries from `budget`, which may be shared with other
    /// policies (one budget per backend, say).
    #[must_use]
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// The budget retries are drawn from.
    pub fn retry_budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }

    /// How the policy's classifier sees `error`.
    pub fn classify(&self, error: &E) -> ErrorClass {
        (self.classify)(error)
    }
}

/// Why a retry stopped; for the log line.
enum GaveUp {
    Attempts,
    Deadline,
    Budget,
}

impl<M: Manager> Pool<M> {
    /// Checks a connection out, runs `work` on it and returns the
    /// connection; an `Err` from `work` counts as a failure for the
    /// circuit breaker (see [`Pooled::report_failure`]), an `Ok` as a
    /// success. Pool errors come back converted into `E`.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # struct Numbers;
    /// # impl wharf::Manager for Numbers {
    /// #     type Connection = Vec<u32>;
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<Vec<u32>, Infallible> { Ok(vec![7]) }
    /// #     async fn check(&self, _: &mut Vec<u32>) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = wharf::Pool::builder(Numbers)
    ///     .circuit_breaker(wharf::BreakerConfig::default())
    ///     .build()?;
    /// let first = pool
    ///     .run(|conn| Box::pin(async move { Ok::<_, wharf::Error>(conn[0]) }))
    ///     .await?;
    /// assert_eq!(first, 7);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn run<'a, T, E, F>(&'a self, work: F) -> impl Future<Output = Result<T, E>> + 'a
    where
        F: for<'c> FnOnce(&'c mut M::Connection) -> WorkFuture<'c, T, E> + 'a,
        E: From<Error> + Display + 'a,
        T: 'a,
    {
        let get = self.get();
        async move {
            let mut conn = get.await?;
            let outcome = work(&mut conn).await;
            if let Err(err) = &outcome {
                conn.report(Failure::Work(err.to_string()));
            }
            outcome
        }
    }

    /// Runs idempotent `work` on a pooled connection, again on a fresh
    /// checkout after each failure `policy` classifies as
    /// [`Transient`](ErrorClass::Transient) or
    /// [`Connection`](ErrorClass::Connection), until it succeeds, fails
    /// permanently, or the policy's attempts, deadline or budget run out;
    /// then the last error is returned. A failed checkout ends it at once
    /// (the pool has already waited, and a refusal by an open circuit must
    /// not be hammered).
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # struct Numbers;
    /// # impl wharf::Manager for Numbers {
    /// #     type Connection = Vec<u32>;
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<Vec<u32>, Infallible> { Ok(Vec::new()) }
    /// #     async fn check(&self, _: &mut Vec<u32>) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// #[derive(Debug, thiserror::Error)]
    /// enum AppError {
    ///     #[error("conflict, try again")]
    ///     Conflict,
    ///     #[error(transparent)]
    ///     Pool(#[from] wharf::Error),
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = wharf::Pool::builder(Numbers).build()?;
    /// let policy = wharf::RetryPolicy::new(|err: &AppError| match err {
    ///     AppError::Conflict => wharf::ErrorClass::Transient,
    ///     AppError::Pool(_) => wharf::ErrorClass::Permanent,
    /// });
    /// let attempts = pool
    ///     .retry(&policy, |conn| Box::pin(async move {
    ///         conn.push(1); // the same connection comes back each time here
    ///         if conn.len() < 2 { Err(AppError::Conflict) } else { Ok(conn.len()) }
    ///     }))
    ///     .await?;
    /// assert_eq!(attempts, 2);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn retry<'a, T, E, F>(
        &'a self,
        policy: &'a RetryPolicy<E>,
        mut work: F,
    ) -> impl Future<Output = Result<T, E>> + 'a
    where
        F: for<'c> FnMut(&'c mut M::Connection) -> WorkFuture<'c, T, E> + 'a,
        E: From<Error> + Display + 'a,
        T: 'a,
    {
        let caller = Location::caller();
        async move {
            let shared = self.shared();
            let deadline = Instant::now() + policy.deadline;
            policy.budget.deposit();
            let mut attempt = 0;
            loop {
                attempt += 1;
                let wait = shared
                    .config
                    .acquire_timeout
                    .min(deadline.saturating_duration_since(Instant::now()));
                let mut conn = checkout(shared, wait, caller).await?;
                let err = match work(&mut conn).await {
                    Ok(value) => return Ok(value),
                    Err(err) => err,
                };
                let class = policy.classify(&err);
                settle_attempt(conn, class, &err);
                if class == ErrorClass::Permanent {
                    return Err(err);
                }
                let delay = backoff_delay(attempt, policy.initial_backoff, policy.max_backoff);
                let gave_up = if attempt >= policy.max_attempts {
                    Some(GaveUp::Attempts)
                } else if Instant::now() + delay >= deadline {
                    Some(GaveUp::Deadline)
                } else if !policy.budget.withdraw() {
                    Some(GaveUp::Budget)
                } else {
                    None
                };
                if let Some(why) = gave_up {
                    log_gave_up(&shared.config.name, attempt, why, &err);
                    return Err(err);
                }
                Recorder::count(&shared.recorder.counters.retries);
                tracing::debug!(pool = %shared.config.name, attempt, error = %err, retry_in = %HumanDuration(delay), "retrying");
                sleep(delay).await;
            }
        }
    }
}

/// One attempt's checkout: through the breaker when the pool has one.
async fn checkout<M: Manager>(
    shared: &Arc<Shared<M>>,
    wait: Duration,
    caller: &'static Location<'static>,
) -> Result<Pooled<M>, Error> {
    Shared::admit_and_acquire(shared.clone(), wait, caller).await
}

/// Returns or closes an attempt's connection, telling the breaker what the
/// class of its error says it should hear.
fn settle_attempt<M: Manager>(mut conn: Pooled<M>, class: ErrorClass, err: &impl Display) {
    if class == ErrorClass::Connection {
        conn.report(Failure::Work(err.to_string()));
        conn.discard();
    }
}

fn log_gave_up(pool: &str, attempts: u32, why: GaveUp, err: &impl Display) {
    let why = match why {
        GaveUp::Attempts => "out of attempts",
        GaveUp::Deadline => "the next attempt would end past the deadline",
        GaveUp::Budget => "the retry budget is spent",
    };
    tracing::debug!(pool, attempts, error = %err, "giving up retrying: {why}");
}

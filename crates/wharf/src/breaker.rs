//! The circuit breaker: a pool whose backend keeps failing stops sending it
//! work for a while, answers callers at once, and lets a few probes through
//! to find out when it is back.
//!
//! It is a small state machine fed by the pool's own events, not a crate:
//! the breaker crates on crates.io (`failsafe`, `recloser`, tower's layers)
//! wrap a call (a future) and judge its result, whereas here one "call" is
//! a checkout whose outcome is known in three different places (the acquire
//! path, the connector, and the return of the connection, possibly hours
//! later), and a half-open probe has to stay counted until its connection
//! comes back or its `get()` is dropped. Owning the states lets the pool
//! report them in [`Status`](crate::Status) and its metrics without
//! translating another crate's notion of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::HumanDuration;
use crate::{ConnectError, Error};

/// Settings of a pool's circuit breaker
/// ([`Builder::circuit_breaker`](crate::Builder::circuit_breaker)).
///
/// The defaults follow the usual advice (opossum's 50 % error threshold,
/// Resilience4j's minimum of calls and sliding window), with a shorter
/// wait before probing than opossum's 30 s since the pool's probe is cheap:
///
/// ```
/// let config: wharf::BreakerConfig = toml::from_str(r#"
///     failure_rate = 0.5
///     min_calls = 20
///     window = "10s"
///     open_for = "5s"
///     half_open_probes = 1
/// "#).unwrap();
/// assert_eq!(config, wharf::BreakerConfig::default());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// The share of failed calls (0.0 to 1.0) over `window` at or above
    /// which the circuit opens. Default 0.5.
    pub failure_rate: f64,
    /// The fewest calls in `window` for the rate to count: below it the
    /// circuit stays closed whatever the rate (one failed call out of one
    /// is not an outage). Default 20.
    pub min_calls: u32,
    /// How far back calls are counted (a rolling window of ten buckets).
    /// Default 10 s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long the circuit stays open before letting probes through.
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// How many checkouts a half-open circuit lets through at once; the
    /// first to succeed closes the circuit, any failure opens it again.
    /// Default 1.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    pub(crate) fn is_valid(&self) -> bool {
        (0.0..=1.0).contains(&self.failure_rate)
            && self.min_calls >= 1
            && !self.window.is_zero()
            && self.half_open_probes >= 1
    }
}

/// Where a pool's circuit breaker stands, in [`Status::circuit`](crate::Status::circuit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// The pool has no circuit breaker.
    #[default]
    Disabled,
    /// Calls go through and their outcomes are counted.
    Closed,
    /// Calls fail at once with [`Error::CircuitOpen`].
    Open,
    /// A few probe checkouts go through; the others fail at once.
    HalfOpen,
}

impl CircuitState {
    /// The value of the `wharf_pool_circuit_state` gauge: 0 closed (or no
    /// breaker), 1 half-open, 2 open.
    pub fn as_gauge(self) -> usize {
        match self {
            CircuitState::Disabled | CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

/// A failure the circuit breaker counted: the cause carried by
/// [`Error::CircuitOpen`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// Opening a connection failed.
    #[error("connect failed: {0}")]
    Connect(#[source] ConnectError),
    /// A caller's `get()` timed out.
    #[error("get() timed out after {}", HumanDuration(*.0))]
    AcquireTimeout(Duration),
    /// The caller called [`Pooled::report_failure`](crate::Pooled::report_failure).
    #[error("the caller reported a failure")]
    Reported,
    /// The work given to [`Pool::run`](crate::Pool::run) (or a retry)
    /// failed, with this message.
    #[error("the caller's work failed: {0}")]
    Work(String),
}

/// Calls counted per bucket of the rolling window.
#[derive(Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (`elapsed / bucket_len`) the counts belong to.
    epoch: u64,
    calls: u32,
    failures: u32,
}

const BUCKETS: usize = 10;

/// The rolling window: counts for the last `BUCKETS` slices of time.
struct Window {
    origin: Instant,
    bucket_len: Duration,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(window: Duration, now: Instant) -> Self {
        Self {
            origin: now,
            bucket_len: (window / BUCKETS as u32).max(Duration::from_micros(1)),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        (elapsed / self.bucket_len.as_nanos()) as u64
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let epoch = self.epoch(now);
        let bucket = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        bucket.calls += 1;
        bucket.failures += u32::from(failed);
    }

    /// Calls and failures within the window as of `now`.
    fn totals(&self, now: Instant) -> (u32, u32) {
        let current = self.epoch(now);
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && current.saturating_sub(b.epoch) < BUCKETS as u64)
            .fold((0, 0), |(calls, failures), b| {
                (calls + b.calls, failures + b.failures)
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

struct Inner {
    state: CircuitState,
    since: Instant,
    window: Window,
    /// Bumped at every transition, so that an outcome of a call let in
    /// under an earlier state is not taken for one of the current state.
    generation: u64,
    probes_in_flight: u32,
    last_failure: Option<Failure>,
}

/// A pool's circuit breaker.
pub(crate) struct Breaker {
    config: BreakerConfig,
    pool: String,
    inner: Mutex<Inner>,
    pub(crate) opened: AtomicU64,
    pub(crate) half_opened: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// A checkout let through by the breaker, whose outcome is still to come.
/// Dropped without [`finish`](Self::finish) (a `get()` cancelled, or one
/// that failed for a reason that says nothing about the backend), it counts
/// for nothing but frees its probe slot.
pub(crate) struct Call {
    breaker: Arc<Breaker>,
    generation: u64,
    probe: bool,
    finished: bool,
    /// Set when the call failed; its last failure counts.
    failure: Option<Failure>,
}

impl Call {
    /// Marks the call failed.
    pub(crate) fn report(&mut self, failure: Failure) {
        self.failure = Some(failure);
    }

    /// Records the call's outcome: a success unless a failure was reported.
    pub(crate) fn finish(mut self) {
        self.finished = true;
        let failure = self.failure.take();
        self.breaker.record(self.generation, self.probe, failure);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished && self.probe {
            let mut inner = self.breaker.inner.lock();
            if inner.generation == self.generation {
                inner.probes_in_flight -= 1;
            }
        }
    }
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig, pool: &str) -> Self {
        let now = Instant::now();
        Self {
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                since: now,
                window: Window::new(config.window, now),
                generation: 0,
                probes_in_flight: 0,
                last_failure: None,
            }),
            config,
            pool: pool.to_owned(),
            opened: AtomicU64::new(0),
            half_opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        self.inner.lock().state
    }

    /// Lets a checkout through, or refuses it with
    /// [`Error::CircuitOpen`].
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Call, Error> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if inner.state == CircuitState::Open && now >= inner.since + self.config.open_for {
            self.transition(&mut inner, CircuitState::HalfOpen, now);
        }
        let probe = match inner.state {
            CircuitState::Open => false,
            CircuitState::HalfOpen if inner.probes_in_flight < self.config.half_open_probes => {
                inner.probes_in_flight += 1;
                true
            }
            CircuitState::HalfOpen => false,
            CircuitState::Closed | CircuitState::Disabled => {
                return Ok(self.call(&inner, false));
            }
        };
        if probe {
            return Ok(self.call(&inner, true));
        }
        let retry_in = match inner.state {
            CircuitState::Open => {
                (inner.since + self.config.open_for).saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        };
        let last_failure = inner.last_failure.clone();
        drop(inner);
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(Error::CircuitOpen {
            retry_in,
            last_failure,
        })
    }

    fn call(self: &Arc<Self>, inner: &Inner, probe: bool) -> Call {
        Call {
            breaker: self.clone(),
            generation: inner.generation,
            probe,
            finished: false,
            failure: None,
        }
    }

    /// A failure seen outside any call (a connector's failed connect).
    pub(crate) fn record_failure(&self, failure: Failure) {
        let mut inner = self.inner.lock();
        let generation = inner.generation;
        let probe = inner.state == CircuitState::HalfOpen;
        self.record_locked(&mut inner, generation, probe, Some(failure));
    }

    fn record(&self, generation: u64, probe: bool, failure: Option<Failure>) {
        let mut inner = self.inner.lock();
        if probe && inner.generation == generation {
            inner.probes_in_flight -= 1;
        }
        self.record_locked(&mut inner, generation, probe, failure);
    }

    fn record_locked(
        &self,
        inner: &mut Inner,
        generation: u64,
        probe: bool,
        failure: Option<Failure>,
    ) {
        let now = Instant::now();
        let current = inner.generation == generation;
        let failed = failure.is_some();
        if let Some(failure) = failure {
            inner.last_failure = Some(failure);
        }
        match inner.state {
            CircuitState::HalfOpen if current && probe => {
                let next = if failed {
                    CircuitState::Open
                } else {
                    CircuitState::Closed
                };
                self.transition(inner, next, now);
            }
            CircuitState::Closed if current => {
                inner.window.record(now, failed);
                let (calls, failures) = inner.window.totals(now);
                let rate = f64::from(failures) / f64::from(calls);
                if failed && calls >= self.config.min_calls && rate >= self.config.failure_rate {
                    self.transition(inner, CircuitState::Open, now);
                }
            }
            // Outcomes of calls let in before the last transition, and
            // anything while open, only refresh the last failure.
            _ => {}
        }
    }

    fn transition(&self, inner: &mut Inner, to: CircuitState, now: Instant) {
        inner.state = to;
        inner.since = now;
        inner.generation += 1;
        inner.probes_in_flight = 0;
        inner.window.clear();
        let cause = inner.last_failure.as_ref().map(ToString::to_string);
        match to {
            CircuitState::Open => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    pool = %self.pool,
                    last_failure = cause.as_deref().unwrap_or("none"),
                    open_for = %HumanDuration(self.config.open_for),
                    "circuit opened: get() fails at once until probes succeed"
                );
            }
            CircuitState::HalfOpen => {
                self.half_opened.fetch_add(1, Ordering::Relaxed);
                tracing::info!(pool = %self.pool, probes = self.config.half_open_probes, "circuit half-open: probing the backend");
            }
            CircuitState::Closed => {
                self.closed.fetch_add(1, Ordering::Relaxed);
                inner.last_failure = None;
                tracing::info!(pool = %self.pool, "circuit closed: a probe succeeded");
            }
            CircuitState::Disabled => {}
        }
    }

    pub(crate) fn metrics(&self) -> CircuitMetrics {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CircuitMetrics {
            state: self.state(),
            opened: load(&self.opened),
            half_opened: load(&self.half_opened),
            closed: load(&self.closed),
            rejected: load(&self.rejected),
        }
    }
}

/// The circuit breaker's counters, in [`Metrics::circuit`](crate::Metrics::circuit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CircuitMetrics {
    /// The state now.
    pub state: CircuitState,
    /// Transitions to open.
    pub opened: u64,
    /// Transitions to half-open.
    pub half_opened: u64,
    /// Transitions back to closed.
    pub closed: u64,
    /// `get()` calls refused because the circuit was open (or half-open
    /// with all its probes out).
    pub rejected: u64,
}

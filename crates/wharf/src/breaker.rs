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
//!
//! A call is counted when its checkout succeeds, from the pool's own count
//! of acquires, and a failure when it is reported: so a closed circuit
//! costs a checkout two atomic loads and its return nothing. The acquires
//! are moved into the rolling window at every maintenance tick and every
//! failure, so a bucket's calls are accurate to `maintenance_interval`.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
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
    /// A call counts from its checkout, and checkouts enter the window at
    /// the pool's maintenance ticks (and at each failure), so keep this
    /// well above `maintenance_interval`. Default 10 s.
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

const BUCKETS: u64 = 10;

/// The rolling window: counts for the last `BUCKETS` slices of time.
struct Window {
    buckets: [Bucket; BUCKETS as usize],
}

impl Window {
    fn new() -> Self {
        Self {
            buckets: [Bucket::default(); BUCKETS as usize],
        }
    }

    fn add(&mut self, epoch: u64, calls: u32, failures: u32) {
        let bucket = &mut self.buckets[(epoch % BUCKETS) as usize];
        if bucket.epoch != epoch {
            if bucket.epoch > epoch {
                return; // older than the window
            }
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        bucket.calls = bucket.calls.saturating_add(calls);
        bucket.failures = bucket.failures.saturating_add(failures);
    }

    /// Calls and failures within the window ending in slice `current`.
    fn totals(&self, current: u64) -> (u32, u32) {
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && current.saturating_sub(b.epoch) < BUCKETS)
            .fold((0, 0), |(calls, failures), b| {
                (calls + b.calls, failures + b.failures)
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS as usize];
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
    /// The pool's acquire count already in the window (or, while not
    /// closed, passed over).
    acquired_seen: u64,
}

const CLOSED: u8 = 0;
const NOT_CLOSED: u8 = 1;

/// A pool's circuit breaker.
pub(crate) struct Breaker {
    config: BreakerConfig,
    pool: String,
    origin: Instant,
    /// `2^64 / (window / BUCKETS in nanoseconds)`.
    bucket_reciprocal: u64,
    inner: Mutex<Inner>,
    /// Whether the circuit is closed, and its generation: copies of
    /// `inner`'s, written under the lock, read without it by the checkout
    /// path of a closed circuit.
    closed: AtomicU8,
    generation: AtomicU64,
    pub(crate) opened: AtomicU64,
    pub(crate) half_opened: AtomicU64,
    pub(crate) closed_count: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// A checkout let through by the breaker, whose outcome is still to come.
/// Dropped without [`finish`](Self::finish) (a `get()` cancelled, or one
/// that failed for a reason that says nothing about the backend), it counts
/// for nothing but frees its probe's place.
pub(crate) struct Call {
    generation: u64,
    /// Set for a half-open circuit's probe, whose place must be given back
    /// even when its `get()` is dropped.
    probe: Option<Arc<Breaker>>,
    /// Set when the call failed; its last failure counts. Boxed: the
    /// success path carries one word for it.
    failure: Option<Box<Failure>>,
}

impl Call {
    /// Marks the call failed.
    pub(crate) fn report(&mut self, failure: Failure) {
        self.failure = Some(Box::new(failure));
    }

    /// Records the call's outcome: a success unless a failure was
    /// reported. `acquired` reads the pool's acquire count; it is only
    /// called for failures and probes, a closed circuit's success being
    /// already counted by its checkout.
    #[inline]
    pub(crate) fn finish(self, breaker: &Breaker, acquired: impl FnOnce() -> u64) {
        if self.probe.is_none() && self.failure.is_none() {
            // A closed circuit's success, every return's case: nothing to
            // record, and with both options empty nothing to drop (the
            // `Drop` impl would only look at `probe` again).
            std::mem::forget(self);
            return;
        }
        self.record_outcome(breaker, acquired);
    }

    #[cold]
    #[inline(never)]
    fn record_outcome(mut self, breaker: &Breaker, acquired: impl FnOnce() -> u64) {
        let probe = self.probe.take().is_some();
        let failure = self.failure.take();
        if probe || failure.is_some() {
            let outcome = Outcome {
                generation: self.generation,
                probe,
                failure: failure.map(|f| *f),
                checked_out: true,
            };
            breaker.record(outcome, acquired());
        }
    }

    /// Records a failed checkout (timed out, or no connection could be
    /// opened): a call of its own and a failure.
    pub(crate) fn fail_checkout(mut self, breaker: &Breaker, failure: Failure, acquired: u64) {
        let outcome = Outcome {
            generation: self.generation,
            probe: self.probe.take().is_some(),
            failure: Some(failure),
            checked_out: false,
        };
        breaker.record(outcome, acquired);
    }
}

/// What a call came to, for [`Breaker::record`].
struct Outcome {
    generation: u64,
    probe: bool,
    failure: Option<Failure>,
    /// Whether its checkout succeeded (and is in the acquire count).
    checked_out: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(breaker) = self.probe.take() {
            let mut inner = breaker.inner.lock();
            if inner.generation == self.generation {
                inner.probes_in_flight -= 1;
            }
        }
    }
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig, pool: &str) -> Self {
        let now = Instant::now();
        let bucket_nanos = (config.window.as_nanos() / u128::from(BUCKETS)).max(1);
        Self {
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                since: now,
                window: Window::new(),
                generation: 0,
                probes_in_flight: 0,
                last_failure: None,
                acquired_seen: 0,
            }),
            origin: now,
            bucket_reciprocal: u64::MAX / u64::try_from(bucket_nanos).unwrap_or(u64::MAX),
            config,
            pool: pool.to_owned(),
            closed: AtomicU8::new(CLOSED),
            generation: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            half_opened: AtomicU64::new(0),
            closed_count: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        self.inner.lock().state
    }

    /// Which slice of time `at` falls in. A multiplication by the
    /// reciprocal rather than a division: this runs on every return of a
    /// connection, and a boundary off by a nanosecond changes nothing.
    fn epoch(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.origin).as_nanos();
        let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
        ((u128::from(elapsed) * u128::from(self.bucket_reciprocal)) >> 64) as u64
    }

    /// Lets a checkout through, or refuses it with
    /// [`Error::CircuitOpen`]. A closed circuit only reads two atomics.
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Call, Error> {
        if self.closed.load(Ordering::Acquire) == CLOSED {
            return Ok(Call {
                generation: self.generation.load(Ordering::Acquire),
                probe: None,
                failure: None,
            });
        }
        self.admit_not_closed()
    }

    #[cold]
    fn admit_not_closed(self: &Arc<Self>) -> Result<Call, Error> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if inner.state == CircuitState::Open && now >= inner.since + self.config.open_for {
            self.transition(&mut inner, CircuitState::HalfOpen, now);
        }
        let call = |inner: &Inner, probe: Option<Arc<Breaker>>| Call {
            generation: inner.generation,
            probe,
            failure: None,
        };
        match inner.state {
            CircuitState::Closed | CircuitState::Disabled => return Ok(call(&inner, None)),
            CircuitState::HalfOpen if inner.probes_in_flight < self.config.half_open_probes => {
                inner.probes_in_flight += 1;
                return Ok(call(&inner, Some(self.clone())));
            }
            CircuitState::HalfOpen | CircuitState::Open => {}
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

    /// Moves the acquires since the last look into the window, at slice
    /// `epoch` (or passes over them while the circuit is not closed).
    fn fold(&self, inner: &mut Inner, acquired: u64, epoch: u64) {
        let new = acquired.saturating_sub(inner.acquired_seen);
        inner.acquired_seen = acquired;
        if inner.state == CircuitState::Closed && new > 0 {
            inner
                .window
                .add(epoch, u32::try_from(new).unwrap_or(u32::MAX), 0);
        }
    }

    /// The maintenance task's tick: brings the window up to date with the
    /// pool's acquires.
    pub(crate) fn tick(&self, acquired: u64) {
        let epoch = self.epoch(Instant::now());
        self.fold(&mut self.inner.lock(), acquired, epoch);
    }

    /// A failure seen outside any call (a connector's failed connect).
    pub(crate) fn record_failure(&self, failure: Failure, acquired: u64) {
        let mut inner = self.inner.lock();
        let outcome = Outcome {
            generation: inner.generation,
            probe: inner.state == CircuitState::HalfOpen,
            failure: Some(failure),
            checked_out: false,
        };
        self.record_locked(&mut inner, outcome, acquired);
    }

    fn record(&self, outcome: Outcome, acquired: u64) {
        let mut inner = self.inner.lock();
        if outcome.probe && inner.generation == outcome.generation {
            inner.probes_in_flight -= 1;
        }
        self.record_locked(&mut inner, outcome, acquired);
    }

    fn record_locked(&self, inner: &mut Inner, outcome: Outcome, acquired: u64) {
        let now = Instant::now();
        let epoch = self.epoch(now);
        self.fold(inner, acquired, epoch);
        let current = inner.generation == outcome.generation;
        let failed = outcome.failure.is_some();
        if let Some(failure) = outcome.failure {
            inner.last_failure = Some(failure);
        }
        match inner.state {
            CircuitState::HalfOpen if current && outcome.probe => {
                let next = if failed {
                    CircuitState::Open
                } else {
                    CircuitState::Closed
                };
                self.transition(inner, next, now);
            }
            CircuitState::Closed if current && failed => {
                // A failed checkout is a call the acquire count missed.
                let calls = u32::from(!outcome.checked_out);
                inner.window.add(epoch, calls, 1);
                let (calls, failures) = inner.window.totals(epoch);
                let rate = f64::from(failures) / f64::from(calls.max(1));
                if calls >= self.config.min_calls && rate >= self.config.failure_rate {
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
        self.generation.store(inner.generation, Ordering::Release);
        let closed = if to == CircuitState::Closed {
            CLOSED
        } else {
            NOT_CLOSED
        };
        self.closed.store(closed, Ordering::Release);
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
                self.closed_count.fetch_add(1, Ordering::Relaxed);
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
            closed: load(&self.closed_count),
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

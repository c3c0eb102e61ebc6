//! The errors the pool returns.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::Failure;
use crate::Status;

/// A boxed error, as returned by hooks and carried as the last connect error.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The last error seen while opening a connection, shared by every waiter
/// that reports it.
pub type ConnectError = Arc<dyn StdError + Send + Sync + 'static>;

/// Why [`Pool::get`](crate::Pool::get) failed.
///
/// Connection failures are not returned directly: the pool keeps retrying
/// with backoff while callers wait, and a caller that gives up sees the last
/// connect error inside [`Error::Timeout`]. That is what keeps one failed
/// connect from failing every queued request at once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection became available within the acquire timeout.
    #[error("{}", TimeoutMessage { waited: *waited, status, last_error: last_error.as_deref() })]
    Timeout {
        /// How long the caller waited.
        waited: Duration,
        /// The pool's state when the caller gave up.
        status: Status,
        /// The most recent error from opening a connection, if the pool has
        /// failed to connect since its last successful connect.
        #[source]
        last_error: Option<ConnectError>,
    },
    /// A `fail_fast` pool has no connection and its last connect failed:
    /// the caller is answered at once instead of waiting for the backend.
    #[error("{}", UnavailableMessage(last_error.as_deref()))]
    Unavailable {
        /// Why the last connect failed.
        #[source]
        last_error: Option<ConnectError>,
    },
    /// The pool has been closed; no connection will ever be handed out again.
    #[error("the pool is closed")]
    Closed,
    /// The pool's circuit breaker is open (or half-open with its probes
    /// out): the backend failed too often lately, so the caller is answered
    /// at once instead of adding to the load.
    #[error("{}", CircuitOpenMessage { retry_in: *retry_in, last_failure: last_failure.as_ref() })]
    CircuitOpen {
        /// How long until the circuit lets probes through (zero while a
        /// half-open circuit's probes are out).
        retry_in: Duration,
        /// The last failure the breaker counted.
        #[source]
        last_failure: Option<Failure>,
    },
    /// [`Pool::get_in`](crate::Pool::get_in) named a lane the pool was not
    /// built with.
    #[error("the pool has no lane named {0:?}")]
    UnknownLane(String),
    /// A lane had `max_in_use` connections out for the whole wait.
    #[error("timed out after {} waiting in lane {lane:?}: {in_use}/{max_in_use} of its connections in use, {waiting} waiting", HumanDuration(*waited))]
    LaneTimeout {
        /// The lane's name.
        lane: String,
        /// How long the caller waited.
        waited: Duration,
        /// The lane's connections in use when the caller gave up.
        in_use: usize,
        /// The lane's cap.
        max_in_use: usize,
        /// Other callers waiting in the lane.
        waiting: usize,
    },
    /// The waiting queue is at `max_waiting`; the request was refused at once
    /// rather than queued (backpressure).
    #[error("too many callers waiting for a connection: {waiting} waiting, max_waiting = {max_waiting}; {in_use}/{max_size} in use", waiting = status.waiting, in_use = status.in_use, max_size = status.max_size)]
    QueueFull {
        /// The configured bound.
        max_waiting: usize,
        /// The pool's state when the request was refused.
        status: Status,
    },
}

impl Error {
    /// The last connect error this error carries: the cause of a
    /// [`Timeout`](Error::Timeout) or [`Unavailable`](Error::Unavailable)
    /// after connects failed, or of a [`CircuitOpen`](Error::CircuitOpen)
    /// whose last failure was a connect.
    pub fn connect_error(&self) -> Option<&ConnectError> {
        match self {
            Error::Timeout { last_error, .. } | Error::Unavailable { last_error } => {
                last_error.as_ref()
            }
            Error::CircuitOpen {
                last_failure: Some(Failure::Connect(err)),
                ..
            } => Some(err),
            Error::Closed
            | Error::QueueFull { .. }
            | Error::CircuitOpen { .. }
            | Error::UnknownLane(_)
            | Error::LaneTimeout { .. } => None,
        }
    }

    /// The last connect error as `E`, when that is what failed: give the
    /// manager's [`Error`](crate::Manager::Error) type to read the backend's
    /// own error (an SQLSTATE, say) without downcasting by hand.
    /// [`Pool::backend_error`](crate::Pool::backend_error) does the same
    /// with the type taken from the pool.
    ///
    /// `None` when no connect failed, or when it failed otherwise: by
    /// exceeding `connect_timeout` ([`ConnectTimeout`](crate::ConnectTimeout))
    /// or in the `on_connect` hook (that hook's error type).
    ///
    /// ```
    /// # use std::time::Duration;
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("password authentication failed")]
    /// struct AuthFailed;
    ///
    /// struct Refusing;
    ///
    /// impl wharf::Manager for Refusing {
    ///     type Connection = ();
    ///     type Error = AuthFailed;
    ///     async fn connect(&self) -> Result<(), AuthFailed> {
    ///         Err(AuthFailed)
    ///     }
    ///     async fn check(&self, _: &mut ()) -> Result<(), AuthFailed> {
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let pool = wharf::Pool::builder(Refusing)
    ///     .acquire_timeout(Duration::from_secs(1))
    ///     .build()
    ///     .unwrap();
    /// let err = pool.get().await.unwrap_err();
    /// let cause: Option<&AuthFailed> = err.backend();
    /// assert!(cause.is_some());
    /// assert!(pool.backend_error(&err).is_some()); // the same, typed by the pool
    /// # }
    /// ```
    pub fn backend<E: StdError + 'static>(&self) -> Option<&E> {
        self.connect_error()?.downcast_ref::<E>()
    }
}

struct TimeoutMessage<'a> {
    waited: Duration,
    status: &'a Status,
    last_error: Option<&'a (dyn StdError + Send + Sync + 'static)>,
}

impl fmt::Display for TimeoutMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {} waiting for a connection: {}/{} in use, {} idle, {} waiting",
            HumanDuration(self.waited),
            self.status.in_use,
            self.status.max_size,
            self.status.idle,
            self.status.waiting,
        )?;
        if let Some(err) = self.last_error {
            write!(f, "; last connect error: {err}")?;
        }
        Ok(())
    }
}

struct UnavailableMessage<'a>(Option<&'a (dyn StdError + Send + Sync + 'static)>);

impl fmt::Display for UnavailableMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no connection available: connecting to the backend is failing")?;
        if let Some(err) = self.0 {
            write!(f, "; last connect error: {err}")?;
        }
        Ok(())
    }
}

struct CircuitOpenMessage<'a> {
    retry_in: Duration,
    last_failure: Option<&'a Failure>,
}

impl fmt::Display for CircuitOpenMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.retry_in.is_zero() {
            f.write_str("circuit half-open: its probes are out, get() refused")?;
        } else {
            write!(
                f,
                "circuit open: get() refused for {} more",
                HumanDuration(self.retry_in)
            )?;
        }
        if let Some(failure) = self.last_failure {
            write!(f, "; last failure: {failure}")?;
        }
        Ok(())
    }
}

/// Formats a duration the way people write timeouts: `2s`, `250ms`, `1.5s`.
pub(crate) struct HumanDuration(pub(crate) Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.as_secs() >= 1 {
            let secs = d.as_secs_f64();
            if secs.fract() < 0.0005 {
                write!(f, "{}s", d.as_secs())
            } else {
                write!(f, "{secs:.3}s")
            }
        } else if d.as_millis() >= 1 {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}µs", d.as_micros())
        }
    }
}

/// Why a pool could not be built or resized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_size` must be at least 1.
    #[error("max_size must be at least 1")]
    ZeroMaxSize,
    /// `min_idle` cannot exceed `max_size`.
    #[error("min_idle ({min_idle}) must not exceed max_size ({max_size})")]
    MinIdleAboveMax {
        /// The configured `min_idle`.
        min_idle: usize,
        /// The configured `max_size`.
        max_size: usize,
    },
    /// `min_size` cannot exceed `max_size`.
    #[error("min_size ({min_size}) must not exceed max_size ({max_size})")]
    MinSizeAboveMax {
        /// The configured `min_size`.
        min_size: usize,
        /// The configured `max_size`.
        max_size: usize,
    },
    /// `max_connecting` must be at least 1.
    #[error("max_connecting must be at least 1")]
    ZeroMaxConnecting,
    /// `lifetime_jitter` is a fraction between 0 and 1.
    #[error("lifetime_jitter must be between 0.0 and 1.0, got {0}")]
    BadJitter(f64),
    /// `maintenance_interval` must be longer than zero.
    #[error("maintenance_interval must be longer than zero")]
    ZeroMaintenanceInterval,
    /// The circuit breaker's `failure_rate` must be between 0 and 1, its
    /// `min_calls` and `half_open_probes` at least 1, its `window` longer
    /// than zero.
    #[error("circuit breaker settings out of range: failure_rate must be in 0.0..=1.0, min_calls and half_open_probes at least 1, window above zero")]
    BadBreaker,
    /// A lane's settings are unusable; the message says why.
    #[error("lane {lane:?}: {reason}")]
    BadLane {
        /// The lane's name.
        lane: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A [`ReplicaSet`](crate::ReplicaSet)'s `probe_interval` must be
    /// longer than zero.
    #[error("a replica set's probe_interval must be longer than zero")]
    ZeroProbeInterval,
    /// A [`ReplicaSet`](crate::ReplicaSet)'s `replica_wait` (a quarter of
    /// its `acquire_timeout` unless set) must be longer than zero: with
    /// none, no read would ever try a replica.
    #[error("a replica set's replica_wait and acquire_timeout must be longer than zero")]
    ZeroReplicaWait,
    /// The guaranteed minimums of a [`Budget`](crate::Budget)'s pools
    /// would add up to more than its total.
    #[error("the pools' guaranteed minimums would add up to {guaranteed}, above the budget's total of {total}")]
    GuaranteesExceedBudget {
        /// The guarantees with this pool's.
        guaranteed: usize,
        /// The budget's total.
        total: usize,
    },
    /// A pool's guaranteed minimum of a budget is above its `max_size`.
    #[error(
        "the guaranteed minimum of the budget ({guaranteed}) must not exceed max_size ({max_size})"
    )]
    GuaranteeAboveMax {
        /// The guarantee asked for.
        guaranteed: usize,
        /// The pool's `max_size`.
        max_size: usize,
    },
    /// `build()` must run inside a Tokio runtime, which the pool's background
    /// tasks are spawned on.
    #[error("Pool::builder(..).build() must be called from within a Tokio runtime")]
    NoRuntime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_message_names_the_wait_the_state_and_the_cause() {
        let err = Error::Timeout {
            waited: Duration::from_secs(2),
            status: Status {
                size: 20,
                idle: 0,
                in_use: 20,
                waiting: 37,
                max_size: 20,
                circuit: crate::CircuitState::Disabled,
            },
            last_error: Some(Arc::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))),
        };
        assert_eq!(
            err.to_string(),
            "timed out after 2s waiting for a connection: 20/20 in use, 0 idle, 37 waiting; \
             last connect error: connection refused"
        );
        assert!(StdError::source(&err).is_some());
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(
            HumanDuration(Duration::from_millis(250)).to_string(),
            "250ms"
        );
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1.500s"
        );
        assert_eq!(HumanDuration(Duration::from_micros(7)).to_string(), "7µs");
    }
}

//! Lanes: named shares of one pool's connections, each with its own cap and
//! queue, so that slow work (reports, exports) never takes more than its
//! share and fast work always finds connections.
//!
//! A lane is a FIFO gate (`gate.rs`) in front of the pool's own queue: a caller
//! first takes one of its lane's `max_in_use` places (waiting in the lane's
//! line when all are taken), then a connection the usual way. So at most
//! `max_in_use` callers of a lane are ever in the pool's queue or holding a
//! connection, and a saturated slow lane queues in its own line, behind
//! nobody else's work. Connections themselves are not split: an idle one
//! serves whichever lane asks first, and the pool's `max_size` still bounds
//! them all. Caps that add up to at most `max_size` guarantee every lane its
//! share; larger ones share the difference first come, first served.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{timeout_at, Instant};

mod gate;
use gate::Gate;

use crate::{ConfigError, Error};

/// One lane's settings ([`Builder::lane`](crate::Builder::lane),
/// [`Config::lanes`](crate::Config::lanes)).
///
/// ```
/// let config: wharf::Config = toml::from_str(r#"
///     max_size = 20
///     [[lanes]]
///     name = "fast"
///     max_in_use = 16
///     [[lanes]]
///     name = "slow"
///     max_in_use = 4
///     acquire_timeout = "30s"
/// "#).unwrap();
/// assert_eq!(config.lanes[1].max_in_use, 4);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    /// What [`Pool::get_in`](crate::Pool::get_in) calls it, and its `lane`
    /// label in metrics.
    pub name: String,
    /// The most connections the lane's callers hold at once.
    pub max_in_use: usize,
    /// How long `get_in` waits in this lane, its turn in the lane and for
    /// a connection together; unset, the pool's `acquire_timeout`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub acquire_timeout: Option<Duration>,
}

impl LaneConfig {
    /// A lane of `max_in_use` connections, waiting as long as the pool's
    /// `acquire_timeout`.
    pub fn new(name: impl Into<String>, max_in_use: usize) -> Self {
        Self {
            name: name.into(),
            max_in_use,
            acquire_timeout: None,
        }
    }

    /// Sets [`acquire_timeout`](Self::acquire_timeout).
    #[must_use]
    pub fn acquire_timeout(mut self, wait: Duration) -> Self {
        self.acquire_timeout = Some(wait);
        self
    }
}

/// Checks lanes against each other and the pool's size.
pub(crate) fn validate(lanes: &[LaneConfig], max_size: usize) -> Result<(), ConfigError> {
    for (i, lane) in lanes.iter().enumerate() {
        let bad = |reason| {
            Err(ConfigError::BadLane {
                lane: lane.name.clone(),
                reason,
            })
        };
        if lane.max_in_use == 0 {
            return bad("max_in_use must be at least 1");
        }
        if lane.max_in_use > max_size {
            return bad("max_in_use must not exceed the pool's max_size");
        }
        if lanes[..i].iter().any(|other| other.name == lane.name) {
            return bad("two lanes have this name");
        }
    }
    Ok(())
}

/// A lane at run time.
pub(crate) struct Lane {
    pub(crate) name: String,
    pub(crate) max_in_use: usize,
    pub(crate) acquire_timeout: Option<Duration>,
    places: Gate,
    waiting: AtomicUsize,
    acquired: AtomicU64,
    timeouts: AtomicU64,
}

/// A caller's place in its lane, held with the connection and given back
/// when the connection is: the lane's index in the pool's lane table (no
/// reference count to take per checkout).
pub(crate) type LanePlace = usize;

/// Counts a caller as waiting in its lane for as long as it is, also when
/// its `get_in` is dropped mid-wait.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lane {
    pub(crate) fn new(config: &LaneConfig) -> Self {
        Self {
            name: config.name.clone(),
            max_in_use: config.max_in_use,
            acquire_timeout: config.acquire_timeout,
            places: Gate::new(config.max_in_use),
            waiting: AtomicUsize::new(0),
            acquired: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    /// Takes a place in the lane if one is free now and nobody is queued
    /// for one (a newcomer does not overtake the line).
    pub(crate) fn try_enter(&self) -> bool {
        self.places.try_enter()
    }

    /// Gives a place back, to the next in the lane's line if anyone waits.
    pub(crate) fn leave(&self) {
        self.places.leave();
    }

    /// Takes a place in the lane, waiting in its line (first come, first
    /// served) until `deadline` at the latest.
    pub(crate) async fn enter(&self, start: Instant, deadline: Instant) -> Result<(), Error> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting(&self.waiting);
        let place = timeout_at(deadline, self.places.enter()).await;
        drop(waiting);
        place.map_err(|_| self.timed_out(start))
    }

    fn timed_out(&self, start: Instant) -> Error {
        self.count_timeout();
        Error::LaneTimeout {
            lane: self.name.clone(),
            waited: start.elapsed(),
            in_use: self.in_use(),
            max_in_use: self.max_in_use,
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// A caller of the lane timed out (in the lane's line or the pool's).
    pub(crate) fn count_timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn acquired(&self) {
        self.acquired.fetch_add(1, Ordering::Relaxed);
    }

    fn in_use(&self) -> usize {
        self.places.taken()
    }

    pub(crate) fn metrics(&self) -> LaneMetrics {
        LaneMetrics {
            name: self.name.clone(),
            max_in_use: self.max_in_use,
            in_use: self.in_use(),
            waiting: self.waiting.load(Ordering::Relaxed),
            acquired: self.acquired.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
        }
    }
}

/// One lane's figures, in [`Metrics::lanes`](crate::Metrics::lanes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaneMetrics {
    /// The lane's name.
    pub name: String,
    /// Its cap.
    pub max_in_use: usize,
    /// Places taken: callers holding a connection, or in the pool's queue
    /// for one.
    pub in_use: usize,
    /// Callers waiting for a place in the lane.
    pub waiting: usize,
    /// Successful `get_in` calls.
    pub acquired: u64,
    /// `get_in` calls that timed out, in the lane's line or the pool's.
    pub timeouts: u64,
}

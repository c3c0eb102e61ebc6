//! [`ReplicaSetBuilder`]: a replica set's members and settings.

use std::fmt;
use std::time::Duration;

use super::{ReplicaSet, Settings};
use crate::{ConfigError, Manager, Pool};

/// The default `probe_interval`.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The `read_your_writes` window of a set without a `max_lag`.
const WINDOW_WITHOUT_MAX_LAG: Duration = Duration::from_secs(5);

/// Builds a [`ReplicaSet`], from [`ReplicaSet::builder`].
///
/// ```
/// # use std::convert::Infallible;
/// # use std::time::Duration;
/// # struct Db;
/// # impl wharf::Manager for Db {
/// #     type Connection = ();
/// #     type Error = Infallible;
/// #     async fn connect(&self) -> Result<(), Infallible> { Ok(()) }
/// #     async fn check(&self, _: &mut ()) -> Result<(), Infallible> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use wharf::{Pool, ReplicaSet};
///
/// let replicas = ["replica-a", "replica-b"]
///     .map(|name| Pool::builder(Db).name(name).fail_fast(true).build());
/// let set = ReplicaSet::builder(Pool::builder(Db).name("primary").build()?)
///     .name("orders")
///     .replicas(replicas.into_iter().collect::<Result<Vec<_>, _>>()?)
///     .max_lag(Duration::from_secs(1))
///     .probe_interval(Duration::from_millis(250))
///     .acquire_timeout(Duration::from_secs(2))
///     .build()?;
/// assert_eq!(set.replica_pools().count(), 2);
/// # Ok(()) }
/// ```
pub struct ReplicaSetBuilder<M: Manager> {
    name: String,
    primary: Pool<M>,
    replicas: Vec<Pool<M>>,
    max_lag: Option<Duration>,
    read_your_writes: Option<Duration>,
    probe_interval: Duration,
    acquire_timeout: Option<Duration>,
    replica_wait: Option<Duration>,
}

impl<M: Manager> ReplicaSetBuilder<M> {
    pub(super) fn new(primary: Pool<M>) -> Self {
        Self {
            name: "default".to_owned(),
            primary,
            replicas: Vec::new(),
            max_lag: None,
            read_your_writes: None,
            probe_interval: PROBE_INTERVAL,
            acquire_timeout: None,
            replica_wait: None,
        }
    }

    /// The set's name in logs. Default `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a replica's pool. A set without replicas is allowed (every
    /// read goes to the primary), so one configuration serves a
    /// development database and a replicated one.
    pub fn replica(mut self, pool: Pool<M>) -> Self {
        self.replicas.push(pool);
        self
    }

    /// Adds several replicas' pools.
    pub fn replicas(mut self, pools: impl IntoIterator<Item = Pool<M>>) -> Self {
        self.replicas.extend(pools);
        self
    }

    /// How far behind its primary a replica may be and still take reads,
    /// as its manager's [`probe_role`](Manager::probe_role) measures it.
    /// Default: no limit (lag is still probed and reported). A manager
    /// that cannot tell lag cannot enforce it.
    pub fn max_lag(mut self, max_lag: Duration) -> Self {
        self.max_lag = Some(max_lag);
        self
    }

    /// How long after a write [`ReplicaSet::replica_after`] keeps sending
    /// the writer's reads to the primary. Default: `max_lag` plus two
    /// probe intervals (the [`ReplicaSet`] documentation says why), or
    /// 5 s without a `max_lag`.
    pub fn read_your_writes(mut self, window: Duration) -> Self {
        self.read_your_writes = Some(window);
        self
    }

    /// How often each member is probed, and how long a probe (its
    /// checkout and its query) may take before it counts as failed.
    /// Default 1 s.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// How long a read ([`ReplicaSet::replica`]) may wait in all, across
    /// the replicas it tries and the primary. Default: the primary pool's
    /// `acquire_timeout`.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = Some(timeout);
        self
    }

    /// How long a read waits for one replica before trying the next (or
    /// the primary). Default a quarter of the set's `acquire_timeout`, and
    /// never more than half of it.
    pub fn replica_wait(mut self, wait: Duration) -> Self {
        self.replica_wait = Some(wait);
        self
    }

    /// Creates the set and starts a probe task per member (on the primary
    /// pool's runtime), which probes at once and then every
    /// `probe_interval`.
    ///
    /// Fails with [`ConfigError::ZeroProbeInterval`] for a zero interval,
    /// and [`ConfigError::ZeroReplicaWait`] when a read could wait for no
    /// replica at all.
    pub fn build(self) -> Result<ReplicaSet<M>, ConfigError> {
        if self.probe_interval.is_zero() {
            return Err(ConfigError::ZeroProbeInterval);
        }
        let acquire_timeout = self
            .acquire_timeout
            .unwrap_or(self.primary.config().acquire_timeout);
        let replica_wait = self
            .replica_wait
            .unwrap_or(acquire_timeout / 4)
            .min(acquire_timeout / 2);
        if replica_wait.is_zero() {
            return Err(ConfigError::ZeroReplicaWait);
        }
        let settings = Settings {
            max_lag: self.max_lag,
            read_your_writes: self.read_your_writes.unwrap_or_else(|| {
                self.max_lag.map_or(WINDOW_WITHOUT_MAX_LAG, |max_lag| {
                    max_lag.saturating_add(self.probe_interval.saturating_mul(2))
                })
            }),
            probe_interval: self.probe_interval,
            acquire_timeout,
            replica_wait,
        };
        Ok(ReplicaSet::start(
            self.name,
            self.primary,
            self.replicas,
            settings,
        ))
    }
}

impl<M: Manager> fmt::Debug for ReplicaSetBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSetBuilder")
            .field("name", &self.name)
            .field("replicas", &self.replicas.len())
            .field("max_lag", &self.max_lag)
            .field("read_your_writes", &self.read_your_writes)
            .field("probe_interval", &self.probe_interval)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("replica_wait", &self.replica_wait)
            .finish()
    }
}

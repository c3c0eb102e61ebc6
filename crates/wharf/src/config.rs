//! Pool settings and the builder that turns them into a [`Pool`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hooks::{CloseReason, HookFuture, Hooks};
use crate::{BreakerConfig, Budget, ConfigError, LaneConfig, Manager, Pool};

/// Every setting of a pool, with defaults taken from HikariCP and
/// node-postgres where they agree with long practice.
///
/// Loadable with serde; durations are written the human way (`"30s"`,
/// `"500ms"`, `"10m"`). Optional ones are turned off with `"off"`; left out,
/// any setting keeps its default.
///
/// ```
/// let config: wharf::Config = toml::from_str(r#"
///     max_size = 20
///     acquire_timeout = "2s"
///     idle_timeout = "1m"
///     max_lifetime = "30m"
/// "#).unwrap();
/// assert_eq!(config.max_size, 20);
/// assert_eq!(config.min_idle, 0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The pool's name, used as the `pool` label of its metrics and in logs.
    /// Default `"default"`.
    pub name: String,
    /// The most connections open at once, counting those being opened.
    /// Default 10 (HikariCP `maximumPoolSize`, pg `max`). How to choose it
    /// (from the database server's cores and `max_connections`, shared by
    /// every instance): [the sizing guide](crate#sizing-the-pool).
    pub max_size: usize,
    /// Extra connections allowed beyond `max_size` once the oldest caller
    /// has waited `reserve_timeout` (PgBouncer's `reserve_pool_size`): a
    /// burst is absorbed instead of queueing. They are closed when returned
    /// with nobody waiting. Default 0.
    pub reserve_size: usize,
    /// How long the oldest caller waits before the reserve opens; checked
    /// every `maintenance_interval`. Default 5 s (PgBouncer's
    /// `reserve_pool_timeout`).
    #[serde(with = "humantime_serde")]
    pub reserve_timeout: Duration,
    /// Idle connections kept ready in the background. Default 0 (pg `min`).
    pub min_idle: usize,
    /// Connections kept open in total, idle or in use (sqlx's
    /// `min_connections`, PgBouncer's `min_pool_size`): under load no more
    /// are opened on its account than are missing. Default 0.
    pub min_size: usize,
    /// How long `get()` waits before failing with
    /// [`Error::Timeout`](crate::Error::Timeout). Default 30 s (HikariCP
    /// `connectionTimeout`); request handlers want less, see
    /// [choosing `acquire_timeout`](crate#sizing-the-pool).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// The most callers allowed to wait at once; beyond it `get()` fails at
    /// once with [`Error::QueueFull`](crate::Error::QueueFull). Default
    /// unbounded.
    pub max_waiting: Option<usize>,
    /// How long one connect, `on_connect` hook included, may take before it
    /// counts as failed. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The most connects in flight at once. Default 2. While the backend is
    /// failing, only one attempt at a time probes it, whatever this says.
    pub max_connecting: usize,
    /// While the pool has no connection and its last connect failed, answer
    /// `get()` at once with [`Error::Unavailable`](crate::Error::Unavailable)
    /// (and wake those already waiting with it) instead of queueing until
    /// `acquire_timeout`; one probe per backoff period checks whether the
    /// backend is back. PgBouncer's `server_login_retry` behaves this way.
    /// Default off: callers wait, and see the error only if they time out.
    pub fail_fast: bool,
    /// The first delay after a failed connect. Later ones double up to
    /// `connect_backoff_max`, and each is drawn at random below that bound
    /// ("full jitter") so that many pools do not retry in step. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub connect_backoff: Duration,
    /// The largest delay between failed connects. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub connect_backoff_max: Duration,
    /// A connection idle for longer than this is checked with
    /// [`Manager::check`] before it is handed out; `None` never checks, zero
    /// always does. Default 500 ms (HikariCP's `aliveBypassWindowMs`).
    #[serde(with = "optional_duration")]
    pub validate_after: Option<Duration>,
    /// How long a check may take before the connection counts as dead.
    /// Default 5 s (HikariCP `validationTimeout`).
    #[serde(with = "humantime_serde")]
    pub validation_timeout: Duration,
    /// Idle connections beyond `min_idle` are closed after this long unused.
    /// Default 10 min (HikariCP `idleTimeout`).
    #[serde(with = "optional_duration")]
    pub idle_timeout: Option<Duration>,
    /// Connections are retired after this long, when idle or when returned.
    /// Default 30 min (HikariCP `maxLifetime`).
    #[serde(with = "optional_duration")]
    pub max_lifetime: Option<Duration>,
    /// Each connection's lifetime is shortened by a random fraction up to
    /// this (0.0 to 1.0), so connections opened together do not all expire
    /// together. Default 0.025 (HikariCP's 2.5 %).
    pub lifetime_jitter: f64,
    /// Connections are retired after this many checkouts. Default unlimited
    /// (pg `maxUses`).
    pub max_uses: Option<u64>,
    /// Idle connections are checked this often, so dead ones are found before
    /// a caller gets them. Default off.
    #[serde(with = "optional_duration")]
    pub keepalive_interval: Option<Duration>,
    /// A connection held longer than this is reported once, with the call
    /// site of its `get()`. Default off (HikariCP `leakDetectionThreshold`).
    #[serde(with = "optional_duration")]
    pub leak_detection_threshold: Option<Duration>,
    /// How long [`Pool::close`] waits for connections in use to come back.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// How often the maintenance task runs (idle and lifetime eviction,
    /// keepalive, leak detection, topping up `min_idle`). Default 1 s.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
    /// The pool's circuit breaker (a `[circuit_breaker]` table in TOML).
    /// Default none: every `get()` goes through, at the cost of one branch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerConfig>,
    /// Named shares of the connections for [`Pool::get_in`] (`[[lanes]]`
    /// tables in TOML). Default none.
    pub lanes: Vec<LaneConfig>,
}

/// Serde for optional durations: a human duration, or `"off"` for `None`
/// (TOML has no null, and leaving a key out must mean "the default").
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.collect_str(&humantime_serde::re::humantime::format_duration(*d)),
            None => serializer.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.trim() {
            "off" | "none" | "disabled" => Ok(None),
            other => humantime_serde::re::humantime::parse_duration(other)
                .map(Some)
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "invalid duration {other:?}: {e} (write e.g. \"30s\", or \"off\")"
                    ))
                }),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            max_size: 10,
            reserve_size: 0,
            reserve_timeout: Duration::from_secs(5),
            min_idle: 0,
            min_size: 0,
            acquire_timeout: Duration::from_secs(30),
            max_waiting: None,
            connect_timeout: Duration::from_secs(10),
            max_connecting: 2,
            fail_fast: false,
            connect_backoff: Duration::from_millis(100),
            connect_backoff_max: Duration::from_secs(10),
            validate_after: Some(Duration::from_millis(500)),
            validation_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            lifetime_jitter: 0.025,
            max_uses: None,
            keepalive_interval: None,
            leak_detection_threshold: None,
            close_timeout: Duration::from_secs(30),
            maintenance_interval: Duration::from_secs(1),
            circuit_breaker: None,
            lanes: Vec::new(),
        }
    }
}

impl Config {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_size == 0 {
            return Err(ConfigError::ZeroMaxSize);
        }
        if self.min_idle > self.max_size {
            return Err(ConfigError::MinIdleAboveMax {
                min_idle: self.min_idle,
                max_size: self.max_size,
            });
        }
        if self.min_size > self.max_size {
            return Err(ConfigError::MinSizeAboveMax {
                min_size: self.min_size,
                max_size: self.max_size,
            });
        }
        if self.max_connecting == 0 {
            return Err(ConfigError::ZeroMaxConnecting);
        }
        if !(0.0..=1.0).contains(&self.lifetime_jitter) {
            return Err(ConfigError::BadJitter(self.lifetime_jitter));
        }
        // The maintenance task ticks on a `tokio::time::interval`, which
        // panics on a zero period.
        if self.maintenance_interval.is_zero() {
            return Err(ConfigError::ZeroMaintenanceInterval);
        }
        if self
            .circuit_breaker
            .as_ref()
            .is_some_and(|breaker| !breaker.is_valid())
        {
            return Err(ConfigError::BadBreaker);
        }
        crate::lanes::validate(&self.lanes, self.max_size)
    }
}

/// Builds a [`Pool`]; made by [`Pool::builder`].
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn demo<M: wharf::Manager>(manager: M) -> Result<(), Box<dyn std::error::Error>> {
/// let pool = wharf::Pool::builder(manager)
///     .max_size(20)
///     .min_idle(2)
///     .acquire_timeout(Duration::from_secs(2))
///     .build()?;
/// let conn = pool.get().await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until .build() is called"]
pub struct Builder<M: Manager> {
    manager: M,
    config: Config,
    pub(crate) hooks: Hooks<M::Connection>,
    /// The shared budget to join, and the share guaranteed in it.
    budget: Option<(Budget, usize)>,
}

// Plain settings take their own type, so that integer literals infer
// (`impl Into<usize>` would make `.max_size(4)` an `i32` and fail to compile);
// optional ones take `impl Into<Option<T>>`, so both `Some(x)`/`None` and a
// bare `x` work.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: Option<$ty:ty>;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: impl Into<Option<$ty>>) -> Self {
                self.config.$name = value.into();
                self
            }
        )*
    };
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl<M: Manager> Builder<M> {
    pub(crate) fn new(manager: M) -> Self {
        Self {
            manager,
            config: Config::default(),
            hooks: Hooks::default(),
            budget: None,
        }
    }

    /// Replaces every setting with `config` (hooks are kept).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Sets [`Config::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    setters! {
        /// Sets [`Config::max_size`].
        max_size: usize;
        /// Sets [`Config::min_idle`].
        min_idle: usize;
        /// Sets [`Config::min_size`].
        min_size: usize;
        /// Sets [`Config::reserve_size`].
        reserve_size: usize;
        /// Sets [`Config::reserve_timeout`].
        reserve_timeout: Duration;
        /// Sets [`Config::acquire_timeout`].
        acquire_timeout: Duration;
        /// Sets [`Config::connect_timeout`].
        connect_timeout: Duration;
        /// Sets [`Config::max_connecting`].
        max_connecting: usize;
        /// Sets [`Config::fail_fast`].
        fail_fast: bool;
        /// Sets [`Config::connect_backoff`].
        connect_backoff: Duration;
        /// Sets [`Config::connect_backoff_max`].
        connect_backoff_max: Duration;
        /// Sets [`Config::validation_timeout`].
        validation_timeout: Duration;
        /// Sets [`Config::lifetime_jitter`].
        lifetime_jitter: f64;
        /// Sets [`Config::close_timeout`].
        close_timeout: Duration;
        /// Sets [`Config::maintenance_interval`].
        maintenance_interval: Duration;
    }

    setters! {
        /// Sets [`Config::max_waiting`].
        max_waiting: Option<usize>;
        /// Sets [`Config::validate_after`].
        validate_after: Option<Duration>;
        /// Sets [`Config::idle_timeout`].
        idle_timeout: Option<Duration>;
        /// Sets [`Config::max_lifetime`].
        max_lifetime: Option<Duration>;
        /// Sets [`Config::max_uses`].
        max_uses: Option<u64>;
        /// Sets [`Config::keepalive_interval`].
        keepalive_interval: Option<Duration>;
        /// Sets [`Config::leak_detection_threshold`].
        leak_detection_threshold: Option<Duration>;
    }

    /// Gives the pool a circuit breaker: after too many failures in a row
    /// `get()` fails at once with [`Error::CircuitOpen`](crate::Error::CircuitOpen)
    /// for a while, then a few probes find out whether the backend is back.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use std::time::Duration;
    /// # struct Numbers;
    /// # impl wharf::Manager for Numbers {
    /// #     type Connection = u32;
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<u32, Infallible> { Ok(0) }
    /// #     async fn check(&self, _: &mut u32) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = wharf::Pool::builder(Numbers)
    ///     .circuit_breaker(wharf::BreakerConfig {
    ///         failure_rate: 0.5,
    ///         min_calls: 10,
    ///         open_for: Duration::from_secs(5),
    ///         ..Default::default()
    ///     })
    ///     .build()?;
    /// let mut conn = pool.get().await?;
    /// // The work failed in a way that says the backend is unwell:
    /// conn.report_failure();
    /// drop(conn);
    /// assert_eq!(pool.status().circuit, wharf::CircuitState::Closed); // 1 call < min_calls
    /// # Ok(()) }
    /// ```
    pub fn circuit_breaker(mut self, config: BreakerConfig) -> Self {
        self.config.circuit_breaker = Some(config);
        self
    }

    /// Adds a lane: a share of at most `max_in_use` of the pool's
    /// connections, with its own queue, for [`Pool::get_in`].
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # struct Numbers;
    /// # impl wharf::Manager for Numbers {
    /// #     type Connection = u32;
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<u32, Infallible> { Ok(0) }
    /// #     async fn check(&self, _: &mut u32) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = wharf::Pool::builder(Numbers)
    ///     .max_size(20)
    ///     .lane("fast", 16)
    ///     .lane("slow", 4)
    ///     .build()?;
    /// let report = pool.get_in("slow").await?; // one of at most 4
    /// let request = pool.get_in("fast").await?;
    /// # drop((report, request));
    /// # Ok(()) }
    /// ```
    pub fn lane(self, name: impl Into<String>, max_in_use: usize) -> Self {
        self.lane_config(LaneConfig::new(name, max_in_use))
    }

    /// Draws the pool's connections from `budget`, shared with other pools,
    /// with `guaranteed` of them always to be had (see [`Budget`]): each
    /// connection then needs a unit of the budget as well as room under
    /// `max_size`. `build()` fails with
    /// [`ConfigError::GuaranteesExceedBudget`] when the guarantees of the
    /// budget's pools would add up to more than its total.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # struct Numbers;
    /// # impl wharf::Manager for Numbers {
    /// #     type Connection = u32;
    /// #     type Error = Infallible;
    /// #     async fn connect(&self) -> Result<u32, Infallible> { Ok(0) }
    /// #     async fn check(&self, _: &mut u32) -> Result<(), Infallible> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let budget = wharf::Budget::new(4);
    /// let first = wharf::Pool::builder(Numbers).budget(&budget, 3).build();
    /// assert!(first.is_ok());
    /// let second = wharf::Pool::builder(Numbers).budget(&budget, 2).build();
    /// assert!(matches!(
    ///     second,
    ///     Err(wharf::ConfigError::GuaranteesExceedBudget { guaranteed: 5, total: 4 })
    /// ));
    /// # }
    /// ```
    pub fn budget(mut self, budget: &Budget, guaranteed: usize) -> Self {
        self.budget = Some((budget.clone(), guaranteed));
        self
    }

    /// Adds a lane with all its settings (its own `acquire_timeout`).
    pub fn lane_config(mut self, lane: LaneConfig) -> Self {
        self.config.lanes.push(lane);
        self
    }

    /// Runs after every new connection is opened, before anyone uses it
    /// (e.g. `SET application_name`). A failure counts as a failed connect.
    ///
    /// ```no_run
    /// # fn demo<M: wharf::Manager<Connection = Vec<String>>>(m: M) {
    /// let builder = wharf::Pool::builder(m).on_connect(|conn| {
    ///     Box::pin(async move {
    ///         conn.push("SET application_name = 'api'".into());
    ///         Ok(())
    ///     })
    /// });
    /// # }
    /// ```
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(&'a mut M::Connection) -> HookFuture<'a> + Send + Sync + 'static,
    {
        self.hooks.on_connect = Some(Box::new(hook));
        self
    }

    /// Runs before a connection is handed out. A failure closes that
    /// connection (reason [`CloseReason::FailedCheck`]) and the caller gets
    /// another one, transparently.
    pub fn on_checkout<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(&'a mut M::Connection) -> HookFuture<'a> + Send + Sync + 'static,
    {
        self.hooks.on_checkout = Some(Box::new(hook));
        self
    }

    /// Runs when a connection comes back; returning `false` closes it
    /// (reason [`CloseReason::Rejected`]) instead of keeping it. It runs in
    /// the returning task's `drop`, so it must not block.
    pub fn on_checkin<F>(mut self, hook: F) -> Self
    where
        F: Fn(&mut M::Connection) -> bool + Send + Sync + 'static,
    {
        self.hooks.on_checkin = Some(Box::new(hook));
        self
    }

    /// Runs just before the pool drops a connection, with the reason.
    pub fn on_close<F>(mut self, hook: F) -> Self
    where
        F: Fn(&mut M::Connection, CloseReason) + Send + Sync + 'static,
    {
        self.hooks.on_close = Some(Box::new(hook));
        self
    }

    /// Creates the pool and starts its maintenance task, which opens
    /// `min_idle` connections in the background ([`Pool::ready`] waits for
    /// them).
    ///
    /// Fails when the settings contradict each other, or when called outside
    /// a Tokio runtime.
    pub fn build(self) -> Result<Pool<M>, ConfigError> {
        self.config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let membership = match &self.budget {
            Some((_, guaranteed)) if *guaranteed > self.config.max_size => {
                return Err(ConfigError::GuaranteeAboveMax {
                    guaranteed: *guaranteed,
                    max_size: self.config.max_size,
                })
            }
            Some((budget, guaranteed)) => {
                Some(budget.join(&self.config.name, *guaranteed, self.config.max_size)?)
            }
            None => None,
        };
        Ok(Pool::start(
            self.manager,
            self.config,
            self.hooks,
            runtime,
            membership,
        ))
    }
}

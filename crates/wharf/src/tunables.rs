//! The settings a running pool can change (RELOAD in the pooler): stored
//! in atomics read without a lock on the paths that use them, and the
//! pool's setters for them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::hooks::CloseReason;
use crate::{Config, ConfigError, Manager, Pool};

impl<M: Manager> Pool<M> {
    /// Changes `max_size`. Growing lets waiters have new connections at once;
    /// shrinking closes idle connections beyond the new size now and retires
    /// connections in use when they are returned (reason
    /// [`CloseReason::Resized`]). `min_idle` is capped at the new size.
    pub fn resize(&self, max_size: usize) -> Result<(), ConfigError> {
        if max_size == 0 {
            return Err(ConfigError::ZeroMaxSize);
        }
        let shared = self.shared();
        let excess = {
            let mut st = shared.state.lock();
            st.max_size = max_size;
            if let Some(member) = &shared.budget {
                member.resized(max_size);
            }
            st.min_idle = shared
                .tunables
                .min_idle
                .load(Ordering::Relaxed)
                .min(max_size);
            st.min_size = shared
                .tunables
                .min_size
                .load(Ordering::Relaxed)
                .min(max_size);
            let excess = st.take_excess_idle();
            shared.spawn_connectors(&mut st);
            excess
        };
        for live in excess {
            shared.close_conn(live, CloseReason::Resized);
        }
        Ok(())
    }

    /// Changes `idle_timeout` (`None` turns it off) from the next
    /// maintenance round on, for every idle connection. [`config`](Self::config)
    /// keeps showing the value the pool was built with.
    pub fn set_idle_timeout(&self, idle_timeout: Option<Duration>) {
        self.shared()
            .tunables
            .idle_timeout
            .store(encode(idle_timeout), Ordering::Relaxed);
    }

    /// Changes `validate_after` (`None`: never check) from the next
    /// `get()` on.
    pub fn set_validate_after(&self, validate_after: Option<Duration>) {
        self.shared()
            .tunables
            .validate_after
            .store(encode(validate_after), Ordering::Relaxed);
    }

    /// Changes `max_lifetime` (`None`: unlimited). New connections get it
    /// at once; existing ones keep their jitter share of it and are brought
    /// in line while idle, at the next maintenance round (a connection in
    /// use is never closed under its user).
    pub fn set_max_lifetime(&self, max_lifetime: Option<Duration>) {
        self.shared()
            .tunables
            .max_lifetime
            .store(encode(max_lifetime), Ordering::Relaxed);
    }

    /// Changes `min_idle` (capped at `max_size`); a larger value opens
    /// the missing connections at once.
    pub fn set_min_idle(&self, min_idle: usize) {
        let shared = self.shared();
        shared.tunables.min_idle.store(min_idle, Ordering::Relaxed);
        let mut st = shared.state.lock();
        st.min_idle = min_idle.min(st.max_size);
        shared.spawn_connectors(&mut st);
    }

    /// Changes `min_size` (capped at `max_size`); a larger value opens
    /// the missing connections at once.
    pub fn set_min_size(&self, min_size: usize) {
        let shared = self.shared();
        shared.tunables.min_size.store(min_size, Ordering::Relaxed);
        let mut st = shared.state.lock();
        st.min_size = min_size.min(st.max_size);
        shared.spawn_connectors(&mut st);
    }

    /// Changes `reserve_size` and `reserve_timeout` from the next waiter
    /// on. Connections already opened from the reserve are closed as they
    /// come back, down to the new limit.
    pub fn set_reserve(&self, reserve_size: usize, reserve_timeout: Duration) {
        let shared = self.shared();
        let mut st = shared.state.lock();
        st.reserve_size = reserve_size;
        st.reserve_timeout = reserve_timeout;
        shared.spawn_connectors(&mut st);
    }

    /// Changes `connect_timeout` for connects that start from now on.
    pub fn set_connect_timeout(&self, connect_timeout: Duration) {
        self.shared()
            .tunables
            .connect_timeout
            .store(encode(Some(connect_timeout)), Ordering::Relaxed);
    }

    /// Changes `connect_backoff` and `connect_backoff_max` from the next
    /// failed connect on.
    pub fn set_connect_backoff(&self, connect_backoff: Duration, connect_backoff_max: Duration) {
        let tunables = &self.shared().tunables;
        tunables
            .connect_backoff
            .store(encode(Some(connect_backoff)), Ordering::Relaxed);
        tunables
            .connect_backoff_max
            .store(encode(Some(connect_backoff_max)), Ordering::Relaxed);
    }

    /// Changes `validation_timeout` for checks that start from now on.
    pub fn set_validation_timeout(&self, validation_timeout: Duration) {
        self.shared()
            .tunables
            .validation_timeout
            .store(encode(Some(validation_timeout)), Ordering::Relaxed);
    }
}

/// `None` for a setting that is off.
const OFF: u64 = u64::MAX;

fn encode(value: Option<Duration>) -> u64 {
    value.map_or(OFF, |d| u64::try_from(d.as_nanos()).unwrap_or(OFF - 1))
}

fn decode(value: u64) -> Option<Duration> {
    (value != OFF).then(|| Duration::from_nanos(value))
}

/// The settings a running pool can change, read without a lock on the
/// paths that use them.
pub(crate) struct Tunables {
    idle_timeout: AtomicU64,
    validate_after: AtomicU64,
    max_lifetime: AtomicU64,
    validation_timeout: AtomicU64,
    connect_timeout: AtomicU64,
    connect_backoff: AtomicU64,
    connect_backoff_max: AtomicU64,
    /// `min_idle` as set, before [`Pool::resize`] caps it at `max_size`.
    pub(crate) min_idle: AtomicUsize,
    /// `min_size` as set, before [`Pool::resize`] caps it at `max_size`.
    pub(crate) min_size: AtomicUsize,
}

impl Tunables {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            idle_timeout: AtomicU64::new(encode(config.idle_timeout)),
            validate_after: AtomicU64::new(encode(config.validate_after)),
            max_lifetime: AtomicU64::new(encode(config.max_lifetime)),
            validation_timeout: AtomicU64::new(encode(Some(config.validation_timeout))),
            connect_timeout: AtomicU64::new(encode(Some(config.connect_timeout))),
            connect_backoff: AtomicU64::new(encode(Some(config.connect_backoff))),
            connect_backoff_max: AtomicU64::new(encode(Some(config.connect_backoff_max))),
            min_idle: AtomicUsize::new(config.min_idle),
            min_size: AtomicUsize::new(config.min_size),
        }
    }

    pub(crate) fn validation_timeout(&self) -> Duration {
        decode(self.validation_timeout.load(Ordering::Relaxed)).unwrap_or(Duration::MAX)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        decode(self.connect_timeout.load(Ordering::Relaxed)).unwrap_or(Duration::MAX)
    }

    /// The first and the largest delay between failed connects.
    pub(crate) fn connect_backoff(&self) -> (Duration, Duration) {
        let base = decode(self.connect_backoff.load(Ordering::Relaxed)).unwrap_or_default();
        let max = decode(self.connect_backoff_max.load(Ordering::Relaxed)).unwrap_or_default();
        (base, max)
    }

    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        decode(self.idle_timeout.load(Ordering::Relaxed))
    }

    pub(crate) fn validate_after(&self) -> Option<Duration> {
        decode(self.validate_after.load(Ordering::Relaxed))
    }

    pub(crate) fn max_lifetime(&self) -> Option<Duration> {
        decode(self.max_lifetime.load(Ordering::Relaxed))
    }
}

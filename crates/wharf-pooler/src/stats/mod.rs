//! Statistics and the connection registry behind the admin console's
//! `SHOW` commands.
//!
//! Counters are per pool ([`PoolStats`]), plain atomics that the client
//! relay updates through an `Arc` it holds for the whole session, so the
//! hot path takes no lock. Latencies also go into lock-free
//! [`wharf::AtomicHistogram`]s, for exporters that want quantiles.
//!
//! The registry ([`Stats`]) lists every logged-in client and every open
//! server connection. Entries are added at login or connect and removed
//! by a guard on drop (a lock taken twice per connection, never per
//! query); their state is an atomic the relay sets as it links and
//! releases servers.
//!
//! Averages (`avg_*` in `SHOW STATS`) are computed every `stats_period`
//! by [`run_averages`], as PgBouncer does: rates per second over the last
//! period, and mean times per transaction, query or server assignment.

mod averages;
mod clock;
mod counters;
mod registry;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

pub use averages::run_averages;
use averages::Averages;
pub use clock::{EventTime, Moment};
pub use counters::{PoolStats, Totals};
pub use registry::{
    ClientEntry, ClientGuard, ClientInfo, ClientState, Generation, KillReason, ServerEntry,
    ServerGuard, ServerState,
};

/// A duration in whole microseconds, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// When something happened, as microseconds since the Unix epoch (0 for
/// never), so it fits an atomic.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(micros)
        .unwrap_or(0)
}

/// The pooler's statistics: every pool's counters, the registry of
/// clients and servers, and the periodic averages.
#[derive(Debug)]
pub struct Stats {
    pools: Mutex<HashMap<(String, String), Arc<PoolStats>>>,
    // Keyed by ids the pooler numbers: a login inserts and removes one.
    clients: Mutex<foldhash::HashMap<u64, Arc<ClientEntry>>>,
    servers: Mutex<foldhash::HashMap<u64, Arc<ServerEntry>>>,
    averages: Mutex<Averages>,
    next_server: AtomicU64,
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            pools: Mutex::default(),
            clients: Mutex::default(),
            servers: Mutex::default(),
            averages: Mutex::default(),
            next_server: AtomicU64::new(1),
            started: Instant::now(),
        }
    }
}

impl Stats {
    /// The counters of pool (`database`, `user`), made on first use and
    /// kept for the life of the process (figures are since start, as in
    /// PgBouncer, even if the pool itself is rebuilt by a reload).
    pub fn pool(&self, database: &str, user: &str) -> Arc<PoolStats> {
        self.pools
            .lock()
            .entry((database.to_owned(), user.to_owned()))
            .or_insert_with(|| Arc::new(PoolStats::new(database, user)))
            .clone()
    }

    /// Every pool's counters, sorted by database then user.
    pub fn pools(&self) -> Vec<Arc<PoolStats>> {
        let mut pools: Vec<_> = self.pools.lock().values().cloned().collect();
        pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        pools
    }

    /// Totals per database, sorted by name.
    pub fn database_totals(&self) -> Vec<(String, Totals)> {
        let mut by_db: Vec<(String, Totals)> = Vec::new();
        for pool in self.pools() {
            let totals = pool.totals();
            match by_db.iter_mut().find(|(db, _)| *db == pool.database) {
                Some((_, sum)) => *sum = sum.plus(totals),
                None => by_db.push((pool.database.clone(), totals)),
            }
        }
        by_db
    }

    /// Totals over every database.
    pub fn overall_totals(&self) -> Totals {
        self.database_totals()
            .into_iter()
            .fold(Totals::default(), |sum, (_, t)| sum.plus(t))
    }

    /// How long since the pooler started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

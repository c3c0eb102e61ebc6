//! PgBouncer's averages (`avg_*` in `SHOW STATS`): every `stats_period`,
//! rates per second over the last period, and mean times per transaction,
//! query or server assignment.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::{Stats, Totals};

/// Per-database averages over the last `stats_period`.
#[derive(Debug, Clone, Default)]
pub(super) struct Averages {
    /// Totals at the last tick, per database.
    last: HashMap<String, Totals>,
    /// When the last tick was.
    at: Option<Instant>,
    /// The averages computed at the last tick.
    current: HashMap<String, Totals>,
}

impl Stats {
    /// The averages per database computed at the last `stats_period` tick
    /// (zero before the first).
    pub fn database_averages(&self, database: &str) -> Totals {
        self.averages
            .lock()
            .current
            .get(database)
            .copied()
            .unwrap_or_default()
    }

    /// Averages over every database at the last tick.
    pub fn overall_averages(&self) -> Totals {
        self.averages
            .lock()
            .current
            .values()
            .fold(Totals::default(), |sum, t| sum.plus(*t))
    }

    /// Computes the averages of the period since the last call (called
    /// every `stats_period` by [`run_averages`]); returns the overall
    /// rates of the period, for the log.
    pub fn tick(&self) -> Totals {
        let now = Instant::now();
        let totals = self.database_totals();
        let mut averages = self.averages.lock();
        let secs = averages
            .at
            .map(|at| now.duration_since(at).as_secs_f64())
            .unwrap_or(0.0);
        let mut overall = Totals::default();
        let mut current = HashMap::new();
        for (db, total) in &totals {
            let before = averages.last.get(db).copied().unwrap_or_default();
            let delta = total.since(before);
            overall = overall.plus(delta);
            current.insert(db.clone(), delta.averages(secs));
        }
        averages.current = current;
        averages.last = totals.into_iter().collect();
        averages.at = Some(now);
        overall.averages(secs)
    }
}

/// Computes the averages every `period()` until the pooler is gone (the
/// `Weak` no longer upgrades), logging them when `log()` says so, as
/// PgBouncer's `log_stats` does. `settings` is read at every tick, so a
/// changed `stats_period` applies from the next one.
pub async fn run_averages(
    stats: Weak<Stats>,
    settings: impl Fn() -> Option<(Duration, bool)> + Send + 'static,
) {
    if let Some(stats) = stats.upgrade() {
        stats.tick();
    }
    loop {
        let Some((period, log)) = settings() else {
            return;
        };
        tokio::time::sleep(period.max(Duration::from_secs(1))).await;
        let Some(stats) = stats.upgrade() else {
            return;
        };
        let rates = stats.tick();
        if log {
            tracing::info!(
                "stats: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, {} binds/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
                rates.xact_count,
                rates.query_count,
                rates.client_parse_count,
                rates.server_parse_count,
                rates.bind_count,
                rates.received,
                rates.sent,
                rates.xact_time,
                rates.query_time,
                rates.wait_time,
            );
        }
    }
}

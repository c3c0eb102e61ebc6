//! The timeouts that end a session (PgBouncer's `query_timeout`,
//! `idle_transaction_timeout`, `transaction_timeout`,
//! `client_idle_timeout`), and the clock the relay keeps for them.

use std::num::NonZeroU64;
use std::time::Duration;

/// The timeouts that end a session, with PgBouncer's message for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timeout {
    /// `query_timeout`.
    Query,
    /// `idle_transaction_timeout`.
    IdleTransaction,
    /// `transaction_timeout`.
    Transaction,
    /// `client_idle_timeout`.
    ClientIdle,
}

impl Timeout {
    /// What the client is told (SQLSTATE 08P01), as PgBouncer says it.
    pub(super) fn message(self) -> &'static str {
        match self {
            Timeout::Query => "query timeout",
            Timeout::IdleTransaction => "idle transaction timeout",
            Timeout::Transaction => "transaction timeout",
            Timeout::ClientIdle => "client_idle_timeout",
        }
    }
}

/// A timeout's length in nanoseconds, or off: half the room of an
/// `Option<Duration>`, and every session keeps six.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Limit(Option<NonZeroU64>);

impl Limit {
    /// `length` kept; zero is off, as in the configuration, and a length
    /// past 584 years is that long.
    pub(super) fn new(length: Option<Duration>) -> Self {
        let nanos = length.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self(nanos.and_then(NonZeroU64::new))
    }

    /// The length, `None` when off.
    pub(super) fn get(self) -> Option<Duration> {
        self.0.map(|nanos| Duration::from_nanos(nanos.get()))
    }

    /// Whether it is on.
    pub(super) fn is_on(self) -> bool {
        self.0.is_some()
    }
}

/// The session's timeouts, as the configuration in force says for its
/// (database, user).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Timeouts {
    pub(super) query: Limit,
    pub(super) query_wait: Limit,
    /// `query_wait_notify`: a client queued this long hears a NOTICE.
    pub(super) query_wait_notify: Limit,
    pub(super) idle_transaction: Limit,
    pub(super) transaction: Limit,
    pub(super) client_idle: Limit,
    pub(super) log_pooler_errors: bool,
}

impl Timeouts {
    /// Whether any timeout needs the linked loop's clock.
    pub(super) fn linked(&self) -> bool {
        self.query.is_on() || self.idle_transaction.is_on() || self.transaction.is_on()
    }
}

/// When the linked loop's transaction and query began, and since when the
/// server has been waiting on the client.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub(super) query_start: Option<tokio::time::Instant>,
    pub(super) xact_start: Option<tokio::time::Instant>,
    pub(super) idle_since: tokio::time::Instant,
}

impl Clock {
    /// The clock of a server linked now; `busy` if the client's query is
    /// already on its way.
    pub(super) fn linked(busy: bool) -> Self {
        let now = tokio::time::Instant::now();
        Clock {
            query_start: busy.then_some(now),
            xact_start: busy.then_some(now),
            idle_since: now,
        }
    }

    /// A query started or ended at `now`: `pending` replies are owed now,
    /// `new_query` if the one owed is another than before, `in_tx` if the
    /// server is in a transaction.
    pub(super) fn moved(
        &mut self,
        now: tokio::time::Instant,
        pending: usize,
        new_query: bool,
        in_tx: bool,
    ) {
        if pending > 0 {
            if new_query {
                self.query_start = Some(now);
            }
            self.xact_start.get_or_insert(now);
        } else {
            self.query_start = None;
            self.idle_since = now;
            if !in_tx {
                self.xact_start = None;
            }
        }
    }

    /// The nearest deadline, and which timeout it is.
    pub(super) fn deadline(
        &self,
        t: &Timeouts,
        pending: bool,
        in_tx: bool,
    ) -> Option<(tokio::time::Instant, Timeout)> {
        let mut nearest: Option<(tokio::time::Instant, Timeout)> = None;
        let mut offer = |at: Option<tokio::time::Instant>, limit: Limit, which| {
            if let (Some(at), Some(limit)) = (at, limit.get()) {
                let due = at + limit;
                if nearest.is_none_or(|(d, _)| due < d) {
                    nearest = Some((due, which));
                }
            }
        };
        if pending {
            offer(self.query_start, t.query, Timeout::Query);
        } else if in_tx {
            offer(
                Some(self.idle_since),
                t.idle_transaction,
                Timeout::IdleTransaction,
            );
        }
        offer(self.xact_start, t.transaction, Timeout::Transaction);
        nearest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_deadline_wins_and_only_the_ones_that_apply() {
        let t0 = tokio::time::Instant::now();
        let limits = Timeouts {
            query: Limit::new(Some(Duration::from_secs(5))),
            idle_transaction: Limit::new(Some(Duration::from_secs(2))),
            transaction: Limit::new(Some(Duration::from_secs(30))),
            ..Timeouts::default()
        };
        let clock = Clock {
            query_start: Some(t0),
            xact_start: Some(t0),
            idle_since: t0,
        };
        // A query running: its timeout, not the idle one.
        assert_eq!(
            clock.deadline(&limits, true, true),
            Some((t0 + Duration::from_secs(5), Timeout::Query))
        );
        // Idle in a transaction: the idle timeout is nearer.
        assert_eq!(
            clock.deadline(&limits, false, true),
            Some((t0 + Duration::from_secs(2), Timeout::IdleTransaction))
        );
        // Outside a transaction nothing but the transaction's own.
        let idle = Clock {
            xact_start: None,
            query_start: None,
            ..clock
        };
        assert_eq!(idle.deadline(&limits, false, false), None);
        assert!(!Timeouts::default().linked());
        assert!(limits.linked());
    }

    #[test]
    fn a_limit_keeps_its_length_and_zero_is_off() {
        let half = Duration::from_millis(500);
        assert_eq!(Limit::new(Some(half)).get(), Some(half));
        assert_eq!(Limit::new(Some(Duration::ZERO)), Limit::default());
        assert_eq!(Limit::new(None).get(), None);
        assert!(!Limit::new(Some(Duration::ZERO)).is_on());
        let longest = Limit::new(Some(Duration::MAX)).get();
        assert_eq!(longest, Some(Duration::from_nanos(u64::MAX)));
    }
}

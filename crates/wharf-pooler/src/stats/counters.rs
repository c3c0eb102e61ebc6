//! A pool's cumulative counters (PgBouncer's `SHOW STATS` figures) and
//! latency histograms, updated by the relay with relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wharf::AtomicHistogram;

use super::micros;

/// Cumulative counters of one pool (a database and user pair), as in
/// PgBouncer's `SHOW STATS`, plus latency histograms.
///
/// Every field is updated with relaxed atomic adds; read them with
/// [`PoolStats::totals`] for a consistent-enough copy.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// The database name clients asked for.
    pub database: String,
    /// The user the pool's servers log in as.
    pub user: String,
    /// Times a server was assigned to a client.
    pub server_assignments: AtomicU64,
    /// Transactions completed (an autocommit statement counts as one).
    pub xacts: AtomicU64,
    /// Queries completed (one per ReadyForQuery relayed to a client).
    pub queries: AtomicU64,
    /// Bytes received from clients and passed on to servers.
    pub received: AtomicU64,
    /// Bytes from servers sent to clients.
    pub sent: AtomicU64,
    /// Microseconds spent in transactions.
    pub xact_time_us: AtomicU64,
    /// Microseconds spent running queries.
    pub query_time_us: AtomicU64,
    /// Microseconds clients waited for a server.
    pub wait_time_us: AtomicU64,
    /// Parse messages from clients.
    pub client_parses: AtomicU64,
    /// Parse messages sent to servers: with prepared statements tracked,
    /// only those a server did not have yet.
    pub server_parses: AtomicU64,
    /// Bind messages from clients.
    pub binds: AtomicU64,
    /// Successful client logins.
    pub client_logins: AtomicU64,
    /// Cancel requests waiting for their connection to the server
    /// (`cl_waiting_cancel_req`).
    pub cancels_waiting: AtomicU64,
    /// Cancel requests sent to the server, waiting for it to take them
    /// (`cl_active_cancel_req`; each holds one connection to the server,
    /// `sv_active_cancel`).
    pub cancels_active: AtomicU64,
    /// Servers closed and saying goodbye (Terminate, then waiting for the
    /// server to hang up).
    pub closing: AtomicU64,
    /// Transactions read/write routing sent to the reads pool.
    pub routed_reads: AtomicU64,
    /// Transactions read/write routing sent to the primary.
    pub routed_writes: AtomicU64,
    /// How long clients waited for a server, one sample per assignment.
    pub wait_time: AtomicHistogram,
    /// How long transactions took.
    pub xact_time: AtomicHistogram,
    /// How long queries took.
    pub query_time: AtomicHistogram,
}

impl PoolStats {
    /// Empty counters for the pool of `database` and `user`.
    pub fn new(database: &str, user: &str) -> Self {
        Self {
            database: database.to_owned(),
            user: user.to_owned(),
            ..Self::default()
        }
    }

    /// A server was assigned after the client waited `wait`.
    pub fn assigned(&self, wait: Duration) {
        self.server_assignments.fetch_add(1, Ordering::Relaxed);
        self.wait_time_us.fetch_add(micros(wait), Ordering::Relaxed);
        self.wait_time.record(wait);
    }

    /// A query ended after `took` (`None` when its start was not seen, as
    /// for the second of two pipelined queries).
    pub fn query_done(&self, took: Option<Duration>) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(took) = took {
            self.query_time_us
                .fetch_add(micros(took), Ordering::Relaxed);
            self.query_time.record(took);
        }
    }

    /// A transaction ended after `took`.
    pub fn xact_done(&self, took: Option<Duration>) {
        self.xacts.fetch_add(1, Ordering::Relaxed);
        if let Some(took) = took {
            self.xact_time_us.fetch_add(micros(took), Ordering::Relaxed);
            self.xact_time.record(took);
        }
    }

    /// Counts a client message by its tag (Parse and Bind). Unless the
    /// session tracks prepared statements (which counts the Parses it
    /// sends itself), every client Parse goes to the server as it is.
    pub fn client_message(&self, tag: u8, tracked: bool) {
        match tag {
            b'P' => {
                self.client_parses.fetch_add(1, Ordering::Relaxed);
                if !tracked {
                    self.server_parses.fetch_add(1, Ordering::Relaxed);
                }
            }
            b'B' => {
                self.binds.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// A copy of the counters.
    pub fn totals(&self) -> Totals {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            server_assignment_count: get(&self.server_assignments),
            xact_count: get(&self.xacts),
            query_count: get(&self.queries),
            received: get(&self.received),
            sent: get(&self.sent),
            xact_time: get(&self.xact_time_us),
            query_time: get(&self.query_time_us),
            wait_time: get(&self.wait_time_us),
            client_parse_count: get(&self.client_parses),
            server_parse_count: get(&self.server_parses),
            bind_count: get(&self.binds),
            client_login_count: get(&self.client_logins),
        }
    }
}

/// Counter values, summed over pools or taken as a difference between two
/// moments. Times are in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Server assignments.
    pub server_assignment_count: u64,
    /// Transactions.
    pub xact_count: u64,
    /// Queries.
    pub query_count: u64,
    /// Bytes from clients.
    pub received: u64,
    /// Bytes to clients.
    pub sent: u64,
    /// Time in transactions, µs.
    pub xact_time: u64,
    /// Time in queries, µs.
    pub query_time: u64,
    /// Time waiting for servers, µs.
    pub wait_time: u64,
    /// Client Parse messages.
    pub client_parse_count: u64,
    /// Parse messages sent to servers.
    pub server_parse_count: u64,
    /// Bind messages.
    pub bind_count: u64,
    /// Client logins.
    pub client_login_count: u64,
}

impl Totals {
    fn zip(self, other: Totals, f: impl Fn(u64, u64) -> u64) -> Totals {
        Totals {
            server_assignment_count: f(self.server_assignment_count, other.server_assignment_count),
            xact_count: f(self.xact_count, other.xact_count),
            query_count: f(self.query_count, other.query_count),
            received: f(self.received, other.received),
            sent: f(self.sent, other.sent),
            xact_time: f(self.xact_time, other.xact_time),
            query_time: f(self.query_time, other.query_time),
            wait_time: f(self.wait_time, other.wait_time),
            client_parse_count: f(self.client_parse_count, other.client_parse_count),
            server_parse_count: f(self.server_parse_count, other.server_parse_count),
            bind_count: f(self.bind_count, other.bind_count),
            client_login_count: f(self.client_login_count, other.client_login_count),
        }
    }

    /// The sum of two sets of counters.
    pub fn plus(self, other: Totals) -> Totals {
        self.zip(other, u64::saturating_add)
    }

    /// What was counted since `earlier`.
    pub fn since(self, earlier: Totals) -> Totals {
        self.zip(earlier, u64::saturating_sub)
    }

    /// PgBouncer's averages over a period of `secs` seconds in which these
    /// were counted: rates per second, and mean durations.
    pub fn averages(self, secs: f64) -> Totals {
        let rate = |n: u64| {
            if secs > 0.0 {
                (n as f64 / secs).round() as u64
            } else {
                0
            }
        };
        let mean = |sum: u64, n: u64| sum.checked_div(n).unwrap_or(0);
        Totals {
            server_assignment_count: rate(self.server_assignment_count),
            xact_count: rate(self.xact_count),
            query_count: rate(self.query_count),
            received: rate(self.received),
            sent: rate(self.sent),
            xact_time: mean(self.xact_time, self.xact_count),
            query_time: mean(self.query_time, self.query_count),
            wait_time: mean(self.wait_time, self.server_assignment_count),
            client_parse_count: rate(self.client_parse_count),
            server_parse_count: rate(self.server_parse_count),
            bind_count: rate(self.bind_count),
            client_login_count: rate(self.client_login_count),
        }
    }

    /// `(name suffix, value)` in `SHOW STATS` column order.
    pub fn fields(&self) -> [(&'static str, u64); 12] {
        [
            ("server_assignment_count", self.server_assignment_count),
            ("xact_count", self.xact_count),
            ("query_count", self.query_count),
            ("received", self.received),
            ("sent", self.sent),
            ("xact_time", self.xact_time),
            ("query_time", self.query_time),
            ("wait_time", self.wait_time),
            ("client_parse_count", self.client_parse_count),
            ("server_parse_count", self.server_parse_count),
            ("bind_count", self.bind_count),
            ("client_login_count", self.client_login_count),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_means() {
        let delta = Totals {
            xact_count: 20,
            xact_time: 2000,
            query_count: 40,
            query_time: 1000,
            server_assignment_count: 10,
            wait_time: 500,
            received: 1000,
            ..Totals::default()
        };
        let avg = delta.averages(10.0);
        assert_eq!(avg.xact_count, 2);
        assert_eq!(avg.query_count, 4);
        assert_eq!(avg.xact_time, 100);
        assert_eq!(avg.query_time, 25);
        assert_eq!(avg.wait_time, 50);
        assert_eq!(avg.received, 100);
        assert_eq!(Totals::default().averages(10.0), Totals::default());
    }
}

//! The hosts of a pool with several: which to try first for a new server
//! (round-robin or sticky, as `load_balance_hosts` says), which are down
//! and backing off, and what role each was last seen in.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::net::ServerAddr;
use crate::server::{Balance, Role, SessionAttrs};

/// The first retry of a host that failed comes this soon...
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// ...and later ones double up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A standby over `max_replica_lag` is left alone this long.
const LAG_RECHECK: Duration = Duration::from_secs(1);

/// What is known of one host.
#[derive(Debug, Clone, Default)]
struct HostState {
    failures: u32,
    retry_at: Option<Instant>,
    role: Option<Role>,
    /// Read-only by default when last seen.
    read_only: bool,
    /// Its replay lag was over `max_replica_lag` when last looked at.
    lagging: bool,
}

/// A host as `SHOW` and `/metrics` describe it.
#[derive(Debug, Clone)]
pub struct HostStatus {
    /// Where it listens.
    pub addr: ServerAddr,
    /// Not backing off after failures.
    pub up: bool,
    /// Failed connects in a row.
    pub failures: u32,
    /// Its role when last seen, if the pool looks.
    pub role: Option<Role>,
    /// Over `max_replica_lag` when last seen.
    pub lagging: bool,
}

#[derive(Debug, Default)]
struct Book {
    hosts: Vec<ServerAddr>,
    states: Vec<HostState>,
    /// Round-robin: the next host to start from. Sticky: the host in use.
    cursor: usize,
}

impl Book {
    fn index(&self, host: &ServerAddr) -> Option<usize> {
        self.hosts.iter().position(|h| h == host)
    }
}

/// The health of a pool's hosts, shared by its connect attempts.
#[derive(Debug, Default)]
pub(super) struct HostBook {
    book: Mutex<Book>,
}

impl HostBook {
    /// The order to try `hosts` in for one new server: hosts not backing
    /// off first (from the round-robin cursor, or the sticky host), those
    /// last seen in a role `attrs` does not take after them, then those
    /// backing off, soonest retry first, so that a dead host is tried only
    /// when every live one has failed.
    pub(super) fn order(
        &self,
        hosts: &[ServerAddr],
        balance: Balance,
        attrs: SessionAttrs,
    ) -> Vec<usize> {
        let mut book = self.book.lock();
        if book.hosts != hosts {
            *book = Book {
                hosts: hosts.to_vec(),
                states: vec![HostState::default(); hosts.len()],
                cursor: 0,
            };
        }
        let n = hosts.len();
        let start = book.cursor % n.max(1);
        if balance == Balance::RoundRobin {
            book.cursor = (start + 1) % n.max(1);
        }
        let now = Instant::now();
        let (mut ready, mut miscast, mut waiting) = (Vec::with_capacity(n), Vec::new(), Vec::new());
        for i in (0..n).map(|k| (start + k) % n) {
            let state = &book.states[i];
            let fits = state
                .role
                .is_none_or(|role| attrs.accepts(role, state.read_only, true));
            match state.retry_at {
                Some(at) if at > now => waiting.push((at, i)),
                _ if !fits => miscast.push(i),
                _ => ready.push(i),
            }
        }
        waiting.sort();
        ready.extend(miscast);
        ready.extend(waiting.into_iter().map(|(_, i)| i));
        ready
    }

    /// Host `host` took a connection.
    pub(super) fn succeeded(&self, host: &ServerAddr, balance: Balance) {
        let mut book = self.book.lock();
        // A report from a connect begun under an older host list.
        let Some(i) = book.index(host) else {
            return;
        };
        if let Some(state) = book.states.get_mut(i) {
            state.failures = 0;
            state.retry_at = None;
        }
        if balance == Balance::Disable {
            book.cursor = i;
        }
    }

    /// Host `i` refused, timed out or broke: it backs off, doubling with
    /// each failure in a row, with jitter so that pools do not retry in
    /// step.
    pub(super) fn failed(&self, host: &ServerAddr, balance: Balance) {
        let mut book = self.book.lock();
        let Some(i) = book.index(host) else {
            return;
        };
        let n = book.hosts.len().max(1);
        if let Some(state) = book.states.get_mut(i) {
            state.failures = state.failures.saturating_add(1);
            let doubled =
                FIRST_BACKOFF.saturating_mul(1 << state.failures.min(6).saturating_sub(1));
            let backoff = doubled.min(MAX_BACKOFF);
            let jitter = backoff.mul_f64(fastrand::f64() * 0.25);
            state.retry_at = Some(Instant::now() + backoff + jitter);
        }
        if balance == Balance::Disable && book.cursor == i {
            book.cursor = (i + 1) % n;
        }
    }

    /// Host `host` was seen in `role`, read-only by default or not, its lag
    /// over the limit or not; a lagging standby is looked at again after
    /// [`LAG_RECHECK`].
    pub(super) fn seen(&self, host: &ServerAddr, role: Role, read_only: bool, lagging: bool) {
        let mut book = self.book.lock();
        let Some(i) = book.index(host) else {
            return;
        };
        if let Some(state) = book.states.get_mut(i) {
            state.role = Some(role);
            state.read_only = read_only;
            state.lagging = lagging;
            if lagging {
                state.retry_at = Some(Instant::now() + LAG_RECHECK);
            }
        }
    }

    /// Every host and what is known of it.
    pub(super) fn status(&self) -> Vec<HostStatus> {
        let book = self.book.lock();
        let now = Instant::now();
        book.hosts
            .iter()
            .zip(&book.states)
            .map(|(addr, state)| HostStatus {
                addr: addr.clone(),
                up: state.retry_at.is_none_or(|at| at <= now),
                failures: state.failures,
                role: state.role,
                lagging: state.lagging,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RR: Balance = Balance::RoundRobin;
    const STICKY: Balance = Balance::Disable;
    const ANY: SessionAttrs = SessionAttrs::Any;

    fn hosts(n: u16) -> Vec<ServerAddr> {
        (0..n)
            .map(|i| ServerAddr::Tcp {
                host: "127.0.0.1".to_owned(),
                port: 5000 + i,
            })
            .collect()
    }

    #[test]
    fn round_robin_starts_each_attempt_at_the_next_host() {
        let book = HostBook::default();
        let h = hosts(3);
        assert_eq!(book.order(&h, RR, ANY), vec![0, 1, 2]);
        assert_eq!(book.order(&h, RR, ANY), vec![1, 2, 0]);
        assert_eq!(book.order(&h, RR, ANY), vec![2, 0, 1]);
    }

    #[test]
    fn a_failed_host_goes_last_until_its_backoff_ends() {
        let book = HostBook::default();
        let h = hosts(3);
        book.order(&h, RR, ANY);
        book.failed(&h[1], RR);
        assert_eq!(book.order(&h, RR, ANY), vec![2, 0, 1]);
        assert_eq!(book.order(&h, RR, ANY), vec![2, 0, 1]);
        assert!(!book.status()[1].up);
        book.succeeded(&h[1], RR);
        assert!(book.status()[1].up);
        assert_eq!(book.status()[1].failures, 0);
    }

    #[test]
    fn sticky_keeps_one_host_until_it_fails() {
        let book = HostBook::default();
        let h = hosts(3);
        assert_eq!(book.order(&h, STICKY, ANY), vec![0, 1, 2]);
        book.succeeded(&h[0], STICKY);
        assert_eq!(book.order(&h, STICKY, ANY), vec![0, 1, 2]);
        book.failed(&h[0], STICKY);
        assert_eq!(book.order(&h, STICKY, ANY), vec![1, 2, 0]);
        book.succeeded(&h[1], STICKY);
        assert_eq!(book.order(&h, STICKY, ANY), vec![1, 2, 0]);
    }

    #[test]
    fn a_new_host_list_starts_afresh() {
        let book = HostBook::default();
        let two = hosts(2);
        book.order(&two, RR, ANY);
        book.failed(&two[0], RR);
        assert_eq!(book.order(&hosts(3), RR, ANY), vec![0, 1, 2]);
        assert!(book.status().iter().all(|h| h.up));
        // A late report about a host no longer listed changes nothing.
        book.failed(&hosts(5)[4], RR);
        assert!(book.status().iter().all(|h| h.up));
    }

    #[test]
    fn a_lagging_standby_is_tried_after_the_others() {
        let book = HostBook::default();
        let h = hosts(2);
        book.order(&h, STICKY, ANY);
        book.seen(&h[0], Role::Standby, true, true);
        assert_eq!(book.order(&h, STICKY, ANY), vec![1, 0]);
    }

    #[test]
    fn a_host_seen_in_the_wrong_role_is_tried_after_the_others() {
        let book = HostBook::default();
        let h = hosts(3);
        book.order(&h, STICKY, SessionAttrs::ReadWrite);
        book.seen(&h[0], Role::Standby, true, false);
        book.seen(&h[1], Role::Primary, false, false);
        assert_eq!(
            book.order(&h, STICKY, SessionAttrs::ReadWrite),
            vec![1, 2, 0]
        );
        assert_eq!(book.order(&h, STICKY, SessionAttrs::Standby), vec![0, 2, 1]);
    }
}

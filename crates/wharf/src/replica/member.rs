//! One member of a replica set: its pool, what the last probe (or read)
//! found, and the probe task that keeps that up to date.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::Inner;
use crate::error::HumanDuration;
use crate::{CircuitState, Error, Manager, Pool, Role, Status};

/// Whether a member takes reads, as its last probe or read checkout left
/// it, in [`MemberStatus::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberState {
    /// Not probed yet: a replica takes no reads until its first probe
    /// answers.
    Unprobed,
    /// Takes reads (for the primary: answered its last probe). A replica
    /// whose manager cannot tell its role is ready once it answers.
    Ready,
    /// A replica further behind its primary than the set's `max_lag`.
    Lagging {
        /// The lag its last probe found.
        lag: Duration,
    },
    /// A replica whose server says it is a primary: promoted, or
    /// configured by mistake. Its data may have parted from the primary's.
    NotAReplica,
    /// Its last probe failed or timed out, or a read could not get a
    /// connection to it because connecting fails; the error is in
    /// [`MemberStatus::last_error`].
    Unreachable,
}

/// One member of a [`ReplicaSet`](crate::ReplicaSet), in
/// [`ReplicaSetStatus`].
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStatus {
    /// Its pool's name ([`Config::name`](crate::Config::name)).
    pub name: String,
    /// Its pool's status, circuit state included.
    pub pool: Status,
    /// Whether it takes reads, as the last probe or read left it.
    pub state: MemberState,
    /// What the last probe that answered said it is; `None` before one
    /// answered, or when the manager cannot tell.
    pub role: Option<Role>,
    /// How long ago the last probe that answered or failed finished (one
    /// that found every connection in use counts as neither).
    pub since_probe: Option<Duration>,
    /// Why the last failed probe or read checkout failed, until a probe
    /// answers again.
    pub last_error: Option<String>,
}

impl MemberStatus {
    /// Whether a replica in this state gets reads now: ready, and its
    /// circuit not open.
    pub fn takes_reads(&self) -> bool {
        self.state == MemberState::Ready && self.pool.circuit != CircuitState::Open
    }
}

/// A [`ReplicaSet`](crate::ReplicaSet)'s members and how its reads were
/// served, from [`ReplicaSet::status`](crate::ReplicaSet::status).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSetStatus {
    /// The primary. Its state is only reported: reads fall back to it
    /// whatever it is.
    pub primary: MemberStatus,
    /// The replicas, in the order they were added.
    pub replicas: Vec<MemberStatus>,
    /// Reads (`replica()`, `replica_after()`) served by a replica.
    pub replica_reads: u64,
    /// Reads sent to the primary because no replica qualified or every
    /// replica tried failed.
    pub primary_fallbacks: u64,
    /// Reads sent to the primary by `replica_after()` because the caller's
    /// write was within the `read_your_writes` window.
    pub fresh_reads: u64,
}

/// Which member a probe task looks after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Primary,
    Replica(usize),
}

pub(crate) struct Member<M: Manager> {
    pub(crate) pool: Pool<M>,
    /// `state == Ready`, for reads to check without the lock.
    ready: AtomicBool,
    probe: Mutex<Probe>,
}

struct Probe {
    state: MemberState,
    role: Option<Role>,
    probed_at: Option<Instant>,
    last_error: Option<String>,
}

impl<M: Manager> Member<M> {
    pub(crate) fn new(pool: Pool<M>) -> Self {
        Self {
            pool,
            ready: AtomicBool::new(false),
            probe: Mutex::new(Probe {
                state: MemberState::Unprobed,
                role: None,
                probed_at: None,
                last_error: None,
            }),
        }
    }

    pub(crate) fn takes_reads(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn status(&self) -> MemberStatus {
        let pool = self.pool.status();
        let probe = self.probe.lock();
        MemberStatus {
            name: self.pool.config().name.clone(),
            pool,
            state: probe.state,
            role: probe.role,
            since_probe: probe.probed_at.map(|at| at.elapsed()),
            last_error: probe.last_error.clone(),
        }
    }

    /// Takes in what a probe found.
    pub(crate) fn record_probe(
        &self,
        outcome: Probed,
        which: Which,
        set: &str,
        max_lag: Option<Duration>,
    ) {
        let mut probe = self.probe.lock();
        let state = match outcome {
            Probed::Busy(why) => {
                // Busy is not down: reads already steer clear of a busy
                // member, and the next probe will find out more.
                tracing::debug!(replica_set = %set, pool = %self.pool.config().name, ?which, why, "probe found no free connection");
                return;
            }
            Probed::Answered(role) => {
                probe.probed_at = Some(Instant::now());
                probe.role = role;
                probe.last_error = None;
                match (which, role) {
                    (Which::Replica(_), Some(Role::Primary)) => MemberState::NotAReplica,
                    (Which::Replica(_), Some(Role::Replica { lag }))
                        if max_lag.is_some_and(|max| lag > max) =>
                    {
                        MemberState::Lagging { lag }
                    }
                    (Which::Primary, Some(Role::Replica { .. })) => {
                        tracing::warn!(
                            replica_set = %set,
                            pool = %self.pool.config().name,
                            "the primary's server says it is a replica: writes will fail"
                        );
                        MemberState::Ready
                    }
                    _ => MemberState::Ready,
                }
            }
            Probed::Failed(error) => {
                probe.probed_at = Some(Instant::now());
                probe.last_error = Some(error);
                MemberState::Unreachable
            }
        };
        self.enter(&mut probe, state, which, set);
    }

    /// Takes in a read's failed checkout: a replica that connecting to
    /// fails leaves the reads until its next good probe; one that was only
    /// busy (or refused by its circuit, which reads check anyway) stays.
    pub(crate) fn checkout_failed(&self, err: &Error, index: usize, set: &str) {
        let unreachable = match err {
            Error::Timeout { last_error, .. } => last_error.is_some(),
            Error::Unavailable { .. } | Error::Closed => true,
            _ => false,
        };
        tracing::debug!(
            replica_set = %set,
            replica = index,
            pool = %self.pool.config().name,
            error = %err,
            "a read could not get a connection to a replica; trying the next"
        );
        if unreachable {
            let mut probe = self.probe.lock();
            probe.last_error = Some(err.to_string());
            self.enter(
                &mut probe,
                MemberState::Unreachable,
                Which::Replica(index),
                set,
            );
        }
    }

    /// Moves to `state`, logging a replica's leaving or joining the reads.
    fn enter(&self, probe: &mut Probe, state: MemberState, which: Which, set: &str) {
        let before = std::mem::replace(&mut probe.state, state);
        let ready = state == MemberState::Ready;
        self.ready.store(ready, Ordering::Relaxed);
        if before == state {
            return;
        }
        let pool = &self.pool.config().name;
        let error = probe.last_error.as_deref().unwrap_or("");
        match (which, ready) {
            (_, true) if before == MemberState::Unprobed => {
                tracing::debug!(replica_set = %set, %pool, ?which, "member probed: ready");
            }
            (Which::Replica(_), true) => {
                tracing::info!(replica_set = %set, %pool, ?which, was = ?before, "replica back in reads");
            }
            (Which::Primary, true) => {
                tracing::info!(replica_set = %set, %pool, was = ?before, "primary answers its probes again");
            }
            (Which::Replica(_), false) => {
                tracing::warn!(replica_set = %set, %pool, ?which, ?state, error, "replica skipped for reads");
            }
            (Which::Primary, false) => {
                tracing::warn!(replica_set = %set, %pool, ?state, error, "primary probe failed");
            }
        }
    }
}

/// What one probe found.
pub(crate) enum Probed {
    /// The server answered (`None`: its manager cannot tell).
    Answered(Option<Role>),
    /// The probe failed: no connection could be opened, or the query
    /// failed or did not answer in time.
    Failed(String),
    /// Every connection stayed in use for the whole probe: the member is
    /// busy, which says nothing about its role or lag, so its state stays.
    Busy(String),
}

/// Asks `pool`'s server what it is, on one of its connections, all within
/// `limit`. A connection whose probe failed or timed out is closed: it
/// may be mid-reply.
pub(crate) async fn probe_role<M: Manager>(pool: &Pool<M>, limit: Duration) -> Probed {
    let deadline = Instant::now() + limit;
    let mut conn = match pool.get_timeout(limit).await {
        Ok(conn) => conn,
        Err(
            err @ Error::Timeout {
                last_error: None, ..
            },
        ) => return Probed::Busy(err.to_string()),
        Err(err) => return Probed::Failed(err.to_string()),
    };
    match timeout_at(deadline, pool.manager().probe_role(&mut conn)).await {
        Ok(Ok(role)) => Probed::Answered(role),
        Ok(Err(err)) => {
            conn.discard();
            Probed::Failed(format!("probe failed: {err}"))
        }
        Err(_) => {
            conn.discard();
            Probed::Failed(format!(
                "probe did not answer within {}",
                HumanDuration(limit)
            ))
        }
    }
}

/// A member's probe task: probes at once, then every `probe_interval`
/// (from the start of one probe to the next), until the set is dropped.
/// It holds the set only while probing.
pub(crate) async fn probe_every_interval<M: Manager>(set: Weak<Inner<M>>, which: Which) {
    loop {
        let Some(inner) = set.upgrade() else {
            return;
        };
        if inner.member(which).pool.is_closed() {
            return; // for good: a closed pool never opens again
        }
        let next = Instant::now() + inner.settings.probe_interval;
        inner.probe(which).await;
        drop(inner);
        sleep_until(next).await;
    }
}

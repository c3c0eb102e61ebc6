//! The `wharf` engine's [`Manager`](wharf::Manager) for server pools: it
//! opens servers for the pool's current target under its connection
//! limits, checks them, and tells the engine which ones to close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::OwnedSemaphorePermit;

use super::hosts::{HostBook, HostStatus};
use super::{ConnectionLimit, DbControl};
use crate::net::ServerAddr;
use crate::server::{Role, ServerConn, ServerError, ServerTarget};
use crate::stats::{Generation, PoolStats, Stats};

/// What a pool's server manager needs to register its servers and honour
/// PAUSE.
#[derive(Debug, Clone)]
pub struct Tracking {
    /// The registry servers are listed in.
    pub registry: Arc<Stats>,
    /// The pool's counters.
    pub pool: Arc<PoolStats>,
    /// The pool's database's PAUSE/DISABLE state.
    pub control: Arc<DbControl>,
}

/// The `wharf` engine's manager for one server pool.
#[derive(Debug)]
pub struct ServerManager {
    /// Where and how to log in; RELOAD swaps it (new connections use the
    /// new one), starting a new generation under the same lock.
    target: RwLock<Arc<ServerTarget>>,
    /// Servers of an older generation close when released.
    generation: Arc<Generation>,
    /// Limits shared with other pools, in acquisition order.
    limits: Vec<Arc<ConnectionLimit>>,
    tracking: Tracking,
    /// Which hosts are up, and the round-robin cursor.
    hosts: HostBook,
    /// `server_connect_timeout`, per host tried.
    host_timeout_ms: AtomicU64,
}

impl ServerManager {
    /// A manager opening servers for `target` under `limits`.
    pub(super) fn new(
        target: ServerTarget,
        limits: Vec<Arc<ConnectionLimit>>,
        tracking: Tracking,
    ) -> Self {
        Self {
            target: RwLock::new(Arc::new(target)),
            generation: Arc::new(Generation::default()),
            limits,
            tracking,
            hosts: HostBook::default(),
            host_timeout_ms: AtomicU64::new(15_000),
        }
    }

    /// The limits the pool is under.
    pub(super) fn limits(&self) -> &[Arc<ConnectionLimit>] {
        &self.limits
    }

    /// Puts `target` in force for new servers if it differs from the
    /// current one, retiring the servers opened for the old one; whether
    /// it did.
    pub(super) fn retarget(&self, target: ServerTarget) -> bool {
        let mut current = self.target.write();
        if **current == target {
            return false;
        }
        *current = Arc::new(target);
        self.generation.advance();
        true
    }

    /// Retires every server opened so far: each closes when released.
    pub(super) fn retire_all(&self) {
        self.generation.advance();
    }
}

impl ServerManager {
    /// Places under the pool's connection limits for one server, taken
    /// once for all the hosts it may be tried on: a full limit is not a
    /// host that is down.
    async fn take_places(&self) -> Result<Vec<OwnedSemaphorePermit>, ServerError> {
        let mut permits = Vec::with_capacity(self.limits.len());
        // Always in the same order (database, then user), so two pools
        // waiting on each other's limits cannot deadlock.
        for limit in &self.limits {
            permits.push(limit.acquire().await?);
        }
        Ok(permits)
    }

    /// Registers and logs in one server on `host`, then sees whether the
    /// pool can use it; all within the host timeout.
    async fn try_host(
        &self,
        target: &Arc<ServerTarget>,
        host: &ServerAddr,
        born: u64,
    ) -> Result<(ServerConn, Suits), ServerError> {
        let attempt = async {
            let entry = self.tracking.registry.register_server(
                self.tracking.pool.clone(),
                host.host_port(),
                (self.generation.clone(), born),
            );
            let mut conn = ServerConn::connect(target, host, born, entry).await?;
            let suits = self.suits(&mut conn, target, host).await?;
            Ok((conn, suits))
        };
        let timeout = Duration::from_millis(self.host_timeout_ms.load(Ordering::Relaxed));
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ServerError::Io {
                addr: host.to_string(),
                source: std::io::ErrorKind::TimedOut.into(),
            }),
        }
    }

    /// One server from the first host that gives one the pool can use:
    /// hosts in the order the book says (any host may be tried, as libpq
    /// does); a host that is down backs off, one of the wrong role (or too
    /// far behind) is passed over. `prefer-standby` takes a standby, or
    /// else the first other server it saw.
    async fn open_any(
        &self,
        target: &Arc<ServerTarget>,
        born: u64,
    ) -> Result<ServerConn, ServerError> {
        let permits = self.take_places().await?;
        let mut last_error = None;
        let mut passed_over = false;
        let mut fallback = None;
        for i in self
            .hosts
            .order(&target.hosts, target.balance, target.attrs)
        {
            let host = &target.hosts[i];
            match self.try_host(target, host, born).await {
                Ok((conn, Suits::Yes)) => {
                    self.hosts.succeeded(host, target.balance);
                    fallback = Some(conn);
                    break;
                }
                Ok((conn, Suits::Fallback)) => {
                    self.hosts.succeeded(host, target.balance);
                    fallback.get_or_insert(conn);
                }
                Ok((_, Suits::No)) => {
                    self.hosts.succeeded(host, target.balance);
                    passed_over = true;
                }
                Err(err) => {
                    if err.host_is_down() {
                        tracing::warn!(host = %host, error = %err, "host skipped");
                        self.hosts.failed(host, target.balance);
                    }
                    last_error = Some(err);
                }
            }
        }
        if let Some(mut conn) = fallback {
            conn.hold_places(permits);
            return Ok(conn);
        }
        // Hosts that answered but did not suit say more than those down.
        Err(match last_error.filter(|_| !passed_over) {
            Some(err) => err,
            None => ServerError::Unsuitable {
                hosts: target
                    .hosts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                wanted: target.attrs.describe(),
            },
        })
    }

    /// Whether `conn` (on `host`) is a server `target` may use.
    async fn suits(
        &self,
        conn: &mut ServerConn,
        target: &ServerTarget,
        host: &ServerAddr,
    ) -> Result<Suits, ServerError> {
        if !target.attrs.checks_role() && target.max_replica_lag.is_none() {
            return Ok(Suits::Yes);
        }
        let (role, read_only) = conn.probe_role().await?;
        let lagging = match (role, target.max_replica_lag) {
            (Role::Standby, Some(limit)) => conn.lags_over(limit).await?,
            _ => false,
        };
        self.hosts.seen(host, role, read_only, lagging);
        if lagging {
            return Ok(Suits::No);
        }
        if target.attrs.checks_role() {
            conn.set_role(role);
        }
        Ok(if target.attrs.accepts(role, read_only, true) {
            Suits::Yes
        } else if target.attrs.accepts(role, read_only, false) {
            Suits::Fallback
        } else {
            Suits::No
        })
    }

    /// How long one host gets to give a server (`server_connect_timeout`).
    pub(super) fn set_host_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.host_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The pool's hosts and what is known of each.
    pub(super) fn host_status(&self) -> Vec<HostStatus> {
        self.hosts.status()
    }
}

/// Whether a server fits a pool.
enum Suits {
    Yes,
    /// Only if nothing better turns up (`prefer-standby` on a primary).
    Fallback,
    No,
}

impl wharf::Manager for ServerManager {
    /// Boxed: a server connection (its TLS state above all) is large, and
    /// the engine moves connections between its idle set and checkouts on
    /// every transaction; a box moves as one pointer.
    type Connection = Box<ServerConn>;
    type Error = ServerError;

    async fn connect(&self) -> Result<Box<ServerConn>, ServerError> {
        loop {
            // A paused database opens no servers (PAUSE waits for them all
            // to close); the engine's connect_timeout bounds this wait.
            self.tracking.control.wait_resumed().await;
            let (target, born) = {
                let current = self.target.read();
                (current.clone(), self.generation.current())
            };
            let conn = self.open_any(&target, born).await?;
            // Retired while logging in (RELOAD with a new target,
            // RECONNECT, PAUSE): it would be handed out before anything
            // looks at its generation, so it goes now and another comes.
            if conn.unusable(self.generation.current()) {
                continue;
            }
            return Ok(Box::new(conn));
        }
    }

    async fn check(&self, conn: &mut Box<ServerConn>) -> Result<(), ServerError> {
        conn.check().await?;
        if conn.role_changed() {
            return Err(ServerError::Unsuitable {
                hosts: conn.host().to_string(),
                wanted: self.target.read().attrs.describe(),
            });
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut Box<ServerConn>) -> bool {
        // A standby promoted (or a primary demoted) under its sessions.
        conn.unusable(self.generation.current()) || conn.role_changed()
    }
}

//! The `wharf` engine's [`Manager`](wharf::Manager) for server pools: it
//! opens servers for the pool's current target under its connection
//! limits, checks them, and tells the engine which ones to close.

use std::sync::Arc;

use parking_lot::RwLock;

use super::{ConnectionLimit, DbControl};
use crate::net::ServerAddr;
use crate::server::{ServerConn, ServerError, ServerTarget};
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
    /// Registers, takes places under the limits and logs in one server for
    /// `target`, in generation `born`.
    async fn open(&self, target: &Arc<ServerTarget>, born: u64) -> Result<ServerConn, ServerError> {
        let addr = match &target.addr {
            ServerAddr::Tcp { host, port } => (host.clone(), *port),
            ServerAddr::Unix(path) => (path.display().to_string(), 0),
        };
        let entry = self.tracking.registry.register_server(
            self.tracking.pool.clone(),
            addr,
            (self.generation.clone(), born),
        );
        let mut permits = Vec::with_capacity(self.limits.len());
        // Always in the same order (database, then user), so two pools
        // waiting on each other's limits cannot deadlock.
        for limit in &self.limits {
            permits.push(limit.acquire(&target.addr).await?);
        }
        ServerConn::connect(target, born, permits, entry).await
    }
}

impl wharf::Manager for ServerManager {
    type Connection = ServerConn;
    type Error = ServerError;

    async fn connect(&self) -> Result<ServerConn, ServerError> {
        loop {
            // A paused database opens no servers (PAUSE waits for them all
            // to close); the engine's connect_timeout bounds this wait.
            self.tracking.control.wait_resumed().await;
            let (target, born) = {
                let current = self.target.read();
                (current.clone(), self.generation.current())
            };
            let conn = self.open(&target, born).await?;
            // Retired while logging in (RELOAD with a new target,
            // RECONNECT, PAUSE): it would be handed out before anything
            // looks at its generation, so it goes now and another comes.
            if conn.unusable(self.generation.current()) {
                continue;
            }
            return Ok(conn);
        }
    }

    async fn check(&self, conn: &mut ServerConn) -> Result<(), ServerError> {
        conn.check().await
    }

    fn has_broken(&self, conn: &mut ServerConn) -> bool {
        conn.unusable(self.generation.current())
    }
}

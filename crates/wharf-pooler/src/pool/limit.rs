//! Caps on server connections shared by several pools
//! (`max_db_connections`, `max_user_connections`).

use std::io;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ServerManager;
use crate::server::ServerError;

/// A cap on server connections shared by several pools
/// (`max_db_connections`, `max_user_connections`).
#[derive(Debug)]
pub struct ConnectionLimit {
    /// What the limit is, for logs (`max_db_connections=10 for database app`).
    name: String,
    /// One permit per allowed connection.
    permits: Arc<Semaphore>,
    /// The pools under this limit, so that one needing a connection can
    /// make another close an idle one (weak: the limit must not keep pools
    /// alive, and pools hold the limit).
    pools: parking_lot::Mutex<Vec<wharf::WeakPool<ServerManager>>>,
}

impl ConnectionLimit {
    /// A limit of `max` connections.
    pub fn new(name: String, max: usize) -> Self {
        Self {
            name,
            permits: Arc::new(Semaphore::new(max)),
            pools: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Waits for a place under the limit. Idle servers of other pools hold
    /// places too, so while full it keeps asking them to close one (their
    /// pools would otherwise keep them until `server_idle_timeout`); the
    /// engine's `connect_timeout` bounds the whole wait.
    pub(super) async fn acquire(&self) -> Result<OwnedSemaphorePermit, ServerError> {
        const RECHECK: std::time::Duration = std::time::Duration::from_millis(50);
        loop {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return Ok(permit);
            }
            if !self.make_room() {
                tracing::debug!(limit = %self.name, "waiting for a place under the connection limit");
            }
            match tokio::time::timeout(RECHECK, self.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => return Ok(permit),
                Ok(Err(_)) => {
                    return Err(ServerError::Io {
                        addr: self.name.clone(),
                        source: io::Error::other(format!("{} is shut down", self.name)),
                    })
                }
                Err(_) => {}
            }
        }
    }

    /// Puts `pool` under this limit.
    pub(super) fn watch(&self, pool: &wharf::Pool<ServerManager>) {
        self.pools.lock().push(pool.downgrade());
    }

    /// Closes one idle server of a pool under this limit, if any has one,
    /// so its place goes to a pool that needs it (as PgBouncer does).
    fn make_room(&self) -> bool {
        let pools: Vec<_> = self
            .pools
            .lock()
            .iter()
            .filter_map(|p| p.upgrade())
            .collect();
        pools.iter().any(|pool| pool.close_idle(1) == 1)
    }
}

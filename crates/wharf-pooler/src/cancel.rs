//! Cancel keys: each client gets its own random BackendKeyData, and a
//! CancelRequest carrying it is passed on to whichever server that client is
//! linked to at that moment, with that server's own key. A key never reaches
//! a server another client is using.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::{send_cancel, ServerAddr};
use crate::proto::CancelKey;

/// What a client's key currently points at.
#[derive(Debug, Default)]
pub struct CancelSlot {
    target: Mutex<Option<(Arc<ServerAddr>, CancelKey)>>,
}

impl CancelSlot {
    /// The client is now linked to the server at `addr` with `key`.
    pub fn link(&self, addr: Arc<ServerAddr>, key: CancelKey) {
        *self.target.lock() = Some((addr, key));
    }

    /// The client has no server.
    pub fn unlink(&self) {
        *self.target.lock() = None;
    }
}

/// Every connected client's cancel key.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<CancelKey, Arc<CancelSlot>>>,
}

/// Removes a client's key when its session ends.
pub struct Registered<'a> {
    registry: &'a CancelRegistry,
    /// The key handed to the client.
    pub key: CancelKey,
    /// Where its cancels go.
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.key);
    }
}

impl CancelRegistry {
    /// Gives a new client a fresh key, unique among connected clients.
    pub fn register(&self) -> Registered<'_> {
        let slot = Arc::new(CancelSlot::default());
        let mut clients = self.clients.lock();
        let key = loop {
            let key = CancelKey::random();
            if !clients.contains_key(&key) {
                break key;
            }
        };
        clients.insert(key, slot.clone());
        Registered {
            registry: self,
            key,
            slot,
        }
    }

    /// [`cancel`](Self::cancel), given up after `wait` (PgBouncer's
    /// `cancel_wait_timeout`; `None` waits for ever): a server that does
    /// not take the request must not hold the client's connection.
    pub async fn cancel_within(&self, key: CancelKey, wait: Option<std::time::Duration>) {
        let Some(wait) = wait else {
            return self.cancel(key).await;
        };
        if tokio::time::timeout(wait, self.cancel(key)).await.is_err() {
            tracing::info!("closing cancel request: cancel_wait_timeout");
        }
    }

    /// Handles a CancelRequest: forwards it to the server the key's client
    /// is linked to, if any. Unknown keys are ignored, as PostgreSQL does.
    pub async fn cancel(&self, key: CancelKey) {
        let Some(slot) = self.clients.lock().get(&key).cloned() else {
            tracing::debug!("cancel request with an unknown key ignored");
            return;
        };
        let target = slot.target.lock().clone();
        let Some((addr, server_key)) = target else {
            tracing::debug!("cancel request for a client with no server ignored");
            return;
        };
        if let Err(err) = send_cancel(&addr, server_key).await {
            tracing::warn!(server = %addr, error = %err, "could not forward cancel request");
        }
    }
}

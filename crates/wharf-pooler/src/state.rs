//! The pooler-wide state every client task, the admin console, the HTTP
//! views and the signal handler share: the router (pools, configuration,
//! statistics), the cancel keys and the lifecycle.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cancel::CancelRegistry;
use crate::config::{Config, Secret};
use crate::lifecycle::{Lifecycle, ReloadError, ReloadSummary, ShutdownMode};
use crate::prepared::Registry;
use crate::proto::CancelKey;
use crate::router::Router;
use crate::tls::TlsContexts;

/// What every part of a running pooler shares.
pub struct PoolerState {
    router: Router,
    cancels: CancelRegistry,
    lifecycle: Lifecycle,
    statements: Registry,
}

impl PoolerState {
    /// A running pooler's state over `config`, with the auth file's
    /// `secrets` and the `tls` contexts the configuration describes.
    pub fn new(
        config: Arc<Config>,
        secrets: Arc<HashMap<String, Secret>>,
        tls: Arc<TlsContexts>,
    ) -> Self {
        let peer_id = config.pgbouncer.peer_id;
        Self {
            router: Router::new(config, secrets, tls),
            cancels: CancelRegistry::new(peer_id),
            lifecycle: Lifecycle::new(),
            statements: Registry::default(),
        }
    }

    /// The server pools, and the configuration and secrets in force.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Client cancel keys.
    pub fn cancels(&self) -> &CancelRegistry {
        &self.cancels
    }

    /// Handles a CancelRequest with `key`: cancels its client's query, or
    /// forwards it to the peer process the key names, under the
    /// configuration in force now.
    pub async fn cancel(&self, key: CancelKey) {
        let config = self.config();
        self.cancels.cancel_within(key, &config).await;
    }

    /// Every prepared statement some client or server holds.
    pub fn statements(&self) -> &Registry {
        &self.statements
    }

    /// The pooler's phase (running, shutting down).
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// The configuration in force now (a snapshot: RELOAD may replace it).
    pub fn config(&self) -> Arc<Config> {
        self.router.config()
    }

    /// The TLS contexts in force now.
    pub fn tls(&self) -> Arc<TlsContexts> {
        self.router.tls()
    }

    /// The auth file's secrets in force now.
    pub fn secrets(&self) -> Arc<HashMap<String, Secret>> {
        self.router.secrets()
    }

    /// RELOAD: re-reads the configuration file and the auth file and puts
    /// them in force without dropping a client (see
    /// `Lifecycle::reload`).
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        self.lifecycle.reload(&self.router).await
    }

    /// SHUTDOWN in `mode`, or a more drastic one than in progress; returns
    /// at once ([`Pooler::run`](crate::Pooler::run) ends when it is done).
    pub fn shutdown(&self, mode: ShutdownMode) {
        self.lifecycle.shutdown(mode);
    }

    /// Wakes every client to see the shutdown phase; the listeners must be
    /// closed first.
    pub(crate) fn nudge_clients(&self) {
        self.lifecycle.nudge_clients(self.router.stats());
    }
}

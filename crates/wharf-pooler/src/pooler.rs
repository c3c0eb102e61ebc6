//! The wiring: a [`Pooler`] opens its sockets, builds the shared state,
//! and runs the accept loops, the HTTP endpoint and the upkeep tasks until
//! a shutdown completes.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};

use crate::config::{self, Config, Secret};
use crate::lifecycle::{Phase, ShutdownMode};
use crate::listener::{self, Clients};
use crate::state::PoolerState;
use crate::tls::{TlsContexts, TlsError};

/// Why the pooler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// `listen_addr` holds something that is not an address.
    #[error("listen_addr: invalid address {0:?}")]
    BadAddress(String),
    /// The auth file (or the hba file) could not be read.
    #[error(transparent)]
    AuthFile(#[from] config::ConfigError),
    /// A TLS file cannot be used or a TLS setting cannot be honoured:
    /// never run with less encryption than asked.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Opens the pools of databases with a forced user and a `min_pool_size`,
/// so their servers are there before the first client (PgBouncer 1.21+).
fn fill_forced_user_pools(state: &PoolerState, config: &Config) {
    for db in config.databases.iter().filter(|d| !d.is_fallback()) {
        let Some(user) = &db.user else {
            continue;
        };
        if config
            .settings_of(Some(db), config.user(user))
            .min_pool_size
            > 0
        {
            if let Err(err) = state.router().route(&db.name, user) {
                tracing::warn!(database = %db.name, error = %err, "pool not opened at start");
            }
        }
    }
}

/// A pooler with its sockets open, ready to serve.
pub struct Pooler {
    state: Arc<PoolerState>,
    tcp: Vec<TcpListener>,
    /// With the socket file to remove at the end (none for one a service
    /// manager made).
    unix: Vec<(UnixListener, Option<PathBuf>)>,
    http: Option<TcpListener>,
}

impl Pooler {
    /// Opens the listening sockets the configuration names and loads the
    /// auth file (and the hba file, with `auth_type = hba`, if the
    /// configuration does not hold its rules yet). Must run inside a Tokio
    /// runtime.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        Self::bind_with(config, Vec::new()).await
    }

    /// As [`bind`](Self::bind), but when `inherited` holds listening
    /// sockets (systemd's socket activation, `LISTEN_FDS`), serves on them
    /// instead of opening those `listen_addr` and `unix_socket_dir` name:
    /// the socket unit then says where wharf listens.
    pub async fn bind_with(config: Config, inherited: Vec<OwnedFd>) -> Result<Self, StartError> {
        let tls = TlsContexts::from_settings(&config.pgbouncer)?;
        for warning in tls.warnings() {
            tracing::warn!("{warning}");
        }
        let mut config = config;
        if config.pgbouncer.auth_type == config::AuthType::Hba && config.hba.is_none() {
            // A configuration made in code: read its hba rules now (a bad
            // record stops the start, as with config::load).
            config.load_hba()?;
        }
        let config = Arc::new(config);
        let settings = &config.pgbouncer;
        let secrets: HashMap<String, Secret> = config.load_auth_file()?;
        let (tcp, unix) = if inherited.is_empty() {
            listener::open(settings)?
        } else {
            listener::adopt(inherited)?
        };
        let http = crate::http::bind(settings)
            .await
            .map_err(|(addr, source)| StartError::Listen { addr, source })?;
        let state = Arc::new(PoolerState::new(
            config.clone(),
            Arc::new(secrets),
            Arc::new(tls),
        ));
        fill_forced_user_pools(&state, &config);
        // SHOW STATS averages, every stats_period (re-read each time).
        let weak = Arc::downgrade(&state);
        tokio::spawn(crate::stats::run_averages(
            Arc::downgrade(state.router().stats()),
            move || {
                let state = weak.upgrade()?;
                let config = state.config();
                Some((config.pgbouncer.stats_period, config.pgbouncer.log_stats))
            },
        ));
        Ok(Self {
            state,
            tcp,
            unix,
            http,
        })
    }

    /// The address of the HTTP endpoint (metrics, health, dashboard), when
    /// `http_listen_port` is set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The TCP addresses actually listened on (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The state every part of the pooler shares: it reloads and shuts
    /// down the pooler, and [`handle_signals`](crate::signals::handle_signals)
    /// takes it (weakly) to do so on Unix signals.
    pub fn state(&self) -> Arc<PoolerState> {
        self.state.clone()
    }

    /// Serves clients until a SHUTDOWN through [`PoolerState::shutdown`]
    /// completes, or `shutdown` resolves (an immediate shutdown). The
    /// listening sockets close as soon as a shutdown starts; a graceful one
    /// then waits for the clients to go.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Pooler {
            state,
            tcp,
            unix,
            http,
        } = self;
        // Up until run returns, so a draining pooler can still be watched.
        let _http = http.map(|listener| crate::http::spawn(listener, state.clone()));
        let clients = Arc::new(Clients::default());
        let mut tasks = tokio::task::JoinSet::new();
        for listener in tcp {
            tasks.spawn(listener::accept_tcp(
                listener,
                state.clone(),
                clients.clone(),
            ));
        }
        let mut unix_paths = Vec::new();
        let mut unix_tasks = Vec::new();
        for (listener, path) in unix {
            let peer = crate::net::Peer::unix(
                listener
                    .local_addr()
                    .ok()
                    .as_ref()
                    .and_then(|a| a.as_pathname()),
            );
            unix_paths.extend(path);
            unix_tasks.push(tokio::spawn(listener::accept_unix(
                listener,
                peer,
                state.clone(),
                clients.clone(),
            )));
        }
        tasks.spawn(crate::janitor::run(Arc::downgrade(&state)));
        // Not among `tasks`: clients still queue while a graceful
        // shutdown drains them, and still hear `query_wait_notify`.
        let sweep = tokio::spawn(crate::janitor::sweep_waiting_clients(Arc::downgrade(
            &state,
        )));
        let mut phase = state.lifecycle().subscribe();
        let mut shutdown = std::pin::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => state.shutdown(ShutdownMode::Immediate),
            _ = phase.wait_for(|p| *p != Phase::Running) => {}
        }
        // Stop accepting first: a client arriving now would only be cut.
        // The Unix sockets stay open for the admin console until the end,
        // as PgBouncer's do (logins to databases there are refused).
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        tracing::info!(clients = clients.count(), "TCP listeners closed");
        drain(&state, &clients, &mut phase, shutdown).await;
        sweep.abort();
        let _ = sweep.await;
        for task in unix_tasks {
            task.abort();
            let _ = task.await;
        }
        // Only the sockets wharf made; passed-in ones belong to systemd.
        for path in unix_paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Waits out a shutdown: until only admin console sessions are left (they
/// do not hold a draining pooler up), or the shutdown turns immediate.
async fn drain(
    state: &Arc<PoolerState>,
    clients: &Clients,
    phase: &mut tokio::sync::watch::Receiver<Phase>,
    shutdown: impl Future<Output = ()>,
) {
    // A console login finishing does not wake the wait: look again now
    // and then.
    const RECHECK: std::time::Duration = std::time::Duration::from_millis(500);
    let consoles = || {
        state
            .router()
            .stats()
            .clients()
            .iter()
            .filter(|c| c.info.admin)
            .count()
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut news = true;
    loop {
        if news {
            state.nudge_clients();
        }
        if *phase.borrow_and_update() == Phase::ShuttingDown(ShutdownMode::Immediate) {
            return;
        }
        news = tokio::select! {
            () = clients.down_to(consoles) => {
                tracing::info!("last client gone");
                return;
            }
            _ = phase.changed() => true,
            _ = &mut shutdown => {
                state.shutdown(ShutdownMode::Immediate);
                true
            }
            () = tokio::time::sleep(RECHECK) => false,
        };
    }
}

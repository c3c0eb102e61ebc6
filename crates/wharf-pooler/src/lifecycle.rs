//! The pooler's life as an operator sees it: RELOAD (re-reading the
//! configuration without dropping clients) and SHUTDOWN in PgBouncer's
//! three modes. Both act on the router they are given; the lifecycle holds
//! only the phase.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{self, Config, ConfigError, Settings};
use crate::router::Router;
use crate::stats::{ClientEntry, Stats};
use crate::tls::{TlsContexts, TlsError};

/// How a SHUTDOWN ends the pooler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShutdownMode {
    /// Exit now; clients and servers are cut wherever they are.
    Immediate,
    /// Stop accepting clients; each connected client is disconnected
    /// once its server work ends (between transactions, or at the end of
    /// the session's transaction in session mode); exit when none is left.
    WaitForServers,
    /// Stop accepting clients; the connected ones go on until they
    /// disconnect by themselves; exit after the last.
    WaitForClients,
}

impl ShutdownMode {
    /// How drastic the mode is: a later SHUTDOWN may only make the one in
    /// progress more drastic, never gentler.
    fn severity(self) -> u8 {
        match self {
            ShutdownMode::WaitForClients => 1,
            ShutdownMode::WaitForServers => 2,
            ShutdownMode::Immediate => 3,
        }
    }
}

/// Where the pooler is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Running,
    /// A SHUTDOWN is in progress.
    ShuttingDown(ShutdownMode),
}

/// What a successful RELOAD changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Pools whose size changed.
    pub resized: usize,
    /// Pools whose server (host, port, dbname, user, password, startup
    /// parameters) changed; their servers are replaced as they are released.
    pub retargeted: usize,
    /// Pools of databases no longer in the configuration, left running
    /// until their clients go.
    pub orphaned: usize,
    /// Keys that changed in the file but only take effect on restart
    /// (listen_addr, listen_port, ...); their old values stay in force.
    pub need_restart: Vec<&'static str>,
    /// How many warnings the new file drew (each logged).
    pub warnings: usize,
}

/// Why a RELOAD kept the old configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration was not loaded from a file.
    #[error("RELOAD: the configuration was not loaded from a file")]
    NoFile,
    /// The file (or one it includes) is broken.
    #[error("RELOAD: {0}; keeping the old configuration")]
    Config(#[source] ConfigError),
    /// The new auth file cannot be read.
    #[error("RELOAD: auth_file: {0}; keeping the old configuration")]
    AuthFile(#[source] ConfigError),
    /// A TLS file cannot be used or a TLS setting cannot be honoured.
    #[error("RELOAD: {0}; keeping the old configuration")]
    Tls(#[source] TlsError),
    /// The pooler is shutting down or gone.
    #[error("RELOAD: the pooler is shutting down")]
    ShuttingDown,
}

/// RELOAD and SHUTDOWN: the phase every client task checks, and the
/// operations that change it.
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
    /// The phase's severity (0 running), for the relay's per-event check:
    /// a plain load, where reading the watch would take its lock.
    level: std::sync::atomic::AtomicU8,
    /// Two RELOADs at once would race on which file wins.
    reloading: tokio::sync::Mutex<()>,
}

impl Lifecycle {
    /// A running pooler's lifecycle.
    pub fn new() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Running),
            level: std::sync::atomic::AtomicU8::new(0),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts a shutdown, or makes the one in progress more drastic
    /// (a gentler mode than the current one is ignored). Returns at once;
    /// [`Pooler::run`](crate::Pooler::run) closes the listening sockets and
    /// only then wakes the clients (with [`Self::nudge_clients`]), so that a
    /// client told to leave can never find the pooler still accepting.
    pub(crate) fn shutdown(&self, mode: ShutdownMode) {
        let changed = self.phase.send_if_modified(|phase| {
            let stronger = match *phase {
                Phase::Running => true,
                Phase::ShuttingDown(current) => mode.severity() > current.severity(),
            };
            if stronger {
                *phase = Phase::ShuttingDown(mode);
                self.level
                    .store(mode.severity(), std::sync::atomic::Ordering::SeqCst);
            }
            stronger
        });
        if changed {
            tracing::info!(?mode, "shutdown requested");
            crate::net::notify_or_log("STOPPING=1");
        }
    }

    /// Wakes every client in `clients` to look at the phase.
    pub(crate) fn nudge_clients(&self, clients: &Stats) {
        for client in clients.clients() {
            client.nudge();
        }
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// The shutdown that concerns connected clients, if one is in
    /// progress: [`ShutdownMode::WaitForServers`] (leave at the next point
    /// where the server is free) or [`ShutdownMode::Immediate`].
    #[inline]
    pub fn clients_must_go(&self) -> Option<ShutdownMode> {
        match self.level.load(std::sync::atomic::Ordering::Relaxed) {
            3 => Some(ShutdownMode::Immediate),
            2 => Some(ShutdownMode::WaitForServers),
            _ => None,
        }
    }

    /// Resolves once [`clients_must_go`](Self::clients_must_go) says at
    /// least `mode`. It sleeps on the client's own wake-up slot (nudged for
    /// every client when a shutdown starts or hardens), so polling it on
    /// each of the relay's events touches nothing shared by other sessions.
    pub(crate) fn wait_clients_must_go<'a>(
        &'a self,
        mode: ShutdownMode,
        client: &'a ClientEntry,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        let wanted = mode.severity().max(ShutdownMode::WaitForServers.severity());
        client
            .attention_until(move || self.level.load(std::sync::atomic::Ordering::SeqCst) >= wanted)
    }

    /// Whether a shutdown is in progress.
    pub fn is_shutting_down(&self) -> bool {
        self.phase() != Phase::Running
    }

    /// Watches the phase (for tasks that must react to a shutdown).
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Re-reads the configuration file the pooler was started with (and
    /// the auth file) and puts it in force without dropping anyone: pool
    /// sizes change at once, timeouts from the next transaction on, new
    /// server targets for new server connections (servers with the old one
    /// close as they are released). A broken file is logged with its
    /// file, line and key, and the old configuration stays.
    pub(crate) async fn reload(&self, router: &Router) -> Result<ReloadSummary, ReloadError> {
        // A Type=notify unit's `systemctl reload` waits for READY=1 again,
        // which comes whether the new file was taken or not.
        crate::net::notify_or_log("RELOADING=1");
        let result = self.try_reload(router).await;
        crate::net::notify_or_log("READY=1");
        match &result {
            Ok(summary) => tracing::info!(
                resized = summary.resized,
                retargeted = summary.retargeted,
                orphaned = summary.orphaned,
                need_restart = ?summary.need_restart,
                "configuration reloaded"
            ),
            Err(ReloadError::Config(err)) => tracing::error!(
                file = %err.file().display(),
                line = err.line(),
                key = err.key(),
                "RELOAD failed, keeping the old configuration: {err}"
            ),
            Err(err) => tracing::error!("{err}"),
        }
        result
    }

    async fn try_reload(&self, router: &Router) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = router.config();
        if old.path.as_os_str().is_empty() {
            return Err(ReloadError::NoFile);
        }
        let path = old.path.clone();
        let (loaded, secrets, tls) = tokio::task::spawn_blocking(move || {
            let loaded = config::load(&path).map_err(ReloadError::Config)?;
            let secrets = loaded
                .config
                .load_auth_file()
                .map_err(ReloadError::AuthFile)?;
            let tls =
                TlsContexts::from_settings(&loaded.config.pgbouncer).map_err(ReloadError::Tls)?;
            Ok::<_, ReloadError>((loaded, secrets, tls))
        })
        .await
        .map_err(|_| ReloadError::ShuttingDown)??;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        for warning in tls.warnings() {
            tracing::warn!("{warning}");
        }
        let mut new: Config = loaded.config;
        let need_restart = keep_restart_only(&old.pgbouncer, &mut new.pgbouncer);
        for key in &need_restart {
            tracing::warn!(
                key,
                "RELOAD: {key} changes only on restart; keeping the old value"
            );
        }
        router.replace(Arc::new(new), Arc::new(secrets), Arc::new(tls));
        let applied = router.apply();
        Ok(ReloadSummary {
            resized: applied.resized,
            retargeted: applied.retargeted,
            orphaned: applied.orphaned,
            need_restart,
            warnings: loaded.warnings.len(),
        })
    }
}

/// Puts back the settings a running pooler cannot change (its sockets,
/// threads, pidfile...), returning the keys that had changed.
fn keep_restart_only(old: &Settings, new: &mut Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($field:ident),+ $(,)?) => {$(
            if old.$field != new.$field {
                changed.push(stringify!($field));
                new.$field = old.$field.clone();
            }
        )+};
    }
    keep!(
        disable_pqexec,
        http_listen_addr,
        http_listen_port,
        job_name,
        listen_addr,
        listen_backlog,
        listen_port,
        peer_id,
        pidfile,
        pkt_buf,
        resolv_conf,
        so_reuseport,
        track_extra_parameters,
        unix_socket_dir,
        unix_socket_group,
        unix_socket_mode,
        user,
        workers,
    );
    changed
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

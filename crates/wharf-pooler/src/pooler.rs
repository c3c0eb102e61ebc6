//! The listening sockets: accepts clients on TCP and on a Unix socket,
//! enforces `max_client_conn`, and hands each client to its own task.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};

use crate::cancel::CancelRegistry;
use crate::config::{self, Config, Secret};
use crate::frontend::{serve_client, ClientStream, Shared};
use crate::lifecycle::{Lifecycle, Phase, ShutdownMode};
use crate::proto::{backend, read_startup, Startup};
use crate::router::Router;

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
    /// The auth file could not be read.
    #[error(transparent)]
    AuthFile(#[from] config::ConfigError),
}

/// A pooler with its sockets open, ready to serve.
pub struct Pooler {
    shared: Arc<Shared>,
    tcp: Vec<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
    clients: Arc<Clients>,
    http: Option<TcpListener>,
}

/// The clients connected, and a wake-up for when the last one goes.
#[derive(Default)]
struct Clients {
    count: AtomicUsize,
    gone: tokio::sync::Notify,
}

impl Pooler {
    /// Opens the listening sockets the configuration names and loads the
    /// auth file. Must run inside a Tokio runtime.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let settings = &config.pgbouncer;
        let secrets: HashMap<String, Secret> = match &settings.auth_file {
            Some(path) => config::load_auth_file(path)?,
            None => HashMap::new(),
        };
        let secrets = Arc::new(secrets);
        let mut tcp = Vec::new();
        for addr in listen_addrs(&settings.listen_addr, settings.listen_port)? {
            tcp.push(listen_tcp(addr, settings.so_reuseport).map_err(|source| {
                StartError::Listen {
                    addr: addr.to_string(),
                    source,
                }
            })?);
        }
        let unix = match &settings.unix_socket_dir {
            Some(dir) if !dir.as_os_str().is_empty() => {
                let path = dir.join(format!(".s.PGSQL.{}", settings.listen_port));
                // A socket file left by a process that is gone blocks bind.
                if std::os::unix::net::UnixStream::connect(&path).is_err() {
                    let _ = std::fs::remove_file(&path);
                }
                let listener = UnixListener::bind(&path).map_err(|source| StartError::Listen {
                    addr: path.display().to_string(),
                    source,
                })?;
                Some((listener, path))
            }
            _ => None,
        };
        let http = crate::http::bind(settings)
            .await
            .map_err(|(addr, source)| StartError::Listen { addr, source })?;
        let router = Router::new(config.clone(), secrets.clone());
        let shared = Arc::new_cyclic(|weak| Shared {
            router,
            cancels: CancelRegistry::default(),
            lifecycle: Lifecycle::new(weak.clone()),
        });
        // SHOW STATS averages, every stats_period (re-read each time).
        let weak = Arc::downgrade(&shared);
        tokio::spawn(crate::stats::run_averages(
            Arc::downgrade(shared.router.stats()),
            move || {
                let shared = weak.upgrade()?;
                let config = shared.config();
                Some((config.pgbouncer.stats_period, config.pgbouncer.log_stats))
            },
        ));
        Ok(Self {
            shared,
            tcp,
            unix,
            clients: Arc::new(Clients::default()),
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

    /// The state every client task shares: its
    /// [`lifecycle`](Shared::lifecycle) reloads and shuts down the pooler,
    /// and [`handle_signals`](crate::lifecycle::handle_signals) takes it
    /// (weakly) to do so on Unix signals.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves clients until a SHUTDOWN through [`Shared::lifecycle`]
    /// completes, or `shutdown` resolves (an immediate shutdown). The
    /// listening sockets close as soon as a shutdown starts; a graceful one
    /// then waits for the clients to go.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Pooler {
            shared,
            tcp,
            unix,
            clients,
            http,
        } = self;
        // Up until run returns, so a draining pooler can still be watched.
        let _http = http.map(|listener| crate::http::spawn(listener, shared.clone()));
        let max_clients = shared.config().pgbouncer.max_client_conn;
        let mut tasks = tokio::task::JoinSet::new();
        for listener in tcp {
            let shared = shared.clone();
            let clients = clients.clone();
            tasks.spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            admit(stream, peer.to_string(), &shared, &clients, max_clients);
                        }
                        Err(err) => accept_failed(err).await,
                    }
                }
            });
        }
        let unix_path = unix.as_ref().map(|(_, path)| path.clone());
        if let Some((listener, path)) = unix {
            let shared = shared.clone();
            let clients = clients.clone();
            let peer = format!("unix:{}", path.display());
            tasks.spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            admit(stream, peer.clone(), &shared, &clients, max_clients)
                        }
                        Err(err) => accept_failed(err).await,
                    }
                }
            });
        }
        tasks.spawn(crate::lifecycle::maintain(Arc::downgrade(&shared)));
        let mut phase = shared.lifecycle.subscribe();
        let mut shutdown = std::pin::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => shared.lifecycle.shutdown(ShutdownMode::Immediate),
            _ = phase.wait_for(|p| *p != Phase::Running) => {}
        }
        // Stop accepting first: a client arriving now would only be cut.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        if let Some(path) = unix_path {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!(
            clients = clients.count.load(Ordering::SeqCst),
            "listeners closed"
        );
        loop {
            if *phase.borrow_and_update() == Phase::ShuttingDown(ShutdownMode::Immediate) {
                return;
            }
            let mut gone = std::pin::pin!(clients.gone.notified());
            gone.as_mut().enable();
            if clients.count.load(Ordering::SeqCst) == 0 {
                tracing::info!("last client gone");
                return;
            }
            tokio::select! {
                _ = gone => {}
                _ = phase.changed() => {}
                _ = &mut shutdown => shared.lifecycle.shutdown(ShutdownMode::Immediate),
            }
        }
    }
}

/// Starts a client's task, or turns it away when `max_client_conn` clients
/// are already connected.
fn admit<S: ClientStream + 'static>(
    stream: S,
    peer: String,
    shared: &Arc<Shared>,
    clients: &Arc<Clients>,
    max_clients: usize,
) {
    let count = ClientCount::new(clients.clone());
    let shared = shared.clone();
    tokio::spawn(async move {
        if count.current > max_clients {
            refuse_over_limit(stream, &peer, &shared, max_clients).await;
            return;
        }
        serve_client(stream, peer, shared).await;
        drop(count);
    });
}

/// Turns away a client over `max_client_conn`, after its startup packet
/// as PgBouncer does: libpq only shows an error sent in place of the answer
/// to its SSL request as "error response during SSL exchange", and a cancel
/// request must get through even when every client place is taken.
async fn refuse_over_limit<S: ClientStream>(
    mut stream: S,
    peer: &str,
    shared: &Shared,
    max_clients: usize,
) {
    let startup = async {
        loop {
            match read_startup(&mut stream).await {
                Ok(Startup::SslRequest | Startup::GssEncRequest) => {
                    if stream.write_all(b"N").await.is_err() {
                        return None;
                    }
                }
                Ok(Startup::Cancel(key)) => return Some(Err(key)),
                Ok(Startup::Startup { .. }) => return Some(Ok(())),
                // Not a client worth an answer.
                Err(_) => return None,
            }
        }
    };
    let config = shared.config();
    let wait = config
        .pgbouncer
        .client_login_timeout
        .unwrap_or(Duration::from_secs(60));
    match tokio::time::timeout(wait, startup).await {
        Ok(Some(Ok(()))) => {}
        // Passed on outside the login timeout, which is not its to bound.
        Ok(Some(Err(key))) => {
            let wait = config.pgbouncer.cancel_wait_timeout;
            shared.cancels.cancel_within(key, wait).await;
            return;
        }
        Ok(None) | Err(_) => return,
    }
    let message = "no more connections allowed (max_client_conn)";
    tracing::warn!(%peer, max_clients, "closing client: max_client_conn reached");
    if config.pgbouncer.log_pooler_errors {
        tracing::warn!(%peer, code = "53300", "pooler error: {message}");
    }
    let mut out = BytesMut::new();
    backend::error(&mut out, "FATAL", "53300", message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// Counts a connected client for as long as it lives.
struct ClientCount {
    clients: Arc<Clients>,
    current: usize,
}

impl ClientCount {
    fn new(clients: Arc<Clients>) -> Self {
        let current = clients.count.fetch_add(1, Ordering::SeqCst) + 1;
        Self { clients, current }
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        if self.clients.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.clients.gone.notify_waiters();
        }
    }
}

/// Accept errors are mostly running out of file descriptors; pausing keeps
/// the loop from spinning while connections close.
async fn accept_failed(err: io::Error) {
    tracing::warn!(error = %err, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

fn listen_addrs(listen: &[String], port: u16) -> Result<Vec<SocketAddr>, StartError> {
    let mut addrs = Vec::new();
    for addr in listen {
        let addr = addr.trim();
        if addr.is_empty() {
            continue;
        }
        if addr == "*" {
            addrs.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
            addrs.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
            continue;
        }
        let ip = if addr == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            addr.parse::<IpAddr>()
                .map_err(|_| StartError::BadAddress(addr.to_owned()))?
        };
        addrs.push(SocketAddr::new(ip, port));
    }
    Ok(addrs)
}

fn listen_tcp(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        // "*" binds both families; keep the v6 socket to v6 so they don't clash.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

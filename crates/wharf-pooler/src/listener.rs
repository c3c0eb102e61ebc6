//! The listening sockets: accepts clients on TCP and on a Unix socket,
//! enforces `max_client_conn`, and hands each client to its own task.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::client::serve_client;
use crate::config::Settings;
use crate::net::{ClientStream, Peer, TcpOptions};
use crate::pooler::StartError;
use crate::proto::{messages, read_startup, Startup};
use crate::state::PoolerState;

/// The clients connected, and a wake-up whenever one goes.
#[derive(Default)]
pub(crate) struct Clients {
    count: AtomicUsize,
    gone: tokio::sync::Notify,
}

impl Clients {
    /// How many are connected.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once at most `staying()` clients are connected, checked
    /// now and each time a client goes.
    pub(crate) async fn down_to(&self, staying: impl Fn() -> usize) {
        loop {
            let mut gone = std::pin::pin!(self.gone.notified());
            gone.as_mut().enable();
            if self.count() <= staying() {
                return;
            }
            gone.await;
        }
    }
}

/// Accepts clients on `listener` until the task is aborted.
pub(crate) async fn accept_tcp(
    listener: TcpListener,
    state: Arc<PoolerState>,
    clients: Arc<Clients>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Read per client: a RELOAD or SET applies to the next one.
                let tcp = TcpOptions::from_settings(&state.config().pgbouncer);
                if let Err(err) = tcp.apply(&stream) {
                    tracing::warn!(%peer, error = %err, "cannot set the TCP options of a client socket");
                }
                admit(stream, Peer::Tcp(peer), &state, &clients);
            }
            Err(err) => accept_failed(err).await,
        }
    }
}

/// Accepts clients on the Unix socket `listener` until the task is aborted.
pub(crate) async fn accept_unix(
    listener: tokio::net::UnixListener,
    peer: Peer,
    state: Arc<PoolerState>,
    clients: Arc<Clients>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => admit(stream, peer.clone(), &state, &clients),
            Err(err) => accept_failed(err).await,
        }
    }
}

/// Starts a client's task, or turns it away when `max_client_conn` clients
/// are already connected. The limit is read for each new client, so a
/// RELOAD or a console `SET max_client_conn` applies to the next one.
fn admit<S: ClientStream + 'static>(
    stream: S,
    peer: Peer,
    state: &Arc<PoolerState>,
    clients: &Arc<Clients>,
) {
    let max_clients = state.config().pgbouncer.max_client_conn;
    let count = ClientCount::new(clients.clone());
    let state = state.clone();
    if count.current > max_clients {
        tokio::spawn(async move {
            // Boxed: a flood of clients over the limit holds small tasks.
            Box::pin(refuse_over_limit(stream, &peer, &state, max_clients)).await;
            drop(count);
        });
        return;
    }
    // Spawned as it is, not inside another future: that one would keep a
    // dead copy of the arguments for the client's whole life.
    tokio::spawn(serve_client(stream, peer, state, count));
}

/// Turns away a client over `max_client_conn`, after its startup packet
/// as PgBouncer does: libpq only shows an error sent in place of the answer
/// to its SSL request as "error response during SSL exchange", and a cancel
/// request must get through even when every client place is taken.
async fn refuse_over_limit<S: ClientStream>(
    mut stream: S,
    peer: &Peer,
    state: &PoolerState,
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
    let config = state.config();
    let wait = config
        .pgbouncer
        .client_login_timeout
        .unwrap_or(Duration::from_secs(60));
    match tokio::time::timeout(wait, startup).await {
        Ok(Some(Ok(()))) => {}
        // Passed on outside the login timeout, which is not its to bound.
        Ok(Some(Err(key))) => {
            state.cancel(key).await;
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
    messages::error(&mut out, "FATAL", "53300", message);
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
        self.clients.count.fetch_sub(1, Ordering::SeqCst);
        self.clients.gone.notify_waiters();
    }
}

/// Accept errors are mostly running out of file descriptors; pausing keeps
/// the loop from spinning while connections close.
async fn accept_failed(err: io::Error) {
    tracing::warn!(error = %err, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// The TCP and Unix listeners, the latter with their socket file.
type Listeners = (
    Vec<TcpListener>,
    Vec<(tokio::net::UnixListener, Option<PathBuf>)>,
);

/// Opens the sockets `listen_addr`, `listen_port` and `unix_socket_dir`
/// name.
pub(crate) fn open(settings: &Settings) -> Result<Listeners, StartError> {
    let mut tcp = Vec::new();
    let addrs = listen_addrs(&settings.listen_addr, settings.listen_port)
        .map_err(StartError::BadAddress)?;
    for addr in addrs {
        tcp.push(
            listen_tcp(addr, settings.so_reuseport, settings.listen_backlog).map_err(|source| {
                StartError::Listen {
                    addr: addr.to_string(),
                    source,
                }
            })?,
        );
    }
    let mut unix = Vec::new();
    if let Some(dir) = settings
        .unix_socket_dir
        .as_ref()
        .filter(|d| !d.as_os_str().is_empty())
    {
        let path = dir.join(format!(".s.PGSQL.{}", settings.listen_port));
        // A socket file left by a process that is gone blocks bind.
        if std::os::unix::net::UnixStream::connect(&path).is_err() {
            let _ = std::fs::remove_file(&path);
        }
        let listen_error = |source| StartError::Listen {
            addr: path.display().to_string(),
            source,
        };
        let listener = tokio::net::UnixListener::bind(&path).map_err(listen_error)?;
        // PgBouncer's chmod after bind: a mode stricter than the umask's
        // must hold before the first client can connect.
        std::fs::set_permissions(
            &path,
            std::os::unix::fs::PermissionsExt::from_mode(settings.unix_socket_mode),
        )
        .map_err(listen_error)?;
        unix.push((listener, Some(path)));
    }
    Ok((tcp, unix))
}

/// Takes over listening sockets a service manager opened: TCP ones and
/// Unix ones, told apart by their address.
pub(crate) fn adopt(inherited: Vec<OwnedFd>) -> Result<Listeners, StartError> {
    let (mut tcp, mut unix) = (Vec::new(), Vec::new());
    for fd in inherited {
        let socket = socket2::Socket::from(fd);
        let error = |source| StartError::Listen {
            addr: "a socket passed by the service manager (LISTEN_FDS)".to_owned(),
            source,
        };
        let addr = socket.local_addr().map_err(error)?;
        socket.set_nonblocking(true).map_err(error)?;
        if addr.as_socket().is_some() {
            let listener = std::net::TcpListener::from(socket);
            tcp.push(TcpListener::from_std(listener).map_err(error)?);
        } else if addr.is_unix() {
            let listener = std::os::unix::net::UnixListener::from(OwnedFd::from(socket));
            unix.push((
                tokio::net::UnixListener::from_std(listener).map_err(error)?,
                None,
            ));
        } else {
            return Err(error(io::Error::other("neither a TCP nor a Unix socket")));
        }
    }
    Ok((tcp, unix))
}

/// The addresses `listen_addr` names (`*` is every IPv4 and IPv6 address);
/// the first word that is not an address is the error.
pub(crate) fn listen_addrs(listen: &[String], port: u16) -> Result<Vec<SocketAddr>, String> {
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
            addr.parse::<IpAddr>().map_err(|_| addr.to_owned())?
        };
        addrs.push(SocketAddr::new(ip, port));
    }
    Ok(addrs)
}

/// A listening TCP socket on `addr` with `listen_backlog` pending
/// connections at most.
pub(crate) fn listen_tcp(
    addr: SocketAddr,
    reuse_port: bool,
    backlog: u32,
) -> io::Result<TcpListener> {
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
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

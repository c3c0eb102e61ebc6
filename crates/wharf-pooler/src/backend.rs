//! The server side: connections to PostgreSQL, opened, logged in, checked
//! and reset by a [`ServerManager`], which is the `wharf` engine's
//! [`Manager`](wharf::Manager) for server pools.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{ServerAuth, ServerAuthError, ServerLogin};
use crate::config::Secret;
use crate::proto::{cstr, CancelKey, ProtocolError};

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// A TCP host and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket file (`<dir>/.s.PGSQL.<port>`).
    Unix(PathBuf),
}

impl ServerAddr {
    /// PgBouncer's rule: a host starting with `/` is a Unix socket directory.
    pub fn new(host: Option<&str>, port: u16) -> Self {
        match host {
            Some(dir) if dir.starts_with('/') => {
                ServerAddr::Unix(PathBuf::from(dir).join(format!(".s.PGSQL.{port}")))
            }
            Some(host) => ServerAddr::Tcp {
                host: host.to_owned(),
                port,
            },
            None => ServerAddr::Unix(PathBuf::from("/tmp").join(format!(".s.PGSQL.{port}"))),
        }
    }

    pub(crate) async fn connect(&self) -> io::Result<ServerStream> {
        match self {
            ServerAddr::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Ok(ServerStream::Tcp(stream))
            }
            ServerAddr::Unix(path) => Ok(ServerStream::Unix(UnixStream::connect(path).await?)),
        }
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A socket to a server, TCP or Unix.
#[derive(Debug)]
pub enum ServerStream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix domain socket.
    Unix(UnixStream),
}

/// The reading half of a split [`ServerStream`].
pub enum ServerReader<'a> {
    /// TCP.
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    /// Unix.
    Unix(tokio::net::unix::ReadHalf<'a>),
}

impl AsyncRead for ServerReader<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerReader::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerReader::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

/// The writing half of a split [`ServerStream`].
pub enum ServerWriter<'a> {
    /// TCP.
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    /// Unix.
    Unix(tokio::net::unix::WriteHalf<'a>),
}

impl AsyncWrite for ServerWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerWriter::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerWriter::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerWriter::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerWriter::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerWriter::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerWriter::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl ServerStream {
    /// Borrows the stream as separate read and write halves, so the relay
    /// can read and write at once.
    pub fn split(&mut self) -> (ServerReader<'_>, ServerWriter<'_>) {
        match self {
            ServerStream::Tcp(s) => {
                let (r, w) = s.split();
                (ServerReader::Tcp(r), ServerWriter::Tcp(w))
            }
            ServerStream::Unix(s) => {
                let (r, w) = s.split();
                (ServerReader::Unix(r), ServerWriter::Unix(w))
            }
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            ServerStream::Tcp(s) => s.write_all(bytes).await,
            ServerStream::Unix(s) => s.write_all(bytes).await,
        }
    }

    /// The pooler's end of the connection (`unix`, 0 for a Unix socket).
    pub fn local(&self) -> (String, u16) {
        match self {
            ServerStream::Tcp(s) => s
                .local_addr()
                .map(|a| (a.ip().to_string(), a.port()))
                .unwrap_or_default(),
            ServerStream::Unix(_) => ("unix".to_owned(), 0),
        }
    }

    async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.read_buf(buf).await,
            ServerStream::Unix(s) => s.read_buf(buf).await,
        }
    }
}

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Connecting, reading or writing failed.
    #[error("server {addr}: {source}")]
    Io {
        /// The server.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// The server answered with an ErrorResponse.
    #[error("server {addr}: {severity}: {message} (SQLSTATE {code})")]
    Server {
        /// The server.
        addr: String,
        /// ERROR, FATAL or PANIC.
        severity: String,
        /// The SQLSTATE.
        code: String,
        /// The message.
        message: String,
    },
    /// The server broke the protocol.
    #[error("server {addr}: protocol error: {source}")]
    Protocol {
        /// The server.
        addr: String,
        /// The cause.
        source: ProtocolError,
    },
    /// Logging in failed on the pooler's side.
    #[error("server {addr}: {source}")]
    Auth {
        /// The server.
        addr: String,
        /// The cause.
        source: ServerAuthError,
    },
}

impl ServerError {
    /// The SQLSTATE to show a client for this failure.
    pub fn sqlstate(&self) -> &str {
        match self {
            ServerError::Server { code, .. } => code,
            _ => "08006",
        }
    }
}

/// Run-time parameters as (name, value) pairs, in the order reported.
pub type Params = Vec<(String, String)>;

/// The distinct sets of tracked parameters a pool's clients have, shared:
/// a server brought in line with one set then suits, by a pointer
/// comparison, every client with the same set, so that a transaction that
/// lands on a server last used by another client with the same settings
/// (the usual case) compares no parameters at all.
#[derive(Debug, Default)]
pub struct ParamSets {
    /// Weak: a set no client or server holds any more is forgotten.
    sets: parking_lot::Mutex<Vec<std::sync::Weak<Params>>>,
}

/// Beyond this many distinct sets in use, new ones are not shared (clients
/// with a set of their own each, such as a unique `application_name`, only
/// lose the shortcut).
const MAX_PARAM_SETS: usize = 256;

impl ParamSets {
    /// The shared copy of `params`.
    pub fn intern(&self, params: &Params) -> Arc<Params> {
        let mut sets = self.sets.lock();
        if let Some(set) = sets
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|set| **set == *params)
        {
            return set;
        }
        let set = Arc::new(params.clone());
        if sets.len() >= MAX_PARAM_SETS {
            sets.retain(|set| set.strong_count() > 0);
        }
        if sets.len() < MAX_PARAM_SETS {
            sets.push(Arc::downgrade(&set));
        }
        set
    }
}

/// The run-time parameters a client may set and the pooler keeps in step
/// between the client and whichever server it is linked to (PgBouncer's
/// tracked parameters).
pub(crate) const TRACKED: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
    "IntervalStyle",
];

/// Whether a server's value of tracked parameter `name` is the client's:
/// PostgreSQL reports some values in its own spelling (`UTC` for `utc`,
/// `ISO, MDY` for `iso, mdy`), and case means nothing in them, except in
/// `application_name`.
pub(crate) fn same_value(name: &str, server: Option<&str>, client: &str) -> bool {
    match server {
        Some(server) if name.eq_ignore_ascii_case("application_name") => server == client,
        Some(server) => server.eq_ignore_ascii_case(client),
        None => false,
    }
}

/// Whether `name` is one of the [`TRACKED`] parameters.
pub(crate) fn is_tracked(name: &str) -> bool {
    TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// How to reach and log in to one server for one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// Where the server listens.
    pub addr: ServerAddr,
    /// The database name on the server.
    pub database: String,
    /// The user to log in as.
    pub user: String,
    /// The password, if one is configured.
    pub password: Option<Secret>,
    /// Extra startup parameters (client_encoding, DateStyle, TimeZone,
    /// application_name).
    pub startup_params: Params,
    /// Run once after login (PgBouncer's `connect_query`).
    pub connect_query: Option<String>,
    /// The liveness check (PgBouncer's `server_check_query`); an empty
    /// string sends an empty query, which costs the server nothing.
    pub check_query: Option<String>,
}

/// A logged-in server connection, as kept in a pool.
#[derive(Debug)]
pub struct ServerConn {
    pub(crate) stream: ServerStream,
    /// Bytes read from the server and not yet passed on.
    pub(crate) rbuf: BytesMut,
    /// The server's BackendKeyData, for cancelling its queries.
    pub(crate) key: CancelKey,
    /// The server's current ParameterStatus values.
    pub(crate) params: Params,
    /// Set when the connection can no longer be trusted (I/O or protocol
    /// error, or left mid-transaction); the pool closes it on return.
    pub(crate) broken: bool,
    /// Held for as long as the connection lives: its places under
    /// `max_db_connections` and `max_user_connections`.
    _permits: Vec<OwnedSemaphorePermit>,
    /// The set of tracked parameters (from the pool's [`ParamSets`]) this
    /// server is known to match, so that a client with that very set skips
    /// comparing them.
    pub(crate) synced_with: Option<Arc<Params>>,
    /// What the connection was opened with: once RELOAD changes the
    /// pool's target, it is closed when released (PgBouncer's
    /// `close_needed`).
    pub(crate) target: Arc<ServerTarget>,
    /// Its place in the registry `SHOW SERVERS` lists.
    pub(crate) entry: Option<crate::stats::ServerGuard>,
    /// Handed to a client and not yet given back clean: if the client's
    /// task is dropped mid-transaction (KILL), the pool must close it.
    pub(crate) dirty: bool,
    /// Where its cancel requests go, and those on their way to it, which
    /// must land before another client gets it.
    pub(crate) cancels: Arc<crate::cancel::ServerCancels>,
}

/// Server messages during login and the pooler's own queries are small;
/// cap them anyway.
const MAX_CONTROL_MESSAGE: usize = 1 << 20;

impl ServerConn {
    /// Opens a connection to `target` and logs in, once it has a place
    /// under each of `limits` (waiting for one if need be).
    pub async fn connect(
        target: &Arc<ServerTarget>,
        limits: &[Arc<ConnectionLimit>],
    ) -> Result<Self, ServerError> {
        let mut permits = Vec::with_capacity(limits.len());
        // Always in the same order (database, then user), so two pools
        // waiting on each other's limits cannot deadlock.
        for limit in limits {
            permits.push(limit.acquire(&target.addr).await?);
        }
        let addr = target.addr.to_string();
        let io_err = |source| ServerError::Io {
            addr: addr.clone(),
            source,
        };
        let stream = target.addr.connect().await.map_err(io_err)?;
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            key: CancelKey { pid: 0, secret: 0 },
            params: Vec::new(),
            broken: false,
            _permits: permits,
            synced_with: None,
            target: target.clone(),
            entry: None,
            dirty: false,
            cancels: Arc::new(crate::cancel::ServerCancels::new(target.addr.clone())),
        };
        let mut out = BytesMut::new();
        let mut params: Vec<(&str, &str)> =
            vec![("user", &target.user), ("database", &target.database)];
        params.extend(
            target
                .startup_params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        frontend::startup_message(params.iter().copied(), &mut out).map_err(io_err)?;
        conn.stream.write_all(&out).await.map_err(io_err)?;

        let mut login = ServerLogin::new(&target.user, target.password.as_ref());
        loop {
            let (tag, body) = conn.read_control(&addr).await?;
            match tag {
                b'R' => match login.respond(&body) {
                    Ok(ServerAuth::Reply(reply)) => {
                        if !reply.is_empty() {
                            conn.stream.write_all(&reply).await.map_err(io_err)?;
                        }
                    }
                    Ok(ServerAuth::Done) => {}
                    Err(source) => {
                        return Err(ServerError::Auth {
                            addr: addr.clone(),
                            source,
                        })
                    }
                },
                b'K' if body.len() == 8 => {
                    conn.key = CancelKey {
                        pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    };
                }
                b'S' => conn.note_parameter(&body),
                b'E' => return Err(server_error(&addr, &body)),
                b'N' => {}
                b'Z' => break,
                _ => {
                    return Err(ServerError::Protocol {
                        addr,
                        source: ProtocolError::Malformed("login response"),
                    })
                }
            }
        }
        if let Some(query) = &target.connect_query {
            conn.simple_query(query, &addr).await?;
        }
        Ok(conn)
    }

    /// Reads one whole message into owned memory (login and the pooler's
    /// own queries only; relayed traffic never comes through here).
    async fn read_control(&mut self, addr: &str) -> Result<(u8, Vec<u8>), ServerError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
                if len < 4 || len as usize > MAX_CONTROL_MESSAGE {
                    self.broken = true;
                    return Err(ServerError::Protocol {
                        addr: addr.to_owned(),
                        source: ProtocolError::BadLength {
                            what: "server message",
                            len: len.into(),
                        },
                    });
                }
                let total = 1 + len as usize;
                if self.rbuf.len() >= total {
                    let tag = self.rbuf[0];
                    let body = self.rbuf[5..total].to_vec();
                    self.rbuf.advance(total);
                    return Ok((tag, body));
                }
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    self.broken = true;
                    return Err(ServerError::Io {
                        addr: addr.to_owned(),
                        source: io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                Ok(_) => {}
                Err(source) => {
                    self.broken = true;
                    return Err(ServerError::Io {
                        addr: addr.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// Runs a query the pooler itself needs (check, reset, SET), swallowing
    /// its results. An error from the server fails it but leaves the
    /// connection usable once ReadyForQuery arrives.
    pub async fn simple_query(&mut self, sql: &str, addr: &str) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|source| ServerError::Io {
            addr: addr.to_owned(),
            source,
        })?;
        if let Err(source) = self.stream.write_all(&out).await {
            self.broken = true;
            return Err(ServerError::Io {
                addr: addr.to_owned(),
                source,
            });
        }
        let mut failure = None;
        loop {
            let (tag, body) = self.read_control(addr).await?;
            match tag {
                b'S' => self.note_parameter(&body),
                b'E' => failure = Some(server_error(addr, &body)),
                b'Z' => {
                    if body.first() != Some(&b'I') {
                        // The pooler's own statements never open a
                        // transaction; one left open is not safe to pool.
                        self.broken = true;
                    }
                    return failure.map_or(Ok(()), Err);
                }
                b'G' | b'H' | b'W' => {
                    // COPY from a check query: refuse to guess, drop it.
                    self.broken = true;
                    return Err(ServerError::Protocol {
                        addr: addr.to_owned(),
                        source: ProtocolError::Malformed("COPY in a pooler query"),
                    });
                }
                _ => {}
            }
        }
    }

    /// Records a ParameterStatus body. A tracked parameter that changed
    /// here (a SET by the pooler, a configuration reload on the server)
    /// means the server no longer matches the set it was synced to.
    pub(crate) fn note_parameter(&mut self, body: &[u8]) {
        let Some((name, rest)) = cstr(body) else {
            return;
        };
        let Some((value, _)) = cstr(rest) else { return };
        if set_param(&mut self.params, name, value) && is_tracked(name) {
            self.synced_with = None;
        }
    }

    /// The server's value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sets `name` in an ordered parameter list (names compare case-insensitively,
/// as PostgreSQL's GUC names do); whether that changed anything.
pub(crate) fn set_param(params: &mut Params, name: &str, value: &str) -> bool {
    match params
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
    {
        Some((_, v)) if v == value => false,
        Some((_, v)) => {
            *v = value.to_owned();
            true
        }
        None => {
            params.push((name.to_owned(), value.to_owned()));
            true
        }
    }
}

fn server_error(addr: &str, body: &[u8]) -> ServerError {
    let mut severity = String::from("ERROR");
    let mut code = String::from("XX000");
    let mut message = String::new();
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, after)) = cstr(after) else {
            break;
        };
        match field {
            b'S' => severity = value.to_owned(),
            b'C' => code = value.to_owned(),
            b'M' => message = value.to_owned(),
            _ => {}
        }
        rest = after;
    }
    ServerError::Server {
        addr: addr.to_owned(),
        severity,
        code,
        message,
    }
}

/// Sends a CancelRequest for `key` over `stream`, a new connection to the
/// server as the protocol requires, and waits for the server to close it.
pub async fn forward_cancel(mut stream: ServerStream, key: CancelKey) -> io::Result<()> {
    let mut out = BytesMut::new();
    frontend::cancel_request(key.pid, key.secret, &mut out);
    stream.write_all(&out).await?;
    // The server closes the connection when done; waiting for that means
    // the cancel has been delivered when this returns.
    let mut sink = BytesMut::new();
    let _ = stream.read_buf(&mut sink).await;
    Ok(())
}

/// A cap on server connections shared by several pools
/// (`max_db_connections`, `max_user_connections`).
#[derive(Debug)]
pub struct ConnectionLimit {
    /// What the limit is, for logs (`max_db_connections=10 for database app`).
    pub name: String,
    /// One permit per allowed connection.
    pub permits: Arc<Semaphore>,
    /// The pools under this limit, so that one needing a connection can
    /// make another close an idle one (weak: the limit must not keep pools
    /// alive, and pools hold the limit).
    pub pools: parking_lot::Mutex<Vec<wharf::WeakPool<ServerManager>>>,
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
    async fn acquire(&self, addr: &ServerAddr) -> Result<OwnedSemaphorePermit, ServerError> {
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
                        addr: addr.to_string(),
                        source: io::Error::other(format!("{} is shut down", self.name)),
                    })
                }
                Err(_) => {}
            }
        }
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

/// The `wharf` engine's manager for one server pool.
#[derive(Debug, Clone)]
pub struct ServerManager {
    /// Where and how to log in; RELOAD swaps it (new connections use the
    /// new one).
    pub target: Arc<parking_lot::RwLock<Arc<ServerTarget>>>,
    /// Limits shared with other pools, in acquisition order.
    pub limits: Vec<Arc<ConnectionLimit>>,
    /// The pool's counters, registry and PAUSE state.
    pub tracking: crate::stats::Tracking,
}

impl wharf::Manager for ServerManager {
    type Connection = ServerConn;
    type Error = ServerError;

    async fn connect(&self) -> Result<ServerConn, ServerError> {
        // A paused database opens no servers (PAUSE waits for them all to
        // close); the engine's connect_timeout bounds this wait.
        self.tracking.control.wait_resumed().await;
        let target = self.target.read().clone();
        let addr = match &target.addr {
            ServerAddr::Tcp { host, port } => (host.clone(), *port),
            ServerAddr::Unix(path) => (path.display().to_string(), 0),
        };
        let entry = self.tracking.registry.register_server(
            self.tracking.pool.clone(),
            addr,
            target.clone(),
            self.target.clone(),
        );
        let mut conn = ServerConn::connect(&target, &self.limits).await?;
        entry
            .entry
            .logged_in(conn.key.pid, Some(conn.stream.local()));
        entry.set_idle();
        conn.entry = Some(entry);
        Ok(conn)
    }

    async fn check(&self, conn: &mut ServerConn) -> Result<(), ServerError> {
        let target = conn.target.clone();
        let Some(query) = &target.check_query else {
            return Ok(());
        };
        let addr = target.addr.to_string();
        if let Some(entry) = &conn.entry {
            entry.set_tested();
        }
        let checked = conn.simple_query(query, &addr).await;
        if let Some(entry) = &conn.entry {
            entry.set_idle();
        }
        checked
    }

    fn has_broken(&self, conn: &mut ServerConn) -> bool {
        conn.broken || conn.dirty || !Arc::ptr_eq(&conn.target, &self.target.read())
    }
}

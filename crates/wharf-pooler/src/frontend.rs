//! The client side: one task per client connection. It runs the startup
//! and authentication, sends the welcome, then relays bytes between the
//! client and whichever server it is linked to, linking on the first
//! message that needs a server and releasing at the end of each
//! transaction (transaction mode), statement (statement mode) or session.

use std::collections::HashMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use wharf::Pooled;

use crate::auth::{authenticate_client, ClientAuthError};
use crate::backend::{set_param, ServerConn, ServerError, ServerManager};
use crate::cancel::{CancelRegistry, CancelSlot};
use crate::config::{Config, PoolMode, Secret};
use crate::proto::{backend, read_startup, ProtocolError, Scanner, Startup};
use crate::router::{RouteError, Router, ServerPool};

/// What every client task shares.
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// The server pools.
    pub router: Router,
    /// Client cancel keys.
    pub cancels: CancelRegistry,
    /// The auth file's secrets.
    pub secrets: Arc<HashMap<String, Secret>>,
}

/// A client socket that can be split into halves for relaying.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The reading half.
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// The writing half.
    type Writer<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    /// Borrows the socket as two halves.
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);
}

impl ClientStream for TcpStream {
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }
}

impl ClientStream for UnixStream {
    type Reader<'a> = tokio::net::unix::ReadHalf<'a>;
    type Writer<'a> = tokio::net::unix::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }
}

/// Parameters PostgreSQL reports and the pooler keeps in step between a
/// client and whichever server it gets (PgBouncer's tracked parameters).
const TRACKED: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
    "IntervalStyle",
];

/// Startup parameters a client may send besides the tracked ones.
const ACCEPTED: &[&str] = &["user", "database"];

/// How long login may take when `client_login_timeout` is off.
const NO_LOGIN_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a client session ended early, already reported to the client when
/// it was still there to hear it.
#[derive(Debug)]
struct Ended;

/// Serves one client connection from its first byte to its last.
pub async fn serve_client<S: ClientStream>(mut stream: S, peer: String, shared: Arc<Shared>) {
    let settings = &shared.config.pgbouncer;
    let login_timeout = settings.client_login_timeout.unwrap_or(NO_LOGIN_TIMEOUT);
    let login = tokio::time::timeout(login_timeout, login(&mut stream, &peer, &shared)).await;
    let session = match login {
        Ok(Ok(Some(session))) => session,
        Ok(Ok(None)) | Ok(Err(Ended)) => return,
        Err(_) => {
            fatal(&mut stream, "08P01", "client_login_timeout").await;
            tracing::info!(%peer, "closing client: login timed out");
            return;
        }
    };
    let registered = shared.cancels.register();
    if send_welcome(&mut stream, &session, registered.key)
        .await
        .is_err()
    {
        return;
    }
    if settings.log_connections {
        tracing::info!(%peer, database = %session.pool.database, user = %session.user, "client logged in");
    }
    let (reader, writer) = stream.halves();
    let mut relay = Relay {
        reader,
        writer,
        pool: &session.pool,
        cancel: &registered.slot,
        params: session.params,
        id: NEXT_SESSION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        params_version: 0,
        cbuf: BytesMut::with_capacity(READ_CHUNK),
        cscan: Scanner::default(),
        state: ClientState::default(),
        max_packet: settings.max_packet_size,
    };
    let reason = relay.run().await;
    if settings.log_disconnections {
        tracing::info!(%peer, database = %session.pool.database, user = %session.user, reason, "client closed");
    }
}

struct Session {
    user: String,
    pool: Arc<ServerPool>,
    /// The client's tracked parameters, as it should see them.
    params: Vec<(String, String)>,
    /// Every parameter to report in the welcome.
    welcome: Vec<(String, String)>,
}

/// Startup, authentication and routing. `None` for connections that were
/// not sessions (cancel requests).
async fn login<S: ClientStream>(
    stream: &mut S,
    peer: &str,
    shared: &Shared,
) -> Result<Option<Session>, Ended> {
    let params = loop {
        match read_startup(stream).await {
            Ok(Startup::SslRequest) | Ok(Startup::GssEncRequest) => {
                // No encryption yet: 'N' tells the client to go on in plain text.
                if stream.write_all(b"N").await.is_err() {
                    return Err(Ended);
                }
            }
            Ok(Startup::Cancel(key)) => {
                shared.cancels.cancel(key).await;
                return Ok(None);
            }
            Ok(Startup::Startup { params, .. }) => break params,
            Err(ProtocolError::Closed) => return Err(Ended),
            Err(err) => {
                tracing::info!(%peer, error = %err, "closing client: bad startup packet");
                fatal(stream, "08P01", &format!("invalid startup packet: {err}")).await;
                return Err(Ended);
            }
        }
    };
    let settings = &shared.config.pgbouncer;
    let mut user = None;
    let mut database = None;
    let mut client_params = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            _ if TRACKED.iter().any(|t| t.eq_ignore_ascii_case(&name)) => {
                client_params.push((name, value))
            }
            _ if ACCEPTED.contains(&name.as_str())
                || settings
                    .ignore_startup_parameters
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(&name)) => {}
            _ => {
                let message = format!("unsupported startup parameter: {name}");
                tracing::info!(%peer, "closing client: {message}");
                fatal(stream, "08P01", &message).await;
                return Err(Ended);
            }
        }
    }
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        fatal(stream, "28000", "no user name specified in startup packet").await;
        return Err(Ended);
    };
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());

    // auth_type = any logs every client in as the database's forced user;
    // without one there is nobody to log in as (PgBouncer refuses too).
    if settings.auth_type == crate::config::AuthType::Any
        && shared
            .config
            .database(&database)
            .is_some_and(|db| db.user.is_none())
    {
        tracing::warn!(%peer, %database, "closing client: auth_type = any needs a forced user");
        let message = format!(
            "bouncer config error: auth_type = any needs database \"{database}\" to force a user="
        );
        fatal(stream, "08P01", &message).await;
        return Err(Ended);
    }
    let secret = shared.secrets.get(&user);
    match authenticate_client(stream, settings.auth_type, &user, secret).await {
        Ok(()) => {}
        Err(ClientAuthError::Failed(user)) => {
            tracing::info!(%peer, %user, "closing client: password authentication failed");
            fatal(
                stream,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
            )
            .await;
            return Err(Ended);
        }
        Err(ClientAuthError::Protocol(err)) => {
            tracing::info!(%peer, error = %err, "closing client during authentication");
            fatal(stream, "08P01", &format!("authentication failed: {err}")).await;
            return Err(Ended);
        }
    }

    let pool = match shared.router.route(&database, &user) {
        Ok(pool) => pool,
        Err(err @ RouteError::UnknownDatabase(_)) => {
            tracing::info!(%peer, %database, "closing client: unknown database");
            fatal(stream, "3D000", &err.to_string()).await;
            return Err(Ended);
        }
        Err(err) => {
            tracing::warn!(%peer, error = %err, "closing client: pool unusable");
            fatal(stream, "08P01", &err.to_string()).await;
            return Err(Ended);
        }
    };
    let server_params = match pool.welcome() {
        Some(params) => params,
        None => match first_server(&pool).await {
            Ok(server) => {
                pool.set_welcome(&server.params);
                pool.welcome().unwrap_or_default()
            }
            Err((code, message)) => {
                tracing::warn!(%peer, pool = %pool.database, error = %message, "closing client: no server connection");
                fatal(stream, &code, &message).await;
                return Err(Ended);
            }
        },
    };
    if settings.application_name_add_host {
        let app = client_params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("application_name"))
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        set_param(
            &mut client_params,
            "application_name",
            &format!("{app} - {peer}"),
        );
    }
    let mut welcome = server_params.to_vec();
    for (name, value) in &client_params {
        set_param(&mut welcome, name, value);
    }
    let params = welcome
        .iter()
        .filter(|(name, _)| TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name)))
        .cloned()
        .collect();
    Ok(Some(Session {
        user,
        pool,
        params,
        welcome,
    }))
}

/// The first server of a pool that has never had one, for the welcome.
/// Server pools fail fast, so a failed server login reaches the client at
/// once, with the server's own SQLSTATE and message when it sent one (a
/// wrong password does not get better by waiting).
async fn first_server(pool: &ServerPool) -> Result<Pooled<ServerManager>, (String, String)> {
    pool.pool
        .get()
        .await
        .map_err(|err| server_unavailable(&err))
}

/// The SQLSTATE and message to give a client for a pool error.
fn server_unavailable(err: &wharf::Error) -> (String, String) {
    let cause = match err {
        wharf::Error::Unavailable { last_error } | wharf::Error::Timeout { last_error, .. } => {
            last_error.as_ref()
        }
        _ => None,
    };
    match cause.and_then(|c| c.downcast_ref::<ServerError>()) {
        Some(ServerError::Server { code, message, .. }) => (code.clone(), message.clone()),
        _ => (
            "08006".to_owned(),
            format!("pooler could not connect to server: {err}"),
        ),
    }
}

async fn send_welcome<S: ClientStream>(
    stream: &mut S,
    session: &Session,
    key: crate::proto::CancelKey,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(512);
    backend::auth_ok(&mut out);
    for (name, value) in &session.welcome {
        backend::parameter_status(&mut out, name, value);
    }
    backend::backend_key_data(&mut out, key);
    backend::ready_for_query(&mut out, b'I');
    stream.write_all(&out).await
}

/// Sends a FATAL error; the connection is closed after it either way.
async fn fatal<W: AsyncWrite + Unpin>(writer: &mut W, code: &str, message: &str) {
    let mut out = BytesMut::new();
    backend::error(&mut out, "FATAL", code, message);
    let _ = writer.write_all(&out).await;
    let _ = writer.shutdown().await;
}

const READ_CHUNK: usize = 16 * 1024;

static NEXT_SESSION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What the client has asked for and not yet been answered.
#[derive(Debug, Default)]
struct ClientState {
    /// ReadyForQuery messages owed: one per Query, Sync and FunctionCall.
    pending: usize,
    /// Extended-protocol messages sent since the last Sync: the server is
    /// mid-batch and must stay linked.
    batch_open: bool,
    /// The client sent Terminate or closed its socket.
    terminated: bool,
    /// The last Execute or Query (`E` or `Q`) and the Syncs sent after it,
    /// while nothing but Syncs and Flushes has followed: if it turns out to
    /// be a COPY FROM STDIN, the server ignores those Syncs.
    since_command: Option<(u8, usize)>,
    /// The server is in COPY FROM STDIN until the client's CopyDone or
    /// CopyFail; `true` if the COPY came by the extended protocol (the
    /// server then waits for a Sync after it).
    copy_in: Option<bool>,
    /// The server has not yet ended the COPY FROM STDIN (CommandComplete
    /// or ErrorResponse).
    server_copy: bool,
    /// Syncs taken as ignored when a COPY FROM STDIN started that the
    /// server may answer after all: a COPY that fails before the server
    /// reads them answers them. Settled by [`probe`] once the client is
    /// owed nothing else.
    copy_doubtful: usize,
}

impl ClientState {
    fn note(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => {
                self.pending += 1;
                self.since_command = (tag == b'Q').then_some((tag, 0));
            }
            // The server ignores Sync (and Flush) in COPY FROM STDIN.
            b'S' if self.copy_in.is_some() => {}
            b'S' => {
                self.pending += 1;
                self.batch_open = false;
                if let Some((_, syncs)) = &mut self.since_command {
                    *syncs += 1;
                }
            }
            b'X' => self.terminated = true,
            b'H' => {}
            // COPY data changes nothing about who is owed what; the end of
            // an extended-protocol COPY still needs the client's Sync.
            b'd' | b'c' | b'f' => {
                self.since_command = None;
                if tag != b'd' && self.copy_in.take() == Some(true) {
                    self.batch_open = true;
                }
            }
            _ => {
                self.batch_open = true;
                self.since_command = (tag == b'E').then_some((tag, 0));
            }
        }
    }

    /// The server sent CopyInResponse: the Syncs the client sent after the
    /// COPY's Execute are ignored, and so are more until CopyDone/CopyFail
    /// (if the COPY fails before the server reads them, it answers them
    /// after all: see `copy_doubtful`). A client that sent
    /// anything else after the COPY (it should have waited) is left as it
    /// was: owed more than it gets, it keeps its server, which is safe.
    fn copy_in_started(&mut self) {
        if let Some((kind, syncs)) = self.since_command.take() {
            self.pending = self.pending.saturating_sub(syncs);
            self.copy_in = Some(kind == b'E');
            self.server_copy = true;
            self.copy_doubtful = syncs;
        }
    }

    /// What the server sent, by tag, for the COPY bookkeeping.
    fn server_message(&mut self, tag: u8) {
        match tag {
            b'G' => self.copy_in_started(),
            // The COPY went through: the server read every Sync before
            // the CopyDone, and ignored them.
            b'C' if self.server_copy => {
                self.server_copy = false;
                self.copy_doubtful = 0;
            }
            b'E' => self.server_copy = false,
            _ => {}
        }
    }
}

/// How a linked period ended.
enum Unlinked {
    /// At a transaction (or statement) boundary: the server may go back.
    Released,
    /// The client is gone or said Terminate; `clean` if its server is idle
    /// and may go back to the pool.
    ClientGone {
        /// Whether the server is outside any transaction.
        clean: bool,
    },
    /// The server failed; the client was told.
    ServerGone,
    /// A statement-mode client opened a transaction.
    TransactionInStatementMode,
    /// The client broke the protocol.
    ClientBroke(ProtocolError),
}

enum Event {
    WroteServer(std::io::Result<usize>),
    ReadClient(std::io::Result<usize>),
    WroteClient(std::io::Result<usize>),
    ReadServer(std::io::Result<usize>),
}

struct Relay<'a, R, W> {
    reader: R,
    writer: W,
    pool: &'a ServerPool,
    cancel: &'a CancelSlot,
    params: Vec<(String, String)>,
    /// Identifies this session to the servers it links to.
    id: u64,
    /// Bumped whenever `params` changes.
    params_version: u64,
    /// Bytes from the client; the scanned front part goes to the server.
    cbuf: BytesMut,
    cscan: Scanner,
    state: ClientState,
    max_packet: usize,
}

impl<R: AsyncRead + Unpin + Send, W: AsyncWrite + Unpin + Send> Relay<'_, R, W> {
    /// Relays until the session ends; returns why, for the log.
    async fn run(&mut self) -> &'static str {
        loop {
            if self.cscan.ready() > 0 {
                let Ok(mut server) = self.link().await else {
                    return "no server available";
                };
                let outcome = self.linked(&mut server).await;
                self.cancel.unlink();
                match outcome {
                    Unlinked::Released => self.release(server, false).await,
                    Unlinked::ClientGone { clean } => {
                        if clean {
                            self.release(server, self.pool.mode == PoolMode::Session)
                                .await;
                        } else {
                            // Left mid-transaction or mid-response: the
                            // server's state is unknown, so it is closed.
                            server.broken = true;
                        }
                        return "client disconnected";
                    }
                    Unlinked::ServerGone => {
                        server.broken = true;
                        return "server connection failed";
                    }
                    Unlinked::TransactionInStatementMode => {
                        server.broken = true;
                        fatal(
                            &mut self.writer,
                            "08P01",
                            "transaction blocks not allowed in statement pooling mode",
                        )
                        .await;
                        return "transaction in statement mode";
                    }
                    Unlinked::ClientBroke(err) => {
                        server.broken = true;
                        return self.client_broke(err).await;
                    }
                }
                continue;
            }
            if self.state.terminated {
                return "client disconnected";
            }
            make_room(&mut self.cbuf);
            match self.reader.read_buf(&mut self.cbuf).await {
                Ok(0) | Err(_) => return "client disconnected",
                Ok(_) => {
                    if let Err(err) = self.scan_client() {
                        return self.client_broke(err).await;
                    }
                }
            }
        }
    }

    fn scan_client(&mut self) -> Result<(), ProtocolError> {
        let state = &mut self.state;
        let ready = self.cscan.scan_until(
            &self.cbuf,
            self.max_packet,
            |tag| tag == b'X',
            |tag, _| {
                state.note(tag);
                // Terminate is for the pooler, not the server, and nothing
                // a client sends after it counts.
                if tag == b'X' {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        if state.terminated {
            self.cbuf.truncate(ready);
        }
        Ok(())
    }

    /// Takes a server from the pool and brings it in line with the client.
    async fn link(&mut self) -> Result<Pooled<ServerManager>, Ended> {
        let mut server = match self.pool.pool.get().await {
            Ok(server) => server,
            Err(err) => {
                let message = match err {
                    wharf::Error::Timeout { .. } => format!("query_wait_timeout: {err}"),
                    wharf::Error::Unavailable { .. } => format!(
                        "server login has been failing, try again later (server_login_retry): {err}"
                    ),
                    other => other.to_string(),
                };
                tracing::info!(pool = %self.pool.database, user = %self.pool.user, "closing client: {message}");
                fatal(&mut self.writer, "08P01", &message).await;
                return Err(Ended);
            }
        };
        let me = (self.id, self.params_version);
        if server.synced_with != Some(me) {
            let sets: Vec<String> = self
                .params
                .iter()
                .filter(|(name, value)| server.param(name) != Some(value.as_str()))
                .map(|(name, value)| format!("SET {name} TO '{}'", value.replace('\'', "''")))
                .collect();
            if !sets.is_empty() {
                let addr = self.pool.addr.to_string();
                if let Err(err) = server.simple_query(&sets.join(";"), &addr).await {
                    tracing::warn!(error = %err, "could not restore client parameters on server");
                    server.broken = true;
                    fatal(&mut self.writer, err.sqlstate(), &err.to_string()).await;
                    return Err(Ended);
                }
            }
            server.synced_with = Some(me);
        }
        self.cancel.link(self.pool.addr.clone(), server.key);
        Ok(server)
    }

    /// Returns a server to its pool, reset first when the mode asks.
    async fn release(&mut self, mut server: Pooled<ServerManager>, session_end: bool) {
        if server.broken {
            return;
        }
        if session_end || self.pool.reset_always {
            if let Some(reset) = &self.pool.reset_query {
                let addr = self.pool.addr.to_string();
                if let Err(err) = server.simple_query(reset, &addr).await {
                    tracing::warn!(error = %err, "server reset query failed; closing server");
                    server.broken = true;
                }
                // Reset puts parameters back to the server's defaults.
                server.synced_with = None;
            }
        }
    }

    /// Relays between the client and `server` until the server may be
    /// released or either side goes away.
    async fn linked(&mut self, server: &mut ServerConn) -> Unlinked {
        let mode = self.pool.mode;
        let ServerConn {
            stream,
            rbuf,
            params: server_params,
            synced_with,
            ..
        } = server;
        let id = self.id;
        let (mut sr, mut sw) = stream.split();
        let mut sscan = Scanner::default();
        let mut tx_status = b'I';
        loop {
            let idle = self.state.pending == 0
                && !self.state.batch_open
                && self.state.copy_in.is_none()
                && sscan.ready() == 0
                && sscan.at_boundary();
            if idle && self.state.copy_doubtful > 0 {
                // A COPY failed with Syncs the server may or may not have
                // answered: ask it, relaying whatever else it still sends.
                self.state.copy_doubtful = 0;
                let mut on_param = |body: &[u8]| {
                    if note_parameter(server_params, &mut self.params, body) {
                        self.params_version += 1;
                        *synced_with = Some((id, self.params_version));
                    }
                };
                match probe(&mut sr, &mut sw, rbuf, &mut self.writer, &mut on_param).await {
                    Ok(status) => tx_status = status,
                    Err(Probe::Client) => return Unlinked::ClientGone { clean: false },
                    Err(Probe::Server(err)) => {
                        tracing::warn!(error = %err, "server connection failed");
                        self.server_failed().await;
                        return Unlinked::ServerGone;
                    }
                }
                continue;
            }
            if idle && mode == PoolMode::Statement && tx_status != b'I' {
                return Unlinked::TransactionInStatementMode;
            }
            let quiet_client = self.cscan.ready() == 0 && self.cscan.at_boundary();
            // Gone in the middle of a message, of an extended-protocol batch
            // or of a COPY: the server waits for bytes that will never come.
            if self.state.terminated
                && (self.state.batch_open
                    || self.state.copy_in.is_some()
                    || !self.cscan.at_boundary())
            {
                return Unlinked::ClientGone { clean: false };
            }
            if idle && quiet_client && self.state.terminated {
                return Unlinked::ClientGone {
                    clean: tx_status == b'I',
                };
            }
            if idle
                && quiet_client
                && self.cbuf.is_empty()
                && tx_status == b'I'
                && mode != PoolMode::Session
            {
                return Unlinked::Released;
            }

            let event = {
                let Relay {
                    reader,
                    writer,
                    cbuf,
                    cscan,
                    state,
                    ..
                } = &mut *self;
                let client_side = async {
                    let ready = cscan.ready();
                    if ready > 0 {
                        Event::WroteServer(sw.write(&cbuf[..ready]).await)
                    } else if state.terminated {
                        std::future::pending().await
                    } else {
                        make_room(cbuf);
                        Event::ReadClient(reader.read_buf(cbuf).await)
                    }
                };
                let server_side = async {
                    let ready = sscan.ready();
                    if ready > 0 {
                        Event::WroteClient(writer.write(&rbuf[..ready]).await)
                    } else {
                        make_room(rbuf);
                        Event::ReadServer(sr.read_buf(rbuf).await)
                    }
                };
                first_of(client_side, server_side).await
            };
            match event {
                Event::WroteServer(Ok(n)) => {
                    self.cbuf.advance(n);
                    self.cscan.consumed(n);
                }
                Event::WroteServer(Err(err)) | Event::ReadServer(Err(err)) => {
                    tracing::warn!(error = %err, "server connection failed");
                    self.server_failed().await;
                    return Unlinked::ServerGone;
                }
                Event::ReadServer(Ok(0)) => {
                    tracing::warn!("server closed the connection unexpectedly");
                    self.server_failed().await;
                    return Unlinked::ServerGone;
                }
                Event::ReadServer(Ok(_)) => {
                    let state = &mut self.state;
                    let params = &mut self.params;
                    let version = &mut self.params_version;
                    let scanned = sscan.scan(
                        rbuf,
                        i32::MAX as usize,
                        |tag| tag == b'Z' || tag == b'S',
                        |tag, body| match (tag, body) {
                            (b'Z', Some(body)) => {
                                // In an extended-protocol COPY FROM STDIN the
                                // only Syncs the server can be answering are
                                // ones sent after the COPY's Execute, which
                                // were not counted: the COPY failed before the
                                // server read them.
                                if state.copy_in == Some(true) {
                                    state.copy_doubtful = state.copy_doubtful.saturating_sub(1);
                                } else {
                                    state.pending = state.pending.saturating_sub(1);
                                }
                                tx_status = body.first().copied().unwrap_or(b'I');
                            }
                            (b'S', Some(body)) if note_parameter(server_params, params, body) => {
                                // Both sides changed together: still in step.
                                *version += 1;
                                *synced_with = Some((id, *version));
                            }
                            (tag, _) => state.server_message(tag),
                        },
                    );
                    if let Err(err) = scanned {
                        tracing::warn!(error = %err, "server sent a malformed message");
                        self.server_failed().await;
                        return Unlinked::ServerGone;
                    }
                }
                Event::ReadClient(Ok(0)) | Event::ReadClient(Err(_)) => {
                    self.state.terminated = true;
                }
                Event::ReadClient(Ok(_)) => {
                    if let Err(err) = self.scan_client() {
                        return Unlinked::ClientBroke(err);
                    }
                }
                Event::WroteClient(Ok(n)) => {
                    rbuf.advance(n);
                    sscan.consumed(n);
                }
                Event::WroteClient(Err(_)) => {
                    // The client is gone mid-response; the server is still
                    // sending, so it cannot go back to the pool.
                    rbuf.clear();
                    return Unlinked::ClientGone { clean: false };
                }
            }
        }
    }

    /// Ends a session whose client broke the protocol; returns the reason
    /// for the log.
    async fn client_broke(&mut self, err: ProtocolError) -> &'static str {
        tracing::info!(error = %err, "client sent a malformed message");
        fatal(
            &mut self.writer,
            "08P01",
            &format!("invalid message: {err}"),
        )
        .await;
        "protocol error"
    }

    async fn server_failed(&mut self) {
        fatal(
            &mut self.writer,
            "08006",
            "server closed the connection unexpectedly",
        )
        .await;
    }
}

/// Why [`probe`] failed.
enum Probe {
    /// The client could not be written to.
    Client,
    /// The server failed.
    Server(std::io::Error),
}

/// Sends the server an empty query and relays to the client everything
/// the server sends before answering it (ReadyForQuery for Syncs the
/// pooler could not tell the server had ignored, and any responses behind
/// them), swallowing the answer itself. Called only when everything
/// scanned has been relayed, so `rbuf` starts at a message. Returns the
/// server's transaction status.
async fn probe<R, S, W>(
    sr: &mut R,
    sw: &mut S,
    rbuf: &mut BytesMut,
    client: &mut W,
    on_param: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<u8, Probe>
where
    R: AsyncRead + Unpin,
    S: AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    const EMPTY_QUERY: [u8; 6] = [b'Q', 0, 0, 0, 5, 0];
    sw.write_all(&EMPTY_QUERY).await.map_err(Probe::Server)?;
    let mut answered = false;
    // Bytes of the message being relayed that are still to go.
    let mut relaying = 0usize;
    loop {
        if relaying > 0 && !rbuf.is_empty() {
            let n = relaying.min(rbuf.len());
            client
                .write_all(&rbuf[..n])
                .await
                .map_err(|_| Probe::Client)?;
            rbuf.advance(n);
            relaying -= n;
            continue;
        }
        if relaying == 0 && rbuf.len() >= 5 {
            let tag = rbuf[0];
            let len = i32::from_be_bytes([rbuf[1], rbuf[2], rbuf[3], rbuf[4]]);
            let Ok(len) = usize::try_from(len) else {
                return Err(Probe::Server(std::io::ErrorKind::InvalidData.into()));
            };
            if len < 4 {
                return Err(Probe::Server(std::io::ErrorKind::InvalidData.into()));
            }
            let whole = rbuf.len() > len;
            match tag {
                b'I' if len == 4 => {
                    rbuf.advance(5);
                    answered = true;
                    continue;
                }
                // Read whole before deciding.
                b'Z' | b'S' if !whole => {}
                b'Z' if answered => {
                    let status = rbuf.get(5).copied().unwrap_or(b'I');
                    rbuf.advance(1 + len);
                    return Ok(status);
                }
                _ => {
                    if tag == b'S' {
                        on_param(&rbuf[5..1 + len]);
                    }
                    relaying = 1 + len;
                    continue;
                }
            }
        }
        match sr.read_buf(rbuf).await {
            Ok(0) => return Err(Probe::Server(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(err) => return Err(Probe::Server(err)),
        }
    }
}

/// Records a ParameterStatus from the server, for the server and, if the
/// parameter is tracked, as the client's own setting. `true` when the
/// client's tracked parameters changed.
fn note_parameter(
    server_params: &mut Vec<(String, String)>,
    client_params: &mut Vec<(String, String)>,
    body: &[u8],
) -> bool {
    let Some((name, rest)) = crate::proto::cstr(body) else {
        return false;
    };
    let Some((value, _)) = crate::proto::cstr(rest) else {
        return false;
    };
    set_param(server_params, name, value);
    if TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name)) {
        set_param(client_params, name, value);
        return true;
    }
    false
}

/// Keeps a read buffer able to take a full chunk: `read_buf` only reads
/// into spare capacity, and a buffer drained by `advance` may have little.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Whichever of two futures finishes first (both are cancel-safe I/O).
async fn first_of<T>(a: impl Future<Output = T>, b: impl Future<Output = T>) -> T {
    tokio::select! {
        value = a => value,
        value = b => value,
    }
}

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
use crate::lifecycle::{Lifecycle, ShutdownMode};
use crate::proto::{backend, read_startup, ProtocolError, Scanner, Startup};
use crate::router::{RouteError, Router, ServerPool};
use crate::stats::{ClientEntry, ClientInfo, PoolStats};

/// What every client task shares.
pub struct Shared {
    /// The server pools, and the configuration and secrets in force.
    pub router: Router,
    /// Client cancel keys.
    pub cancels: CancelRegistry,
    /// RELOAD and SHUTDOWN.
    pub lifecycle: Lifecycle,
}

impl Shared {
    /// The configuration in force now (a snapshot: RELOAD may replace it).
    pub fn config(&self) -> Arc<Config> {
        self.router.config()
    }

    /// The auth file's secrets in force now.
    pub fn secrets(&self) -> Arc<HashMap<String, Secret>> {
        self.router.secrets()
    }
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

    /// The pooler's end of the connection (`SHOW CLIENTS` local_addr).
    fn local_end(&self) -> Option<(String, u16)> {
        None
    }

    /// The peer's OS user and process id, when the socket can tell (Unix).
    fn peer_credentials(&self) -> Option<(u32, Option<u32>)> {
        None
    }
}

impl ClientStream for TcpStream {
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }
    fn local_end(&self) -> Option<(String, u16)> {
        self.local_addr()
            .ok()
            .map(|a| (a.ip().to_string(), a.port()))
    }
}

impl ClientStream for UnixStream {
    type Reader<'a> = tokio::net::unix::ReadHalf<'a>;
    type Writer<'a> = tokio::net::unix::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }
    fn local_end(&self) -> Option<(String, u16)> {
        Some(("unix".to_owned(), 0))
    }
    fn peer_credentials(&self) -> Option<(u32, Option<u32>)> {
        let cred = self.peer_cred().ok()?;
        Some((cred.uid(), cred.pid().and_then(|p| u32::try_from(p).ok())))
    }
}

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
    let config = shared.config();
    let settings = &config.pgbouncer;
    let login_timeout = settings.client_login_timeout.unwrap_or(NO_LOGIN_TIMEOUT);
    let login = tokio::time::timeout(login_timeout, login(&mut stream, &peer, &shared)).await;
    let session = match login {
        Ok(Ok(LoggedIn::Pool(session))) => session,
        // Outside the login timeout: a cancel given up midway would leave
        // its server closed for nothing.
        Ok(Ok(LoggedIn::Cancel(key))) => {
            let wait = shared.config().pgbouncer.cancel_wait_timeout;
            shared.cancels.cancel_within(key, wait).await;
            return;
        }
        Ok(Ok(LoggedIn::Console(console))) => {
            let info = client_info(
                &stream,
                &peer,
                &console.user,
                "pgbouncer",
                &console.user,
                true,
            );
            let entry = shared
                .router
                .stats()
                .register_client(info, application_name(&console.params));
            let console = crate::admin::Console {
                user: console.user,
                role: console.role,
                entry,
            };
            crate::admin::serve(&mut stream, &shared, console).await;
            return;
        }
        Ok(Err(Ended)) => return,
        Err(_) => {
            refuse(&mut stream, &shared, &peer, "08P01", "client_login_timeout").await;
            tracing::info!(%peer, "closing client: login timed out");
            return;
        }
    };
    let registered = shared.cancels.register(session.pool.stats.clone());
    if send_welcome(&mut stream, &session, registered.key)
        .await
        .is_err()
    {
        return;
    }
    if settings.log_connections {
        tracing::info!(%peer, database = %session.pool.database, user = %session.user, "client logged in");
    }
    let info = client_info(
        &stream,
        &peer,
        &session.user,
        &session.pool.database,
        &session.pool.user,
        false,
    );
    let id = info.id;
    let client = shared
        .router
        .stats()
        .register_client(info, application_name(&session.params));
    session
        .pool
        .stats
        .client_logins
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let params_set = session.pool.param_sets.intern(&session.params);
    let (reader, writer) = stream.halves();
    let mut relay = Relay {
        reader,
        writer,
        pool: &session.pool,
        cancel: &registered.slot,
        params: session.params,
        id,
        entry: &client.entry,
        params_set,
        params_changed: false,
        linked_mode: session.pool.mode(),
        cbuf: BytesMut::with_capacity(READ_CHUNK),
        cscan: Scanner::default(),
        state: ClientState::default(),
        max_packet: settings.max_packet_size,
        shared: &shared,
        user: &session.user,
        timeouts: Timeouts::default(),
        timeouts_from: None,
        timer: Box::pin(tokio::time::sleep(NO_LOGIN_TIMEOUT)),
        armed: None,
        shutdown: Some(Box::pin(
            shared
                .lifecycle
                .wait_clients_must_go(ShutdownMode::WaitForServers, &client.entry),
        )),
    };
    // KILL and KILL_CLIENT drop the relay wherever it is; a server it
    // held mid-transaction is closed, not pooled (see `ServerConn::dirty`).
    let killed = client.entry.clone();
    let outcome = tokio::select! {
        // Once killed, not one more message is relayed.
        biased;
        () = killed.killed() => None,
        reason = relay.run() => Some(reason),
    };
    let reason = match outcome {
        Some(reason) => reason,
        None => {
            let message = killed.kill_reason().message();
            relay.pooler_error("08P01", message).await;
            "killed by the admin console"
        }
    };
    if settings.log_disconnections {
        tracing::info!(%peer, database = %session.pool.database, user = %session.user, reason, "client closed");
    }
}

/// What a login turned out to be.
enum LoggedIn {
    /// A client of a server pool.
    Pool(Session),
    /// An admin console session.
    Console(ConsoleLogin),
    /// A cancel request, to be passed on.
    Cancel(crate::proto::CancelKey),
}

/// A console login: who, with which rights.
struct ConsoleLogin {
    user: String,
    role: crate::admin::Role,
    params: Vec<(String, String)>,
}

/// The registry's description of a client connection.
fn client_info<S: ClientStream>(
    stream: &S,
    peer: &str,
    user: &str,
    database: &str,
    pool_user: &str,
    admin: bool,
) -> ClientInfo {
    let credentials = stream.peer_credentials();
    let addr = match peer.rsplit_once(':') {
        _ if peer.starts_with("unix:") => ("unix".to_owned(), 0),
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port.parse().unwrap_or(0),
        ),
        None => (peer.to_owned(), 0),
    };
    ClientInfo {
        id: NEXT_SESSION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        user: user.to_owned(),
        database: database.to_owned(),
        pool_user: pool_user.to_owned(),
        addr,
        local_addr: stream.local_end().unwrap_or_default(),
        remote_pid: credentials.and_then(|(_, pid)| pid).unwrap_or(0),
        admin,
    }
}

/// The `application_name` among a client's parameters, or "".
fn application_name(params: &[(String, String)]) -> String {
    params
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("application_name"))
        .map(|(_, value)| value.clone())
        .unwrap_or_default()
}

struct Session {
    user: String,
    pool: Arc<ServerPool>,
    /// The client's tracked parameters, as it should see them.
    params: Vec<(String, String)>,
    /// Every parameter to report in the welcome.
    welcome: Vec<(String, String)>,
}

/// Startup, authentication and routing; or a cancel request.
async fn login<S: ClientStream>(
    stream: &mut S,
    peer: &str,
    shared: &Shared,
) -> Result<LoggedIn, Ended> {
    let params = loop {
        match read_startup(stream).await {
            Ok(Startup::SslRequest) | Ok(Startup::GssEncRequest) => {
                // No encryption yet: 'N' tells the client to go on in plain text.
                if stream.write_all(b"N").await.is_err() {
                    return Err(Ended);
                }
            }
            Ok(Startup::Cancel(key)) => return Ok(LoggedIn::Cancel(key)),
            Ok(Startup::Startup { params, .. }) => break params,
            Err(ProtocolError::Closed) => return Err(Ended),
            Err(err) => {
                tracing::info!(%peer, error = %err, "closing client: bad startup packet");
                refuse(
                    stream,
                    shared,
                    peer,
                    "08P01",
                    &format!("invalid startup packet: {err}"),
                )
                .await;
                return Err(Ended);
            }
        }
    };
    let config = shared.config();
    let settings = &config.pgbouncer;
    let mut user = None;
    let mut database = None;
    let mut client_params = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            _ if crate::backend::is_tracked(&name) => client_params.push((name, value)),
            _ if ACCEPTED.contains(&name.as_str())
                || settings
                    .ignore_startup_parameters
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(&name)) => {}
            _ => {
                let message = format!("unsupported startup parameter: {name}");
                tracing::info!(%peer, "closing client: {message}");
                refuse(stream, shared, peer, "08P01", &message).await;
                return Err(Ended);
            }
        }
    }
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        refuse(
            stream,
            shared,
            peer,
            "28000",
            "no user name specified in startup packet",
        )
        .await;
        return Err(Ended);
    };
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());

    // auth_type = any logs every client in as the database's forced user;
    // without one there is nobody to log in as (PgBouncer refuses too).
    if settings.auth_type == crate::config::AuthType::Any
        && config
            .database(&database)
            .is_some_and(|db| db.user.is_none())
    {
        tracing::warn!(%peer, %database, "closing client: auth_type = any needs a forced user");
        let message = format!(
            "bouncer config error: auth_type = any needs database \"{database}\" to force a user="
        );
        refuse(stream, shared, peer, "08P01", &message).await;
        return Err(Ended);
    }
    // The console: only admin_users and stats_users, except the pooler's
    // own OS user over the Unix socket, who needs no password.
    let console = crate::admin::is_console(&database);
    let own_user = console
        && crate::admin::peer_is_own_user(stream.peer_credentials().map(|(uid, _)| uid), &user);
    let console_role = if own_user {
        Some(crate::admin::Role::Admin)
    } else if console {
        let role = crate::admin::role_of(shared, &user);
        if role.is_none() {
            tracing::info!(%peer, %user, "closing client: not allowed on the admin console");
            refuse(stream, shared, peer, "08P01", "not allowed").await;
            return Err(Ended);
        }
        role
    } else {
        None
    };
    let secrets = shared.secrets();
    let secret = secrets.get(&user);
    let authenticated = if own_user {
        Ok(())
    } else {
        authenticate_client(stream, settings.auth_type, &user, secret).await
    };
    match authenticated {
        Ok(()) => {}
        Err(ClientAuthError::Failed(user)) => {
            tracing::info!(%peer, %user, "closing client: password authentication failed");
            refuse(
                stream,
                shared,
                peer,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
            )
            .await;
            return Err(Ended);
        }
        Err(ClientAuthError::Protocol(err)) => {
            tracing::info!(%peer, error = %err, "closing client during authentication");
            refuse(
                stream,
                shared,
                peer,
                "08P01",
                &format!("authentication failed: {err}"),
            )
            .await;
            return Err(Ended);
        }
    }

    if let Some(role) = console_role {
        return Ok(LoggedIn::Console(ConsoleLogin {
            user,
            role,
            params: client_params,
        }));
    }
    let pool = match shared.router.route(&database, &user) {
        Ok(pool) if pool.control.is_disabled() => {
            tracing::info!(%peer, %database, "closing client: database disabled");
            let message = format!("database does not allow connections: {database}");
            refuse(stream, shared, peer, "08P01", &message).await;
            return Err(Ended);
        }
        Ok(pool) => pool,
        Err(err @ RouteError::UnknownDatabase(_)) => {
            tracing::info!(%peer, %database, "closing client: unknown database");
            refuse(stream, shared, peer, "3D000", &err.to_string()).await;
            return Err(Ended);
        }
        Err(err) => {
            tracing::warn!(%peer, error = %err, "closing client: pool unusable");
            refuse(stream, shared, peer, "08P01", &err.to_string()).await;
            return Err(Ended);
        }
    };
    let server_params = match pool.welcome() {
        Some(params) => params,
        // A paused database opens no server, not even for a welcome.
        None => match async {
            pool.control.wait_resumed().await;
            first_server(&pool).await
        }
        .await
        {
            Ok(server) => {
                pool.set_welcome(&server.params);
                pool.welcome().unwrap_or_default()
            }
            Err((code, message)) => {
                tracing::warn!(%peer, pool = %pool.database, error = %message, "closing client: no server connection");
                refuse(stream, shared, peer, &code, &message).await;
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
        .filter(|(name, _)| crate::backend::is_tracked(name))
        .cloned()
        .collect();
    Ok(LoggedIn::Pool(Session {
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

/// How long a released server waits for a cancel on its way to it when
/// `cancel_wait_timeout` is off.
const CANCEL_HOLD_MAX: Duration = Duration::from_secs(10);

/// Keeps a released server from other clients until the cancel requests on
/// their way to it have landed: one landing after another client's query
/// started would cancel that query. A server whose cancel never lands is
/// closed.
async fn hold_until_cancels_land(mut server: Pooled<ServerManager>, wait: Duration) {
    if let Some(entry) = &server.entry {
        entry.set_being_canceled();
    }
    let landed = tokio::time::timeout(wait, server.cancels.all_landed()).await;
    if landed.is_err() || server.cancels.abandoned() {
        tracing::info!("closing server: a cancel request on its way to it never landed");
        server.broken = true;
        return;
    }
    if let Some(entry) = &server.entry {
        entry.set_idle();
    }
    server.dirty = false;
}

/// Turns a client away during login: the FATAL error to it, and
/// PgBouncer's "pooler error" log line when `log_pooler_errors` is on.
async fn refuse<S: ClientStream>(
    stream: &mut S,
    shared: &Shared,
    peer: &str,
    code: &str,
    message: &str,
) {
    if shared.config().pgbouncer.log_pooler_errors {
        tracing::warn!(%peer, code, "pooler error: {message}");
    }
    fatal(stream, code, message).await;
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
    /// When the query being answered was first sent to a server.
    query_start: Option<tokio::time::Instant>,
    /// When the open transaction's first query was sent to a server.
    xact_start: Option<tokio::time::Instant>,
}

/// The time of one relay event, read from the clock only if something
/// needs it, and then once however many messages the event carried.
#[derive(Debug, Default)]
struct EventTime(Option<tokio::time::Instant>);

impl EventTime {
    fn get(&mut self) -> tokio::time::Instant {
        *self.0.get_or_insert_with(tokio::time::Instant::now)
    }
}

impl ClientState {
    /// Stats for a ReadyForQuery: a query ended, and with status `I` a
    /// transaction too.
    fn ready_for_query(&mut self, status: u8, stats: &PoolStats, now: &mut EventTime) {
        let now = now.get();
        stats.query_done(self.query_start.take().map(|t| now - t));
        if status == b'I' {
            stats.xact_done(self.xact_start.take().map(|t| now - t));
        }
    }

    /// Bytes went to a server: a query (and maybe a transaction) starts
    /// if none was running.
    fn sent_to_server(&mut self, now: &mut EventTime) {
        if self.query_start.is_none() {
            let now = now.get();
            self.query_start = Some(now);
            self.xact_start.get_or_insert(now);
        }
    }

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
    /// A timeout ran out mid-transaction: the server cannot go back.
    TimedOut(Timeout),
    /// A shutdown says the client must go; `clean` if its server is idle
    /// outside any transaction and may go back to the pool.
    ShuttingDown {
        /// Whether the server is outside any transaction.
        clean: bool,
    },
}

/// The timeouts that end a session, with PgBouncer's message for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeout {
    /// `query_timeout`.
    Query,
    /// `idle_transaction_timeout`.
    IdleTransaction,
    /// `transaction_timeout`.
    Transaction,
    /// `client_idle_timeout`.
    ClientIdle,
}

impl Timeout {
    /// What the client is told (SQLSTATE 08P01), as PgBouncer says it.
    fn message(self) -> &'static str {
        match self {
            Timeout::Query => "query timeout",
            Timeout::IdleTransaction => "idle transaction timeout",
            Timeout::Transaction => "transaction timeout",
            Timeout::ClientIdle => "client_idle_timeout",
        }
    }
}

/// The session's timeouts, as the configuration in force says for its
/// (database, user); `None` is off.
#[derive(Debug, Clone, Copy, Default)]
struct Timeouts {
    query: Option<Duration>,
    query_wait: Option<Duration>,
    idle_transaction: Option<Duration>,
    transaction: Option<Duration>,
    client_idle: Option<Duration>,
    log_pooler_errors: bool,
}

impl Timeouts {
    /// Whether any timeout needs the linked loop's clock.
    fn linked(&self) -> bool {
        self.query.is_some() || self.idle_transaction.is_some() || self.transaction.is_some()
    }
}

/// When the linked loop's transaction and query began, and since when the
/// server has been waiting on the client.
#[derive(Debug, Clone, Copy)]
struct Clock {
    query_start: Option<tokio::time::Instant>,
    xact_start: Option<tokio::time::Instant>,
    idle_since: tokio::time::Instant,
}

impl Clock {
    /// The nearest deadline, and which timeout it is.
    fn deadline(
        &self,
        t: &Timeouts,
        pending: bool,
        in_tx: bool,
    ) -> Option<(tokio::time::Instant, Timeout)> {
        let mut nearest: Option<(tokio::time::Instant, Timeout)> = None;
        let mut offer = |at: Option<tokio::time::Instant>, limit: Option<Duration>, which| {
            if let (Some(at), Some(limit)) = (at, limit) {
                let due = at + limit;
                if nearest.is_none_or(|(d, _)| due < d) {
                    nearest = Some((due, which));
                }
            }
        };
        if pending {
            offer(self.query_start, t.query, Timeout::Query);
        } else if in_tx {
            offer(
                Some(self.idle_since),
                t.idle_transaction,
                Timeout::IdleTransaction,
            );
        }
        offer(self.xact_start, t.transaction, Timeout::Transaction);
        nearest
    }
}

/// What an unlinked session's wait for its client ended with.
enum Waited {
    Read(std::io::Result<usize>),
    Timer,
    Shutdown,
}

/// What clients are told when a shutdown ends their session
/// (PgBouncer's words).
const SHUTTING_DOWN: &str = "server shutting down";

enum Event {
    Timer,
    Shutdown,
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
    /// `params`, shared with the pool's other clients that have the same.
    params_set: Arc<crate::backend::Params>,
    /// `params` changed since the registry last saw its application_name.
    params_changed: bool,
    /// The pool mode of the server link now or last in place: a RELOAD
    /// that changes the pool's mode must not change how that link ends.
    linked_mode: PoolMode,
    /// Identifies this session to the servers it links to.
    id: u64,
    /// Bytes from the client; the scanned front part goes to the server.
    cbuf: BytesMut,
    cscan: Scanner,
    state: ClientState,
    max_packet: usize,
    shared: &'a Shared,
    /// This session in the client registry (`SHOW CLIENTS`).
    entry: &'a ClientEntry,
    /// The user the client logged in as (for per-user timeouts).
    user: &'a str,
    timeouts: Timeouts,
    /// The configuration generation `timeouts` were read from: re-read
    /// only when a RELOAD has put another in force.
    timeouts_from: Option<u64>,
    /// The session's one timer, moved to whichever deadline is nearest
    /// when that changes (not a timer per message).
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<tokio::time::Instant>,
    /// Wakes the session when a shutdown says clients must go; `None`
    /// once that has happened at the strongest mode.
    shutdown: Option<ShutdownWait<'a>>,
}

/// Resolves once a shutdown says the session's client must go.
type ShutdownWait<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Waits for `shutdown`, or forever without one, so that a `select!` arm
/// can name it either way.
async fn shutdown_fired(shutdown: &mut Option<ShutdownWait<'_>>) {
    match shutdown {
        Some(wait) => wait.await,
        None => std::future::pending().await,
    }
}

impl<R: AsyncRead + Unpin + Send, W: AsyncWrite + Unpin + Send> Relay<'_, R, W> {
    /// Relays until the session ends; returns why, for the log.
    async fn run(&mut self) -> &'static str {
        loop {
            self.refresh_timeouts();
            if self.shared.lifecycle.clients_must_go().is_some() {
                // Between transactions: no server work is cut.
                self.pooler_error("08P01", SHUTTING_DOWN).await;
                return SHUTTING_DOWN;
            }
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
                            self.release(server, self.linked_mode == PoolMode::Session)
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
                        self.pooler_error(
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
                    Unlinked::TimedOut(which) => {
                        // Mid-transaction or mid-query: never back to the pool.
                        server.broken = true;
                        self.pooler_error("08P01", which.message()).await;
                        return which.message();
                    }
                    Unlinked::ShuttingDown { clean } => {
                        if clean {
                            self.release(server, self.linked_mode == PoolMode::Session)
                                .await;
                        } else {
                            server.broken = true;
                        }
                        self.pooler_error("08P01", SHUTTING_DOWN).await;
                        return SHUTTING_DOWN;
                    }
                }
                continue;
            }
            if self.state.terminated {
                return "client disconnected";
            }
            make_room(&mut self.cbuf);
            // client_idle_timeout counts while the client has no server.
            let idle_deadline = self
                .timeouts
                .client_idle
                .map(|t| tokio::time::Instant::now() + t);
            self.rearm(idle_deadline);
            let watching = self.shutdown.is_some();
            let event = {
                let shutdown = shutdown_fired(&mut self.shutdown);
                tokio::select! {
                    read = self.reader.read_buf(&mut self.cbuf) => Waited::Read(read),
                    _ = &mut self.timer, if idle_deadline.is_some() => Waited::Timer,
                    _ = shutdown, if watching => Waited::Shutdown,
                }
            };
            match event {
                Waited::Read(Ok(0) | Err(_)) => return "client disconnected",
                Waited::Read(Ok(_)) => {
                    if let Err(err) = self.scan_client() {
                        return self.client_broke(err).await;
                    }
                }
                Waited::Timer => {
                    self.armed = None;
                    let message = Timeout::ClientIdle.message();
                    self.pooler_error("08P01", message).await;
                    return message;
                }
                Waited::Shutdown => self.shutdown_seen(),
            }
        }
    }

    /// Re-reads the timeouts when a RELOAD has put a new configuration in
    /// force (one atomic load per transaction otherwise).
    fn refresh_timeouts(&mut self) {
        let generation = self.shared.router.config_generation();
        if self.timeouts_from == Some(generation) {
            return;
        }
        let config = self.shared.config();
        let pool = config.pool_settings(&self.pool.database, self.user);
        self.timeouts = Timeouts {
            query: pool.query_timeout,
            query_wait: pool.query_wait_timeout,
            idle_transaction: pool.idle_transaction_timeout,
            transaction: pool.transaction_timeout,
            client_idle: pool.client_idle_timeout,
            log_pooler_errors: config.pgbouncer.log_pooler_errors,
        };
        self.timeouts_from = Some(generation);
    }

    /// Moves the session's timer to `deadline`, if that is a change.
    fn rearm(&mut self, deadline: Option<tokio::time::Instant>) {
        if deadline != self.armed {
            if let Some(at) = deadline {
                self.timer.as_mut().reset(at);
            }
            self.armed = deadline;
        }
    }

    /// The shutdown watch fired: from now on only an immediate shutdown
    /// can tell the session anything new.
    fn shutdown_seen(&mut self) {
        self.shutdown = match self.shared.lifecycle.clients_must_go() {
            Some(ShutdownMode::Immediate) => None,
            _ => {
                let (shared, entry) = (self.shared, self.entry);
                Some(Box::pin(
                    shared
                        .lifecycle
                        .wait_clients_must_go(ShutdownMode::Immediate, entry),
                ))
            }
        };
    }

    /// Ends the session with an error from the pooler itself (PgBouncer's
    /// pooler errors), logged when `log_pooler_errors` is on.
    async fn pooler_error(&mut self, code: &str, message: &str) {
        if self.timeouts.log_pooler_errors {
            tracing::warn!(
                database = %self.pool.database,
                user = %self.user,
                code,
                "pooler error: {message}"
            );
        }
        tracing::info!(database = %self.pool.database, user = %self.user, "closing client: {message}");
        fatal(&mut self.writer, code, message).await;
    }

    fn scan_client(&mut self) -> Result<(), ProtocolError> {
        let state = &mut self.state;
        let stats = &self.pool.stats;
        let ready = self.cscan.scan_until(
            &self.cbuf,
            self.max_packet,
            |tag| tag == b'X',
            |tag, _| {
                state.note(tag);
                stats.client_message(tag);
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
        let wait = self.timeouts.query_wait.unwrap_or(NO_LOGIN_TIMEOUT);
        self.entry.set_waiting();
        let waited = std::time::Instant::now();
        let got = {
            let pool = self.pool;
            // PAUSE, KILL and SUSPEND hold new transactions here.
            let get = async move {
                pool.control.wait_resumed().await;
                pool.pool.get_timeout(wait).await
            };
            let watching = self.shutdown.is_some();
            let shutdown = shutdown_fired(&mut self.shutdown);
            tokio::select! {
                got = get => Some(got),
                _ = shutdown, if watching => None,
            }
        };
        let mut server = match got {
            Some(Ok(mut server)) => {
                self.pool.stats.assigned(waited.elapsed());
                // Until given back clean by `release`, the pool must not
                // reuse it (a killed session drops it anywhere).
                server.dirty = true;
                let server_id = server.entry.as_ref().map_or(0, |e| e.entry.id);
                if let Some(entry) = &server.entry {
                    entry.entry.set_active(self.id);
                }
                self.entry.set_active(server_id);
                server
            }
            // A waiting client has no server work to finish.
            None => {
                self.shutdown_seen();
                self.pooler_error("08P01", SHUTTING_DOWN).await;
                return Err(Ended);
            }
            Some(Err(err)) => {
                let message = match &err {
                    wharf::Error::Timeout { .. } => "query_wait_timeout".to_owned(),
                    wharf::Error::Unavailable { .. } => format!(
                        "server login has been failing, try again later (server_login_retry): {err}"
                    ),
                    other => other.to_string(),
                };
                tracing::info!(pool = %self.pool.database, user = %self.pool.user, error = %err, "no server for the client");
                self.pooler_error("08P01", &message).await;
                return Err(Ended);
            }
        };
        let synced = server
            .synced_with
            .as_ref()
            .is_some_and(|set| Arc::ptr_eq(set, &self.params_set));
        if !synced {
            let sets: Vec<String> = self
                .params
                .iter()
                .filter(|(name, value)| {
                    !crate::backend::same_value(name, server.param(name), value)
                })
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
            // Only if the SETs left the server matching: a configuration
            // reload on the server may have changed a parameter meanwhile.
            let matches = self
                .params
                .iter()
                .all(|(name, value)| crate::backend::same_value(name, server.param(name), value));
            if matches {
                server.synced_with = Some(self.params_set.clone());
            }
        }
        self.cancel.link(server.cancels.clone(), server.key);
        Ok(server)
    }

    /// Returns a server to its pool, reset first when the mode asks.
    async fn release(&mut self, mut server: Pooled<ServerManager>, session_end: bool) {
        self.entry.set_idle();
        if self.params_changed {
            self.params_changed = false;
            self.entry
                .set_application_name(&application_name(&self.params));
        }
        if server.broken {
            return;
        }
        // `dirty` stays set until the server is handed back: a KILL that
        // drops this future during the reset must not pool it mid-query.
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
        if server.broken {
            return;
        }
        if server.cancels.abandoned() {
            // A cancel given up after it may have been sent can still
            // land, on whatever query runs there next.
            tracing::info!("closing server: a cancel request to it was given up");
            server.broken = true;
        } else if server.cancels.any() {
            let wait = self
                .shared
                .config()
                .pgbouncer
                .cancel_wait_timeout
                .unwrap_or(CANCEL_HOLD_MAX);
            tokio::spawn(hold_until_cancels_land(server, wait));
        } else {
            if let Some(entry) = &server.entry {
                entry.set_idle();
            }
            server.dirty = false;
        }
    }

    /// Relays between the client and `server` until the server may be
    /// released or either side goes away.
    async fn linked(&mut self, server: &mut ServerConn) -> Unlinked {
        let mode = self.pool.mode();
        self.linked_mode = mode;
        let ServerConn {
            stream,
            rbuf,
            params: server_params,
            synced_with,
            ..
        } = server;
        let (mut sr, mut sw) = stream.split();
        let mut sscan = Scanner::default();
        let mut tx_status = b'I';
        let timeouts = self.timeouts;
        let timed = timeouts.linked();
        let linked_at = tokio::time::Instant::now();
        let busy = self.state.pending > 0;
        let mut clock = Clock {
            query_start: busy.then_some(linked_at),
            xact_start: busy.then_some(linked_at),
            idle_since: linked_at,
        };
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
                        self.params_set = self.pool.param_sets.intern(&self.params);
                        self.params_changed = true;
                        *synced_with = Some(self.params_set.clone());
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
            let between = idle && quiet_client && self.cbuf.is_empty() && tx_status == b'I';
            match self.shared.lifecycle.clients_must_go() {
                Some(ShutdownMode::Immediate) => {
                    return Unlinked::ShuttingDown { clean: between };
                }
                Some(ShutdownMode::WaitForServers) if between => {
                    return Unlinked::ShuttingDown { clean: true };
                }
                _ => {}
            }
            if between && mode != PoolMode::Session {
                return Unlinked::Released;
            }
            let deadline = if timed {
                clock.deadline(&timeouts, self.state.pending > 0, tx_status != b'I')
            } else {
                None
            };
            self.rearm(deadline.map(|(at, _)| at));
            let timer_on = deadline.is_some();
            // The watch future persists across events (polling it only
            // re-checks its registration): an immediate shutdown must cut
            // a session stuck waiting on a long query.
            let wake_on_shutdown = self.shutdown.is_some();
            let pending_before = self.state.pending;
            let mut saw_ready = false;
            let mut now = EventTime::default();

            let event = {
                let Relay {
                    reader,
                    writer,
                    cbuf,
                    cscan,
                    state,
                    timer,
                    shutdown,
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
                let shutdown = shutdown_fired(shutdown);
                tokio::select! {
                    event = client_side => event,
                    event = server_side => event,
                    _ = timer.as_mut(), if timer_on => Event::Timer,
                    _ = shutdown, if wake_on_shutdown => Event::Shutdown,
                }
            };
            match event {
                Event::Timer => {
                    self.armed = None;
                    if let Some((due, which)) = deadline {
                        if due <= tokio::time::Instant::now() {
                            return Unlinked::TimedOut(which);
                        }
                    }
                    continue;
                }
                Event::Shutdown => {
                    self.shutdown_seen();
                    continue;
                }
                Event::WroteServer(Ok(n)) => {
                    self.cbuf.advance(n);
                    self.cscan.consumed(n);
                    self.pool
                        .stats
                        .received
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    self.state.sent_to_server(&mut now);
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
                    let stats = &self.pool.stats;
                    let state = &mut self.state;
                    let params = &mut self.params;
                    let params_set = &mut self.params_set;
                    let params_changed = &mut self.params_changed;
                    let param_sets = &self.pool.param_sets;
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
                                saw_ready = true;
                                tx_status = body.first().copied().unwrap_or(b'I');
                                state.ready_for_query(tx_status, stats, &mut now);
                            }
                            (b'S', Some(body)) if note_parameter(server_params, params, body) => {
                                // Both sides changed together: still in step.
                                *params_set = param_sets.intern(params);
                                *params_changed = true;
                                *synced_with = Some(params_set.clone());
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
                    self.pool
                        .stats
                        .sent
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Event::WroteClient(Err(_)) => {
                    // The client is gone mid-response; the server is still
                    // sending, so it cannot go back to the pool.
                    rbuf.clear();
                    return Unlinked::ClientGone { clean: false };
                }
            }
            // The clock moves only when a query starts or ends, so timing
            // costs one clock read per query, not per message (shared with
            // the stats when they read it for the same event).
            let pending = self.state.pending;
            if timed && (pending != pending_before || saw_ready) {
                let now = now.get();
                if pending > 0 {
                    if pending_before == 0 || saw_ready {
                        clock.query_start = Some(now);
                    }
                    clock.xact_start.get_or_insert(now);
                } else {
                    clock.query_start = None;
                    clock.idle_since = now;
                    if tx_status == b'I' {
                        clock.xact_start = None;
                    }
                }
            }
        }
    }

    /// Ends a session whose client broke the protocol; returns the reason
    /// for the log.
    async fn client_broke(&mut self, err: ProtocolError) -> &'static str {
        self.pooler_error("08P01", &format!("invalid message: {err}"))
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
    // Only a change needs the client's parameter set looked up again.
    crate::backend::is_tracked(name) && set_param(client_params, name, value)
}

/// Keeps a read buffer able to take a full chunk: `read_buf` only reads
/// into spare capacity, and a buffer drained by `advance` may have little.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

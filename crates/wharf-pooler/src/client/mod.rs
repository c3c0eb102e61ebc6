//! The client side: one task per client connection. It reads the startup
//! packets ([`startup`], with the `options` parameter in [`options`]), logs the client in ([`login`]), then runs its
//! [`Session`](session::Session) (or, for a replication client, its
//! [`replication`] session): relaying bytes between the client and
//! whichever server it is linked to ([`relay`]), taking a server on the
//! first message that needs one and giving it back at the end of each
//! transaction, statement or session ([`link`]), as the protocol state
//! machine ([`state`]) and the timeouts ([`timeouts`]) allow.

mod buffers;
mod link;
mod login;
mod options;
mod prepare;
mod relay;
mod replication;
mod route;
mod session;
mod spare_box;
mod startup;
mod state;
mod timeouts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::admin;
use crate::net::{ClientStream, Peer};
use crate::proto::{messages, Replication, Startup};
use crate::state::PoolerState;
use crate::stats::ClientInfo;
use crate::views::CONSOLE_DB;
use login::{login, send_welcome, LoggedIn, Login};
use session::Session;
use startup::{negotiate, First};

/// How long login may take when `client_login_timeout` is off.
const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// What clients are told when a shutdown ends their session
/// (PgBouncer's words).
const SHUTTING_DOWN: &str = "server shutting down";

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Why a client session ended early, already reported to the client when
/// it was still there to hear it.
#[derive(Debug)]
struct Ended;

/// Serves one client connection from its first byte to its last: the
/// encryption request and TLS handshake, then the session, plain or
/// encrypted. The handshake counts against `client_login_timeout`, so a
/// client that stalls in it holds nothing for longer than a slow login.
/// `held` (the listener's count of connected clients) is dropped when the
/// connection ends.
//
// Not an `async fn`: one keeps a second copy of its arguments for its
// whole life (rust-lang/rust#62958), and this future is the client's task.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve_client<S: ClientStream, G: Send>(
    mut stream: S,
    peer: Peer,
    state: Arc<PoolerState>,
    held: G,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        // Named so that the task owns it (unnamed, it would be dropped now);
        // a borrow, as a moved copy would take room in the task.
        let _held = &held;
        let login_timeout = state
            .config()
            .pgbouncer
            .client_login_timeout
            .unwrap_or(NO_TIMEOUT);
        let deadline = tokio::time::Instant::now() + login_timeout;
        let tls = state.tls();
        let tls = tls.client();
        // Boxed, as every step that ends before the session: the task keeps
        // the size of its largest state for its whole life.
        // Matched where it is made, so that no copy of it stays in the task
        // beside the session.
        match tokio::time::timeout_at(
            deadline,
            Box::pin(negotiate(&mut stream, &peer, &state, tls)),
        )
        .await
        {
            Ok(Ok(First::Packet(packet))) => {
                // Cancel requests come in plain text from every libpq before 17.
                let plain_session = !matches!(packet, Startup::Cancel(_)) && !stream.is_local();
                if plain_session && tls.required() {
                    tracing::info!(%peer, "closing client: TLS required");
                    refuse(&mut stream, &state, &peer, "08P01", "SSL required").await;
                    return;
                }
                // Not boxed: the session is what the task is for, and what
                // it keeps for its life (the TLS branch is boxed instead).
                serve(&mut stream, Some(packet), &peer, &state, deadline).await;
            }
            Ok(Ok(First::Encrypt)) => {
                let Ok(tcp) = stream.into_tcp() else {
                    return;
                };
                // Boxed: a TLS stream is over a KiB, which a plain client's
                // task would otherwise carry too.
                Box::pin(serve_encrypted(tcp, peer, state, deadline)).await;
            }
            Ok(Err(Ended)) => {}
            Err(_) => {
                refuse(&mut stream, &state, &peer, "08P01", "client_login_timeout").await;
                tracing::info!(%peer, "closing client: login timed out");
            }
        }
    }
}

/// The TLS handshake, then the login and the session over TLS.
async fn serve_encrypted(
    tcp: tokio::net::TcpStream,
    peer: Peer,
    state: Arc<PoolerState>,
    deadline: tokio::time::Instant,
) {
    let accepted = {
        let tls = state.tls();
        tokio::time::timeout_at(deadline, tls.client().accept(tcp)).await
    };
    match accepted {
        Ok(Ok(mut encrypted)) => serve(&mut encrypted, None, &peer, &state, deadline).await,
        Ok(Err(err)) => {
            tracing::info!(%peer, error = %err, "closing client: TLS handshake failed");
        }
        Err(_) => tracing::info!(%peer, "closing client: TLS handshake timed out"),
    }
}

/// The login and the session, once the stream is what it will stay.
//
// Not an `async fn`, for the reason `serve_client` gives.
#[allow(clippy::manual_async_fn)]
fn serve<'a, S: ClientStream>(
    stream: &'a mut S,
    first: Option<Startup>,
    peer: &'a Peer,
    state: &'a Arc<PoolerState>,
    deadline: tokio::time::Instant,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    async move {
        // Boxed: its futures, and its result until matched, would
        // otherwise keep their room in the task for the session's life.
        let Some(login) = Box::pin(log_in(stream, first, peer, state, deadline)).await else {
            return;
        };
        let registered = state.cancels().register(login.pool.stats().clone());
        // The configuration is held for the welcome's write only, not
        // across the session (a RELOAD frees the old one).
        let welcomed = {
            let config = state.config();
            let notify = &config.pgbouncer.login_notify_message;
            // A bool, not the result: kept, the error would keep its room
            // in the task for the session's life.
            send_welcome(stream, &login, registered.key, notify)
                .await
                .is_ok()
        };
        if !welcomed {
            return;
        }
        if state.config().pgbouncer.log_connections {
            tracing::info!(%peer, database = %login.pool.database(), user = %login.user, "client logged in");
        }
        let (database, pool_user) = login.pool.shared_names();
        let info = client_info(
            &*stream,
            peer,
            (login.user.clone(), database, pool_user),
            false,
        );
        let client = state
            .router()
            .stats()
            .register_client(info, application_name(login.greeting.tracked()));
        login
            .pool
            .stats()
            .client_logins
            .fetch_add(1, Ordering::Relaxed);
        let mut session = Session::new(
            stream.halves(),
            &login,
            &registered.slot,
            &client.entry,
            state,
        );
        // KILL and KILL_CLIENT drop the session wherever it is; a server it
        // held mid-transaction is closed, not pooled (see `ServerConn::hand_to`).
        let outcome = tokio::select! {
            // Once killed, not one more message is relayed.
            biased;
            () = client.entry.killed() => None,
            reason = session.run() => Some(reason),
        };
        let reason = match outcome {
            Some(reason) => reason,
            None => {
                let message = client.entry.kill_reason().message();
                session.pooler_error("08P01", message).await;
                "killed by the admin console"
            }
        };
        session.end();
        if state.config().pgbouncer.log_disconnections {
            tracing::info!(%peer, database = %login.pool.database(), user = %login.user, reason, "client closed");
        }
    }
}

/// The login, within `client_login_timeout`: the pool client's login to
/// serve, or `None` when the connection was something else (a cancel
/// request, a replication or console client, now served) or failed.
async fn log_in<S: ClientStream>(
    stream: &mut S,
    first: Option<Startup>,
    peer: &Peer,
    state: &Arc<PoolerState>,
    deadline: tokio::time::Instant,
) -> Option<Login> {
    match tokio::time::timeout_at(deadline, login(stream, first, peer, state)).await {
        Ok(Ok(LoggedIn::Pool(login))) => Some(login),
        // Boxed, each: a pool client's login would otherwise be as large
        // as the largest of them. Outside the login timeout: a cancel
        // given up midway would leave its server closed for nothing.
        Ok(Ok(LoggedIn::Cancel(key))) => {
            Box::pin(state.cancel(key)).await;
            None
        }
        Ok(Ok(LoggedIn::Replication(login))) => {
            Box::pin(replication::serve_replication(stream, login, peer, state)).await;
            None
        }
        Ok(Ok(LoggedIn::Console { user, role, params })) => {
            Box::pin(serve_console(stream, (user, role, &params), peer, state)).await;
            None
        }
        Ok(Err(Ended)) => None,
        Err(_) => {
            refuse(stream, state, peer, "08P01", "client_login_timeout").await;
            tracing::info!(%peer, "closing client: login timed out");
            None
        }
    }
}

/// An admin console session, from its login on.
async fn serve_console<S: ClientStream>(
    stream: &mut S,
    (user, role, params): (String, admin::Role, &[(String, String)]),
    peer: &Peer,
    state: &Arc<PoolerState>,
) {
    let name: Arc<str> = user.as_str().into();
    let info = client_info(
        &*stream,
        peer,
        (name.clone(), CONSOLE_DB.into(), name),
        true,
    );
    let entry = state
        .router()
        .stats()
        .register_client(info, application_name(params));
    let console = admin::Console { user, role, entry };
    admin::serve(stream, state, console).await;
}

/// The registry's description of a client connection, logged in as
/// `user` to `database`, served by the pool of `pool_user`.
fn client_info<S: ClientStream>(
    stream: &S,
    peer: &Peer,
    (user, database, pool_user): (Arc<str>, Arc<str>, Arc<str>),
    admin: bool,
) -> ClientInfo {
    let credentials = stream.peer_credentials();
    ClientInfo {
        id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
        user,
        database,
        pool_user,
        addr: peer.clone(),
        local_addr: stream.local_end(),
        tls: stream.tls().map(|t| t.describe()).unwrap_or_default(),
        remote_pid: credentials.and_then(|(_, pid)| pid).unwrap_or(0),
        admin,
        replication: Replication::None,
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

/// Turns a client away during login: the FATAL error to it, and
/// PgBouncer's "pooler error" log line when `log_pooler_errors` is on.
async fn refuse<S: ClientStream>(
    stream: &mut S,
    state: &PoolerState,
    peer: &Peer,
    code: &str,
    message: &str,
) {
    if state.config().pgbouncer.log_pooler_errors {
        tracing::warn!(%peer, code, "pooler error: {message}");
    }
    fatal(stream, code, message).await;
}

/// Sends a FATAL error; the connection is closed after it either way.
///
/// Boxed: it runs once, at a connection's end, and every future that can
/// end a session (the relay, the wait for the client) would otherwise
/// carry its message buffer and write state, which an idle client's task
/// keeps for its whole life.
fn fatal<'w, W: AsyncWrite + Unpin>(
    writer: &'w mut W,
    code: &'w str,
    message: &'w str,
) -> std::pin::Pin<Box<impl std::future::Future<Output = ()> + 'w>> {
    Box::pin(send_fatal(writer, code, message))
}

/// [`fatal`], unboxed, for futures that are boxed already.
async fn send_fatal<W: AsyncWrite + Unpin>(writer: &mut W, code: &str, message: &str) {
    let mut out = BytesMut::new();
    messages::error(&mut out, "FATAL", code, message);
    let _ = writer.write_all(&out).await;
    let _ = writer.shutdown().await;
}

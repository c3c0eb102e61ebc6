//! A replication client's session (PgBouncer 1.23): once logged in, it
//! waits for a place in its pool like any client, the server it gets is
//! made over into a walsender for it alone, and from then on bytes go
//! through untouched both ways (the replication protocol's CopyBoth has no
//! transaction boundaries to pool at) until either side hangs up. The
//! server is closed with the session, never pooled.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::login::{server_unavailable, ReplicationLogin};
use super::{application_name, client_info, refuse, NO_TIMEOUT};
use crate::lifecycle::ShutdownMode;
use crate::net::ClientStream;
use crate::proto::messages;
use crate::server::ServerError;
use crate::state::PoolerState;

/// Serves a replication client from its login to its last byte.
pub(super) async fn serve_replication<S: ClientStream>(
    mut stream: S,
    login: ReplicationLogin,
    peer: &str,
    state: &Arc<PoolerState>,
) {
    let config = state.config();
    let pool = &login.pool;
    let mut info = client_info(
        &stream,
        peer,
        &login.user,
        pool.database(),
        pool.user(),
        false,
    );
    info.replication = login.mode;
    let client = state
        .router()
        .stats()
        .register_client(info, application_name(&login.params));
    pool.stats().client_logins.fetch_add(1, Ordering::Relaxed);
    client.entry.set_waiting();
    let wait = config
        .pool_settings(pool.database(), &login.user)
        .query_wait_timeout
        .unwrap_or(NO_TIMEOUT);
    let mut server = match pool.get(Some(wait)).await {
        Ok(server) => server,
        Err(err) => {
            let (code, message) = server_unavailable(&err);
            tracing::warn!(%peer, pool = %pool.database(), error = %message, "closing replication client: no server connection");
            refuse(&mut stream, state, peer, &code, &message).await;
            return;
        }
    };
    let server_id = server.hand_to(client.entry.info.id);
    client.entry.set_active(server_id);
    if let Err(err) = server.start_replication(login.mode, &login.params).await {
        let (code, message) = refused_by_server(&err);
        tracing::warn!(%peer, pool = %pool.database(), error = %err, "closing replication client: server login failed");
        refuse(&mut stream, state, peer, &code, &message).await;
        return;
    }
    let registered = state.cancels().register(pool.stats().clone());
    registered.slot.link(server.cancels().clone(), server.key());
    let mut welcome = BytesMut::with_capacity(512);
    messages::auth_ok(&mut welcome);
    for (name, value) in server.params().values().iter() {
        messages::parameter_status(&mut welcome, name, value);
    }
    messages::backend_key_data(&mut welcome, registered.key);
    messages::ready_for_query(&mut welcome, b'I');
    welcome.extend_from_slice(&server.take_unread());
    if stream.write_all(&welcome).await.is_err() {
        return;
    }
    if config.pgbouncer.log_connections {
        tracing::info!(%peer, database = %pool.database(), user = %login.user, replication = login.mode.as_str(), "replication client logged in");
    }
    let (client_reader, client_writer) = stream.halves();
    let wire = server.wire();
    let entry = &client.entry;
    let reason = tokio::select! {
        biased;
        () = entry.killed() => "killed by the admin console",
        () = state.lifecycle().wait_clients_must_go(ShutdownMode::Immediate, entry) => super::SHUTTING_DOWN,
        reason = pipe(client_reader, wire.writer) => reason.unwrap_or("client closed the connection"),
        reason = pipe(wire.reader, client_writer) => reason.unwrap_or("server closed the connection"),
    };
    registered.slot.unlink();
    if config.pgbouncer.log_disconnections {
        tracing::info!(%peer, database = %pool.database(), user = %login.user, reason, "replication client closed");
    }
}

/// Copies bytes from `from` to `to` until `from` ends (`None`) or either
/// side fails (why, for the log).
async fn pipe<R, W>(mut from: R, mut to: W) -> Option<&'static str>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match tokio::io::copy(&mut from, &mut to).await {
        Ok(_) => None,
        Err(_) => Some("connection broke"),
    }
}

/// What a replication client is told when its server refuses it: the
/// server's own error when it sent one (no replication line in
/// pg_hba.conf, a role without REPLICATION).
fn refused_by_server(err: &ServerError) -> (String, String) {
    match err {
        ServerError::Server { code, message, .. } => (code.clone(), message.clone()),
        other => (
            "08006".to_owned(),
            format!("pooler could not connect to server: {other}"),
        ),
    }
}

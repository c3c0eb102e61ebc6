//! A replication client's session (PgBouncer 1.23): once logged in, it
//! waits for a place in its pool like any client, the server it gets is
//! made over into a walsender for it alone, and from then on bytes go
//! through untouched both ways (the replication protocol's CopyBoth has no
//! transaction boundaries to pool at) until either side hangs up. The
//! server is closed with the session, never pooled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::login::{refusal, server_unavailable, ReplicationLogin};
use super::{application_name, client_info, refuse, NO_TIMEOUT};
use crate::lifecycle::ShutdownMode;
use crate::net::{ClientStream, Peer};
use crate::proto::messages;
use crate::state::PoolerState;
use crate::stats::Moment;

/// Serves a replication client from its login to its last byte.
pub(super) async fn serve_replication<S: ClientStream>(
    stream: &mut S,
    login: ReplicationLogin,
    peer: &Peer,
    state: &Arc<PoolerState>,
) {
    let config = state.config();
    let pool = &login.pool;
    let (database, pool_user) = pool.shared_names();
    let info_names = (login.user.as_str().into(), database, pool_user);
    let mut info = client_info(&*stream, peer, info_names, false);
    info.replication = login.mode;
    let client = state
        .router()
        .stats()
        .register_client(info, application_name(&login.params));
    pool.stats().client_logins.fetch_add(1, Ordering::Relaxed);
    client.entry.set_waiting(Moment::now());
    let entry = &client.entry;
    // KILL, KILL_CLIENT and a shutdown reach the client in every phase:
    // waiting for a server, logging it in, relaying.
    let mut stop = std::pin::pin!(async {
        tokio::select! {
            biased;
            () = entry.killed() => entry.kill_reason().message(),
            // A walsender is never given back, so even a shutdown that
            // waits for servers ends it (the standby reconnects).
            () = state.lifecycle().wait_clients_must_go(ShutdownMode::WaitForServers, entry) => super::SHUTTING_DOWN,
        }
    });
    let wait = config
        .pool_settings(pool.database(), &login.user)
        .query_wait_timeout
        .unwrap_or(NO_TIMEOUT);
    let got = tokio::select! {
        biased;
        why = &mut stop => Err(("08P01".to_owned(), why.to_owned())),
        got = pool.get(Some(wait)) => got.map_err(|err| server_unavailable(&err)),
    };
    let mut server = match got {
        Ok(server) => server,
        Err((code, message)) => {
            tracing::warn!(%peer, pool = %pool.database(), error = %message, "closing replication client: no server connection");
            refuse(stream, state, peer, &code, &message).await;
            return;
        }
    };
    let server_id = server.hand_to(entry.info.id, crate::stats::Moment::now());
    entry.set_active(server_id);
    let login_limit = config.pgbouncer.server_connect_timeout;
    let started = tokio::select! {
        biased;
        why = &mut stop => Err(("08P01".to_owned(), why.to_owned())),
        started = tokio::time::timeout(login_limit, server.start_replication(login.mode, &login.params)) => match started {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(refusal(Some(&err), &err)),
            Err(_) => Err(refusal(None, &format!("no login within server_connect_timeout ({login_limit:?})"))),
        },
    };
    if let Err((code, message)) = started {
        server.mark_broken();
        tracing::warn!(%peer, pool = %pool.database(), error = %message, "closing replication client: server login failed");
        refuse(stream, state, peer, &code, &message).await;
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
    let stats = pool.stats();
    let stopped = {
        let (client_reader, client_writer) = stream.halves();
        let wire = server.wire();
        tokio::select! {
            biased;
            why = &mut stop => Some(why),
            reason = pipe(client_reader, wire.writer, &stats.received) => {
                tracing::debug!(%peer, reason = reason.unwrap_or("client closed the connection"), "replication ended");
                None
            }
            reason = pipe(wire.reader, client_writer, &stats.sent) => {
                tracing::debug!(%peer, reason = reason.unwrap_or("server closed the connection"), "replication ended");
                None
            }
        }
    };
    registered.slot.unlink();
    if let Some(why) = stopped {
        refuse(stream, state, peer, "08P01", why).await;
    }
    if config.pgbouncer.log_disconnections {
        tracing::info!(%peer, database = %pool.database(), user = %login.user, reason = stopped.unwrap_or("connection closed"), "replication client closed");
    }
}

/// Copies bytes from `from` to `to`, counting them in `counter` as they
/// go, until `from` ends (`None`) or either side fails (why, for the log).
async fn pipe<R, W>(mut from: R, mut to: W, counter: &AtomicU64) -> Option<&'static str>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => return None,
            Ok(n) => n,
            Err(_) => return Some("connection broke"),
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return Some("connection broke");
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

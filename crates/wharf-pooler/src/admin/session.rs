//! A console session after login: PgBouncer's welcome, then one simple
//! query at a time until the client leaves or is killed.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{execute, Role};
use crate::proto::messages;
use crate::proto::{cstr, read_message, CancelKey, ProtocolError};
use crate::state::PoolerState;
use crate::views::PGBOUNCER_VERSION;

/// Queries to the console are short; refuse anything bigger.
const MAX_QUERY: usize = 64 * 1024;

/// A logged-in console session.
pub struct Console {
    /// The login user.
    pub user: String,
    /// What it may do.
    pub role: Role,
    /// Its entry in the client registry (`SHOW CLIENTS`, KILL_CLIENT).
    pub entry: crate::stats::ClientGuard,
}

/// Serves a console session after login, until the client leaves or is
/// killed.
pub async fn serve<S>(stream: &mut S, state: &Arc<PoolerState>, console: Console)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(512);
    messages::auth_ok(&mut out);
    for (name, value) in [
        ("server_version", &*format!("{PGBOUNCER_VERSION}/bouncer")),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
        ("is_superuser", "off"),
        ("application_name", &console.entry.entry.application_name()),
    ] {
        messages::parameter_status(&mut out, name, value);
    }
    messages::backend_key_data(&mut out, CancelKey::random());
    messages::ready_for_query(&mut out, b'I');
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let entry = console.entry.entry.clone();
    // After an extended-protocol message, everything up to the Sync is
    // ignored and the Sync answered, as a server does after an error.
    let mut skipping = false;
    loop {
        let message = tokio::select! {
            message = read_message(stream, MAX_QUERY) => message,
            () = entry.killed() => {
                let mut out = BytesMut::new();
                messages::error(&mut out, "FATAL", "08P01", entry.kill_reason().message());
                let _ = stream.write_all(&out).await;
                return;
            }
        };
        let (tag, body) = match message {
            Ok(message) => message,
            Err(ProtocolError::Closed) => return,
            Err(err) => {
                let mut out = BytesMut::new();
                messages::error(
                    &mut out,
                    "FATAL",
                    "08P01",
                    &format!("invalid message: {err}"),
                );
                let _ = stream.write_all(&out).await;
                return;
            }
        };
        let mut out = BytesMut::new();
        match tag {
            b'X' => return,
            b'Q' => {
                skipping = false;
                let sql = cstr(&body).map(|(s, _)| s).unwrap_or_default();
                execute::run(sql, state, &console, &mut out).await;
                messages::ready_for_query(&mut out, b'I');
            }
            b'S' => {
                skipping = false;
                messages::ready_for_query(&mut out, b'I');
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F' => {
                if !skipping {
                    messages::error(
                        &mut out,
                        "ERROR",
                        "08P01",
                        "the admin console supports only the simple query protocol",
                    );
                }
                // A FunctionCall is answered by itself, not by a Sync.
                if tag == b'F' {
                    messages::ready_for_query(&mut out, b'I');
                } else {
                    skipping = true;
                }
            }
            _ => {
                messages::error(&mut out, "FATAL", "08P01", "invalid message type");
                let _ = stream.write_all(&out).await;
                return;
            }
        }
        entry.touch(crate::stats::Moment::now());
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

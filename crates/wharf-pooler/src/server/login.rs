//! Opening a server connection: connect, send the startup message, answer
//! the server's authentication requests, and read its welcome (cancel key
//! and parameters) up to the first ReadyForQuery.

use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::sync::OwnedSemaphorePermit;

use super::error::server_error;
use super::{ServerConn, ServerError, ServerParams, ServerTarget};
use crate::auth::{ServerAuth, ServerLogin};
use crate::cancel::ServerCancels;
use crate::net::ServerStream;
use crate::prepared::ServerStatements;
use crate::proto::{CancelKey, ProtocolError};
use crate::stats::ServerGuard;

impl ServerConn {
    /// Opens a connection to `target` and logs in. `permits` are its
    /// places under the connection limits, held for as long as it lives;
    /// `entry` is its place in the registry, `born` the pool's generation.
    pub async fn connect(
        target: &Arc<ServerTarget>,
        born: u64,
        permits: Vec<OwnedSemaphorePermit>,
        entry: ServerGuard,
    ) -> Result<Self, ServerError> {
        let addr = target.addr.to_string();
        let io_err = |source| ServerError::Io {
            addr: addr.clone(),
            source,
        };
        let stream = target.addr.connect().await.map_err(io_err)?;
        let mut conn = ServerConn {
            stream: Some(stream),
            rbuf: BytesMut::with_capacity(16 * 1024),
            key: CancelKey { pid: 0, secret: 0 },
            params: ServerParams::default(),
            broken: false,
            dirty: false,
            _permits: permits,
            target: target.clone(),
            born,
            entry: Some(entry),
            statements: ServerStatements::default(),
            cancels: Arc::new(ServerCancels::new(target.addr.clone())),
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
        conn.stream
            .as_mut()
            .expect(super::conn::OPEN)
            .write_all(&out)
            .await
            .map_err(io_err)?;

        let mut login = ServerLogin::new(&target.user, target.password.as_ref());
        loop {
            let (tag, body) = conn.read_control().await?;
            match tag {
                b'R' => match login.respond(&body) {
                    Ok(ServerAuth::Reply(reply)) => {
                        if !reply.is_empty() {
                            conn.stream
                                .as_mut()
                                .expect(super::conn::OPEN)
                                .write_all(&reply)
                                .await
                                .map_err(io_err)?;
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
                b'S' => conn.params.note(&body),
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
            conn.simple_query(query).await?;
        }
        let local = conn.stream.as_ref().map(ServerStream::local);
        let entry = conn.entry.as_ref().expect(super::conn::OPEN);
        entry.entry.logged_in(conn.key.pid, local);
        entry.set_idle();
        Ok(conn)
    }
}

//! Opening a server connection: connect, send the startup message, answer
//! the server's authentication requests, and read its welcome (cancel key
//! and parameters) up to the first ReadyForQuery.

use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use super::error::server_error;
use super::{ServerConn, ServerError, ServerParams, ServerTarget};
use crate::auth::{ServerAuth, ServerLogin};
use crate::cancel::ServerCancels;
use crate::net::{ServerAddr, ServerStream};
use crate::prepared::ServerStatements;
use crate::proto::{CancelKey, ProtocolError};
use crate::stats::ServerGuard;
use crate::tls::OpenError;

impl ServerConn {
    /// Opens a connection to `host`, one of `target`'s, and logs in.
    /// `entry` is its place in the registry, `born` the pool's generation;
    /// its places under the connection limits are given to it after
    /// ([`hold_places`](Self::hold_places)).
    pub async fn connect(
        target: &Arc<ServerTarget>,
        host: &ServerAddr,
        born: u64,
        entry: ServerGuard,
    ) -> Result<Self, ServerError> {
        let addr = host.to_string();
        let io_err = |source| ServerError::Io {
            addr: addr.clone(),
            source,
        };
        let stream = target.tls.open(host).await.map_err(|err| match err {
            OpenError::Io(source) => io_err(source),
            OpenError::Refused(reason) => ServerError::Tls {
                addr: addr.clone(),
                reason,
            },
            OpenError::BadAnswer => ServerError::Protocol {
                addr: addr.clone(),
                source: ProtocolError::Malformed("answer to SSLRequest"),
            },
        })?;
        let mut conn = ServerConn {
            stream: Some(stream),
            rbuf: BytesMut::with_capacity(16 * 1024),
            key: CancelKey { pid: 0, secret: 0 },
            params: ServerParams::default(),
            broken: false,
            dirty: false,
            _permits: Vec::new(),
            target: target.clone(),
            host: host.clone(),
            role: None,
            born,
            entry: Some(entry),
            statements: ServerStatements::default(),
            cancels: Arc::new(ServerCancels::new(host.clone(), target.tls.clone())),
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

        let mut login = ServerLogin::new(
            &target.user,
            target.password.as_ref(),
            target.client_key.as_ref(),
        );
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
        let tls = conn
            .stream
            .as_ref()
            .and_then(ServerStream::tls)
            .map(|t| t.describe())
            .unwrap_or_default();
        let entry = conn.entry.as_ref().expect(super::conn::OPEN);
        entry.entry.logged_in(conn.key.pid, local, tls);
        entry.set_idle();
        Ok(conn)
    }
}

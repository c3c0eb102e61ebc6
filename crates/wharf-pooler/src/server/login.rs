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
use crate::stats::{Moment, ServerGuard};
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
        let stream = open_stream(target, host).await?;
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
            untracked_use: false,
            cancels: Arc::new(ServerCancels::new(host.clone(), target.tls.clone())),
        };
        conn.log_in(&[]).await?;
        if let Some(query) = &target.connect_query {
            conn.simple_query(query).await?;
        }
        conn.entry
            .as_ref()
            .expect(super::conn::OPEN)
            .set_idle(Moment::now());
        Ok(conn)
    }

    /// Sends the startup message (the target's parameters, then `extra`)
    /// on the connection's fresh stream, answers the authentication
    /// requests and reads the welcome up to the first ReadyForQuery.
    pub(super) async fn log_in(&mut self, extra: &[(&str, &str)]) -> Result<(), ServerError> {
        let target = self.target.clone();
        let addr = self.addr();
        let io_err = |source| ServerError::Io {
            addr: addr.clone(),
            source,
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
        params.extend_from_slice(extra);
        frontend::startup_message(params.iter().copied(), &mut out).map_err(io_err)?;
        self.write_control(&out).await?;
        let mut login = ServerLogin::new(
            &target.user,
            target.password.as_ref(),
            target.client_key.as_ref(),
        );
        loop {
            let (tag, body) = self.read_control().await?;
            match tag {
                b'R' => match login.respond(&body) {
                    Ok(ServerAuth::Reply(reply)) => {
                        if !reply.is_empty() {
                            self.write_control(&reply).await?;
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
                    self.key = CancelKey {
                        pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    };
                }
                b'S' => self.params.note(&body),
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
        let stream = self.stream.as_ref().expect(super::conn::OPEN);
        let local = Some(stream.local());
        let tls = stream.tls().map(|t| t.describe()).unwrap_or_default();
        self.entry
            .as_ref()
            .expect(super::conn::OPEN)
            .entry
            .logged_in(self.key.pid, local, tls);
        Ok(())
    }
}

/// Connects to `host`, with TLS when the target asks for it.
pub(super) async fn open_stream(
    target: &ServerTarget,
    host: &ServerAddr,
) -> Result<ServerStream, ServerError> {
    let addr = host.to_string();
    target.tls.open(host).await.map_err(|err| match err {
        OpenError::Io(source) => ServerError::Io { addr, source },
        OpenError::Refused(reason) => ServerError::Tls { addr, reason },
        OpenError::BadAnswer => ServerError::Protocol {
            addr,
            source: ProtocolError::Malformed("answer to SSLRequest"),
        },
    })
}

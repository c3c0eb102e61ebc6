//! Opening a server connection: connect, send the startup message, answer
//! the server's authentication requests, and read its welcome (cancel key
//! and parameters) up to the first ReadyForQuery.

use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

use super::error::server_error;
use super::{ServerConn, ServerError, ServerParams, ServerTarget};
use crate::auth::{ServerAuth, ServerLogin};
use crate::cancel::ServerCancels;
use crate::net::{ServerAddr, ServerStream};
use crate::prepared::ServerStatements;
use crate::proto::{CancelKey, ProtocolError};
use crate::stats::ServerGuard;

impl ServerConn {
    /// Opens a connection to `host`, one of `target`'s, and logs in.
    /// `permits` are its places under the connection limits, held for as
    /// long as it lives; `entry` is its place in the registry, `born` the
    /// pool's generation.
    pub async fn connect(
        target: &Arc<ServerTarget>,
        host: &ServerAddr,
        born: u64,
        permits: Vec<OwnedSemaphorePermit>,
        entry: ServerGuard,
    ) -> Result<Self, ServerError> {
        let addr = host.to_string();
        let io_err = |source| ServerError::Io {
            addr: addr.clone(),
            source,
        };
        let stream = host.connect().await.map_err(io_err)?;
        let stream = encrypt(stream, target, host, &addr).await?;
        let mut conn = ServerConn {
            stream: Some(stream),
            rbuf: BytesMut::with_capacity(16 * 1024),
            key: CancelKey { pid: 0, secret: 0 },
            params: ServerParams::default(),
            broken: false,
            dirty: false,
            _permits: permits,
            target: target.clone(),
            host: host.clone(),
            role: None,
            born,
            entry: Some(entry),
            statements: ServerStatements::default(),
            cancels: Arc::new(ServerCancels::new(host.clone())),
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

/// SSLRequest: length 8, then the request code 1234/5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Asks a TCP server for TLS when `server_tls_sslmode` says to, and does
/// the handshake if it agrees. Unix sockets stay plain: PostgreSQL offers
/// no TLS on them (libpq ignores `sslmode` there too).
async fn encrypt(
    stream: ServerStream,
    target: &ServerTarget,
    host: &ServerAddr,
    addr: &str,
) -> Result<ServerStream, ServerError> {
    let tls = &target.tls;
    let ServerAddr::Tcp { host, .. } = host else {
        return Ok(stream);
    };
    let ServerStream::Tcp(mut tcp) = stream else {
        return Ok(stream);
    };
    let io_err = |source| ServerError::Io {
        addr: addr.to_owned(),
        source,
    };
    if !tls.asked() {
        return Ok(ServerStream::Tcp(tcp));
    }
    tcp.write_all(&SSL_REQUEST).await.map_err(io_err)?;
    // One byte and no more: anything the server sent after it before the
    // handshake would be unencrypted bytes passed off as encrypted ones.
    let answer = tcp.read_u8().await.map_err(io_err)?;
    let refused = |reason: String| ServerError::Tls {
        addr: addr.to_owned(),
        reason,
    };
    match answer {
        b'S' => match tls.connect(tcp, host).await {
            Ok(encrypted) => Ok(ServerStream::encrypted(encrypted)),
            Err(err) => Err(refused(format!("TLS handshake failed: {err}"))),
        },
        b'N' if tls.required() => Err(refused(format!(
            "the server does not accept TLS connections, and server_tls_sslmode = {}",
            tls.mode()
        ))),
        b'N' => Ok(ServerStream::Tcp(tcp)),
        _ => Err(ServerError::Protocol {
            addr: addr.to_owned(),
            source: ProtocolError::Malformed("answer to SSLRequest"),
        }),
    }
}

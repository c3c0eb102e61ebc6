//! What went wrong talking to a server.

use std::io;

use crate::auth::ServerAuthError;
use crate::proto::{cstr, ProtocolError};

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Connecting, reading or writing failed.
    #[error("server {addr}: {source}")]
    Io {
        /// The server.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// The server answered with an ErrorResponse.
    #[error("server {addr}: {severity}: {message} (SQLSTATE {code})")]
    Server {
        /// The server.
        addr: String,
        /// ERROR, FATAL or PANIC.
        severity: String,
        /// The SQLSTATE.
        code: String,
        /// The message.
        message: String,
    },
    /// The server broke the protocol.
    #[error("server {addr}: protocol error: {source}")]
    Protocol {
        /// The server.
        addr: String,
        /// The cause.
        source: ProtocolError,
    },
    /// TLS was required and could not be had, or the server failed the
    /// certificate check.
    #[error("server {addr}: {reason}")]
    Tls {
        /// The server.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No host gave a server of the role the pool wants.
    #[error("no server among {hosts} is {wanted}")]
    Unsuitable {
        /// The hosts tried.
        hosts: String,
        /// What the pool wants (`read-write`, `a standby`...).
        wanted: &'static str,
    },
    /// Logging in failed on the pooler's side.
    #[error("server {addr}: {source}")]
    Auth {
        /// The server.
        addr: String,
        /// The cause.
        source: ServerAuthError,
    },
}

impl ServerError {
    /// Whether the failure says the host is down or not taking
    /// connections (so another host may be tried), rather than that the
    /// login itself is wrong (which another host would refuse too).
    pub fn host_is_down(&self) -> bool {
        match self {
            ServerError::Io { .. } | ServerError::Protocol { .. } | ServerError::Tls { .. } => true,
            // 57P01-57P03: shutting down, crashed, not accepting yet; 08:
            // connection exceptions; 53300/53400: too many connections,
            // a configured limit reached.
            ServerError::Server { code, .. } => {
                code.starts_with("57P")
                    || code.starts_with("08")
                    || matches!(code.as_str(), "53300" | "53400")
            }
            ServerError::Unsuitable { .. } | ServerError::Auth { .. } => false,
        }
    }

    /// The SQLSTATE to show a client for this failure.
    pub fn sqlstate(&self) -> &str {
        match self {
            ServerError::Server { code, .. } => code,
            _ => "08006",
        }
    }
}

/// The [`ServerError::Server`] an ErrorResponse body describes.
pub(super) fn server_error(addr: &str, body: &[u8]) -> ServerError {
    let mut severity = String::from("ERROR");
    let mut code = String::from("XX000");
    let mut message = String::new();
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, after)) = cstr(after) else {
            break;
        };
        match field {
            b'S' => severity = value.to_owned(),
            b'C' => code = value.to_owned(),
            b'M' => message = value.to_owned(),
            _ => {}
        }
        rest = after;
    }
    ServerError::Server {
        addr: addr.to_owned(),
        severity,
        code,
        message,
    }
}

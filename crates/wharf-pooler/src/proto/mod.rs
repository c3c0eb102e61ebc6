//! The PostgreSQL v3 wire protocol, as much as a pooler needs: startup
//! packets ([`startup`]), a scanner that finds message boundaries in a
//! relayed byte stream without copying it ([`scanner`]), and the messages
//! the pooler writes itself ([`messages`]).
//!
//! Frontend messages the pooler sends to servers are built with
//! `postgres_protocol::message::frontend`. Messages relayed between a
//! client and its server are never decoded: only their 5-byte headers are
//! read, so their bytes go through as they came.

pub mod messages;
pub mod params;
pub mod scanner;
pub mod startup;

use tokio::io::{AsyncRead, AsyncReadExt};

pub use params::StartupParams;
pub use scanner::Scanner;
pub use startup::{read_startup, Replication, Startup, PROTOCOL_3};

/// Why bytes from a peer could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A length field outside what the protocol allows.
    #[error("invalid message length {len} for {what}")]
    BadLength {
        /// What was being read.
        what: &'static str,
        /// The length read.
        len: i64,
    },
    /// A startup packet header PgBouncer would not read either (a length
    /// under 8 or over 65,535), quoted in hex.
    #[error("bad packet header: '{0}'")]
    BadHeader(String),
    /// A protocol version this pooler does not speak.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedVersion {
        /// Major version.
        major: i32,
        /// Minor version.
        minor: i32,
    },
    /// Anything else malformed.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// The (process id, secret) pair that identifies a session for cancelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// BackendKeyData's process id.
    pub pid: i32,
    /// BackendKeyData's secret key.
    pub secret: i32,
}

impl CancelKey {
    /// A fresh random key, as handed to each client: from a CSPRNG, as
    /// whoever can guess another client's key can cancel its queries.
    pub fn random() -> Self {
        Self {
            pid: rand::random_range(1..i32::MAX),
            secret: rand::random(),
        }
    }
}

/// Splits a NUL-terminated byte string off the front of `bytes` (without
/// its NUL).
pub fn cstr_bytes(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

/// Splits a NUL-terminated UTF-8 string off the front of `bytes`.
pub fn cstr(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&bytes[..end]).ok()?;
    Some((s, &bytes[end + 1..]))
}

/// Reads one typed message (type byte, length, body) whole, refusing bodies
/// over `max_len`. For the login phase and the pooler's own queries; relayed
/// traffic goes through [`Scanner`] instead.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<(u8, Vec<u8>), ProtocolError> {
    let tag = match reader.read_u8().await {
        Ok(tag) => tag,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed)
        }
        Err(e) => return Err(e.into()),
    };
    let len = reader.read_i32().await?;
    if len < 4 || len as usize - 4 > max_len {
        return Err(ProtocolError::BadLength {
            what: "message",
            len: len.into(),
        });
    }
    let mut body = vec![0; len as usize - 4];
    reader.read_exact(&mut body).await?;
    Ok((tag, body))
}

//! The PostgreSQL v3 wire protocol, as much as a pooler needs: startup
//! packets, the backend messages a pooler sends clients itself, and a scanner
//! that finds message boundaries in a byte stream without copying it.
//!
//! Frontend messages the pooler sends to servers are built with
//! `postgres_protocol::message::frontend`; backend messages it receives
//! during login are parsed with `postgres_protocol::message::backend`.
//! Messages relayed between a client and its server are never decoded:
//! only their 5-byte headers are read, so their bytes go through as they came.

use std::ops::ControlFlow;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol 3.0.
pub const PROTOCOL_3: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// The largest startup packet accepted (PostgreSQL's own limit is 10,000).
const MAX_STARTUP_LEN: usize = 10_000;

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

/// The first packet of a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// A cancel request for the session with this key.
    Cancel(CancelKey),
    /// A normal session start, with its parameters in order.
    Startup {
        /// The minor protocol version asked for (3.x).
        minor_version: i32,
        /// `user`, `database`, `application_name`, …
        params: Vec<(String, String)>,
    },
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
    /// A fresh random key, as handed to each client.
    pub fn random() -> Self {
        Self {
            pid: fastrand::i32(1..i32::MAX),
            secret: fastrand::i32(..),
        }
    }
}

/// Reads a startup-phase packet (no type byte: length, then code).
pub async fn read_startup<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Startup, ProtocolError> {
    let len = match reader.read_i32().await {
        Ok(len) => len,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed)
        }
        Err(e) => return Err(e.into()),
    };
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(ProtocolError::BadLength {
            what: "startup packet",
            len: len.into(),
        });
    }
    let mut body = vec![0; len as usize - 4];
    reader.read_exact(&mut body).await?;
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST if rest.is_empty() => Ok(Startup::SslRequest),
        GSSENC_REQUEST if rest.is_empty() => Ok(Startup::GssEncRequest),
        CANCEL_REQUEST if rest.len() == 8 => Ok(Startup::Cancel(CancelKey {
            pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
            secret: i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
        })),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => {
            Err(ProtocolError::Malformed("special startup request"))
        }
        version if version >> 16 == 3 => Ok(Startup::Startup {
            minor_version: version & 0xffff,
            params: parse_params(rest)?,
        }),
        version => Err(ProtocolError::UnsupportedVersion {
            major: version >> 16,
            minor: version & 0xffff,
        }),
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut params = Vec::new();
    loop {
        let (key, after) = cstr(rest).ok_or(ProtocolError::Malformed("startup parameters"))?;
        if key.is_empty() {
            return if after.is_empty() {
                Ok(params)
            } else {
                Err(ProtocolError::Malformed("startup parameters"))
            };
        }
        let (value, after) = cstr(after).ok_or(ProtocolError::Malformed("startup parameters"))?;
        params.push((key.to_owned(), value.to_owned()));
        rest = after;
    }
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

/// Builders for the backend messages the pooler sends clients itself.
pub mod backend {
    use super::*;

    fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
        buf.put_u8(tag);
        let at = buf.len();
        buf.put_i32(0);
        body(buf);
        let len = (buf.len() - at) as i32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn put_cstr(buf: &mut BytesMut, s: &str) {
        buf.put_slice(s.as_bytes());
        buf.put_u8(0);
    }

    /// AuthenticationOk.
    pub fn auth_ok(buf: &mut BytesMut) {
        message(buf, b'R', |b| b.put_i32(0));
    }

    /// AuthenticationCleartextPassword.
    pub fn auth_cleartext(buf: &mut BytesMut) {
        message(buf, b'R', |b| b.put_i32(3));
    }

    /// AuthenticationMD5Password with its salt.
    pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
        message(buf, b'R', |b| {
            b.put_i32(5);
            b.put_slice(&salt);
        });
    }

    /// AuthenticationSASL offering SCRAM-SHA-256.
    pub fn auth_sasl(buf: &mut BytesMut) {
        message(buf, b'R', |b| {
            b.put_i32(10);
            put_cstr(b, "SCRAM-SHA-256");
            b.put_u8(0);
        });
    }

    /// AuthenticationSASLContinue.
    pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
        message(buf, b'R', |b| {
            b.put_i32(11);
            b.put_slice(data);
        });
    }

    /// AuthenticationSASLFinal.
    pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
        message(buf, b'R', |b| {
            b.put_i32(12);
            b.put_slice(data);
        });
    }

    /// ParameterStatus.
    pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
        message(buf, b'S', |b| {
            put_cstr(b, name);
            put_cstr(b, value);
        });
    }

    /// BackendKeyData.
    pub fn backend_key_data(buf: &mut BytesMut, key: CancelKey) {
        message(buf, b'K', |b| {
            b.put_i32(key.pid);
            b.put_i32(key.secret);
        });
    }

    /// ReadyForQuery with a transaction status (`I`, `T` or `E`).
    pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
        message(buf, b'Z', |b| b.put_u8(status));
    }

    /// ErrorResponse (severity ERROR or FATAL) with a SQLSTATE and message.
    pub fn error(buf: &mut BytesMut, severity: &str, code: &str, text: &str) {
        message(buf, b'E', |b| {
            b.put_u8(b'S');
            put_cstr(b, severity);
            b.put_u8(b'V');
            put_cstr(b, severity);
            b.put_u8(b'C');
            put_cstr(b, code);
            b.put_u8(b'M');
            put_cstr(b, text);
            b.put_u8(0);
        });
    }

    /// NoticeResponse with a message.
    pub fn notice(buf: &mut BytesMut, text: &str) {
        message(buf, b'N', |b| {
            b.put_u8(b'S');
            put_cstr(b, "NOTICE");
            b.put_u8(b'V');
            put_cstr(b, "NOTICE");
            b.put_u8(b'C');
            put_cstr(b, "00000");
            b.put_u8(b'M');
            put_cstr(b, text);
            b.put_u8(0);
        });
    }

    /// RowDescription for text columns (used by the admin console).
    pub fn row_description(buf: &mut BytesMut, columns: &[(&str, Oid)]) {
        message(buf, b'T', |b| {
            b.put_i16(columns.len() as i16);
            for (name, oid) in columns {
                put_cstr(b, name);
                b.put_i32(0);
                b.put_i16(0);
                b.put_u32(*oid as u32);
                b.put_i16(oid.size());
                b.put_i32(-1);
                b.put_i16(0);
            }
        });
    }

    /// DataRow of text values; `None` is SQL NULL.
    pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
        message(buf, b'D', |b| {
            b.put_i16(values.len() as i16);
            for value in values {
                match value {
                    Some(v) => {
                        b.put_i32(v.len() as i32);
                        b.put_slice(v.as_bytes());
                    }
                    None => b.put_i32(-1),
                }
            }
        });
    }

    /// CommandComplete with its tag (`SHOW`, `SELECT 3`, …).
    pub fn command_complete(buf: &mut BytesMut, tag: &str) {
        message(buf, b'C', |b| put_cstr(b, tag));
    }

    /// EmptyQueryResponse.
    pub fn empty_query(buf: &mut BytesMut) {
        message(buf, b'I', |_| {});
    }

    /// The column types the pooler reports itself.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u32)]
    pub enum Oid {
        /// `text`
        Text = 25,
        /// `int8`
        Int8 = 20,
        /// `int4`
        Int4 = 23,
        /// `numeric`
        Numeric = 1700,
        /// `timestamptz`
        Timestamptz = 1184,
        /// `bool`
        Bool = 16,
    }

    impl Oid {
        fn size(self) -> i16 {
            match self {
                Oid::Int8 | Oid::Timestamptz => 8,
                Oid::Int4 => 4,
                Oid::Bool => 1,
                Oid::Text | Oid::Numeric => -1,
            }
        }
    }
}

/// Finds message boundaries in a relayed byte stream.
///
/// Only the 5-byte headers are read. Messages the caller wants to look at
/// (chosen by `wants`) are only passed on once they are complete in the
/// buffer; every other message may be forwarded in pieces as it arrives, so
/// a 1 GB row streams through a small buffer.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Bytes of the current message body not yet seen.
    skip: usize,
    /// Bytes already scanned at the front of the buffer (forwardable).
    ready: usize,
}

impl Scanner {
    /// Scans `buf` past what was scanned before. For every message header
    /// found it calls `on_message(tag, body)`, where `body` is the whole body
    /// for wanted messages and `None` for the rest (seen at their header).
    /// Returns how many bytes from the front of `buf` are safe to forward:
    /// whole messages, or the parts of unwanted ones seen so far. Call
    /// [`consumed`](Self::consumed) after forwarding some.
    pub fn scan(
        &mut self,
        buf: &[u8],
        max_len: usize,
        wants: impl Fn(u8) -> bool,
        mut on_message: impl FnMut(u8, Option<&[u8]>),
    ) -> Result<usize, ProtocolError> {
        self.scan_until(buf, max_len, wants, |tag, body| {
            on_message(tag, body);
            ControlFlow::Continue(())
        })
    }

    /// Like [`scan`](Self::scan), but `on_message` may stop the scan:
    /// `Break` leaves that message and everything after it unscanned (not
    /// forwardable), e.g. at a Terminate the pooler keeps for itself.
    pub fn scan_until(
        &mut self,
        buf: &[u8],
        max_len: usize,
        wants: impl Fn(u8) -> bool,
        mut on_message: impl FnMut(u8, Option<&[u8]>) -> ControlFlow<()>,
    ) -> Result<usize, ProtocolError> {
        let mut pos = self.ready;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - pos);
                pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
            }
            if buf.len() - pos < 5 {
                break;
            }
            let tag = buf[pos];
            let len = i32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]);
            if len < 4 || len as usize - 4 > max_len {
                return Err(ProtocolError::BadLength {
                    what: "message",
                    len: len.into(),
                });
            }
            let total = 1 + len as usize;
            if wants(tag) {
                if buf.len() - pos < total {
                    break;
                }
                if on_message(tag, Some(&buf[pos + 5..pos + total])).is_break() {
                    break;
                }
                pos += total;
            } else {
                if on_message(tag, None).is_break() {
                    break;
                }
                pos += 5;
                self.skip = total - 5;
            }
        }
        self.ready = pos;
        Ok(pos)
    }

    /// Bytes scanned and not yet consumed.
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// Tells the scanner that `n` bytes were removed from the front of the
    /// buffer.
    pub fn consumed(&mut self, n: usize) {
        self.ready -= n;
    }

    /// Whether the scanner is between messages (nothing half-forwarded).
    pub fn at_boundary(&self) -> bool {
        self.skip == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn scanner_streams_big_messages_and_inspects_wanted_ones_whole() {
        let mut stream = msg(b'D', &[7u8; 1000]);
        stream.extend(msg(b'Z', b"I"));
        let mut scanner = Scanner::default();
        let mut seen = Vec::new();
        // Feed it in 100-byte pieces, forwarding what it allows each time.
        let mut buf = Vec::new();
        let mut forwarded = 0;
        for chunk in stream.chunks(100) {
            buf.extend_from_slice(chunk);
            let n = scanner
                .scan(
                    &buf,
                    1 << 20,
                    |t| t == b'Z',
                    |tag, body| seen.push((tag, body.map(<[u8]>::to_vec))),
                )
                .unwrap();
            forwarded += n;
            buf.drain(..n);
            scanner.consumed(n);
        }
        assert_eq!(forwarded, stream.len());
        assert_eq!(seen, vec![(b'D', None), (b'Z', Some(b"I".to_vec()))]);
        assert!(scanner.at_boundary());
    }

    #[test]
    fn scanner_stops_where_told_and_leaves_the_rest_unscanned() {
        let mut stream = msg(b'Q', b"select 1\0");
        let query_len = stream.len();
        stream.extend(msg(b'X', b""));
        stream.extend(b"trailing garbage");
        let mut scanner = Scanner::default();
        let ready = scanner
            .scan_until(
                &stream,
                1 << 20,
                |t| t == b'X',
                |tag, _| {
                    if tag == b'X' {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )
            .unwrap();
        assert_eq!(ready, query_len);
        assert!(scanner.at_boundary());
    }

    #[test]
    fn scanner_refuses_impossible_lengths() {
        let mut scanner = Scanner::default();
        let bad = [b'Q', 0, 0, 0, 2];
        assert!(scanner.scan(&bad, 1 << 20, |_| true, |_, _| {}).is_err());
        let huge = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(Scanner::default()
            .scan(&huge, 1 << 20, |_| true, |_, _| {})
            .is_err());
    }

    #[tokio::test]
    async fn startup_packets_parse_and_garbage_is_an_error() {
        let mut packet = Vec::new();
        let body = b"\0\x03\0\0user\0alice\0database\0db\0\0";
        packet.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        packet.extend_from_slice(body);
        let parsed = read_startup(&mut &packet[..]).await.unwrap();
        assert_eq!(
            parsed,
            Startup::Startup {
                minor_version: 0,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
        let ssl = [0, 0, 0, 8, 4, 210, 22, 47];
        assert_eq!(
            read_startup(&mut &ssl[..]).await.unwrap(),
            Startup::SslRequest
        );
        for garbage in [
            &[0xff, 0xff, 0xff, 0xff][..],
            &[0, 0, 0, 3][..],
            &[0, 0, 0, 12, 0, 2, 0, 0, b'a', 0, b'b', 0][..],
            &[0, 0, 0, 10, 0, 3, 0, 0, b'a', b'b'][..],
        ] {
            assert!(
                read_startup(&mut &garbage[..]).await.is_err(),
                "{garbage:?}"
            );
        }
    }
}

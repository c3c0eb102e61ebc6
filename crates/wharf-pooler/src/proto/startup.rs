//! The startup phase: the first packet of a connection, which has no type
//! byte (a startup message, an SSL or GSSAPI encryption request, or a
//! cancel request).

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{CancelKey, ProtocolError, StartupParams};

/// Protocol 3.0.
pub const PROTOCOL_3: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// The largest startup packet accepted: PgBouncer reads a startup packet's
/// length as two zero bytes and a 16-bit length, whatever `pkt_buf` is, so
/// a long `options` or `application_name` that PgBouncer takes is taken
/// here too (PostgreSQL's own limit, 10,000, would refuse some).
const MAX_STARTUP_LEN: usize = 0xffff;
/// How long to wait for the rest of a bad header, to quote it as PgBouncer
/// does; a client that sent a bad length may send nothing more.
const HEADER_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

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
        params: StartupParams,
    },
}

/// Reads a startup-phase packet (no type byte: length, then code).
/// Needs a runtime with timers: a bad header is quoted with whatever of it
/// comes within a short grace period.
pub async fn read_startup<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Startup, ProtocolError> {
    // No packet is shorter than 8 bytes, so asking for up to 8 at first
    // never takes a byte of what follows it, and an encryption request
    // (exactly 8, sent before every login by most drivers) comes in one
    // read instead of two.
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < 4 {
        match reader.read(&mut head[got..]).await {
            Ok(0) => return Err(ProtocolError::Closed),
            Ok(n) => got += n,
            Err(e) => return Err(e.into()),
        }
    }
    let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(bad_header(reader, &head[..got], len).await);
    }
    let mut body = vec![0; len as usize - 4];
    let early = got - 4;
    body[..early].copy_from_slice(&head[4..got]);
    reader.read_exact(&mut body[early..]).await?;
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    if code >> 16 == 3 {
        // The parameters are read where they came: the four bytes of the
        // version go, the rest of the buffer stays.
        body.drain(..4);
        return Ok(Startup::Startup {
            minor_version: code & 0xffff,
            params: StartupParams::parse(body)?,
        });
    }
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
        version => Err(ProtocolError::UnsupportedVersion {
            major: version >> 16,
            minor: version & 0xffff,
        }),
    }
}

/// PgBouncer's refusal of a startup length it will not take: the header's
/// first 8 bytes in hex (those that came), so the log shows what the
/// client sent instead (an HTTP request, a TLS ClientHello, ...).
async fn bad_header<R: AsyncRead + Unpin>(reader: &mut R, came: &[u8], len: i32) -> ProtocolError {
    let mut header = [0u8; 8];
    // Only a length that claims a body has more header to quote.
    let mut got = if len >= 8 { came.len() } else { 4 };
    header[..got].copy_from_slice(&came[..got]);
    if len >= 8 && got < header.len() {
        let _ = tokio::time::timeout(HEADER_GRACE, async {
            while got < header.len() {
                match reader.read(&mut header[got..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        })
        .await;
    }
    let header = &header[..got];
    ProtocolError::BadHeader(header.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a startup message's `replication` parameter asks for: a
/// walsender rather than a regular backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replication {
    /// A regular connection (no `replication`, or a false value).
    #[default]
    None,
    /// `replication=true`: physical replication (pg_basebackup,
    /// pg_receivewal, a standby).
    Physical,
    /// `replication=database`: logical replication (pg_recvlogical,
    /// subscriptions), connected to one database.
    Logical,
}

impl Replication {
    /// Reads the parameter's value as PostgreSQL does: `database`, or a
    /// boolean (`true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`, and
    /// unambiguous prefixes of them, in any case). `None` for anything
    /// else.
    pub fn from_param(value: &str) -> Option<Self> {
        if value == "database" {
            return Some(Replication::Logical);
        }
        let v = value.to_ascii_lowercase();
        let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
        if prefix_of("true", 1) || prefix_of("yes", 1) || v == "on" || v == "1" {
            Some(Replication::Physical)
        } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || v == "0" {
            Some(Replication::None)
        } else {
            None
        }
    }

    /// The `replication` column of SHOW CLIENTS and SHOW SERVERS.
    pub fn as_str(self) -> &'static str {
        match self {
            Replication::None => "none",
            Replication::Physical => "physical",
            Replication::Logical => "logical",
        }
    }

    /// The value to send a server, for a replication connection.
    pub fn param_value(self) -> Option<&'static str> {
        match self {
            Replication::None => None,
            Replication::Physical => Some("true"),
            Replication::Logical => Some("database"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_values_read_as_postgresql_reads_them() {
        for (value, read) in [
            ("database", Some(Replication::Logical)),
            ("true", Some(Replication::Physical)),
            ("YES", Some(Replication::Physical)),
            ("t", Some(Replication::Physical)),
            ("on", Some(Replication::Physical)),
            ("1", Some(Replication::Physical)),
            ("false", Some(Replication::None)),
            ("of", Some(Replication::None)),
            ("no", Some(Replication::None)),
            ("0", Some(Replication::None)),
            ("o", None),
            ("", None),
            ("Database", None),
            ("2", None),
            ("truest", None),
        ] {
            assert_eq!(Replication::from_param(value), read, "{value:?}");
        }
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
                params: StartupParams::from_pairs([("user", "alice"), ("database", "db")])
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

    /// A reader that hands out what it holds a few bytes at a time, and
    /// remembers how much was taken.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.step.min(buf.remaining()).min(self.bytes.len());
            buf.put_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_packet_is_read_whole_in_any_pieces_and_nothing_after_it_is_taken() {
        let ssl = [0, 0, 0, 8, 4, 210, 22, 47];
        let body = b"\0\x03\0\0user\0alice\0\0";
        let mut startup = (body.len() as i32 + 4).to_be_bytes().to_vec();
        startup.extend_from_slice(body);
        let cancel = [0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 0, 0, 0, 9];
        let stream = [&ssl[..], &startup, &cancel, b"Q..."].concat();
        for step in [1, 3, 5, 8, 64] {
            let mut reader = Trickle {
                bytes: &stream,
                step,
            };
            assert_eq!(
                read_startup(&mut reader).await.unwrap(),
                Startup::SslRequest
            );
            assert!(matches!(
                read_startup(&mut reader).await.unwrap(),
                Startup::Startup { .. }
            ));
            assert_eq!(
                read_startup(&mut reader).await.unwrap(),
                Startup::Cancel(CancelKey { pid: 7, secret: 9 })
            );
            assert_eq!(reader.bytes, b"Q...", "step {step}");
        }
    }

    #[tokio::test]
    async fn a_bad_header_is_quoted_as_far_as_it_came() {
        let quoted = |err| match err {
            ProtocolError::BadHeader(hex) => hex,
            other => panic!("{other:?}"),
        };
        // Too long: the first 8 bytes, read on past the first 4.
        let http = b"GET / HTTP/1.1\r\n";
        for step in [1, 4, 8, 64] {
            let mut reader = Trickle { bytes: http, step };
            let err = read_startup(&mut reader).await.unwrap_err();
            assert_eq!(quoted(err), "474554202f204854", "step {step}");
        }
        // Too short: the length alone.
        let mut reader = Trickle {
            bytes: &[0, 0, 0, 3, 1, 2, 3, 4],
            step: 8,
        };
        assert_eq!(
            quoted(read_startup(&mut reader).await.unwrap_err()),
            "00000003"
        );
    }
}

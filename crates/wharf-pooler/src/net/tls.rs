//! TLS inside the stream types: an encrypted stream reads and writes like
//! a plain one, so nothing above `net` knows which it has.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::{CommonState, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::stream::{ClientStream, TlsSummary};

/// A TLS stream that pushes out what it has buffered before every read.
///
/// rustls may keep encrypted bytes when the socket is full and report the
/// plaintext written; a caller that then waits for an answer would wait
/// for ever. Flushing on read means the bytes leave whenever the stream's
/// owner waits for the other side.
#[derive(Debug)]
pub struct Encrypted<S> {
    inner: S,
}

impl<S> Encrypted<S> {
    /// Wraps a stream whose handshake is done.
    pub fn new(inner: S) -> Self {
        Encrypted { inner }
    }

    /// The TLS stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Encrypted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Pending only means the socket is full; the read below still
        // registers for the answer, and a writable socket wakes us again.
        if let Poll::Ready(Err(err)) = Pin::new(&mut this.inner).poll_flush(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Encrypted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A client's TLS connection, as the pooler accepted it.
pub type TlsClientStream = Encrypted<tokio_rustls::server::TlsStream<TcpStream>>;

/// A server's TLS connection, as the pooler opened it.
pub type TlsServerStream = Encrypted<tokio_rustls::client::TlsStream<TcpStream>>;

impl ClientStream for TlsClientStream {
    type Reader<'a> = tokio::io::ReadHalf<&'a mut TlsClientStream>;
    type Writer<'a> = tokio::io::WriteHalf<&'a mut TlsClientStream>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        tokio::io::split(self)
    }

    fn local_end(&self) -> Option<crate::net::Peer> {
        self.inner.get_ref().0.local_end()
    }

    fn tls(&self) -> Option<TlsSummary> {
        let state = self.inner.get_ref().1;
        let peer_cn = state
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| common_name(cert));
        Some(summarize(state, peer_cn))
    }
}

/// What `state`'s handshake agreed on.
pub(super) fn summarize(state: &CommonState, peer_common_name: Option<String>) -> TlsSummary {
    let protocol = match state.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let cipher = state
        .negotiated_cipher_suite()
        .map(|suite| openssl_name(suite.suite()))
        .unwrap_or_default();
    let cipher = match state.negotiated_key_exchange_group() {
        Some(group) => format!("{cipher}/ECDH={:?}", group.name()),
        None => cipher,
    };
    TlsSummary::new(protocol.to_owned(), cipher, peer_common_name)
}

/// A cipher suite by its OpenSSL name, as PgBouncer shows it.
fn openssl_name(suite: rustls::CipherSuite) -> String {
    let iana = format!("{suite:?}");
    if let Some(rest) = iana.strip_prefix("TLS13_") {
        return format!("TLS_{rest}");
    }
    let Some(rest) = iana.strip_prefix("TLS_") else {
        return iana;
    };
    // TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 → ECDHE-RSA-AES256-GCM-SHA384
    let rest = rest
        .replace("_WITH_", "_")
        .replace("AES_128", "AES128")
        .replace("AES_256", "AES256")
        .replace("CHACHA20_POLY1305_SHA256", "CHACHA20_POLY1305");
    rest.replace('_', "-")
}

/// The subject's common name (CN) of a DER certificate.
fn common_name(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::openssl_name;
    use rustls::CipherSuite;

    #[test]
    fn cipher_suites_take_their_openssl_names() {
        assert_eq!(
            openssl_name(CipherSuite::TLS13_AES_256_GCM_SHA384),
            "TLS_AES_256_GCM_SHA384"
        );
        assert_eq!(
            openssl_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
            "ECDHE-RSA-AES256-GCM-SHA384"
        );
        assert_eq!(
            openssl_name(CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        );
    }
}

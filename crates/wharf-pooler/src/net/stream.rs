//! The sockets: a server connection (TCP or Unix) and the client socket
//! trait, each able to split into a reading and a writing half so the relay
//! can read and write at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};

use super::tls::TlsServerStream;
use super::Peer;

/// A socket to a server, TCP or Unix, plain or TLS.
#[derive(Debug)]
pub enum ServerStream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix domain socket.
    Unix(UnixStream),
    /// TLS over TCP.
    Tls(Box<TlsServer>),
}

/// A server's TLS connection, split once when it is opened (the halves
/// share a lock, taken per read or write, instead of a split per
/// transaction).
#[derive(Debug)]
pub struct TlsServer {
    reader: ReadHalf<TlsServerStream>,
    writer: WriteHalf<TlsServerStream>,
    local: (String, u16),
    summary: TlsSummary,
}

impl ServerStream {
    /// A server connection whose TLS handshake is done.
    pub fn encrypted(stream: TlsServerStream) -> Self {
        let (tcp, state) = stream.get_ref().get_ref();
        let local = tcp
            .local_addr()
            .map(|a| (a.ip().to_string(), a.port()))
            .unwrap_or_default();
        let summary = super::tls::summarize(state, None);
        let (reader, writer) = tokio::io::split(stream);
        ServerStream::Tls(Box::new(TlsServer {
            reader,
            writer,
            local,
            summary,
        }))
    }

    /// What the TLS handshake agreed on; `None` for a plain connection.
    pub fn tls(&self) -> Option<&TlsSummary> {
        match self {
            ServerStream::Tls(tls) => Some(&tls.summary),
            _ => None,
        }
    }
}

/// The reading half of a split [`ServerStream`].
pub enum ServerReader<'a> {
    /// TCP.
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    /// Unix.
    Unix(tokio::net::unix::ReadHalf<'a>),
    /// TLS.
    Tls(&'a mut ReadHalf<TlsServerStream>),
}

impl AsyncRead for ServerReader<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerReader::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerReader::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ServerReader::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

/// The writing half of a split [`ServerStream`].
pub enum ServerWriter<'a> {
    /// TCP.
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    /// Unix.
    Unix(tokio::net::unix::WriteHalf<'a>),
    /// TLS.
    Tls(&'a mut WriteHalf<TlsServerStream>),
}

impl AsyncWrite for ServerWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerWriter::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerWriter::Unix(s) => Pin::new(s).poll_write(cx, buf),
            ServerWriter::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerWriter::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerWriter::Unix(s) => Pin::new(s).poll_flush(cx),
            ServerWriter::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerWriter::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerWriter::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ServerWriter::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A writing half that writes without a task to wake when its socket has
/// room, as it nearly always has: the relay writes at once, and waits with
/// [`AsyncWrite::poll_write`] only when this writes nothing (the socket is
/// full, or Tokio has not yet seen it writable).
pub trait WriteNow: AsyncWrite + Unpin {
    /// Writes what the socket takes now; `None` when it takes nothing yet
    /// and the caller must wait for room.
    fn write_now(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(self).poll_write(&mut cx, buf) {
            Poll::Ready(wrote) => Some(wrote),
            Poll::Pending => None,
        }
    }

    /// Whether bytes this writer took may wait in a buffer that only a
    /// poll of the stream's read pushes out ([`Encrypted`](super::tls::Encrypted)):
    /// the reader must then be polled whenever its owner waits, even if
    /// it found nothing a moment before.
    fn flushed_by_reads(&self) -> bool {
        true
    }
}

/// A plain socket's write with Tokio's `try_write`: it checks the
/// readiness Tokio last saw, but registers no waker and takes nothing from
/// the task's budget (the reads that brought the bytes did). A write that
/// would block clears that readiness, so the wait that follows registers
/// for room as it should. Unlike `poll_write`, a short write leaves the
/// readiness set: the next write finds the socket full with one more
/// system call, once per time the socket fills.
fn try_write_now(wrote: io::Result<usize>) -> Option<io::Result<usize>> {
    match wrote {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => None,
        wrote => Some(wrote),
    }
}

impl WriteNow for tokio::net::tcp::WriteHalf<'_> {
    fn write_now(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
        try_write_now(self.try_write(buf))
    }

    fn flushed_by_reads(&self) -> bool {
        false
    }
}

impl WriteNow for tokio::net::unix::WriteHalf<'_> {
    fn write_now(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
        try_write_now(self.try_write(buf))
    }

    fn flushed_by_reads(&self) -> bool {
        false
    }
}

impl<T: AsyncRead + AsyncWrite> WriteNow for WriteHalf<T> {}

impl WriteNow for ServerWriter<'_> {
    fn write_now(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
        match self {
            ServerWriter::Tcp(s) => s.write_now(buf),
            ServerWriter::Unix(s) => s.write_now(buf),
            ServerWriter::Tls(s) => s.write_now(buf),
        }
    }

    fn flushed_by_reads(&self) -> bool {
        matches!(self, ServerWriter::Tls(_))
    }
}

impl ServerStream {
    /// Borrows the stream as separate read and write halves, so the relay
    /// can read and write at once.
    #[inline]
    pub fn split(&mut self) -> (ServerReader<'_>, ServerWriter<'_>) {
        match self {
            ServerStream::Tcp(s) => {
                let (r, w) = s.split();
                (ServerReader::Tcp(r), ServerWriter::Tcp(w))
            }
            ServerStream::Unix(s) => {
                let (r, w) = s.split();
                (ServerReader::Unix(r), ServerWriter::Unix(w))
            }
            ServerStream::Tls(tls) => (
                ServerReader::Tls(&mut tls.reader),
                ServerWriter::Tls(&mut tls.writer),
            ),
        }
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            ServerStream::Tcp(s) => s.write_all(bytes).await,
            ServerStream::Unix(s) => s.write_all(bytes).await,
            ServerStream::Tls(tls) => {
                tls.writer.write_all(bytes).await?;
                tls.writer.flush().await
            }
        }
    }

    /// The pooler's end of the connection (`unix`, 0 for a Unix socket).
    pub fn local(&self) -> (String, u16) {
        match self {
            ServerStream::Tcp(s) => s
                .local_addr()
                .map(|a| (a.ip().to_string(), a.port()))
                .unwrap_or_default(),
            ServerStream::Unix(_) => ("unix".to_owned(), 0),
            ServerStream::Tls(tls) => tls.local.clone(),
        }
    }

    /// Reads what is there into `buf`; 0 at end of stream.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.read_buf(buf).await,
            ServerStream::Unix(s) => s.read_buf(buf).await,
            ServerStream::Tls(tls) => tls.reader.read_buf(buf).await,
        }
    }
}

/// A client socket that can be split into halves for relaying.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The reading half.
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// The writing half.
    type Writer<'a>: WriteNow + Send
    where
        Self: 'a;
    /// Borrows the socket as two halves.
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);

    /// The pooler's end of the connection (`SHOW CLIENTS` local_addr).
    fn local_end(&self) -> Option<Peer> {
        None
    }

    /// The peer's OS user and process id, when the socket can tell (Unix).
    fn peer_credentials(&self) -> Option<(u32, Option<u32>)> {
        None
    }

    /// What the TLS handshake agreed on; `None` for a plain connection.
    fn tls(&self) -> Option<TlsSummary> {
        None
    }

    /// A Unix socket: local, so encryption is neither offered nor asked.
    fn is_local(&self) -> bool {
        false
    }

    /// The TCP socket, for a TLS handshake; itself back if it is not one.
    fn into_tcp(self) -> Result<TcpStream, Self>
    where
        Self: Sized,
    {
        Err(self)
    }
}

/// What a TLS handshake agreed on: shown in `SHOW CLIENTS` and
/// `SHOW SERVERS`, and read by hba rules and certificate logins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSummary {
    protocol: String,
    cipher: String,
    peer_common_name: Option<String>,
}

impl TlsSummary {
    /// A summary from its parts.
    pub fn new(protocol: String, cipher: String, peer_common_name: Option<String>) -> Self {
        TlsSummary {
            protocol,
            cipher,
            peer_common_name,
        }
    }

    /// The protocol version, as PgBouncer names it (`TLSv1.3`).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The cipher suite's IANA name.
    pub fn cipher(&self) -> &str {
        &self.cipher
    }

    /// As `SHOW CLIENTS` and `SHOW SERVERS` show it:
    /// `TLSv1.3/TLS_AES_256_GCM_SHA384/ECDH=X25519`.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.protocol, self.cipher)
    }

    /// The common name (CN) of the certificate the peer presented and the
    /// pooler verified, if any.
    pub fn peer_common_name(&self) -> Option<&str> {
        self.peer_common_name.as_deref()
    }
}

impl ClientStream for TcpStream {
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }
    fn local_end(&self) -> Option<Peer> {
        self.local_addr().ok().map(Peer::Tcp)
    }
    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

impl ClientStream for UnixStream {
    type Reader<'a> = tokio::net::unix::ReadHalf<'a>;
    type Writer<'a> = tokio::net::unix::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }
    fn local_end(&self) -> Option<Peer> {
        Some(Peer::unix(None))
    }
    fn is_local(&self) -> bool {
        true
    }
    fn peer_credentials(&self) -> Option<(u32, Option<u32>)> {
        let cred = self.peer_cred().ok()?;
        Some((cred.uid(), cred.pid().and_then(|p| u32::try_from(p).ok())))
    }
}

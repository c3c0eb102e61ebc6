//! Reaching an origin: TCP, then TLS for `https://`, with the ALPN
//! protocols the connection will speak.

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::origin::Origin;
use crate::{Error, Tls};

/// A connected byte stream, plain or encrypted.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens connections to one origin.
#[derive(Clone)]
pub(crate) struct Dialer {
    pub(crate) origin: Origin,
    /// For `https://`: the TLS client and the name the server's
    /// certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Dialer {
    /// A dialer for `origin`; `tls` is required for `https://` and offered
    /// `alpn` (`h2`, `http/1.1`).
    pub(crate) fn new(origin: Origin, tls: Option<&Tls>, alpn: &[&[u8]]) -> Result<Self, Error> {
        let tls = match tls {
            Some(tls) => {
                let name = ServerName::try_from(origin.host.clone()).map_err(|_| {
                    Error::TlsConfig(format!("{} is not a valid server name", origin.host))
                })?;
                Some((TlsConnector::from(tls.client_config(alpn)?), name))
            }
            None => None,
        };
        Ok(Self { origin, tls })
    }

    /// `host:port`, for errors.
    pub(crate) fn addr(&self) -> String {
        format!("{}:{}", self.origin.host, self.origin.port)
    }

    /// Connects (and for `https://`, completes the TLS handshake); returns
    /// the stream and the protocol the server chose by ALPN, if any.
    pub(crate) async fn dial(&self) -> Result<(Box<dyn Io>, Option<Vec<u8>>), Error> {
        let origin = &self.origin;
        let connect_error = |source| Error::Connect {
            addr: self.addr(),
            source,
        };
        let stream = TcpStream::connect((origin.host.as_str(), origin.port))
            .await
            .map_err(connect_error)?;
        // Requests are small and written whole; Nagle would only delay them.
        stream.set_nodelay(true).map_err(connect_error)?;
        match &self.tls {
            None => Ok((Box::new(stream), None)),
            Some((connector, name)) => {
                let encrypted =
                    connector
                        .connect(name.clone(), stream)
                        .await
                        .map_err(|source| Error::Tls {
                            addr: self.addr(),
                            source,
                        })?;
                let alpn = encrypted.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                Ok((Box::new(encrypted), alpn))
            }
        }
    }
}

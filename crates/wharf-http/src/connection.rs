//! One origin's connections for the engine: opening them (TCP, then TLS
//! for `https://`, then the HTTP/1.1 handshake), checking them, and
//! sending a request on one.

use std::fmt;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::dial::Dialer;
use crate::origin::Origin;
use crate::{closed_under_us, Error, Tls};

/// Opens and checks HTTP/1.1 connections to one origin, over TLS for an
/// `https://` origin.
#[derive(Clone)]
pub struct HttpManager {
    dialer: Dialer,
}

impl HttpManager {
    /// A manager for `origin`, such as `http://127.0.0.1:8080` (port 80 if
    /// left out) or `https://api.example.com` (port 443, servers verified
    /// against the system's trusted roots). Nothing is connected yet.
    ///
    /// # Errors
    ///
    /// An origin that does not parse; for `https://`, no system CA bundle.
    pub fn new(origin: &str) -> Result<Self, Error> {
        let parsed = Origin::parse(origin)?;
        let tls = if parsed.https {
            Some(Tls::system()?)
        } else {
            None
        };
        Self::build(parsed, tls.as_ref())
    }

    /// A manager for the `https://` `origin` with these TLS settings.
    ///
    /// # Errors
    ///
    /// An origin that does not parse or is not `https://`, or TLS settings
    /// rustls refuses.
    pub fn with_tls(origin: &str, tls: &Tls) -> Result<Self, Error> {
        let parsed = Origin::parse_https(origin)?;
        Self::build(parsed, Some(tls))
    }

    fn build(origin: Origin, tls: Option<&Tls>) -> Result<Self, Error> {
        Ok(Self {
            dialer: Dialer::new(origin, tls, &[b"http/1.1"])?,
        })
    }

    /// The origin, as `http://host:port` or `https://host:port`.
    pub fn origin(&self) -> String {
        self.dialer.origin.to_string()
    }

    pub(crate) fn parsed_origin(&self) -> &Origin {
        &self.dialer.origin
    }
}

impl fmt::Debug for HttpManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpManager")
            .field("origin", &self.dialer.origin.to_string())
            .finish()
    }
}

impl wharf::Manager for HttpManager {
    type Connection = HttpConnection;
    type Error = Error;

    async fn connect(&self) -> Result<HttpConnection, Error> {
        let origin = &self.dialer.origin;
        let (stream, _) = self.dialer.dial().await?;
        let (sender, driver) = handshake(stream).await?;
        tracing::trace!(origin = %origin, "opened an HTTP connection");
        Ok(HttpConnection {
            sender,
            driver,
            in_flight: false,
            served: 0,
        })
    }

    async fn check(&self, conn: &mut HttpConnection) -> Result<(), Error> {
        conn.sender.ready().await.map_err(Error::Closed)
    }

    fn has_broken(&self, conn: &mut HttpConnection) -> bool {
        // A request still marked in flight was abandoned midway (its future
        // dropped, or timed out): hyper closes such a connection, but maybe
        // not yet.
        conn.in_flight || conn.sender.is_closed()
    }
}

/// The HTTP/1.1 handshake on `io`, and the task that drives the
/// connection.
async fn handshake<T>(io: T) -> Result<(SendRequest<Full<Bytes>>, JoinHandle<()>), Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(Error::Handshake)?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "HTTP connection ended with an error");
        }
    });
    Ok((sender, driver))
}

/// One HTTP/1.1 connection: hyper's request sender, with the task that
/// drives the socket.
pub struct HttpConnection {
    pub(crate) sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
    in_flight: bool,
    served: u64,
}

impl HttpConnection {
    /// Whether the connection is closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// How many responses were read whole on this connection.
    pub fn requests_served(&self) -> u64 {
        self.served
    }

    /// Sends `request` as it is (its URI should be origin-form, `/path`, and
    /// it needs a `Host` header; [`HttpPool`] takes care of both) and reads
    /// the whole response.
    ///
    /// The connection must not be reused if the response says
    /// `Connection: close`; [`HttpPool`] sees to that too.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, Error> {
        match self.try_send(request).await {
            Ok(response) => Ok(response),
            Err(Failure::NotSent(error, _)) | Err(Failure::Sent(error)) => Err(error),
        }
    }

    pub(crate) async fn try_send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, Failure> {
        self.in_flight = true;
        let response = match self.sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut error) => {
                return Err(match error.take_message() {
                    Some(request) => {
                        // Nothing was written: the connection is as it was.
                        self.in_flight = false;
                        Failure::NotSent(Error::Closed(error.into_error()), Box::new(request))
                    }
                    None => {
                        let error = error.into_error();
                        Failure::Sent(if closed_under_us(&error) {
                            Error::Closed(error)
                        } else {
                            Error::Request(error)
                        })
                    }
                });
            }
        };
        let (head, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|error| Failure::Sent(Error::Body(error)))?
            .to_bytes();
        self.in_flight = false;
        self.served += 1;
        Ok(Response::from_parts(head, body))
    }
}

impl Drop for HttpConnection {
    fn drop(&mut self) {
        // Closes the socket now; left alone, hyper would close it only once
        // it notices the sender is gone.
        self.driver.abort();
    }
}

impl fmt::Debug for HttpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConnection")
            .field("closed", &self.sender.is_closed())
            .field("in_flight", &self.in_flight)
            .field("served", &self.served)
            .finish()
    }
}

pub(crate) enum Failure {
    /// The request was not written; it comes back for another try.
    NotSent(Error, Box<Request<Full<Bytes>>>),
    /// It may have reached the server.
    Sent(Error),
}

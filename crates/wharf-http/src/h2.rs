//! HTTP/2: one connection carries many requests at once, so connections
//! are leased, not checked out ([`wharf::shared`]): each request goes to
//! the connection with the fewest requests in flight, and another
//! connection opens only when every open one has `per_connection` in
//! flight.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{CONNECTION, HOST};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;
use wharf::shared::{Open, SharedError, SharedPool, SharedSettings, SharedStatus};

use crate::dial::Dialer;
use crate::origin::Origin;
use crate::{chain, closed_under_us, is_idempotent, Error, Tls};

/// One HTTP/2 connection: hyper's (cloneable) sender, and the task that
/// drives the socket, stopped when the last handle goes.
#[derive(Debug)]
pub struct H2Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for H2Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens HTTP/2 connections to one origin.
struct H2Opener {
    dialer: Dialer,
}

impl Open for H2Opener {
    type Conn = Arc<H2Connection>;
    type Error = Error;

    async fn open(&self) -> Result<(Arc<H2Connection>, String), Error> {
        let (stream, alpn) = self.dialer.dial().await?;
        if self.dialer.origin.https && alpn.as_deref() != Some(b"h2".as_slice()) {
            return Err(Error::TlsConfig(format!(
                "{} did not agree to HTTP/2 (ALPN h2)",
                self.dialer.addr()
            )));
        }
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(Error::Handshake)?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %chain(&error), "HTTP/2 connection ended with an error");
            }
        });
        Ok((
            Arc::new(H2Connection { sender, driver }),
            self.dialer.origin.to_string(),
        ))
    }

    fn is_open(&self, conn: &Arc<H2Connection>) -> bool {
        !conn.sender.is_closed()
    }
}

/// A client for one origin over HTTP/2, with requests multiplexed on a
/// few connections (node's `http2.connect` sessions, with a pool of them).
///
/// `http://` origins are spoken to in HTTP/2 from the first byte (prior
/// knowledge, as `h2c`); `https://` origins must choose `h2` by ALPN, or
/// the connection fails with [`Error::TlsConfig`].
///
/// ```no_run
/// # async fn run() -> Result<(), wharf_http::Error> {
/// use wharf_http::wharf::shared::SharedSettings;
///
/// let settings = SharedSettings { per_connection: 100, max_connections: 4, ..SharedSettings::default() };
/// let http = wharf_http::Http2Pool::new("https://api.example.com", settings).await?;
/// let response = http.get("/health").await?;
/// # drop(response);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Http2Pool {
    shared: SharedPool<H2Opener>,
    request_timeout: Option<Duration>,
}

impl std::fmt::Debug for H2Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Opener")
            .field("origin", &self.dialer.origin.to_string())
            .finish()
    }
}

impl Http2Pool {
    /// A pool for `origin`: `http://` with prior knowledge, `https://`
    /// verified against the system's roots.
    ///
    /// # Errors
    ///
    /// An origin that does not parse, no system CA bundle, or settings out
    /// of range.
    pub async fn new(origin: &str, settings: SharedSettings) -> Result<Self, Error> {
        let parsed = Origin::parse(origin)?;
        let tls = if parsed.https {
            Some(Tls::system()?)
        } else {
            None
        };
        Self::start(parsed, tls.as_ref(), settings).await
    }

    /// A pool for the `https://` `origin` with these TLS settings.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and an origin that is not `https://`.
    pub async fn with_tls(origin: &str, settings: SharedSettings, tls: Tls) -> Result<Self, Error> {
        Self::start(Origin::parse_https(origin)?, Some(&tls), settings).await
    }

    async fn start(
        origin: Origin,
        tls: Option<&Tls>,
        settings: SharedSettings,
    ) -> Result<Self, Error> {
        let opener = H2Opener {
            dialer: Dialer::new(origin, tls, &[b"h2"])?,
        };
        let shared = SharedPool::start(opener, settings)
            .await
            .map_err(|err| match err {
                SharedError::Settings(what) => Error::InvalidSettings(what),
                // Starting only ever refuses settings.
                _ => Error::InvalidSettings("the pool could not start"),
            })?;
        Ok(Self {
            shared,
            request_timeout: None,
        })
    }

    /// Bounds each request, from the lease to the last byte of the body.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.request_timeout = timeout.into();
        self
    }

    /// The connections and their requests in flight.
    pub fn status(&self) -> SharedStatus {
        self.shared.status()
    }

    /// The origin, as `http://host:port` or `https://host:port`.
    pub fn origin(&self) -> String {
        self.shared.opener().dialer.origin.to_string()
    }

    /// `GET path`, with the whole response.
    pub async fn get(&self, path: &str) -> Result<Response<Bytes>, Error> {
        self.request(crate::get_request(path)?).await
    }

    /// Sends `request` on the least-loaded connection and returns the
    /// response with its whole body. The URI may be a path or an absolute
    /// URL of this origin. An idempotent request whose connection turned
    /// out closed is sent once more on another.
    pub async fn request<B: Into<Bytes>>(
        &self,
        request: Request<B>,
    ) -> Result<Response<Bytes>, Error> {
        let request = self.prepare(request.map(|body| Full::new(body.into())))?;
        let retry = is_idempotent(request.method()).then(|| request.clone());
        match self.timed(request).await {
            Err(Error::Closed(error)) => match retry {
                Some(request) => {
                    tracing::debug!(error = %chain(&error), "HTTP/2 connection closed; retrying once");
                    self.timed(request).await
                }
                None => Err(Error::Closed(error)),
            },
            other => other,
        }
    }

    async fn timed(&self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, Error> {
        match self.request_timeout {
            Some(limit) => tokio::time::timeout(limit, self.attempt(request))
                .await
                .unwrap_or(Err(Error::Timeout(limit))),
            None => self.attempt(request).await,
        }
    }

    async fn attempt(&self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, Error> {
        let lease = match self.shared.lease().await {
            Ok(lease) => lease,
            Err(SharedError::Open(err)) => return Err(err),
            Err(SharedError::OpenTimeout(_)) => {
                return Err(Error::Connect {
                    addr: self.shared.opener().dialer.addr(),
                    source: std::io::ErrorKind::TimedOut.into(),
                })
            }
            Err(SharedError::Closed) => return Err(Error::InvalidSettings("the pool is closed")),
            Err(SharedError::Settings(what)) => return Err(Error::InvalidSettings(what)),
        };
        let mut sender = lease.conn().sender.clone();
        let sent = async {
            sender.ready().await?;
            sender.send_request(request).await
        };
        let response = match sent.await {
            Ok(response) => response,
            Err(error) if closed_under_us(&error) || error.is_closed() => {
                lease.report_broken();
                return Err(Error::Closed(error));
            }
            Err(error) => return Err(Error::Request(error)),
        };
        let (head, body) = response.into_parts();
        let body = body.collect().await.map_err(Error::Body)?.to_bytes();
        Ok(Response::from_parts(head, body))
    }

    /// An absolute URI on this origin, HTTP/2, no HTTP/1 connection
    /// headers.
    fn prepare(&self, mut request: Request<Full<Bytes>>) -> Result<Request<Full<Bytes>>, Error> {
        let origin = &self.shared.opener().dialer.origin;
        let path = origin.path_of(request.uri())?;
        *request.uri_mut() = Uri::builder()
            .scheme(origin.scheme())
            .authority(origin.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        headers.remove(CONNECTION);
        headers.remove(HOST);
        Ok(request)
    }
}

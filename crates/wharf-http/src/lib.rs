//! # wharf-http
//!
//! Pooled HTTP/1.1 keep-alive connections, and multiplexed HTTP/2 ones, to
//! one origin, plain or over TLS, on [`hyper`] 1.x
//! and the [`wharf`] engine: what node's
//! `new http.Agent({ keepAlive: true, maxSockets, maxFreeSockets })` does
//! for one host.
//!
//! [`HttpPool`] sends each request on a pooled connection, reads the whole
//! response body and returns the connection for the next request, unless
//! either side said `Connection: close`. [`HttpManager`] is the engine's
//! [`Manager`](wharf::Manager) underneath, for those who want the raw pool.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), wharf_http::Error> {
//! let mut config = wharf_http::HttpPool::default_config();
//! config.max_size = 16; // node's maxSockets
//! let http = wharf_http::HttpPool::with_config("http://127.0.0.1:8080", config)?;
//!
//! let response = http.get("/health").await?;
//! assert!(response.status().is_success());
//! println!("{}", String::from_utf8_lossy(response.body()));
//! # Ok(()) }
//! ```
//!
//! ## HTTPS
//!
//! An `https://` origin is reached over TLS (rustls; TLS 1.2 and 1.3), its
//! certificate verified against the system's trusted roots, or against
//! the roots and with the client certificate of a [`Tls`] given to
//! [`HttpPool::with_tls`] (node's `https.Agent({ ca, cert, key })`).
//! [`HttpPool`] connections speak HTTP/1.1 (ALPN `http/1.1`), one request
//! at a time.
//!
//! ## HTTP/2
//!
//! [`Http2Pool`] multiplexes requests on HTTP/2 connections (`h2` by ALPN
//! over TLS, or `h2c` with prior knowledge for `http://`). A connection
//! is leased, not checked out: each request goes to the connection with
//! the fewest requests in flight, and another opens only when every open
//! one has `per_connection` in flight ([`wharf::shared`]).
//!
//! ## Settings, and what node calls them
//!
//! | node `http.Agent` option | wharf ([`wharf::Config`]) |
//! |--------------------------|---------------------------|
//! | `keepAlive: true`        | the default: connections are reused |
//! | `keepAlive: false`       | `max_uses = 1`: a connection per request |
//! | `maxSockets`             | `max_size` (the most connections open at once; callers beyond it wait, up to `acquire_timeout`) |
//! | `maxTotalSockets`        | `max_size` (one origin per pool) |
//! | `maxFreeSockets`         | no count limit: idle connections are bounded by `max_size` and closed after `idle_timeout`; `min_idle` keeps some open |
//! | keep-alive timeout (agentkeepalive's `freeSocketTimeout`) | `idle_timeout` (default here 4 s, see below) |
//! | `timeout`                | [`HttpPool::with_request_timeout`] for a whole request, `connect_timeout` for connecting |
//! | `scheduling: 'lifo'`     | always: the most recently used idle connection is reused first |
//!
//! Keep `idle_timeout` below the server's keep-alive timeout (node servers
//! 5 s, nginx 75 s), so that the client, not the server, closes idle
//! connections: a server closing one just as a request is sent on it is the
//! classic keep-alive race. [`HttpPool::default_config`] uses 4 s, as
//! agentkeepalive does. The race is handled anyway: a request that was not
//! sent, or an idempotent one whose reused connection closed before any
//! response came, is retried on another connection
//! ([`HttpPool::retried`] counts them).
#![warn(missing_docs)]

mod connection;
mod dial;
mod h2;
mod origin;
mod tls;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
#[cfg(test)]
use hyper::header::HeaderValue;
use hyper::header::{CONNECTION, HOST};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, Uri, Version};

use connection::Failure;
pub use connection::{HttpConnection, HttpManager};
pub use h2::{H2Connection, Http2Pool};
use origin::Origin;
pub use tls::Tls;

pub use bytes;
pub use hyper;
pub use wharf;

/// A pool of connections to one origin.
pub type Pool = wharf::Pool<HttpManager>;

/// How often [`HttpPool::request`] writes an idempotent request again after
/// its reused connection closed without answering.
const MAX_RESENDS: usize = 2;

/// What can go wrong sending a request through the pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The origin is not an `http://host[:port]` or `https://host[:port]`
    /// URL.
    #[error("invalid origin {origin:?}: {reason}")]
    InvalidOrigin {
        /// The origin as given.
        origin: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The request cannot be sent to this pool's origin.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Opening the TCP connection failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The HTTP/1 handshake on a new connection failed.
    #[error("HTTP/1 handshake: {}", chain(.0))]
    Handshake(#[source] hyper::Error),
    /// The TLS handshake with an `https://` origin failed (its certificate
    /// not trusted or not for this host, no common protocol, a client
    /// certificate refused).
    #[error("TLS with {addr}: {source}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// rustls' reason.
        #[source]
        source: io::Error,
    },
    /// Pool settings out of range (an [`Http2Pool`]'s).
    #[error("invalid pool settings: {0}")]
    InvalidSettings(&'static str),
    /// TLS settings that cannot be used (a PEM file that does not parse,
    /// no system CA bundle).
    #[error("TLS settings: {0}")]
    TlsConfig(String),
    /// No connection could be had from the pool (timeout, closed pool).
    #[error(transparent)]
    Pool(#[from] wharf::Error),
    /// The pool settings contradict each other.
    #[error("invalid pool settings: {0}")]
    Config(#[from] wharf::ConfigError),
    /// The connection is closed, or closed while the request was under way.
    #[error("connection closed: {}", chain(.0))]
    Closed(#[source] hyper::Error),
    /// Sending the request or receiving the response failed.
    #[error("request failed: {}", chain(.0))]
    Request(#[source] hyper::Error),
    /// The response head arrived but reading its body failed.
    #[error("reading the response body: {}", chain(.0))]
    Body(#[source] hyper::Error),
    /// The request took longer than the request timeout.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
}

/// A client for one origin, over pooled keep-alive connections.
///
/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct HttpPool {
    pool: Pool,
    origin: Origin,
    request_timeout: Option<Duration>,
    retried: Arc<AtomicU64>,
}

impl HttpPool {
    /// A client for `origin` (`http://host:port`) with
    /// [`default_config`](Self::default_config); must be called within a
    /// Tokio runtime.
    pub fn new(origin: &str) -> Result<Self, Error> {
        Self::with_config(origin, Self::default_config())
    }

    /// A client for `origin` with the given pool settings.
    pub fn with_config(origin: &str, config: wharf::Config) -> Result<Self, Error> {
        let pool = Pool::builder(HttpManager::new(origin)?)
            .config(config)
            .build()?;
        Ok(Self::from_pool(pool))
    }

    /// A client for the `https://` `origin` with these TLS settings (a
    /// private CA, a client certificate).
    pub fn with_tls(origin: &str, config: wharf::Config, tls: Tls) -> Result<Self, Error> {
        let pool = Pool::builder(HttpManager::with_tls(origin, &tls)?)
            .config(config)
            .build()?;
        Ok(Self::from_pool(pool))
    }

    /// A client over a pool built by hand (for hooks and the like).
    pub fn from_pool(pool: Pool) -> Self {
        Self {
            origin: pool.manager().parsed_origin().clone(),
            pool,
            request_timeout: None,
            retried: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The engine's defaults, except `idle_timeout` = 4 s, below the 5 s
    /// keep-alive timeout of node servers and most others, and
    /// `keepalive_interval` = 1 s: the check only asks hyper whether the
    /// connection is still open (no I/O), so idle connections the server
    /// closed leave the pool within a second instead of waiting there to be
    /// tried.
    pub fn default_config() -> wharf::Config {
        wharf::Config {
            idle_timeout: Some(Duration::from_secs(4)),
            keepalive_interval: Some(Duration::from_secs(1)),
            ..wharf::Config::default()
        }
    }

    /// Bounds each attempt at a request, from taking a connection to the
    /// last byte of the body (`None`, the default, waits as long as the
    /// server takes). A connection whose request timed out is closed.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.request_timeout = timeout.into();
        self
    }

    /// The pool underneath, for its status and metrics.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The origin, as `http://host:port`.
    pub fn origin(&self) -> String {
        self.origin.to_string()
    }

    /// Requests sent again on another connection because the first one
    /// turned out to be closed.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// `GET path` (`/path?query`), with the whole response.
    pub async fn get(&self, path: &str) -> Result<Response<Bytes>, Error> {
        self.request(get_request(path)?).await
    }

    /// Sends `request` on a pooled connection and returns the response with
    /// its whole body.
    ///
    /// The URI may be a path (`/items?id=1`) or an absolute `http://` URL of
    /// this pool's origin. A `Host` header is added if missing. The
    /// connection goes back to the pool afterwards, unless the request or
    /// the response carried `Connection: close` or anything failed.
    ///
    /// A request that could not be written because its connection had just
    /// closed is sent again on another; so is an idempotent one (`GET`,
    /// `HEAD`, `PUT`, `DELETE`, `OPTIONS`, `TRACE`) whose reused connection
    /// closed before any response came, which is how a server closing an
    /// idle keep-alive connection shows.
    pub async fn request<B: Into<Bytes>>(
        &self,
        request: Request<B>,
    ) -> Result<Response<Bytes>, Error> {
        let mut request = self.prepare(request.map(|body| Full::new(body.into())))?;
        let idempotent = is_idempotent(request.method());
        // Every unsent retry discards a dead connection, so max_size of them
        // exhaust a pool full of dead ones.
        let max_tries = self.pool.status().max_size + MAX_RESENDS + 1;
        let (mut tries, mut resent) = (0, 0);
        loop {
            tries += 1;
            // Kept in case this try fails after writing.
            let copy =
                (idempotent && resent < MAX_RESENDS && tries < max_tries).then(|| request.clone());
            let outcome = match self.request_timeout {
                Some(limit) => tokio::time::timeout(limit, self.attempt(request))
                    .await
                    .unwrap_or(Err(Retry::No(Error::Timeout(limit)))),
                None => self.attempt(request).await,
            };
            request = match outcome {
                Ok(response) => return Ok(response),
                Err(Retry::No(error)) => return Err(error),
                Err(Retry::Unsent(error, _)) if tries >= max_tries => return Err(error),
                Err(Retry::Unsent(error, request)) => {
                    tracing::debug!(%error, tries, "connection closed before the request was sent; retrying");
                    *request
                }
                Err(Retry::Sent(error)) => match copy {
                    Some(copy) => {
                        tracing::debug!(%error, tries, "reused connection closed without a response; retrying");
                        resent += 1;
                        copy
                    }
                    None => return Err(error),
                },
            };
            self.retried.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One try on one connection.
    async fn attempt(&self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, Retry> {
        let started = tokio::time::Instant::now();
        let mut conn = self.pool.get().await.map_err(|e| Retry::No(e.into()))?;
        // As in Go's net/http: only a connection that was there before this
        // request (idle in the pool) can have been closed by the server for
        // idleness; a fresh one that fails has no such excuse.
        let reused = conn.info().age > started.elapsed();
        if let Err(error) = conn.sender.ready().await {
            conn.discard();
            return Err(Retry::Unsent(Error::Closed(error), Box::new(request)));
        }
        let close = wants_close(request.headers());
        match conn.try_send(request).await {
            Ok(response) => {
                if close || wants_close(response.headers()) || response.version() < Version::HTTP_11
                {
                    conn.discard();
                }
                Ok(response)
            }
            Err(Failure::NotSent(error, request)) => {
                conn.discard();
                Err(Retry::Unsent(error, request))
            }
            Err(Failure::Sent(error)) => {
                conn.discard();
                // Only an empty answer on a reused connection says "closed
                // while idle"; anything else may be the request's own doing.
                if reused && matches!(error, Error::Closed(_)) {
                    Err(Retry::Sent(error))
                } else {
                    Err(Retry::No(error))
                }
            }
        }
    }

    /// Origin-form URI and a `Host` header.
    fn prepare(&self, mut request: Request<Full<Bytes>>) -> Result<Request<Full<Bytes>>, Error> {
        let path = self.origin.path_of(request.uri())?;
        *request.uri_mut() = Uri::from(path);
        if request.version() != Version::HTTP_11 {
            *request.version_mut() = Version::HTTP_11;
        }
        request
            .headers_mut()
            .entry(HOST)
            .or_insert_with(|| self.origin.host_header.clone());
        Ok(request)
    }
}

impl fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPool")
            .field("origin", &self.origin.to_string())
            .field("status", &self.pool.status())
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

enum Retry {
    No(Error),
    Unsent(Error, Box<Request<Full<Bytes>>>),
    Sent(Error),
}

/// Whether `error` says the peer closed or reset the connection, rather
/// than anything about the request itself.
pub(crate) fn closed_under_us(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        source = cause.source();
    }
    false
}

/// hyper's message with its causes: hyper says "connection error" and
/// keeps the reason ("Connection reset by peer") in the source.
pub(crate) fn chain(error: &hyper::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A `GET` of `path` (`/path?query`), for either pool's `get`.
pub(crate) fn get_request(path: &str) -> Result<Request<Bytes>, Error> {
    let uri = PathAndQuery::try_from(path)
        .map_err(|e| Error::InvalidRequest(format!("bad path {path:?}: {e}")))?;
    Request::get(Uri::from(uri))
        .body(Bytes::new())
        .map_err(|e| Error::InvalidRequest(e.to_string()))
}

pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Whether a `Connection` header lists `close`.
fn wants_close(headers: &hyper::HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_close_is_found_in_any_spelling() {
        let mut headers = hyper::HeaderMap::new();
        assert!(!wants_close(&headers));
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!wants_close(&headers));
        headers.append(CONNECTION, HeaderValue::from_static("Upgrade, Close"));
        assert!(wants_close(&headers));
    }
}

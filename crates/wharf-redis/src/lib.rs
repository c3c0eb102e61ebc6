//! # wharf-redis
//!
//! Redis connections pooled by the [`wharf`] engine, deadpool-style: a thin
//! [`Manager`](wharf::Manager) over the [`redis`] crate, plus a serde
//! [`Config`] and a [`Pool`] alias.
//!
//! Every checkout gets a connection of its own (one TCP socket that nobody
//! else sends on while it is checked out), so connection state such as
//! `SELECT`, `WATCH`/`MULTI` or `CLIENT SETNAME` is never interleaved with
//! another task's commands, and a slow command holds up only its own caller.
//! The redis crate has had no non-multiplexed async connection since 0.30;
//! [`RedisConnection`] therefore wraps a [`MultiplexedConnection`] that is
//! never cloned or shared, which also keeps a cancelled request from
//! leaving the connection out of step.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use redis::AsyncCommands;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = wharf_redis::Pool::builder(wharf_redis::RedisManager::new("redis://127.0.0.1/")?)
//!     .max_size(16)
//!     .acquire_timeout(Duration::from_secs(2))
//!     .build()?;
//!
//! let mut conn = pool.get().await?;
//! let () = conn.set("greeting", "hello").await?;
//! let greeting: String = conn.get("greeting").await?;
//! // Commands built by hand take the connection itself:
//! let n: i64 = redis::cmd("INCR").arg("hits").query_async(&mut *conn).await?;
//! drop(conn); // back to the pool
//! # let _ = (greeting, n);
//! # Ok(()) }
//! ```
//!
//! ## Redis Cluster
//!
//! [`RedisClusterManager`] and [`ClusterPool`] pool the redis crate's
//! cluster connections: a checkout sends each command to the master of its
//! key's slot, follows `MOVED` and `ASK`, and picks up slot-map changes
//! and masters that come back (see the [`cluster`] module's reasons for
//! pooling whole-cluster connections).
//!
//! ## Redis Sentinel
//!
//! [`RedisSentinelManager`] and [`SentinelPool`] open connections to the
//! master (or a replica) the sentinels name; after a failover, connections
//! to the demoted master break on `READONLY` or fail the `ROLE` check and
//! new ones go to the promoted replica (the [`sentinel`] module).
//!
//! Health: [`Manager::check`](wharf::Manager::check) sends `PING` (before
//! reusing a connection idle longer than `validate_after`, and on keepalive),
//! and a connection whose last command failed with an I/O error, a timeout
//! or a protocol error is closed when it is returned instead of being reused
//! ([`RedisConnection::is_broken`]).
//!
//! The redis crate's own timeouts apply on top of the pool's: by default a
//! connect gives up after 1 s and a command after 500 ms. Long-blocking
//! commands (`BLPOP`, `XREAD BLOCK`) need a longer response timeout, set
//! with [`RedisManager::with_connection_config`].
#![warn(missing_docs)]

pub mod cluster;
pub mod sentinel;

use std::fmt;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use serde::{Deserialize, Serialize};

mod retry;

pub use cluster::{ClusterConnection, ClusterPool, RedisClusterManager};
pub use redis;
pub use retry::{classify, classify_redis, retry_policy};
pub use sentinel::{RedisSentinelManager, SentinelPool};
pub use wharf;

/// A pool of Redis connections.
pub type Pool = wharf::Pool<RedisManager>;

/// A connection checked out of a [`Pool`]; derefs to [`RedisConnection`],
/// and goes back to the pool when dropped.
pub type Connection = wharf::Pooled<RedisManager>;

/// What can go wrong opening, checking or configuring Redis connections.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Redis URL or connection info was not understood.
    #[error("invalid Redis connection info: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    /// Connecting or a command failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// `PING` was answered with something other than `PONG`.
    #[error("PING answered {0:?} instead of PONG")]
    UnexpectedPong(String),
    /// A server reached through Sentinel is no longer what the sentinels
    /// named (a failover demoted the master).
    #[error("the server's ROLE is {0}, not the one asked for")]
    UnexpectedRole(String),
    /// The pool settings contradict each other.
    #[error("invalid pool settings: {0}")]
    Pool(#[from] wharf::ConfigError),
    /// No connection could be taken from the pool (timeout, open circuit,
    /// closed pool): what [`Pool::run`](wharf::Pool::run) and
    /// [`Pool::retry`](wharf::Pool::retry) return when the checkout fails.
    #[error(transparent)]
    Acquire(#[from] wharf::Error),
}

/// Opens and checks Redis connections for a [`Pool`].
#[derive(Clone)]
pub struct RedisManager {
    client: Client,
    connection_config: AsyncConnectionConfig,
}

impl RedisManager {
    /// A manager for the server at `info`: a URL such as
    /// `redis://:password@host:6379/2` (database 2), or anything else the
    /// redis crate turns into connection info.
    ///
    /// Nothing is connected yet; this only parses.
    pub fn new(info: impl IntoConnectionInfo) -> Result<Self, Error> {
        Client::open(info)
            .map(Self::from_client)
            .map_err(Error::InvalidUrl)
    }

    /// A manager that opens its connections with `client`.
    pub fn from_client(client: Client) -> Self {
        Self {
            client,
            connection_config: AsyncConnectionConfig::new(),
        }
    }

    /// Uses `config` for every new connection (response and connect
    /// timeouts among others).
    #[must_use]
    pub fn with_connection_config(mut self, config: AsyncConnectionConfig) -> Self {
        self.connection_config = config;
        self
    }

    /// The client connections are opened with.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl fmt::Debug for RedisManager {
    // Written by hand so that the password in the connection info stays out
    // of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.client.get_connection_info();
        f.debug_struct("RedisManager")
            .field("addr", &info.addr().to_string())
            .field("db", &info.redis_settings().db())
            .finish_non_exhaustive()
    }
}

impl wharf::Manager for RedisManager {
    type Connection = RedisConnection;
    type Error = Error;

    async fn connect(&self) -> Result<RedisConnection, Error> {
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection_config)
            .await?;
        tracing::trace!(addr = %self.client.get_connection_info().addr(), "opened a Redis connection");
        Ok(RedisConnection::new(inner))
    }

    async fn check(&self, conn: &mut RedisConnection) -> Result<(), Error> {
        ping(conn).await
    }

    fn has_broken(&self, conn: &mut RedisConnection) -> bool {
        conn.broken
    }
}

/// One Redis connection, used by one task at a time: a single server's
/// ([`MultiplexedConnection`]) or, in a [`ClusterPool`], a whole cluster's
/// ([`ClusterConnection`](redis::cluster_async::ClusterConnection)).
///
/// Implements [`ConnectionLike`], so every command of
/// [`AsyncCommands`](redis::AsyncCommands) works on it, and
/// `cmd.query_async(&mut *conn)` on a pooled one.
pub struct RedisConnection<C = MultiplexedConnection> {
    inner: C,
    broken: bool,
}

impl<C> RedisConnection<C> {
    pub(crate) fn new(inner: C) -> Self {
        Self {
            inner,
            broken: false,
        }
    }

    /// Whether a command on this connection failed in a way that leaves it
    /// unusable; the pool then closes it when it is returned.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks the connection unusable, so that the pool closes it when it is
    /// returned; for callers that have left it in a state they cannot undo
    /// (an open `MULTI`, a `SUBSCRIBE`).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    fn note<T>(&mut self, result: &redis::RedisResult<T>) {
        if let Err(error) = result {
            // A timeout counts too: a peer that went away without a reset
            // (a half-open connection) looks exactly like one.
            // READONLY: a master demoted by a failover; a new connection
            // goes to the new one.
            if error.is_io_error()
                || error.is_unrecoverable_error()
                || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            {
                if !self.broken {
                    tracing::debug!(%error, "Redis connection broken");
                }
                self.broken = true;
            }
        }
    }
}

impl<C: ConnectionLike> fmt::Debug for RedisConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("db", &self.inner.get_db())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<C: ConnectionLike + Send> ConnectionLike for RedisConnection<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner.req_packed_command(cmd).await;
            self.note(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// `PING`, expecting `PONG`: the health check of both managers.
pub(crate) async fn ping<C: ConnectionLike + Send>(
    conn: &mut RedisConnection<C>,
) -> Result<(), Error> {
    let reply: String = redis::cmd("PING").query_async(conn).await?;
    if reply == "PONG" {
        Ok(())
    } else {
        Err(Error::UnexpectedPong(reply))
    }
}

/// A pool's settings as loaded from a file: the Redis URL and the engine's
/// [`wharf::Config`].
///
/// ```
/// let config: wharf_redis::Config = toml::from_str(r#"
///     url = "redis://127.0.0.1:6379/1"
///     [pool]
///     max_size = 32
///     acquire_timeout = "2s"
/// "#).unwrap();
/// assert_eq!(config.pool.max_size, 32);
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The server, as a `redis://` (or `redis+unix://`) URL. Default
    /// `redis://127.0.0.1:6379/`.
    pub url: String,
    /// The pool's settings.
    pub pool: wharf::Config,
}

impl Config {
    /// Default pool settings for the server at `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool: wharf::Config::default(),
        }
    }

    /// Builds the pool; must be called within a Tokio runtime.
    pub fn create_pool(&self) -> Result<Pool, Error> {
        let manager = RedisManager::new(self.url.as_str())?;
        Ok(Pool::builder(manager).config(self.pool.clone()).build()?)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::from_url("redis://127.0.0.1:6379/")
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &redact_password(&self.url))
            .field("pool", &self.pool)
            .finish()
    }
}

/// `redis://user:secret@host/` becomes `redis://user:***@host/`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_debug_output() {
        assert_eq!(
            redact_password("redis://app:s3cret@db:6379/2"),
            "redis://app:***@db:6379/2"
        );
        assert_eq!(redact_password("redis://:s3cret@db/"), "redis://:***@db/");
        assert_eq!(redact_password("redis://db/"), "redis://db/");
        let config = Config::from_url("redis://:hunter2@127.0.0.1/");
        assert!(!format!("{config:?}").contains("hunter2"));
        let manager = RedisManager::new("redis://:hunter2@127.0.0.1/").unwrap();
        assert!(!format!("{manager:?}").contains("hunter2"));
    }

    #[test]
    fn bad_urls_are_refused_up_front() {
        let error = RedisManager::new("http://127.0.0.1/").unwrap_err();
        assert!(matches!(error, Error::InvalidUrl(_)), "{error:?}");
    }
}

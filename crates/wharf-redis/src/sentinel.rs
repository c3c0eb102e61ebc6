//! Redis Sentinel: connections to whichever server the sentinels name as
//! the master (or a replica) of a service, found again after a failover.
//!
//! Each new connection asks the sentinels where the master is. A pooled
//! connection to a master that was demoted meanwhile answers writes with
//! `READONLY`, which breaks it, and the health check asks `ROLE`, so the
//! pool drops connections to the old master and opens new ones to the
//! promoted replica.

use std::fmt;

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Value};
use tokio::sync::Mutex;

use crate::{Error, RedisConnection};

/// A pool of connections to a Sentinel-managed service.
pub type SentinelPool = wharf::Pool<RedisSentinelManager>;

/// Opens connections to the master (or a replica) of a service that Redis
/// Sentinel watches (ioredis' `new Redis({ sentinels, name })`).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = wharf_redis::RedisSentinelManager::master(
///     ["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/"],
///     "mymaster",
/// )?;
/// let pool = wharf_redis::SentinelPool::builder(manager).max_size(8).build()?;
/// let mut conn = pool.get().await?;
/// let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut *conn).await?;
/// # Ok(()) }
/// ```
pub struct RedisSentinelManager {
    /// The redis crate's client asks the sentinels through `&mut self`.
    client: Mutex<SentinelClient>,
    /// What `ROLE` must answer: `master` or `slave`.
    role: &'static str,
    connection_config: AsyncConnectionConfig,
}

impl RedisSentinelManager {
    /// Connections to the master of `service`, found through `sentinels`
    /// (their addresses, not the data servers').
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] when an address does not parse.
    pub fn master<T: IntoConnectionInfo>(
        sentinels: impl IntoIterator<Item = T>,
        service: &str,
    ) -> Result<Self, Error> {
        Self::build(sentinels, service, None, SentinelServerType::Master)
    }

    /// Connections to replicas of `service` (for reads).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] when an address does not parse.
    pub fn replica<T: IntoConnectionInfo>(
        sentinels: impl IntoIterator<Item = T>,
        service: &str,
    ) -> Result<Self, Error> {
        Self::build(sentinels, service, None, SentinelServerType::Replica)
    }

    /// Like [`master`](Self::master) or [`replica`](Self::replica), with
    /// how to log in to the data servers (password, database, TLS).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] when an address does not parse.
    pub fn build<T: IntoConnectionInfo>(
        sentinels: impl IntoIterator<Item = T>,
        service: &str,
        node: Option<SentinelNodeConnectionInfo>,
        server_type: SentinelServerType,
    ) -> Result<Self, Error> {
        let sentinels: Vec<T> = sentinels.into_iter().collect();
        let role = match server_type {
            SentinelServerType::Master => "master",
            _ => "slave",
        };
        let client = SentinelClient::build(sentinels, service.to_owned(), node, server_type)
            .map_err(Error::InvalidUrl)?;
        Ok(Self {
            client: Mutex::new(client),
            role,
            connection_config: AsyncConnectionConfig::new(),
        })
    }

    /// Uses `config` for every new connection (timeouts among others).
    #[must_use]
    pub fn with_connection_config(mut self, config: AsyncConnectionConfig) -> Self {
        self.connection_config = config;
        self
    }
}

impl fmt::Debug for RedisSentinelManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSentinelManager")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl wharf::Manager for RedisSentinelManager {
    type Connection = RedisConnection;
    type Error = Error;

    async fn connect(&self) -> Result<RedisConnection, Error> {
        // The lock covers only asking the sentinels (the redis crate's
        // client needs `&mut`); connecting to the server is outside it.
        let server = self.client.lock().await.async_get_client().await?;
        let inner = server
            .get_multiplexed_async_connection_with_config(&self.connection_config)
            .await?;
        tracing::trace!("opened a Redis connection through Sentinel");
        Ok(RedisConnection::new(inner))
    }

    /// `ROLE`: the server must still be what the sentinels named (a
    /// failover demotes the old master).
    async fn check(&self, conn: &mut RedisConnection) -> Result<(), Error> {
        let role: Value = redis::cmd("ROLE").query_async(conn).await?;
        let is = match &role {
            Value::Array(items) => items.first().and_then(|v| match v {
                Value::BulkString(b) => std::str::from_utf8(b).ok(),
                Value::SimpleString(s) => Some(s.as_str()),
                _ => None,
            }),
            _ => None,
        };
        if is == Some(self.role) {
            Ok(())
        } else {
            conn.mark_broken();
            Err(Error::UnexpectedRole(format!("{role:?}")))
        }
    }

    fn has_broken(&self, conn: &mut RedisConnection) -> bool {
        conn.is_broken()
    }
}

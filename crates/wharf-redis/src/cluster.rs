//! Redis Cluster: each pooled connection is the redis crate's cluster
//! connection, which knows the slot map, sends each command to the master
//! of its key's slot, follows `MOVED` and `ASK` redirects, refreshes the
//! map when it changes and reconnects to nodes that come back.
//!
//! Why a pool of whole-cluster connections rather than a pool per node:
//! the redis crate already routes by slot and follows the cluster's
//! changes inside one connection, and a checkout then works like the
//! single-server one (one task at a time, `AsyncCommands`, pipelines of
//! keys in one slot). The cost is a socket per node per pooled connection.

use std::fmt;

use redis::cluster::ClusterClient;
use redis::IntoConnectionInfo;

use crate::{Error, RedisConnection};

/// A pool of Redis Cluster connections.
pub type ClusterPool = wharf::Pool<RedisClusterManager>;

/// A cluster connection checked out of a [`ClusterPool`].
pub type ClusterConnection = wharf::Pooled<RedisClusterManager>;

/// Opens and checks Redis Cluster connections (ioredis' `Cluster`, one per
/// checkout).
///
/// ```no_run
/// use redis::AsyncCommands;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = wharf_redis::RedisClusterManager::new([
///     "redis://10.0.0.1:6379/",
///     "redis://10.0.0.2:6379/",
///     "redis://10.0.0.3:6379/",
/// ])?;
/// let pool = wharf_redis::ClusterPool::builder(manager).max_size(8).build()?;
/// let mut conn = pool.get().await?;
/// let () = conn.set("user:42", "ada").await?; // to the master of its slot
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisClusterManager {
    client: ClusterClient,
}

impl RedisClusterManager {
    /// A manager for the cluster these nodes belong to (any of its nodes
    /// will do: the rest are learnt from the slot map). Nothing is
    /// connected yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] when a node's address does not parse.
    pub fn new<T: IntoConnectionInfo>(nodes: impl IntoIterator<Item = T>) -> Result<Self, Error> {
        ClusterClient::new(nodes)
            .map(Self::from_client)
            .map_err(Error::InvalidUrl)
    }

    /// A manager that opens its connections with `client` (built with
    /// `ClusterClient::builder` for timeouts, passwords, TLS or read from
    /// replicas).
    pub fn from_client(client: ClusterClient) -> Self {
        Self { client }
    }
}

impl fmt::Debug for RedisClusterManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterManager")
            .finish_non_exhaustive()
    }
}

impl wharf::Manager for RedisClusterManager {
    type Connection = RedisConnection<redis::cluster_async::ClusterConnection>;
    type Error = Error;

    async fn connect(&self) -> Result<Self::Connection, Error> {
        let inner = self.client.get_async_connection().await?;
        tracing::trace!("opened a Redis Cluster connection");
        Ok(RedisConnection::new(inner))
    }

    async fn check(&self, conn: &mut Self::Connection) -> Result<(), Error> {
        crate::ping(conn).await
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.is_broken()
    }
}

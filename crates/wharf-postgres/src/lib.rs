//! PostgreSQL adapter for the [`wharf`] connection pool, on
//! [`tokio_postgres`].
//!
//! - [`PgManager`] opens connections (plain, or TLS through rustls with
//!   [`PgManager::with_tls`]) and checks them with an empty query.
//! - [`PgClient`], the pooled connection, derefs to a
//!   [`tokio_postgres::Client`] and can cache prepared statements per
//!   connection ([`PgManager::statement_cache`]).
//! - [`PoolExt`] runs one statement on the pool: acquire, run, release.
//! - [`transaction`] runs a closure inside `BEGIN`/`COMMIT` on one
//!   connection, rolling back on error and never returning a connection
//!   mid-transaction.
//! - [`Recycling`] resets returned connections (`DISCARD ALL`, or a query
//!   of your own) before their next user.
//! - [`Config`] loads all of it, and the pool's settings, with serde.
//! - [`ReplicaSet`] spreads reads over streaming replicas, probed with
//!   `pg_is_in_recovery()` and their replay lag.
//!
//! ```no_run
//! use std::time::Duration;
//! use wharf_postgres::{transaction, Error, PgManager, Pool, PoolExt};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = PgManager::from_url("postgres://app:secret@localhost:5432/app")?
//!     .statement_cache(64);
//! let pool: Pool = Pool::builder(manager)
//!     .max_size(10)
//!     .acquire_timeout(Duration::from_secs(2))
//!     .build()?;
//!
//! // One statement: the connection goes back at once.
//! let row = pool.query_one("SELECT $1::int + 1", &[&41]).await?;
//! assert_eq!(row.get::<_, i32>(0), 42);
//!
//! // Several statements in one transaction.
//! let id: i64 = transaction(&pool, |tx| {
//!     Box::pin(async move {
//!         let row = tx
//!             .query_one("INSERT INTO jobs (name) VALUES ($1) RETURNING id", &[&"backup"])
//!             .await?;
//!         tx.execute("UPDATE stats SET jobs = jobs + 1", &[]).await?;
//!         Ok::<_, Error>(row.get(0))
//!     })
//! })
//! .await?;
//!
//! // A connection of your own, returned when dropped.
//! let conn = pool.get().await?;
//! conn.batch_execute("VACUUM jobs").await?;
//! drop(conn);
//!
//! pool.close().await;
//! # let _ = id;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod cache;
mod client;
mod config;
mod error;
mod ext;
mod manager;
mod retry;
mod role;
mod transaction;

pub use client::PgClient;
pub use config::Config;
pub use error::Error;
pub use ext::PoolExt;
pub use manager::{PgManager, Recycling};
pub use retry::{classify, classify_postgres, retry_policy};
pub use transaction::{transaction, BoxFuture};

/// The tokio-postgres this crate is built on, for its types.
pub use tokio_postgres;

/// The pool engine, for its settings and errors.
pub use wharf;

/// The rustls this crate's TLS uses, to build a
/// [`rustls::ClientConfig`] for [`PgManager::with_tls`] with the same
/// version.
pub use rustls;

/// A pool of PostgreSQL connections.
pub type Pool = wharf::Pool<PgManager>;

/// A primary and its streaming replicas, each a [`Pool`]: reads on the
/// least busy replica that is connected and within `max_lag`
/// ([`PgManager`] probes `pg_is_in_recovery()` and the replay lag),
/// writes and read-your-writes on the primary. See
/// [`wharf::ReplicaSet`] and `examples/replicas.rs`.
///
/// ```no_run
/// use std::time::Duration;
/// use wharf_postgres::{PgManager, Pool, ReplicaSet};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = |url: &str| -> Result<Pool, Box<dyn std::error::Error>> {
///     Ok(Pool::builder(PgManager::from_url(url)?).max_size(10).build()?)
/// };
/// let set: ReplicaSet = ReplicaSet::builder(pool("postgres://app@db-primary/app")?)
///     .replica(pool("postgres://app@db-replica-1/app")?)
///     .max_lag(Duration::from_secs(2))
///     .build()?;
/// set.probe().await;
///
/// let conn = set.primary().await?;
/// conn.execute("UPDATE accounts SET name = 'x' WHERE id = 1", &[]).await?;
/// drop(conn);
/// let written = set.wrote();
///
/// // Sees the update: on the primary for max_lag plus two probe intervals.
/// let conn = set.replica_after(&written).await?;
/// let row = conn.query_one("SELECT name FROM accounts WHERE id = 1", &[]).await?;
/// # let _ = row;
/// # Ok(()) }
/// ```
pub type ReplicaSet = wharf::ReplicaSet<PgManager>;

/// A connection checked out of a [`Pool`]; derefs to [`PgClient`] (and on to
/// [`tokio_postgres::Client`]), and goes back to the pool when dropped.
pub type Connection = wharf::Pooled<PgManager>;

//! # wharf-mysql
//!
//! MySQL and MariaDB connection pooling: the [`wharf`] engine around
//! [`mysql_async`] connections.
//!
//! [`MysqlManager`] opens one plain [`mysql_async::Conn`] per pool slot;
//! mysql_async's own pool is not used, so sizing, waiting, validation and
//! lifetimes are wharf's alone (the pool options of a `mysql_async::Opts`,
//! such as `pool_min`/`pool_max` in a URL, have no effect). Every other
//! engine feature (acquire timeout, `min_idle`, `max_lifetime`, hooks,
//! metrics, graceful close) works as documented in [`wharf`].
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use wharf_mysql::mysql_async::prelude::*;
//! use wharf_mysql::{MysqlManager, Pool};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::builder(MysqlManager::from_url("mysql://app:secret@db:3306/app")?)
//!     .max_size(20)
//!     .acquire_timeout(Duration::from_secs(2))
//!     .build()?;
//!
//! let mut conn = pool.get().await?;
//! let two: Option<u32> = conn.query_first("SELECT 1 + 1").await?;
//! drop(conn); // back to the pool
//!
//! // Several statements that must commit or fail together.
//! let id = wharf_mysql::transaction(&pool, |tx| {
//!     Box::pin(async move {
//!         tx.query_drop("INSERT INTO orders (item) VALUES ('book')").await?;
//!         let id = tx.last_insert_id();
//!         tx.exec_drop("UPDATE stock SET n = n - 1 WHERE item = ?", ("book",)).await?;
//!         Ok::<_, wharf_mysql::Error>(id)
//!     })
//! })
//! .await?;
//! # let _ = (two, id);
//! pool.close().await;
//! # Ok(()) }
//! ```
//!
//! ## Session state
//!
//! A connection goes back to the pool as it is: session variables (`SET
//! @x`, `SET SESSION ...`), temporary tables, the current database after
//! `USE`, `LOCK TABLES` and prepared statements persist into the next
//! checkout, as with the mysql2 and mysql_async pools. Code that changes
//! session state should undo it, or reset connections on checkout with a
//! hook:
//!
//! ```no_run
//! # fn demo(manager: wharf_mysql::MysqlManager) {
//! let builder = wharf_mysql::Pool::builder(manager).on_checkout(|conn| {
//!     Box::pin(async move {
//!         conn.reset().await?; // COM_RESET_CONNECTION
//!         Ok(())
//!     })
//! });
//! # }
//! ```
//!
//! Open transactions are the exception: the [`transaction`] helper never
//! returns a connection mid-transaction, and a connection whose last
//! statement left a transaction open (see
//! [`MysqlManager`]'s `has_broken`) is closed rather than reused.
#![warn(missing_docs)]

mod error;
mod manager;
mod retry;
mod transaction;

pub use error::Error;
pub use manager::MysqlManager;
pub use retry::{classify, classify_mysql, retry_policy};
pub use transaction::{transaction, BoxFuture};

/// The mysql_async version this crate is built on, so that callers use the
/// same `Conn`, `Opts` and traits.
pub use mysql_async;
/// The pool engine, for its builder, errors and metrics types.
pub use wharf;

/// A pool of MySQL/MariaDB connections.
pub type Pool = wharf::Pool<MysqlManager>;

/// A connection checked out of a [`Pool`]; derefs to
/// [`mysql_async::Conn`] and goes back to the pool when dropped.
pub type Connection = wharf::Pooled<MysqlManager>;

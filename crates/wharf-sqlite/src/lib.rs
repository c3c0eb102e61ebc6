//! SQLite for the [`wharf`] connection pool, on [`rusqlite`] (SQLite
//! compiled in, so nothing is needed on the system).
//!
//! rusqlite is synchronous: every call blocks its thread until SQLite is
//! done, waiting on the disk and on other writers' locks. So connections are
//! used through [`Pool::interact`](wharf::Pool::interact), which runs a
//! closure on Tokio's blocking threads, never on the runtime's workers.
//!
//! Each connection opens the database file with the write-ahead log on
//! (`journal_mode = WAL`: readers do not block the writer, nor it them) and
//! a busy timeout, so concurrent writers queue inside SQLite instead of
//! failing with `SQLITE_BUSY`.
//!
//! ```no_run
//! use wharf_sqlite::{Pool, SqliteManager};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool: Pool = Pool::builder(SqliteManager::new("app.db")).max_size(4).build()?;
//! pool.interact(|conn| {
//!     conn.execute("CREATE TABLE IF NOT EXISTS notes (body TEXT)", [])
//! })
//! .await??;
//! let count: i64 = pool
//!     .interact(|conn| conn.query_row("SELECT count(*) FROM notes", [], |row| row.get(0)))
//!     .await??;
//! # let _ = count;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

pub use rusqlite;
pub use wharf;

/// A pool of SQLite connections.
pub type Pool = wharf::Pool<SqliteManager>;

/// What opening or checking a connection fails with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite refused.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task that opened the connection did not finish (the
    /// runtime is shutting down).
    #[error("opening the database was cancelled")]
    Cancelled,
}

/// Opens [`rusqlite::Connection`]s to one database file.
#[derive(Debug, Clone)]
pub struct SqliteManager {
    path: PathBuf,
    busy_timeout: Duration,
}

impl SqliteManager {
    /// Connections to the database at `path` (created if missing), in WAL
    /// mode, waiting up to 5 s for another writer's lock.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// How long a statement waits for another connection's lock before
    /// failing with `SQLITE_BUSY`.
    #[must_use]
    pub fn busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn open(&self) -> Result<rusqlite::Connection, rusqlite::Error> {
        let conn = rusqlite::Connection::open(&self.path)?;
        conn.busy_timeout(self.busy_timeout)?;
        // It answers with the mode now in force (a query, not an execute);
        // a database that cannot use WAL, such as one in memory, keeps its
        // own, which is not an error.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        Ok(conn)
    }
}

impl wharf::Manager for SqliteManager {
    type Connection = rusqlite::Connection;
    type Error = Error;

    async fn connect(&self) -> Result<rusqlite::Connection, Error> {
        // Opening reads the file and may wait for a lock: off the workers.
        let manager = self.clone();
        tokio::task::spawn_blocking(move || manager.open())
            .await
            .map_err(|_| Error::Cancelled)?
            .map_err(Error::from)
    }

    async fn check(&self, conn: &mut rusqlite::Connection) -> Result<(), Error> {
        // In-process and lock-free: no I/O to wait for.
        conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }
}

//! The adapter's error type.

use std::error::Error as _;
use std::fmt;

use tokio_postgres::error::{DbError, SqlState};

/// What the pool shortcuts, [`transaction`](crate::transaction) and
/// [`PgManager::from_url`](crate::PgManager::from_url) fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection could be had from the pool: it timed out (the message
    /// carries the last connect error), is closed, or refused the caller.
    #[error(transparent)]
    Pool(#[from] wharf::Error),
    /// The server or the connection failed: a statement, a connect, a
    /// check.
    #[error("{}", WithCauses(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The connection settings are unusable; the message says why.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The server's error report, when the server rejected a statement.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match self {
            Error::Postgres(error) => error.as_db_error(),
            _ => None,
        }
    }

    /// The SQLSTATE code, when the server rejected a statement.
    pub fn code(&self) -> Option<&SqlState> {
        self.as_db_error().map(DbError::code)
    }
}

/// tokio-postgres keeps the substance of an error ("ERROR: relation \"x\"
/// does not exist", "Connection refused") in its source and displays only
/// the kind ("db error"); logs and the pool's timeout message show just the
/// display, so it carries the causes along.
struct WithCauses<'a>(&'a tokio_postgres::Error);

impl fmt::Display for WithCauses<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

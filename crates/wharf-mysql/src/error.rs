//! The crate's error type.

/// What the helpers of this crate fail with: the pool could not hand out a
/// connection, or MySQL/MariaDB reported an error.
///
/// It converts from both, so `?` works on pool and query results alike in a
/// function (or [`transaction`](crate::transaction) closure) returning
/// `Result<_, wharf_mysql::Error>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection could be taken from the pool (timeout, closed pool,
    /// ...); a failed connect shows as the timeout's source.
    #[error(transparent)]
    Pool(#[from] wharf::Error),
    /// The server or the driver reported an error: an SQL error, a lost
    /// connection, a malformed URL.
    #[error(transparent)]
    Mysql(#[from] mysql_async::Error),
}

impl Error {
    /// The server's error, if this is one (e.g. code 1062, duplicate key).
    pub fn as_server_error(&self) -> Option<&mysql_async::ServerError> {
        match self {
            Error::Mysql(mysql_async::Error::Server(error)) => Some(error),
            _ => None,
        }
    }
}

//! Which MySQL and MariaDB errors are worth another attempt, for
//! [`Pool::retry`](wharf::Pool::retry).

use wharf::{ErrorClass, RetryPolicy};

use crate::Error;

/// `ER_LOCK_DEADLOCK`: the transaction was chosen as a deadlock victim and
/// rolled back.
const LOCK_DEADLOCK: u16 = 1213;
/// `ER_LOCK_WAIT_TIMEOUT`: `innodb_lock_wait_timeout` ran out.
const LOCK_WAIT_TIMEOUT: u16 = 1205;
/// `ER_SERVER_SHUTDOWN`: the server is shutting down.
const SERVER_SHUTDOWN: u16 = 1053;

/// How [`Pool::retry`](wharf::Pool::retry) should treat `err`:
///
/// - [`Transient`](ErrorClass::Transient): server errors 1213 (deadlock)
///   and 1205 (lock wait timeout), after which the transaction is to be
///   run again;
/// - [`Connection`](ErrorClass::Connection): I/O and driver errors (the
///   connection is lost or unusable) and 1053 (server shutting down);
/// - [`Permanent`](ErrorClass::Permanent): anything else, pool errors
///   included.
///
/// ```no_run
/// use wharf_mysql::mysql_async::prelude::Queryable;
/// # async fn demo(pool: &wharf_mysql::Pool) -> Result<(), wharf_mysql::Error> {
/// let policy = wharf_mysql::retry_policy();
/// pool.retry(&policy, |conn| Box::pin(async move {
///     conn.query_drop("UPDATE stock SET n = n - 1 WHERE id = 7").await?;
///     Ok::<_, wharf_mysql::Error>(())
/// }))
/// .await?;
/// # Ok(()) }
/// ```
pub fn classify(err: &Error) -> ErrorClass {
    match err {
        Error::Mysql(err) => classify_mysql(err),
        _ => ErrorClass::Permanent,
    }
}

/// [`classify`] for a bare [`mysql_async::Error`], for retry policies over
/// an application's own error type.
pub fn classify_mysql(err: &mysql_async::Error) -> ErrorClass {
    match err {
        mysql_async::Error::Server(server) => match server.code {
            LOCK_DEADLOCK | LOCK_WAIT_TIMEOUT => ErrorClass::Transient,
            SERVER_SHUTDOWN => ErrorClass::Connection,
            _ => ErrorClass::Permanent,
        },
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => ErrorClass::Connection,
        _ => ErrorClass::Permanent,
    }
}

/// wharf's default [`RetryPolicy`] with [`classify`].
pub fn retry_policy() -> RetryPolicy<Error> {
    RetryPolicy::new(classify)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> Error {
        Error::Mysql(mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: String::new(),
            state: String::new(),
        }))
    }

    #[test]
    fn deadlocks_and_lock_waits_are_transient_shutdowns_lose_the_connection() {
        assert_eq!(classify(&server(1213)), ErrorClass::Transient);
        assert_eq!(classify(&server(1205)), ErrorClass::Transient);
        assert_eq!(classify(&server(1053)), ErrorClass::Connection);
        assert_eq!(classify(&server(1062)), ErrorClass::Permanent);
        let io = mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(classify(&Error::Mysql(io)), ErrorClass::Connection);
        assert_eq!(
            classify(&Error::Pool(wharf::Error::Closed)),
            ErrorClass::Permanent
        );
    }
}

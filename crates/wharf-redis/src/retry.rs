//! Which Redis errors are worth another attempt, for
//! [`Pool::retry`](wharf::Pool::retry).

use redis::{ErrorKind, RedisError, ServerErrorKind};
use wharf::{ErrorClass, RetryPolicy};

use crate::Error;

/// How [`Pool::retry`](wharf::Pool::retry) should treat `err`:
///
/// - [`Transient`](ErrorClass::Transient): `TRYAGAIN` (a cluster slot in
///   migration) and `LOADING` (the server is loading its dataset);
/// - [`Connection`](ErrorClass::Connection): I/O errors, a dropped
///   connection, a refused one;
/// - [`Permanent`](ErrorClass::Permanent): anything else (a wrong type, a
///   script error), pool errors included.
///
/// Only retry commands that are safe to run twice (`GET`, `SET`, not a bare
/// `INCR` whose reply was lost).
///
/// ```no_run
/// # async fn demo(pool: &wharf_redis::Pool) -> Result<(), wharf_redis::Error> {
/// let policy = wharf_redis::retry_policy();
/// let value: Option<String> = pool
///     .retry(&policy, |conn| Box::pin(async move {
///         let value = redis::cmd("GET").arg("greeting").query_async(conn).await?;
///         Ok::<_, wharf_redis::Error>(value)
///     }))
///     .await?;
/// # let _ = value; Ok(()) }
/// ```
pub fn classify(err: &Error) -> ErrorClass {
    match err {
        Error::Redis(err) => classify_redis(err),
        _ => ErrorClass::Permanent,
    }
}

/// [`classify`] for a bare [`RedisError`], for retry policies over an
/// application's own error type.
pub fn classify_redis(err: &RedisError) -> ErrorClass {
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::TryAgain | ServerErrorKind::BusyLoading) => {
            ErrorClass::Transient
        }
        _ if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() => {
            ErrorClass::Connection
        }
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

    #[test]
    fn tryagain_and_loading_are_transient_io_loses_the_connection() {
        let server = |kind| Error::Redis(RedisError::from((kind, "from the server")));
        assert_eq!(
            classify(&server(ErrorKind::Server(ServerErrorKind::TryAgain))),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(&server(ErrorKind::Server(ServerErrorKind::BusyLoading))),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(&server(ErrorKind::Server(ServerErrorKind::ResponseError))),
            ErrorClass::Permanent
        );
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&Error::Redis(reset)), ErrorClass::Connection);
        assert_eq!(
            classify(&Error::Acquire(wharf::Error::Closed)),
            ErrorClass::Permanent
        );
    }
}

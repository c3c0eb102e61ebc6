//! Which PostgreSQL errors are worth another attempt, for
//! [`Pool::retry`](wharf::Pool::retry).

use std::error::Error as _;

use tokio_postgres::error::SqlState;
use wharf::{ErrorClass, RetryPolicy};

use crate::Error;

/// How [`Pool::retry`](wharf::Pool::retry) should treat `err`:
///
/// - [`Transient`](ErrorClass::Transient): `40001` serialization failure
///   and `40P01` deadlock, which PostgreSQL's documentation says to retry
///   (the whole transaction);
/// - [`Connection`](ErrorClass::Connection): a closed or broken connection
///   (an I/O error, the connection already closed), class `08` connection
///   exceptions, and the server shutting down or starting up (`57P01`,
///   `57P02`, `57P03`);
/// - [`Permanent`](ErrorClass::Permanent): anything else, pool errors
///   included.
///
/// ```no_run
/// # async fn demo(pool: &wharf_postgres::Pool) -> Result<(), wharf_postgres::Error> {
/// let policy = wharf_postgres::retry_policy();
/// let moved: u64 = pool
///     .retry(&policy, |conn| Box::pin(async move {
///         let tx = conn.client_mut().build_transaction()
///             .isolation_level(wharf_postgres::tokio_postgres::IsolationLevel::Serializable)
///             .start()
///             .await?;
///         let n = tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[]).await?;
///         tx.commit().await?;
///         Ok::<_, wharf_postgres::Error>(n)
///     }))
///     .await?;
/// # let _ = moved; Ok(()) }
/// ```
pub fn classify(err: &Error) -> ErrorClass {
    match err {
        Error::Postgres(err) => classify_postgres(err),
        _ => ErrorClass::Permanent,
    }
}

/// [`classify`] for a bare [`tokio_postgres::Error`], for retry policies
/// over an application's own error type.
pub fn classify_postgres(err: &tokio_postgres::Error) -> ErrorClass {
    if let Some(db) = err.as_db_error() {
        let code = db.code();
        return if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            ErrorClass::Transient
        } else if code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
        {
            ErrorClass::Connection
        } else {
            ErrorClass::Permanent
        };
    }
    let io = err
        .source()
        .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some());
    if err.is_closed() || io {
        ErrorClass::Connection
    } else {
        ErrorClass::Permanent
    }
}

/// wharf's default [`RetryPolicy`] (3 attempts, full-jitter backoff from
/// 10 ms, 10 s deadline, a budget of 0.2 retries per call) with
/// [`classify`].
pub fn retry_policy() -> RetryPolicy<Error> {
    RetryPolicy::new(classify)
}

//! [`transaction`]: a closure run inside BEGIN/COMMIT on one connection.

use std::future::Future;
use std::pin::Pin;

use tokio_postgres::Transaction;

use crate::{Connection, Error, Pool};

/// A boxed, sendable future borrowing for `'a`: what the closure given to
/// [`transaction`] returns (write `Box::pin(async move { ... })`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs `f` inside `BEGIN` … `COMMIT` on one connection from `pool`.
///
/// - `f` returns `Ok`: the transaction is committed and the value returned.
///   If `COMMIT` fails (a deferred constraint, a serialization failure),
///   that error is returned.
/// - `f` returns `Err`: the transaction is rolled back and the error
///   returned.
/// - `f` panics, or the future returned here is dropped before it finishes
///   (a timeout, a client gone): the connection is closed rather than
///   returned, so the server rolls back and no one ever gets a connection
///   in the middle of someone else's transaction.
///
/// A connection whose `COMMIT` or `ROLLBACK` failed is closed too: its
/// state is unknown.
///
/// The closure gets tokio-postgres's own [`Transaction`]; its statements do
/// not go through the connection's statement cache.
///
/// ```no_run
/// use wharf_postgres::{transaction, Error, Pool};
///
/// # async fn demo(pool: &Pool) -> Result<(), Error> {
/// let (from, to, amount) = (1i64, 2i64, 100i64);
/// let balance: i64 = transaction(pool, |tx| {
///     Box::pin(async move {
///         tx.execute("UPDATE accounts SET balance = balance - $2 WHERE id = $1", &[&from, &amount])
///             .await?;
///         tx.execute("UPDATE accounts SET balance = balance + $2 WHERE id = $1", &[&to, &amount])
///             .await?;
///         let row = tx.query_one("SELECT balance FROM accounts WHERE id = $1", &[&from]).await?;
///         Ok::<_, Error>(row.get(0))
///     })
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// `E` made from [`Error::Pool`] when no connection could be had, from
/// [`Error::Postgres`] when `BEGIN` or `COMMIT` failed; otherwise whatever
/// `f` returned.
pub async fn transaction<T, E, F>(pool: &Pool, f: F) -> Result<T, E>
where
    F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, E>>,
    E: From<Error>,
{
    let mut dedicated = CloseUnlessReleased(None);
    let conn = dedicated.0.insert(pool.get().await.map_err(Error::from)?);
    let tx = conn.client_mut().transaction().await.map_err(Error::from)?;
    match f(&tx).await {
        Ok(value) => {
            tx.commit().await.map_err(Error::from)?;
            dedicated.release();
            Ok(value)
        }
        Err(error) => {
            match tx.rollback().await {
                Ok(()) => dedicated.release(),
                Err(rollback) => {
                    tracing::warn!(error = %rollback, "ROLLBACK failed; closing the connection");
                }
            }
            Err(error)
        }
    }
}

/// Holds the connection of a transaction in progress. Dropped without
/// [`release`](Self::release) (an early return, a panic, the future
/// cancelled) it closes the connection instead of returning it.
struct CloseUnlessReleased(Option<Connection>);

impl CloseUnlessReleased {
    /// Returns the connection to the pool: the transaction is over.
    fn release(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for CloseUnlessReleased {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            tracing::debug!(
                connection = conn.info().id,
                "closing a connection left inside a transaction"
            );
            conn.discard();
        }
    }
}

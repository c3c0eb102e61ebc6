//! [`transaction`]: several statements on one dedicated connection, committed
//! or rolled back together.

use std::future::Future;
use std::pin::Pin;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::{Connection, Error, Pool};

/// A boxed, sendable future, as returned by [`transaction`] closures.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs `f` between `START TRANSACTION` and `COMMIT` on one connection taken
/// from `pool` for the whole transaction.
///
/// - `f` returns `Ok`: the transaction is committed and the value returned.
///   If `COMMIT` fails, that error is returned and the connection closed.
/// - `f` returns `Err`: the transaction is rolled back and `f`'s error
///   returned.
/// - `f` panics, or the future returned here is dropped before it finishes
///   (a timeout around it, a client gone): the connection is closed instead
///   of going back to the pool, so the server rolls the transaction back
///   and nobody is ever handed a connection in the middle of it.
///
/// Every statement of the transaction must go through the `&mut Conn` that
/// `f` receives: another connection from the pool would be outside the
/// transaction. Statements that commit implicitly (DDL such as
/// `CREATE TABLE`, `LOCK TABLES`) end the transaction early, as they would
/// anywhere in MySQL.
///
/// The error type is the caller's, provided it converts from [`Error`] (so
/// `?` works on queries inside `f`); [`Error`] itself is the simplest choice.
///
/// ```no_run
/// use wharf_mysql::mysql_async::prelude::*;
///
/// # async fn demo(pool: &wharf_mysql::Pool) -> Result<(), wharf_mysql::Error> {
/// let from = 1_u64;
/// let to = 2_u64;
/// wharf_mysql::transaction(pool, |tx| {
///     Box::pin(async move {
///         tx.exec_drop("UPDATE accounts SET balance = balance - 10 WHERE id = ?", (from,))
///             .await?;
///         tx.exec_drop("UPDATE accounts SET balance = balance + 10 WHERE id = ?", (to,))
///             .await?;
///         Ok::<_, wharf_mysql::Error>(())
///     })
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Pool`] if no connection could be taken, [`Error::Mysql`] if
/// `START TRANSACTION` or `COMMIT` fails (both converted into `E`), or
/// whatever `f` returned.
pub async fn transaction<T, E, F>(pool: &Pool, f: F) -> Result<T, E>
where
    F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, E>>,
    E: From<Error>,
{
    let mut dedicated = Dedicated(Some(pool.get().await.map_err(Error::from)?));
    let conn = dedicated.conn();
    conn.query_drop("START TRANSACTION")
        .await
        .map_err(Error::from)?;

    match f(conn).await {
        Ok(value) => {
            conn.query_drop("COMMIT").await.map_err(Error::from)?;
            dedicated.release();
            Ok(value)
        }
        Err(error) => {
            match conn.query_drop("ROLLBACK").await {
                Ok(()) => dedicated.release(),
                // Probably a lost connection, which the server rolls back
                // on its own; `dedicated` closes it on drop.
                Err(rollback) => tracing::warn!(
                    error = %rollback,
                    "ROLLBACK failed; closing the connection instead"
                ),
            }
            Err(error)
        }
    }
}

/// Holds the transaction's connection and closes it when dropped, unless
/// [`release`](Self::release)d after a clean `COMMIT` or `ROLLBACK`.
///
/// Dropping is what happens on every way out that is not a normal return:
/// an early `?`, a panic in the closure (during unwinding) and cancellation
/// of the `transaction` future. In each case the transaction may still be
/// open, and closing the connection is the one action that needs no I/O
/// and still guarantees the server rolls it back.
struct Dedicated(Option<Connection>);

impl Dedicated {
    fn conn(&mut self) -> &mut Conn {
        match &mut self.0 {
            Some(conn) => conn,
            // Only `release` and `drop` take the connection, and both
            // consume `self`.
            None => unreachable!("the connection is held until released"),
        }
    }

    /// Returns the connection to the pool: its transaction is over.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            tracing::debug!(
                connection = conn.info().id,
                "closing a connection left in a transaction"
            );
            conn.discard();
        }
    }
}

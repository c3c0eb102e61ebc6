//! [`PoolExt`]: one-statement shortcuts on the pool.

use std::future::Future;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::{Error, Pool};

/// Runs one statement on a pooled connection: acquire, run, release.
///
/// The connection goes back to the pool as soon as the statement is done,
/// whether it succeeded or not, so nothing can leak it. Statements go
/// through the connection's statement cache when it is on.
///
/// For several statements on the same connection, hold one with
/// [`Pool::get`](wharf::Pool::get); for several in one transaction, use
/// [`transaction`](crate::transaction).
///
/// ```no_run
/// use wharf_postgres::{Pool, PoolExt};
///
/// # async fn demo(pool: &Pool) -> Result<(), wharf_postgres::Error> {
/// let updated = pool.execute("UPDATE jobs SET done = true WHERE id = $1", &[&7i64]).await?;
/// let name: Option<String> = pool
///     .query_opt("SELECT name FROM users WHERE id = $1", &[&1i64])
///     .await?
///     .map(|row| row.get(0));
/// # Ok(()) }
/// ```
pub trait PoolExt {
    /// Runs a query and returns all rows.
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send;

    /// Runs a query that returns exactly one row; zero or several rows are
    /// an error.
    fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, Error>> + Send;

    /// Runs a query that returns at most one row; several rows are an error.
    fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send;

    /// Runs a statement and returns how many rows it affected.
    fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, Error>> + Send;
}

impl PoolExt for Pool {
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        let conn = self.get().await?;
        Ok(conn.query_cached(sql, params).await?)
    }

    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        let conn = self.get().await?;
        Ok(conn.query_one_cached(sql, params).await?)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let conn = self.get().await?;
        Ok(conn.query_opt_cached(sql, params).await?)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let conn = self.get().await?;
        Ok(conn.execute_cached(sql, params).await?)
    }
}

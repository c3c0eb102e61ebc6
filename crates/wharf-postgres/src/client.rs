//! [`PgClient`]: the pooled connection, a tokio-postgres client with its
//! own prepared-statement cache.

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::cache::StatementCache;

/// A connection held by the pool: a [`tokio_postgres::Client`] (it derefs to
/// one) plus that connection's prepared-statement cache.
///
/// Prepared statements live in a server session, so the cache belongs to the
/// connection and is dropped with it. With the cache on (see
/// [`PgManager::statement_cache`](crate::PgManager::statement_cache)), the
/// `*_cached` methods and the pool shortcuts of [`PoolExt`](crate::PoolExt)
/// prepare each distinct SQL text once per connection and reuse it.
///
/// ```no_run
/// # async fn demo(pool: &wharf_postgres::Pool) -> Result<(), wharf_postgres::Error> {
/// let conn = pool.get().await?;
/// // Straight tokio-postgres, through Deref:
/// conn.batch_execute("SET TIME ZONE 'UTC'").await?;
/// // Prepared once per connection, then reused:
/// let row = conn.query_one_cached("SELECT $1::int + 1", &[&41]).await?;
/// assert_eq!(row.get::<_, i32>(0), 42);
/// # Ok(()) }
/// ```
pub struct PgClient {
    client: Client,
    cache: Mutex<StatementCache>,
}

impl PgClient {
    /// Wraps a connected client; `cache_capacity` 0 turns the statement
    /// cache off.
    pub fn new(client: Client, cache_capacity: usize) -> Self {
        Self {
            client,
            cache: Mutex::new(StatementCache::new(cache_capacity)),
        }
    }

    /// The tokio-postgres client (also reachable through `Deref`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The tokio-postgres client, mutably (needed for
    /// [`Client::transaction`]).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Unwraps the client, dropping the statement cache.
    pub fn into_inner(self) -> Client {
        self.client
    }

    /// How many prepared statements the cache holds now.
    pub fn cached_statements(&self) -> usize {
        self.cache().len()
    }

    /// The most statements the cache keeps; 0 when it is off.
    pub fn statement_cache_capacity(&self) -> usize {
        self.cache().capacity()
    }

    /// Forgets every cached statement, closing each on the server once no
    /// one else holds it.
    ///
    /// The `*_cached` methods do this by themselves when the server reports
    /// a statement missing; call it after running `DISCARD ALL` or
    /// `DEALLOCATE ALL` yourself if you use the statements from
    /// [`prepare_cached`](Self::prepare_cached) directly.
    pub fn clear_statement_cache(&self) {
        let evicted = self.cache().clear();
        drop(evicted);
    }

    /// Prepares `sql`, or returns the statement prepared for it earlier on
    /// this connection when the cache is on. With the cache off it prepares
    /// every time, like [`Client::prepare`].
    ///
    /// A statement returned here fails with SQLSTATE 26000 ("prepared
    /// statement does not exist") if the session was reset since (e.g. by
    /// `DISCARD ALL`); the `*_cached` methods recover from that by
    /// themselves, direct users call
    /// [`clear_statement_cache`](Self::clear_statement_cache).
    pub async fn prepare_cached(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.statement(sql).await.map(|(statement, _)| statement)
    }

    /// Runs a query through the statement cache and returns all rows, like
    /// [`Client::query`] with SQL text.
    pub async fn query_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.with_statement(sql, |client, statement| async move {
            client.query(&statement, params).await
        })
        .await
    }

    /// Runs a query that returns exactly one row, through the statement
    /// cache; zero or several rows are an error.
    pub async fn query_one_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        self.with_statement(sql, |client, statement| async move {
            client.query_one(&statement, params).await
        })
        .await
    }

    /// Runs a query that returns at most one row, through the statement
    /// cache; several rows are an error.
    pub async fn query_opt_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        self.with_statement(sql, |client, statement| async move {
            client.query_opt(&statement, params).await
        })
        .await
    }

    /// Runs a statement through the statement cache and returns the number
    /// of rows it affected.
    pub async fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.with_statement(sql, |client, statement| async move {
            client.execute(&statement, params).await
        })
        .await
    }

    fn cache(&self) -> MutexGuard<'_, StatementCache> {
        // The cache holds no invariant a panic elsewhere could break.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The statement for `sql`, and whether it came from the cache.
    async fn statement(&self, sql: &str) -> Result<(Statement, bool), tokio_postgres::Error> {
        let hit = self.cache().get(sql);
        if let Some(statement) = hit {
            return Ok((statement, true));
        }
        let statement = self.client.prepare(sql).await?;
        let displaced = self.cache().insert(sql, statement.clone());
        drop(displaced);
        Ok((statement, false))
    }

    /// Runs `run` with the statement for `sql`. If a cached statement turns
    /// out to be gone or outdated on the server, forgets it, prepares it
    /// again and runs once more: the server rejects such a statement before
    /// executing anything, so the retry cannot run it twice.
    async fn with_statement<'a, R, F, Fut>(
        &'a self,
        sql: &str,
        run: F,
    ) -> Result<R, tokio_postgres::Error>
    where
        F: Fn(&'a Client, Statement) -> Fut,
        Fut: Future<Output = Result<R, tokio_postgres::Error>>,
    {
        let (statement, cached) = self.statement(sql).await?;
        let error = match run(&self.client, statement).await {
            Err(error) if cached && self.forget_stale(sql, &error) => error,
            outcome => return outcome,
        };
        tracing::debug!(
            error = %error,
            "cached prepared statement is gone on the server; preparing it again"
        );
        let retry = match self.statement(sql).await {
            Ok((statement, _)) => run(&self.client, statement).await,
            Err(retry) => Err(retry),
        };
        match retry {
            // Inside a transaction block the first failure aborted the
            // transaction; its own error says more than "current transaction
            // is aborted".
            Err(retry) if retry.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => Err(error),
            outcome => outcome,
        }
    }

    /// Drops what `error` shows to be stale; `true` if it did.
    fn forget_stale(&self, sql: &str, error: &tokio_postgres::Error) -> bool {
        let Some(db) = error.as_db_error() else {
            return false;
        };
        if *db.code() == SqlState::INVALID_SQL_STATEMENT_NAME {
            // One statement missing means the session was reset (DISCARD
            // ALL, DEALLOCATE ALL, a pooler switching server connections):
            // the others are gone too.
            let evicted = self.cache().clear();
            drop(evicted);
            true
        } else if *db.code() == SqlState::FEATURE_NOT_SUPPORTED
            && db
                .message()
                .contains("cached plan must not change result type")
        {
            // The table changed shape since the statement was prepared.
            let evicted = self.cache().remove(sql);
            drop(evicted);
            true
        } else {
            false
        }
    }
}

impl Deref for PgClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgClient {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl fmt::Debug for PgClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cache = self.cache();
        f.debug_struct("PgClient")
            .field("closed", &self.client.is_closed())
            .field("cached_statements", &cache.len())
            .field("statement_cache_capacity", &cache.capacity())
            .finish()
    }
}

//! [`PgManager`]: how the pool opens and checks PostgreSQL connections.

use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};
use tokio_postgres::config::Host;
use tokio_postgres::{Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Error, PgClient};

/// Opens [`PgClient`]s for a [`Pool`](crate::Pool): plain TCP or Unix socket
/// by default, TLS with [`with_tls`](Self::with_tls), and an optional
/// per-connection statement cache.
///
/// ```no_run
/// use std::time::Duration;
/// use wharf_postgres::{PgManager, Pool};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = PgManager::from_url("postgres://app:secret@db.internal:5432/app")?
///     .statement_cache(100);
/// let pool: Pool = Pool::builder(manager)
///     .max_size(20)
///     .acquire_timeout(Duration::from_secs(2))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgManager {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    cache_capacity: usize,
    recycling: Recycling,
}

/// What a connection returned to the pool goes through before its next
/// user, set with [`PgManager::recycling`]. The reset runs in the
/// background right after the return, so callers do not wait for it
/// unless the pool has nothing else to give them.
///
/// In a file ([`crate::Config`]): `recycling = "fast"`, `"clean"`, or
/// `{ query = "RESET ALL" }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Recycling {
    /// Nothing: the next user finds the session as the last one left it
    /// (settings, temporary tables, prepared statements, `LISTEN`s). The
    /// default, as deadpool-postgres's `RecyclingMethod::Fast`.
    #[default]
    Fast,
    /// `DISCARD ALL`: session settings, temporary tables, prepared
    /// statements, advisory locks and `LISTEN`s are all dropped, as
    /// deadpool-postgres's `RecyclingMethod::Clean` and PgBouncer's default
    /// `server_reset_query`. The statement cache is emptied with it. A
    /// connection returned inside a transaction fails the reset and is
    /// closed.
    Clean,
    /// A statement (or several, `;`-separated) of your own, e.g.
    /// `"RESET ALL; UNLISTEN *"`.
    Query(String),
}

impl PgManager {
    /// A manager for `config`, connecting without TLS.
    ///
    /// Nothing is checked here: a config without a host or user fails at
    /// connect time, and the pool reports that as its last connect error.
    /// [`from_url`](Self::from_url) checks both up front.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            tls: None,
            cache_capacity: 0,
            recycling: Recycling::Fast,
        }
    }

    /// A manager for a `postgres://user:password@host:port/dbname?options`
    /// URL or a libpq `key=value` string (`host=db user=app dbname=app`),
    /// connecting without TLS.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the string does not parse, or names no host or
    /// no user. The message never repeats the string, which may hold a
    /// password.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let config: Config = url.parse().map_err(|error| {
            Error::Config(format!(
                "invalid PostgreSQL connection URL: {error} (expected \
                 postgres://user:password@host:port/dbname or \"host=... user=... dbname=...\")"
            ))
        })?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(Error::Config(
                "invalid PostgreSQL connection URL: no host given \
                 (postgres://user:password@HOST:port/dbname, or host=...)"
                    .to_owned(),
            ));
        }
        if config.get_user().is_none() {
            return Err(Error::Config(
                "invalid PostgreSQL connection URL: no user given \
                 (postgres://USER:password@host:port/dbname, or user=...)"
                    .to_owned(),
            ));
        }
        Ok(Self::new(config))
    }

    /// Connects with TLS, verifying the server as `tls` says (its root
    /// certificates, client certificate, protocol versions).
    ///
    /// Whether TLS is required follows the config's `sslmode`: with the
    /// default, `prefer`, a server without TLS is still used in the clear;
    /// add `sslmode=require` to the URL (or set
    /// [`Config::ssl_mode`](tokio_postgres::Config::ssl_mode)) to refuse
    /// that. The server's name is checked against the config's host.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use wharf_postgres::{rustls, PgManager};
    ///
    /// # fn demo(ca_der: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut roots = rustls::RootCertStore::empty();
    /// roots.add(ca_der.into())?;
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let tls = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()?
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let manager =
    ///     PgManager::from_url("postgres://app@db.internal/app?sslmode=require")?.with_tls(tls);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_tls(mut self, tls: rustls::ClientConfig) -> Self {
        self.tls = Some(MakeRustlsConnect::new(tls));
        self
    }

    /// Keeps up to `capacity` prepared statements per connection for
    /// [`PgClient::prepare_cached`], the `*_cached` methods of [`PgClient`]
    /// and the [`PoolExt`](crate::PoolExt) shortcuts. 0 (the default) turns
    /// the cache off: every query is prepared anew, as tokio-postgres does
    /// for SQL text.
    ///
    /// When full, the least recently used statement is dropped and closed on
    /// the server. A cached statement the server no longer knows (after
    /// `DISCARD ALL`, or a table changing shape) is prepared again
    /// transparently.
    ///
    /// Behind a pooler in transaction mode (PgBouncer, `wharf serve`)
    /// statements may vanish between any two transactions; keep the cache
    /// off there.
    #[must_use]
    pub fn statement_cache(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// What returned connections go through before their next user; see
    /// [`Recycling`]. Default [`Recycling::Fast`] (nothing).
    ///
    /// ```no_run
    /// use wharf_postgres::{PgManager, Recycling};
    ///
    /// # fn demo() -> Result<(), wharf_postgres::Error> {
    /// let manager = PgManager::from_url("postgres://app@db.internal/app")?
    ///     .recycling(Recycling::Clean);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn recycling(mut self, recycling: Recycling) -> Self {
        self.recycling = recycling;
        self
    }

    /// The recycling method in use.
    pub fn recycling_method(&self) -> &Recycling {
        &self.recycling
    }

    /// The connection settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether connections use TLS (as far as `sslmode` allows).
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The statement cache capacity per connection; 0 when off.
    pub fn statement_cache_capacity(&self) -> usize {
        self.cache_capacity
    }
}

impl fmt::Debug for PgManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        // Only what identifies the target: the config's own Debug would
        // print far more, and this may end up in logs.
        f.debug_struct("PgManager")
            .field("hosts", &hosts)
            .field("ports", &self.config.get_ports())
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.tls.is_some())
            .field("statement_cache", &self.cache_capacity)
            .field("recycling", &self.recycling)
            .finish()
    }
}

impl wharf::Manager for PgManager {
    type Connection = PgClient;
    /// The crate's [`Error`], always [`Error::Postgres`] here: unlike
    /// tokio-postgres's own, its message includes the cause, so the pool's
    /// timeout errors say why connecting failed.
    type Error = Error;

    async fn connect(&self) -> Result<PgClient, Error> {
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                spawn_driver(connection);
                client
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                spawn_driver(connection);
                client
            }
        };
        Ok(PgClient::new(client, self.cache_capacity))
    }

    async fn check(&self, conn: &mut PgClient) -> Result<(), Error> {
        // An empty query is the cheapest round trip the protocol has.
        conn.simple_query("").await?;
        Ok(())
    }

    fn has_broken(&self, conn: &mut PgClient) -> bool {
        conn.is_closed()
    }

    fn recycles(&self) -> bool {
        self.recycling != Recycling::Fast
    }

    async fn recycle(&self, conn: &mut PgClient) -> Result<(), Error> {
        match &self.recycling {
            Recycling::Fast => {}
            Recycling::Clean => {
                // Forgotten first: the server is about to forget them.
                conn.clear_statement_cache();
                conn.batch_execute("DISCARD ALL").await?;
            }
            Recycling::Query(sql) => conn.batch_execute(sql).await?,
        }
        Ok(())
    }

    /// `pg_is_in_recovery()` says primary or standby; a standby's lag is 0
    /// when it has replayed everything its running WAL receiver got, else
    /// the age of the last commit it replayed ([`Duration::MAX`](std::time::Duration::MAX)
    /// when it replayed none yet). The age alone would grow while the
    /// primary is idle and push an up-to-date standby out of the reads.
    /// One round trip, for a [`ReplicaSet`](wharf::ReplicaSet)'s probes.
    async fn probe_role(&self, conn: &mut PgClient) -> Result<Option<wharf::Role>, Error> {
        crate::role::probe_role(conn).await
    }
}

/// tokio-postgres hands back the socket half as a future that must be
/// polled for the client to work; it ends when the client is dropped or the
/// server goes away.
fn spawn_driver<C>(connection: C)
where
    C: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        match connection.await {
            Ok(()) => tracing::debug!("postgres connection closed"),
            Err(error) => {
                tracing::debug!(error = %error, "postgres connection ended with an error")
            }
        }
    });
}

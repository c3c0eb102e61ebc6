//! [`Config`]: a pool's settings as loaded from a file.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, PgManager, Pool, Recycling};

/// A pool's settings as loaded from a file: the server, the adapter's
/// options, and the engine's [`wharf::Config`].
///
/// ```
/// let config: wharf_postgres::Config = toml::from_str(r#"
///     url = "postgres://app:secret@db.internal:5432/app"
///     statement_cache = 64
///     recycling = "clean"
///     [pool]
///     max_size = 8
///     acquire_timeout = "2s"
/// "#).unwrap();
/// assert_eq!(config.recycling, wharf_postgres::Recycling::Clean);
/// assert_eq!(config.pool.max_size, 8);
/// // The password stays out of logs.
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
///
/// Then, within a Tokio runtime, `config.create_pool()?`. TLS is not a file
/// setting: build the manager with [`Config::manager`] and add
/// [`PgManager::with_tls`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The server, as a `postgres://user:password@host:port/dbname?options`
    /// URL or a libpq `key=value` string. Default
    /// `postgres://postgres@localhost:5432/postgres`.
    pub url: String,
    /// Prepared statements cached per connection
    /// ([`PgManager::statement_cache`]). Default 0 (off).
    pub statement_cache: usize,
    /// What returned connections go through ([`PgManager::recycling`]).
    /// Default `"fast"` (nothing).
    pub recycling: Recycling,
    /// The pool's settings.
    pub pool: wharf::Config,
}

impl Config {
    /// Default settings for the server at `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            statement_cache: 0,
            recycling: Recycling::Fast,
            pool: wharf::Config::default(),
        }
    }

    /// The manager these settings describe.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the URL is unusable (see
    /// [`PgManager::from_url`]).
    pub fn manager(&self) -> Result<PgManager, Error> {
        Ok(PgManager::from_url(&self.url)?
            .statement_cache(self.statement_cache)
            .recycling(self.recycling.clone()))
    }

    /// Builds the pool; must be called within a Tokio runtime. Connections
    /// are opened on demand (or `min_idle` of them in the background).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the URL is unusable or the pool settings
    /// contradict each other.
    pub fn create_pool(&self) -> Result<Pool, Error> {
        Pool::builder(self.manager()?)
            .config(self.pool.clone())
            .build()
            .map_err(|error| Error::Config(format!("invalid pool settings: {error}")))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::from_url("postgres://postgres@localhost:5432/postgres")
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &redact_password(&self.url))
            .field("statement_cache", &self.statement_cache)
            .field("recycling", &self.recycling)
            .field("pool", &self.pool)
            .finish()
    }
}

/// `postgres://app:secret@db/app` becomes `postgres://app:***@db/app`, and
/// `password=secret` in a `key=value` string `password=***`.
fn redact_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let Some((userinfo, host)) = rest.rsplit_once('@') else {
            return url.to_owned();
        };
        return match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        };
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_debug_output() {
        assert_eq!(
            redact_password("postgres://app:s3cret@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(
            redact_password("host=db user=app password=s3cret dbname=app"),
            "host=db user=app password=*** dbname=app"
        );
        assert_eq!(redact_password("postgres://db/app"), "postgres://db/app");
        let config = Config::from_url("postgres://app:hunter2@127.0.0.1/app");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn every_setting_has_a_default_and_recycling_reads_naturally() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config, Config::default());
        let config: Config = toml::from_str(r#"recycling = { query = "RESET ALL" }"#).unwrap();
        assert_eq!(config.recycling, Recycling::Query("RESET ALL".into()));
        assert!(
            toml::from_str::<Config>("max_size = 3").is_err(),
            "pool settings go under [pool]"
        );
    }
}

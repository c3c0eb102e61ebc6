//! Pool plans: everything a pool's settings come from, for a (database,
//! server user) under one configuration. The router builds pools from
//! them, and RELOAD compares them with what runs.

use std::collections::HashMap;
use std::time::Duration;

use crate::auth::ClientKey;
use crate::config::{Config, Secret, ServerCheck};
use crate::net::ServerAddr;
use crate::pool::PoolShape;
use crate::server::{Balance, ServerTarget, SessionAttrs};
use crate::tls::ServerTls;

/// What the configuration says one pool should be.
pub(super) struct PoolPlan {
    pub(super) shape: PoolShape,
    pub(super) target: ServerTarget,
    pub(super) max_db_connections: Option<usize>,
    pub(super) max_user_connections: Option<usize>,
    /// Made from the `*` entry.
    pub(super) auto: bool,
}

impl PoolPlan {
    /// `None` when the database is not in the configuration (not even by
    /// `*`). The servers log in with the entry's `password=`, else the
    /// auth file's secret for the user, else `looked_up` (what
    /// `auth_query` found).
    pub(super) fn new(
        config: &Config,
        secrets: &HashMap<String, Secret>,
        client_keys: &HashMap<String, Vec<ClientKey>>,
        tls: &ServerTls,
        database: &str,
        server_user: &str,
        looked_up: Option<&Secret>,
    ) -> Option<Self> {
        let entry = config.database(database)?;
        let settings = &config.pgbouncer;
        let pool = config.settings_of(Some(entry), config.user(server_user));
        let pool_size = pool.pool_size.max(1);
        // reserve_pool_timeout = 0 turns the reserve off, as in PgBouncer.
        let (reserve_size, reserve_timeout) = match settings.reserve_pool_timeout {
            Some(timeout) => (pool.reserve_pool_size, timeout),
            None => (0, Duration::ZERO),
        };
        let password = entry
            .password
            .clone()
            .map(Secret::Plain)
            .or_else(|| secrets.get(server_user).cloned())
            .or_else(|| looked_up.cloned());
        let client_key = password.as_ref().and_then(|secret| {
            client_keys
                .get(server_user)?
                .iter()
                .find(|key| key.opens(secret))
                .cloned()
        });
        let mut startup_params = Vec::new();
        for (name, value) in [
            ("client_encoding", &entry.client_encoding),
            ("DateStyle", &entry.datestyle),
            ("TimeZone", &entry.timezone),
            ("application_name", &entry.application_name),
        ] {
            if let Some(value) = value {
                startup_params.push((name.to_owned(), value.clone()));
            }
        }
        let check_query = match settings.server_check() {
            ServerCheck::Disabled => None,
            ServerCheck::EmptyQuery => Some(String::new()),
            ServerCheck::Query(query) => Some(query.to_owned()),
        };
        let shape = PoolShape {
            mode: pool.pool_mode,
            pool_size,
            min_pool_size: pool.min_pool_size.min(pool_size),
            reserve_size,
            reserve_timeout,
            server_lifetime: pool.server_lifetime,
            idle_timeout: settings.server_idle_timeout,
            connect_timeout: settings.server_connect_timeout,
            login_retry: settings.server_login_retry,
            check_delay: check_query.as_ref().map(|_| settings.server_check_delay),
            query_wait_timeout: settings.query_wait_timeout,
            reset_query: Some(settings.server_reset_query.clone()).filter(|q| !q.trim().is_empty()),
            reset_always: settings.server_reset_query_always,
            // Checked when the configuration was loaded; a session-mode
            // pool (a [users] pool_mode) keeps it but never routes.
            read_routing: entry.read_routing == Some(true),
        };
        let hosts = entry
            .host_ports()
            .unwrap_or_default()
            .into_iter()
            .map(|(host, port)| ServerAddr::new(host, port))
            .collect();
        let target = ServerTarget {
            hosts,
            balance: Balance::from_setting(entry.load_balance_hosts.as_deref()),
            attrs: SessionAttrs::from_setting(entry.target_session_attrs.as_deref()),
            max_replica_lag: entry.max_replica_lag,
            database: entry.dbname.clone().unwrap_or_else(|| database.to_owned()),
            user: server_user.to_owned(),
            password,
            client_key,
            startup_params,
            connect_query: entry.connect_query.clone(),
            check_query,
            tls: tls.clone(),
        };
        Some(Self {
            shape,
            target,
            max_db_connections: pool.max_db_connections,
            max_user_connections: pool.max_user_connections,
            auto: entry.is_fallback(),
        })
    }
}

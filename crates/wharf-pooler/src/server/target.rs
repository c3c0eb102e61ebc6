//! How to reach and log in to one server for one pool: what a server
//! connection is opened with.

use crate::auth::ClientKey;
use crate::config::Secret;
use crate::net::ServerAddr;
use crate::tls::ServerTls;

use super::Params;

/// How to reach and log in to one server for one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// Where the server listens.
    pub addr: ServerAddr,
    /// The database name on the server.
    pub database: String,
    /// The user to log in as.
    pub user: String,
    /// The password, if one is configured.
    pub password: Option<Secret>,
    /// For a SCRAM `password`: the key a client logging in as this user
    /// revealed, which logs the pooler in without the plain text.
    pub client_key: Option<ClientKey>,
    /// Extra startup parameters (client_encoding, DateStyle, TimeZone,
    /// application_name).
    pub startup_params: Params,
    /// Run once after login (PgBouncer's `connect_query`).
    pub connect_query: Option<String>,
    /// The liveness check (PgBouncer's `server_check_query`); an empty
    /// string sends an empty query, which costs the server nothing.
    pub check_query: Option<String>,
    /// Whether and how to ask for TLS (`server_tls_*`); a change retires
    /// the pool's servers as any other target change does.
    pub tls: ServerTls,
}

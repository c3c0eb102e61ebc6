//! How to reach and log in to one server for one pool: what a server
//! connection is opened with.

use crate::auth::ClientKey;
use crate::config::{ReplicaLag, Secret};
use crate::net::ServerAddr;
use crate::tls::ServerTls;

use super::Params;

/// How to reach and log in to one server for one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// Where the servers listen: one host, or several to spread over and
    /// fail over between.
    pub hosts: Vec<ServerAddr>,
    /// How new servers are spread over `hosts`.
    pub balance: Balance,
    /// Which hosts' servers are used.
    pub attrs: SessionAttrs,
    /// A standby further behind than this is not used.
    pub max_replica_lag: Option<ReplicaLag>,
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

/// PgBouncer's `load_balance_hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each new server goes to the next host.
    #[default]
    RoundRobin,
    /// New servers go to the same host until it fails.
    Disable,
}

impl Balance {
    /// From the database line's value (`round-robin` when unset).
    pub fn from_setting(value: Option<&str>) -> Self {
        match value {
            Some("disable") => Balance::Disable,
            _ => Balance::RoundRobin,
        }
    }
}

/// What a server is, as far as `target_session_attrs` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not in recovery.
    Primary,
    /// In hot standby (recovery).
    Standby,
}

/// libpq's `target_session_attrs`: which servers a pool may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAttrs {
    /// Any server.
    #[default]
    Any,
    /// One that takes writes by default.
    ReadWrite,
    /// One that does not.
    ReadOnly,
    /// A primary.
    Primary,
    /// A standby.
    Standby,
    /// A standby when one is up, any server otherwise.
    PreferStandby,
}

impl SessionAttrs {
    /// From the database line's value (`any` when unset).
    pub fn from_setting(value: Option<&str>) -> Self {
        match value {
            Some("read-write") => SessionAttrs::ReadWrite,
            Some("read-only") => SessionAttrs::ReadOnly,
            Some("primary") => SessionAttrs::Primary,
            Some("standby") => SessionAttrs::Standby,
            Some("prefer-standby") => SessionAttrs::PreferStandby,
            _ => SessionAttrs::Any,
        }
    }

    /// What a server must be, for errors.
    pub fn describe(self) -> &'static str {
        match self {
            SessionAttrs::Any => "usable",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "a primary",
            SessionAttrs::Standby => "a standby",
            SessionAttrs::PreferStandby => "a standby or any server",
        }
    }

    /// Whether the role matters at all.
    pub fn checks_role(self) -> bool {
        self != SessionAttrs::Any
    }

    /// Whether a server in `role`, read-only by default or not, is one of
    /// these; `strict` asks `prefer-standby` for a standby (its first
    /// pass) rather than anything.
    pub fn accepts(self, role: Role, read_only: bool, strict: bool) -> bool {
        match self {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => role == Role::Primary && !read_only,
            SessionAttrs::ReadOnly => role == Role::Standby || read_only,
            SessionAttrs::Primary => role == Role::Primary,
            SessionAttrs::Standby => role == Role::Standby,
            SessionAttrs::PreferStandby => !strict || role == Role::Standby,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_attrs_mean_what_libpq_says() {
        use Role::{Primary, Standby};
        let cases = [
            (SessionAttrs::Any, Primary, false, true),
            (SessionAttrs::Any, Standby, true, true),
            (SessionAttrs::ReadWrite, Primary, false, true),
            (SessionAttrs::ReadWrite, Primary, true, false),
            (SessionAttrs::ReadWrite, Standby, true, false),
            (SessionAttrs::ReadOnly, Primary, true, true),
            (SessionAttrs::ReadOnly, Primary, false, false),
            (SessionAttrs::ReadOnly, Standby, true, true),
            (SessionAttrs::Primary, Primary, true, true),
            (SessionAttrs::Primary, Standby, true, false),
            (SessionAttrs::Standby, Standby, true, true),
            (SessionAttrs::Standby, Primary, false, false),
        ];
        for (attrs, role, read_only, accepted) in cases {
            assert_eq!(
                attrs.accepts(role, read_only, true),
                accepted,
                "{attrs:?} {role:?} read_only={read_only}"
            );
        }
        assert!(!SessionAttrs::PreferStandby.accepts(Primary, false, true));
        assert!(SessionAttrs::PreferStandby.accepts(Primary, false, false));
        assert!(SessionAttrs::PreferStandby.accepts(Standby, true, true));
    }
}

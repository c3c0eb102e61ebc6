//! The settings that take one of a few names (`pool_mode`, `auth_type`,
//! the TLS modes): their enumerations, parsed and printed by name.

use std::fmt;

use super::value::{Named, ValueError};

/// When a server connection goes back to the pool (`pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PoolMode {
    /// Released when the client disconnects. PgBouncer's default.
    #[default]
    Session,
    /// Released when a transaction ends.
    Transaction,
    /// Released after every statement; multi-statement transactions are
    /// refused.
    Statement,
}

impl Named for PoolMode {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("session", PoolMode::Session),
        ("transaction", PoolMode::Transaction),
        ("statement", PoolMode::Statement),
    ];
}

/// How clients are authenticated (`auth_type`). PgBouncer's `cert`, `ldap`
/// and `pam` are refused with a "not supported by wharf yet" error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AuthType {
    /// No password; the user must still be in `auth_file`.
    Trust,
    /// No password and any user name; databases must force a `user=`.
    Any,
    /// Clear-text password over the wire.
    Plain,
    /// MD5 password exchange; SCRAM is used for users whose secret is SCRAM.
    /// PgBouncer's default.
    #[default]
    Md5,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// The method comes from the first rule of `auth_hba_file` that matches
    /// the client's connection type, address, database and user.
    Hba,
    /// The client's TLS certificate, verified against `client_tls_ca_file`,
    /// names the user in its common name (needs `client_tls_sslmode`
    /// `verify-ca` or `verify-full`).
    Cert,
}

impl Named for AuthType {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("trust", AuthType::Trust),
        ("any", AuthType::Any),
        ("plain", AuthType::Plain),
        ("md5", AuthType::Md5),
        ("scram-sha-256", AuthType::ScramSha256),
        ("hba", AuthType::Hba),
        ("cert", AuthType::Cert),
    ];
    const UNSUPPORTED: &'static [&'static str] = &["ldap", "pam"];
}

/// A TLS mode (`client_tls_sslmode`, `server_tls_sslmode`), with
/// PgBouncer's meaning on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// No TLS.
    #[default]
    Disable,
    /// TLS if the other side asks for it.
    Allow,
    /// TLS if possible, plain otherwise.
    Prefer,
    /// TLS required, certificate not checked.
    Require,
    /// TLS with a certificate signed by a trusted CA.
    VerifyCa,
    /// Like `VerifyCa`, and the host name must match.
    VerifyFull,
}

impl Named for SslMode {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];
}

macro_rules! named_common {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// The name used in configuration files.
            pub fn as_str(self) -> &'static str {
                Named::name(self)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                <$ty as Named>::from_name(s).map_err(|e| UnknownName(match e {
                    ValueError::Invalid(m) | ValueError::Unsupported(m) => m,
                }))
            }
        }
    )*};
}

named_common!(PoolMode, AuthType, SslMode);

/// A name that is not one of an enumeration's; says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownName(String);

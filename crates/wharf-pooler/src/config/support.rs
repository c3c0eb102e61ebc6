//! What wharf does not support of PgBouncer's settings: values it refuses
//! (never run weaker than asked) and values it accepts with a warning.

use super::{Settings, SslMode};

impl Settings {
    /// Why wharf refuses `key`'s current value, if it does: a setting that
    /// asks for encryption wharf cannot give is never weakened to
    /// plain text, so the configuration is refused instead (at start, on
    /// RELOAD and by `SET`).
    pub(crate) fn key_refusal(&self, key: &str) -> Option<String> {
        let demands_tls = |mode: SslMode| {
            matches!(
                mode,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
            )
        };
        match key {
            "client_tls_sslmode" if demands_tls(self.client_tls_sslmode) => Some(format!(
                "\"{}\" requires TLS, which wharf does not support yet: refusing to run with client connections in plain text (use disable, allow or prefer)",
                self.client_tls_sslmode
            )),
            "server_tls_sslmode" if demands_tls(self.server_tls_sslmode) => Some(format!(
                "\"{}\" requires TLS, which wharf does not support yet: refusing to run with server connections in plain text (use disable, allow or prefer)",
                self.server_tls_sslmode
            )),
            _ => None,
        }
    }

    /// Every refused value in force, as (key, why): a configuration built
    /// in code must meet the same rules as one read from a file.
    pub fn refusals(&self) -> Vec<(&'static str, String)> {
        ["client_tls_sslmode", "server_tls_sslmode"]
            .into_iter()
            .filter_map(|key| self.key_refusal(key).map(|why| (key, why)))
            .collect()
    }

    /// A warning about `key`'s current value, if wharf cannot honour it.
    pub(crate) fn key_warning(&self, key: &str) -> Option<String> {
        match key {
            "auth_user" if self.auth_user.is_some() => Some(
                "auth_user/auth_query lookups are not supported by wharf yet; only users in auth_file can log in"
                    .to_owned(),
            ),
            "auth_query" => Some("auth_query is not supported by wharf yet; the value is stored but not used".to_owned()),
            _ => None,
        }
    }
}

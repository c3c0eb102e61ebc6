//! What wharf does not support of PgBouncer's settings: values it accepts
//! with a warning. (TLS values rustls cannot honour are refused where the
//! TLS contexts are built, in `tls`.)

use super::Settings;

impl Settings {
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

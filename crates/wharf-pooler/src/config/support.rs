//! What wharf does not support of PgBouncer's settings: values it accepts
//! with a warning. (TLS values rustls cannot honour are refused where the
//! TLS contexts are built, in `tls`.)

use super::Settings;

impl Settings {
    /// A warning about `key`'s current value, if wharf cannot honour it.
    pub(crate) fn key_warning(&self, _key: &str) -> Option<String> {
        None
    }
}

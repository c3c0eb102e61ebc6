//! How far wharf honours each of PgBouncer's settings: the one table that
//! `wharf check`'s warnings, the refusals at load time and the migration
//! guide's statuses all come from. (TLS values rustls cannot honour are
//! refused where the TLS contexts are built, in `tls`; values of a key
//! that wharf refuses, such as `auth_type = ldap`, where the key is
//! parsed.)

use super::settings::KEYS;
use super::value::Raw;
use super::Settings;

/// What wharf does with a `[pgbouncer]` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Acted on as PgBouncer documents it.
    Supported,
    /// A wharf key PgBouncer does not have.
    WharfOnly,
    /// Accepted and shown by `SHOW CONFIG`, but not acted on: a value other
    /// than the default gets a warning. The text says what wharf does
    /// instead.
    StoredOnly(&'static str),
    /// A value other than the default asks for something stricter than
    /// wharf can give, so it is refused rather than silently weakened. The
    /// text says why.
    Refused(&'static str),
}

/// The keys wharf adds to PgBouncer's.
const WHARF_ONLY: &[&str] = &["http_listen_addr", "http_listen_port", "workers"];

/// Keys accepted but not acted on, with what wharf does instead.
const STORED_ONLY: &[(&str, &str)] = &[
    ("auth_ident_file", "user name maps (map= in auth_hba_file) are refused, so the file is never read"),
    ("auth_ldap_options", "auth_type = ldap is refused"),
    ("dns_max_ttl", "host names are resolved by the system resolver at each connection, without a cache of wharf's own"),
    ("dns_nxdomain_ttl", "host names are resolved by the system resolver at each connection, without a cache of wharf's own"),
    ("dns_zone_check_period", "host names are resolved by the system resolver at each connection, without a cache of wharf's own"),
    ("job_name", "a Windows service name; wharf runs on Unix"),
    ("pkt_buf", "buffers grow as messages need"),
    ("pool_idle_timeout", "empty pools are not freed"),
    ("resolv_conf", "host names are resolved by the system resolver"),
    ("sbuf_loopcnt", "the async runtime shares time between connections"),
    ("scram_iterations", "SCRAM secrets wharf computes always use 4096 iterations"),
    ("server_fast_close", "servers marked for closing are closed when released"),
    ("server_round_robin", "idle servers are reused last in, first out"),
    ("suspend_timeout", "SUSPEND waits without a time limit"),
    ("tcp_defer_accept", "TCP_DEFER_ACCEPT is not set"),
    ("track_extra_parameters", "wharf tracks client_encoding, DateStyle, TimeZone, standard_conforming_strings, application_name and IntervalStyle, and no others"),
];

/// Keys whose non-default values wharf refuses, with why.
const REFUSED: &[(&str, &str)] = &[
    ("disable_pqexec", "refusing the simple query protocol is not implemented, and running without it would allow the multi-statement queries it is set to forbid"),
    ("unix_socket_group", "setting the Unix socket's group is not implemented, and the socket would stay open to a wider group than asked"),
];

impl Settings {
    /// What wharf does with `key`; `None` if it is not a `[pgbouncer]` key.
    pub fn support(key: &str) -> Option<Support> {
        if !Self::is_known(key) {
            return None;
        }
        let find = |table: &[(&'static str, &'static str)]| {
            table.iter().find(|(k, _)| *k == key).map(|(_, why)| *why)
        };
        Some(if WHARF_ONLY.contains(&key) {
            Support::WharfOnly
        } else if let Some(why) = find(STORED_ONLY) {
            Support::StoredOnly(why)
        } else if let Some(why) = find(REFUSED) {
            Support::Refused(why)
        } else {
            Support::Supported
        })
    }

    /// `key`'s documentation (that of its [`Settings`] field), as Markdown
    /// lines; `None` if it is not a `[pgbouncer]` key.
    pub fn documentation(key: &str) -> Option<&'static str> {
        KEYS.iter().find(|k| k.name == key).map(|k| k.doc)
    }

    /// Whether `key` holds something other than PgBouncer's default.
    fn differs_from_default(&self, key: &str) -> bool {
        let def = KEYS.iter().find(|k| k.name == key);
        let mut default = Settings::default();
        if let Some(raw) = def.and_then(|d| d.pgbouncer_default) {
            // The table's own test checks every default parses.
            let _ = default.apply(key, &Raw::Str(raw));
        }
        self.render(key) != default.render(key)
    }

    /// A warning about `key`'s current value, if wharf accepts it without
    /// acting on it.
    pub(crate) fn key_warning(&self, key: &str) -> Option<String> {
        match Self::support(key)? {
            Support::StoredOnly(why) if self.differs_from_default(key) => {
                Some(format!("accepted but not acted on: {why}"))
            }
            _ => None,
        }
    }

    /// Why `key`'s current value cannot be used, if wharf cannot honour it
    /// and it asks for stricter security.
    pub(crate) fn key_refusal(&self, key: &str) -> Option<String> {
        match Self::support(key)? {
            Support::Refused(why) if self.differs_from_default(key) => {
                Some(format!("not supported by wharf: {why}"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_is_a_known_key_listed_once() {
        let mut all: Vec<&str> = WHARF_ONLY.to_vec();
        all.extend(STORED_ONLY.iter().map(|(k, _)| *k));
        all.extend(REFUSED.iter().map(|(k, _)| *k));
        for key in &all {
            assert!(Settings::is_known(key), "{key}");
        }
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "a key in two tables");
    }

    #[test]
    fn defaults_give_no_warning_and_other_values_do() {
        let defaults = Settings::default();
        for key in Settings::keys() {
            assert_eq!(defaults.key_warning(key), None, "{key}");
            assert_eq!(defaults.key_refusal(key), None, "{key}");
        }
        let mut s = Settings::default();
        s.apply("server_round_robin", &Raw::Str("1"))
            .unwrap()
            .unwrap();
        let warning = s.key_warning("server_round_robin").expect("a warning");
        assert!(
            warning.starts_with("accepted but not acted on"),
            "{warning}"
        );
        s.apply("disable_pqexec", &Raw::Str("1")).unwrap().unwrap();
        assert!(s.key_refusal("disable_pqexec").is_some());
        assert_eq!(s.key_warning("disable_pqexec"), None);
        // Explicitly the default: nothing to say.
        s.apply("dns_max_ttl", &Raw::Str("15")).unwrap().unwrap();
        assert_eq!(s.key_warning("dns_max_ttl"), None);
        assert_eq!(Settings::support("nope"), None);
        assert_eq!(Settings::support("workers"), Some(Support::WharfOnly));
        assert_eq!(Settings::support("listen_port"), Some(Support::Supported));
    }
}

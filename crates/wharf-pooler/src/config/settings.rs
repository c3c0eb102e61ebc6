//! The `[pgbouncer]` section: one typed field per key, with PgBouncer's
//! names and defaults, `SHOW CONFIG` rendering and runtime `SET`.

use std::path::PathBuf;
use std::time::Duration;

use super::modes::{AuthType, PoolMode, SslMode};
use super::peers::PeerId;
use super::value::{
    Codec, Flag, List, Lookup, OptPath, OptPort, OptSecs, OptText, OptWholeSecs, PathOrEmpty, Port,
    Raw, Secs, Text, TextOrEmpty, Uint, ValueError, WholeSecs,
};

/// What `server_check_query` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCheck<'a> {
    /// The setting is empty: no check.
    Disabled,
    /// `<empty>` (PgBouncer's default): send an empty query.
    EmptyQuery,
    /// Run this query.
    Query(&'a str),
}

/// One row of `SHOW CONFIG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingRow {
    /// The key, as in `pgbouncer.ini`.
    pub key: &'static str,
    /// The current value as PgBouncer prints it; a value PgBouncer shows
    /// as NULL (an unset `auth_file`, say) is empty.
    pub value: String,
    /// The default as PgBouncer prints it (its raw default string, so
    /// `0777` for `unix_socket_mode`); empty where PgBouncer shows NULL.
    pub default: &'static str,
    /// Whether `SET` can change it at runtime.
    pub changeable: bool,
}

/// Why [`Settings::set`] refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// No such key in `[pgbouncer]`.
    #[error("unknown setting \"{0}\"")]
    Unknown(String),
    /// The key is only read at startup.
    #[error("{0}: cannot be changed at runtime")]
    NotChangeable(String),
    /// The value does not fit the key.
    #[error("{key}: invalid value {value:?}: {message}")]
    Invalid {
        /// The key.
        key: String,
        /// The refused value.
        value: String,
        /// What was expected.
        message: String,
    },
    /// A value PgBouncer accepts that wharf does not implement yet.
    #[error("{key}: {message}")]
    Unsupported {
        /// The key.
        key: String,
        /// Which value, and what is supported.
        message: String,
    },
}

/// A key of the `[pgbouncer]` section.
#[derive(Debug)]
pub(crate) struct KeyDef {
    pub(crate) name: &'static str,
    pub(crate) pgbouncer_default: Option<&'static str>,
    pub(crate) changeable: bool,
    /// The field's documentation, one line per `///` line.
    pub(crate) doc: &'static str,
}

const DEFAULT_AUTH_QUERY: &str =
    "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

const TCP_DEFER_ACCEPT_DEFAULT: &str = if cfg!(target_os = "linux") { "1" } else { "0" };

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty = $default:expr, $codec:ty, $pgdef:expr, $changeable:literal;
    )+) => {
        /// Every key of the `[pgbouncer]` section, typed, named as in
        /// PgBouncer and defaulting as PgBouncer does (wharf's own keys are
        /// `workers`, `http_listen_addr` and `http_listen_port`).
        ///
        /// Times are [`Duration`]s; an `Option<Duration>` is a time where
        /// PgBouncer's `0` means "disabled" (`None`). Keys PgBouncer has but
        /// wharf does not act on are kept so that `SHOW CONFIG` and
        /// `wharf check` show them; [`Settings::support`] says which.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Settings {
            $( $(#[doc = $doc])+ pub $name: $ty, )+
        }

        impl Default for Settings {
            fn default() -> Self {
                Self { $( $name: $default, )+ }
            }
        }

        /// Every key in `SHOW CONFIG` order (alphabetical, like PgBouncer).
        pub(crate) const KEYS: &[KeyDef] = &[
            $( KeyDef {
                name: stringify!($name),
                pgbouncer_default: $pgdef,
                changeable: $changeable,
                doc: concat!($($doc, "\n"),+),
            }, )+
        ];

        impl Settings {
            /// Sets `key` from a raw value; `None` if the key is unknown.
            pub(crate) fn apply(&mut self, key: &str, raw: &Raw<'_>) -> Option<Result<(), ValueError>> {
                match key {
                    $( stringify!($name) => Some(match <$codec as Codec>::parse(raw) {
                        Ok(value) => {
                            self.$name = value;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }), )+
                    _ => None,
                }
            }

            /// `key`'s value as `SHOW CONFIG` prints it; `None` if unknown.
            pub(crate) fn render(&self, key: &str) -> Option<Option<String>> {
                match key {
                    $( stringify!($name) => Some(<$codec as Codec>::render(&self.$name)), )+
                    _ => None,
                }
            }
        }
    };
}

settings! {
    /// Users allowed to run every console command. Default empty.
    admin_users: Vec<String> = Vec::new(), List, Some(""), true;
    /// Append the client's address and port to `application_name`. Default off.
    application_name_add_host: bool = false, Flag, Some("0"), true;
    /// The `[databases]` entry whose server runs `auth_query`; unset, the
    /// client's database. Default unset.
    auth_dbname: Option<String> = None, OptText, None, true;
    /// The `userlist.txt` of user names and secrets. Default unset. A
    /// relative path is kept as written (PgBouncer reads it relative to its
    /// working directory).
    auth_file: Option<PathBuf> = None, OptPath, None, true;
    /// HBA file (pg_hba.conf syntax) for `auth_type = hba`, read when the
    /// configuration is loaded, on RELOAD and on `SET`; see
    /// [`HbaRules`](super::HbaRules). Default empty.
    auth_hba_file: Option<PathBuf> = None, PathOrEmpty, Some(""), true;
    /// Ident map file for `auth_type = hba`. Default unset.
    auth_ident_file: Option<PathBuf> = None, OptPath, None, true;
    /// LDAP options for `auth_type = ldap`. Default unset.
    auth_ldap_options: Option<String> = None, OptText, None, true;
    /// Query that looks up users missing from `auth_file` (`$1` is the
    /// user name; it returns the name and the secret, NULL for none).
    auth_query: String = DEFAULT_AUTH_QUERY.to_owned(), Text,
        Some(DEFAULT_AUTH_QUERY), true;
    /// How clients authenticate. Default `md5`.
    auth_type: AuthType = AuthType::Md5, Lookup<AuthType>, Some("md5"), true;
    /// User that runs `auth_query` for users missing from `auth_file`; its
    /// own password comes from `auth_file` (or none). Unset, there are no
    /// lookups. Default unset.
    auth_user: Option<String> = None, OptText, None, true;
    /// Pools made from the `*` entry are dropped after being unused this
    /// long. Default 3600 s.
    autodb_idle_timeout: Duration = secs(3600), Secs, Some("3600"), true;
    /// How long a cancel request may wait for a server; `None` (0) waits
    /// for ever. Default 10 s.
    cancel_wait_timeout: Option<Duration> = Some(secs(10)), OptSecs, Some("10"), true;
    /// Idle clients are disconnected after this; `None` (0) disables.
    /// Default disabled.
    client_idle_timeout: Option<Duration> = None, OptSecs, Some("0"), true;
    /// A client that has not logged in within this is disconnected; `None`
    /// (0) disables. Default 60 s.
    client_login_timeout: Option<Duration> = Some(secs(60)), OptSecs, Some("60"), true;
    /// TLS 1.3 suites for clients (IANA names joined by `:`). Default unset: all.
    client_tls13_ciphers: Option<String> = None, OptText, None, true;
    /// Root certificates client certificates are verified against
    /// (`verify-ca`, `verify-full`). Default empty.
    client_tls_ca_file: Option<PathBuf> = None, PathOrEmpty, Some(""), true;
    /// Certificate chain shown to clients (PEM). Default empty.
    client_tls_cert_file: Option<PathBuf> = None, PathOrEmpty, Some(""), true;
    /// TLS 1.2 ciphers for clients, in OpenSSL syntax or a shortcut, mapped
    /// onto rustls's suites. Default `default`.
    client_tls_ciphers: String = "default".to_owned(), Text, Some("default"), true;
    /// DHE parameters for clients; rustls has no DHE, so anything but
    /// `auto`/`none` gets a warning. Default `auto`.
    client_tls_dheparams: String = "auto".to_owned(), Text, Some("auto"), true;
    /// ECDH curves for clients (X25519, P-256, P-384). Default `auto`.
    client_tls_ecdhcurve: String = "auto".to_owned(), Text, Some("auto"), true;
    /// Private key for client TLS (PEM). Default empty.
    client_tls_key_file: Option<PathBuf> = None, PathOrEmpty, Some(""), true;
    /// TLS protocol versions for clients (rustls has 1.2 and 1.3). Default
    /// `secure`.
    client_tls_protocols: String = "secure".to_owned(), Text, Some("secure"), true;
    /// TLS mode for clients: `require` and stronger turn away plain TCP
    /// clients, `verify-*` also demand a certificate signed by
    /// `client_tls_ca_file`. Default `disable`.
    client_tls_sslmode: SslMode = SslMode::Disable, Lookup<SslMode>, Some("disable"), true;
    /// The configuration file, as `SHOW CONFIG` shows it. Unset unless
    /// written in the file; [`Config::describe`](super::Config::describe)
    /// shows the loaded file's path.
    conffile: Option<PathBuf> = None, OptPath, None, true;
    /// Server connections per (database, user) pool unless `[databases]` or
    /// `[users]` say otherwise. Default 20.
    default_pool_size: usize = 20, Uint<usize>, Some("20"), true;
    /// Refuse the simple query protocol. Default off.
    disable_pqexec: bool = false, Flag, Some("0"), false;
    /// How long DNS answers are cached. Default 15 s.
    dns_max_ttl: Duration = secs(15), Secs, Some("15"), true;
    /// How long failed DNS lookups are cached. Default 15 s.
    dns_nxdomain_ttl: Duration = secs(15), Secs, Some("15"), true;
    /// DNS zone serial check period; `None` (0) disables.
    /// Default disabled.
    dns_zone_check_period: Option<Duration> = None, OptSecs, Some("0"), true;
    /// Address of wharf's HTTP endpoint (metrics, health). wharf only.
    /// Default unset: `127.0.0.1` when `http_listen_port` is set.
    http_listen_addr: Option<String> = None, OptText, None, false;
    /// Port of wharf's HTTP endpoint; unset turns it off. wharf only.
    /// Default unset.
    http_listen_port: Option<u16> = None, OptPort, None, false;
    /// Clients idle in a transaction longer than this are disconnected;
    /// `None` (0) disables. Default disabled.
    idle_transaction_timeout: Option<Duration> = None, OptSecs, Some("0"), true;
    /// Startup parameters to accept and ignore (comma list). Default empty.
    ignore_startup_parameters: Vec<String> = Vec::new(), List, Some(""), true;
    /// Windows service name. Default `pgbouncer`.
    job_name: String = "pgbouncer".to_owned(), Text, Some("pgbouncer"), false;
    /// Addresses to listen on for TCP (comma list; `*` is every address).
    /// Default empty: Unix socket only.
    listen_addr: Vec<String> = Vec::new(), List, Some(""), false;
    /// `listen(2)` backlog. Default 128.
    listen_backlog: u32 = 128, Uint<u32>, Some("128"), false;
    /// Port for TCP and the Unix socket's name. Default 6432.
    listen_port: u16 = 6432, Port, Some("6432"), false;
    /// Log successful logins. Default on.
    log_connections: bool = true, Flag, Some("1"), true;
    /// Log disconnections with their reasons. Default on.
    log_disconnections: bool = true, Flag, Some("1"), true;
    /// Log the errors sent to clients. Default on.
    log_pooler_errors: bool = true, Flag, Some("1"), true;
    /// Log statistics every `stats_period`. Default on.
    log_stats: bool = true, Flag, Some("1"), true;
    /// File to log to; unset logs to stderr only. Default unset.
    logfile: Option<PathBuf> = None, PathOrEmpty, Some(""), true;
    /// Message sent to every client after login. Default empty (none).
    login_notify_message: String = String::new(), Text, Some(""), true;
    /// Most client connections at once. Default 100.
    max_client_conn: usize = 100, Uint<usize>, Some("100"), true;
    /// Most client connections per database; 0 is unlimited. Default 0.
    max_db_client_connections: usize = 0, Uint<usize>, Some("0"), true;
    /// Most server connections per database; 0 is unlimited. Default 0.
    max_db_connections: usize = 0, Uint<usize>, Some("0"), true;
    /// Largest protocol packet let through. Default 2147483647.
    max_packet_size: usize = 2_147_483_647, Uint<usize>, Some("2147483647"), true;
    /// Prepared statements tracked per server connection in transaction
    /// mode; 0 disables. Default 200.
    max_prepared_statements: usize = 200, Uint<usize>, Some("200"), true;
    /// Most client connections per user; 0 is unlimited. Default 0.
    max_user_client_connections: usize = 0, Uint<usize>, Some("0"), true;
    /// Most server connections per user; 0 is unlimited. Default 0.
    max_user_connections: usize = 0, Uint<usize>, Some("0"), true;
    /// Server connections kept open in each pool. Default 0.
    min_pool_size: usize = 0, Uint<usize>, Some("0"), true;
    /// This process's id in a group of peered processes (see `[peers]`),
    /// carried in every cancel key it hands out; 0 turns peering off, at
    /// most 16383. Only read at startup. Default 0.
    peer_id: u16 = 0, PeerId, Some("0"), false;
    /// PID file. Default unset.
    pidfile: Option<PathBuf> = None, PathOrEmpty, Some(""), false;
    /// Packet buffer size. Default 4096.
    pkt_buf: usize = 4096, Uint<usize>, Some("4096"), false;
    /// Empty pools are freed after this; `None` (0) disables. Default
    /// disabled.
    pool_idle_timeout: Option<Duration> = None, OptSecs, Some("0"), true;
    /// Default pool mode. Default `session`.
    pool_mode: PoolMode = PoolMode::Session, Lookup<PoolMode>, Some("session"), true;
    /// Queries running longer are cancelled; `None` (0) disables. Default
    /// disabled.
    query_timeout: Option<Duration> = None, OptSecs, Some("0"), true;
    /// A queued client is told it waits after this long; `None` (0)
    /// disables. Whole seconds. Default 5 s.
    query_wait_notify: Option<Duration> = Some(secs(5)), OptWholeSecs, Some("5"), true;
    /// A client waiting longer than this for a server is disconnected;
    /// `None` (0) waits for ever. Default 120 s.
    query_wait_timeout: Option<Duration> = Some(secs(120)), OptSecs, Some("120"), true;
    /// Extra connections a pool may open when clients wait longer than
    /// `reserve_pool_timeout`. Default 0.
    reserve_pool_size: usize = 0, Uint<usize>, Some("0"), true;
    /// How long a client waits before the reserve pool is used; `None`
    /// (0) disables. Default 5 s.
    reserve_pool_timeout: Option<Duration> = Some(secs(5)), OptSecs, Some("5"), true;
    /// Custom `resolv.conf`. Default unset.
    resolv_conf: Option<PathBuf> = None, PathOrEmpty, Some(""), false;
    /// Packets processed per connection before moving on; 0 is no limit.
    /// Default 5.
    sbuf_loopcnt: u32 = 5, Uint<u32>, Some("5"), true;
    /// SCRAM iterations for secrets wharf computes. Default 4096.
    scram_iterations: u32 = 4096, Uint<u32>, Some("4096"), true;
    /// A connection released this recently is reused without a check; 0
    /// checks every time. Default 30 s.
    server_check_delay: Duration = secs(30), Secs, Some("30"), true;
    /// Query that checks a server connection; empty disables the check and
    /// `<empty>` (the default) sends an empty query. See
    /// [`Settings::server_check`].
    server_check_query: String = "<empty>".to_owned(), Text, Some("<empty>"), true;
    /// How long connecting and logging in to a server may take. Default 15 s.
    server_connect_timeout: Duration = secs(15), Secs, Some("15"), true;
    /// In session mode, close servers marked for closing at the end of the
    /// transaction. Default off.
    server_fast_close: bool = false, Flag, Some("0"), true;
    /// Server connections idle longer are closed; `None` (0) disables.
    /// Default 600 s.
    server_idle_timeout: Option<Duration> = Some(secs(600)), OptSecs, Some("600"), true;
    /// Server connections older than this are closed when released. Zero
    /// means a connection is used once, then closed (not "disabled").
    /// Default 3600 s.
    server_lifetime: Duration = secs(3600), Secs, Some("3600"), true;
    /// Wait after a failed server login before trying again. Default 15 s.
    server_login_retry: Duration = secs(15), Secs, Some("15"), true;
    /// Query run on a server connection released in session mode; empty
    /// for none. Default `DISCARD ALL`.
    server_reset_query: String = "DISCARD ALL".to_owned(), Text, Some("DISCARD ALL"), true;
    /// Run `server_reset_query` in every pool mode. Default off.
    server_reset_query_always: bool = false, Flag, Some("0"), true;
    /// Reuse server connections round-robin instead of LIFO. Default off.
    server_round_robin: bool = false, Flag, Some("0"), true;
    /// TLS 1.3 suites for servers. Default unset: all.
    server_tls13_ciphers: Option<String> = None, OptText, None, true;
    /// Root certificates servers are verified against (`verify-ca`,
    /// `verify-full`); empty means the system's. Default empty.
    server_tls_ca_file: Option<PathBuf> = None, PathOrEmpty, Some(""), true;
    /// Certificate chain the pooler shows servers (PEM). Default empty.
    server_tls_cert_file: Option<PathBuf> = None, PathOrEmpty, Some(""), true;
    /// TLS 1.2 ciphers for servers, as `client_tls_ciphers`. Default
    /// `default`.
    server_tls_ciphers: String = "default".to_owned(), Text, Some("default"), true;
    /// Private key for `server_tls_cert_file` (PEM). Default empty.
    server_tls_key_file: Option<PathBuf> = None, PathOrEmpty, Some(""), true;
    /// TLS protocol versions for servers. Default `secure`.
    server_tls_protocols: String = "secure".to_owned(), Text, Some("secure"), true;
    /// TLS mode for servers: `prefer` asks and falls back to plain text,
    /// `require` refuses a server without TLS, `verify-ca` checks the
    /// chain, `verify-full` the host name too. Default `prefer`.
    server_tls_sslmode: SslMode = SslMode::Prefer, Lookup<SslMode>, Some("prefer"), true;
    /// Set `SO_REUSEPORT` on listening sockets. Default off.
    so_reuseport: bool = false, Flag, Some("0"), false;
    /// How often averages are computed and logged. Whole seconds. Default
    /// 60 s.
    stats_period: Duration = secs(60), WholeSecs, Some("60"), true;
    /// Users allowed to run read-only console commands. Default empty.
    stats_users: Vec<String> = Vec::new(), List, Some(""), true;
    /// Timeout of `SUSPEND`. Default 10 s.
    suspend_timeout: Duration = secs(10), Secs, Some("10"), true;
    /// Log to syslog (`/dev/log`) as well as to standard error or
    /// `logfile`. Default off.
    syslog: bool = false, Flag, Some("0"), true;
    /// Syslog facility: auth, authpriv, daemon, user, local0 to local7.
    /// Default `daemon`.
    syslog_facility: String = "daemon".to_owned(), Text, Some("daemon"), true;
    /// Syslog ident. Default `pgbouncer`.
    syslog_ident: String = "pgbouncer".to_owned(), Text, Some("pgbouncer"), true;
    /// `TCP_DEFER_ACCEPT`; non-zero enables. Default 1 on Linux, 0
    /// elsewhere.
    tcp_defer_accept: u32 = u32::from(cfg!(target_os = "linux")), Uint<u32>,
        Some(TCP_DEFER_ACCEPT_DEFAULT), true;
    /// TCP keepalive with the OS defaults. Default on.
    tcp_keepalive: bool = true, Flag, Some("1"), true;
    /// `TCP_KEEPCNT`; 0 is the OS default. Default 0.
    tcp_keepcnt: u32 = 0, Uint<u32>, Some("0"), true;
    /// `TCP_KEEPIDLE` in seconds; 0 is the OS default. Default 0.
    tcp_keepidle: u32 = 0, Uint<u32>, Some("0"), true;
    /// `TCP_KEEPINTVL` in seconds; 0 is the OS default. Default 0.
    tcp_keepintvl: u32 = 0, Uint<u32>, Some("0"), true;
    /// Socket buffer size; 0 is the OS default. Default 0.
    tcp_socket_buffer: u32 = 0, Uint<u32>, Some("0"), true;
    /// `TCP_USER_TIMEOUT` in milliseconds; 0 is the OS default. Default 0.
    tcp_user_timeout: u32 = 0, Uint<u32>, Some("0"), true;
    /// Extra parameters tracked per client (comma list). Default
    /// `IntervalStyle`.
    track_extra_parameters: Vec<String> = strings(&["IntervalStyle"]), List,
        Some("IntervalStyle"), false;
    /// Clients in a transaction longer than this are disconnected; `None`
    /// (0) disables. Default disabled.
    transaction_timeout: Option<Duration> = None, OptSecs, Some("0"), true;
    /// Directory of the Unix socket (also used for `host=/dir` servers);
    /// empty (`None`) disables it. Default `/tmp`.
    unix_socket_dir: Option<PathBuf> = Some(PathBuf::from("/tmp")), PathOrEmpty, Some("/tmp"), false;
    /// Group of the Unix socket. Default unset.
    unix_socket_group: Option<String> = None, TextOrEmpty, Some(""), false;
    /// Permissions of the Unix socket (C syntax, so `0777` is octal).
    /// `SHOW CONFIG` prints it in decimal as PgBouncer does (`511`).
    /// Default `0777`.
    unix_socket_mode: u32 = 0o777, Uint<u32>, Some("0777"), false;
    /// Unix user `wharf serve` switches to once its sockets are open (it
    /// must start as root or as that user). Default unset.
    user: Option<String> = None, OptText, None, false;
    /// Log verbosity (0 to 3). Default 0.
    verbose: u32 = 0, Uint<u32>, None, true;
    /// Threads `wharf serve` runs on; 0 is one per core past two cores
    /// and one on one or two; 1 runs everything on one thread. wharf only.
    /// Default 0.
    workers: usize = 0, Uint<usize>, Some("0"), false;
}

impl Settings {
    /// Every key in `SHOW CONFIG` order (alphabetical).
    pub fn keys() -> impl Iterator<Item = &'static str> {
        KEYS.iter().map(|k| k.name)
    }

    /// Whether `key` is a `[pgbouncer]` key wharf knows.
    pub fn is_known(key: &str) -> bool {
        KEYS.iter().any(|k| k.name == key)
    }

    /// `SHOW CONFIG`: every key with its current value, PgBouncer's
    /// default and whether it can be changed at runtime. Values are printed
    /// as PgBouncer prints them: times in seconds with `%g` (`3600`, `0.5`),
    /// flags and integers in decimal (so `unix_socket_mode` 0777 is `511`),
    /// lists joined by `,`, unset strings empty.
    pub fn describe(&self) -> Vec<SettingRow> {
        KEYS.iter()
            .map(|k| SettingRow {
                key: k.name,
                value: self.render(k.name).flatten().unwrap_or_default(),
                default: k.pgbouncer_default.unwrap_or_default(),
                changeable: k.changeable,
            })
            .collect()
    }

    /// The console's `SET key = value`: sets a changeable key from text
    /// read as in `pgbouncer.ini`. Unlike PgBouncer, which silently ignores
    /// `SET` of a startup-only key, that is an error.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SetError> {
        let def = KEYS
            .iter()
            .find(|k| k.name == key)
            .ok_or_else(|| SetError::Unknown(key.to_owned()))?;
        if !def.changeable {
            return Err(SetError::NotChangeable(key.to_owned()));
        }
        let mut updated = self.clone();
        match updated.apply(key, &Raw::Str(value)) {
            Some(Ok(())) => {
                *self = updated;
                Ok(())
            }
            Some(Err(ValueError::Invalid(message))) => Err(SetError::Invalid {
                key: key.to_owned(),
                value: value.to_owned(),
                message,
            }),
            Some(Err(ValueError::Unsupported(message))) => Err(SetError::Unsupported {
                key: key.to_owned(),
                message,
            }),
            None => Err(SetError::Unknown(key.to_owned())),
        }
    }

    /// What `server_check_query` asks for.
    pub fn server_check(&self) -> ServerCheck<'_> {
        match self.server_check_query.trim() {
            "" => ServerCheck::Disabled,
            "<empty>" => ServerCheck::EmptyQuery,
            query => ServerCheck::Query(query),
        }
    }

    /// Where wharf's HTTP endpoint listens: `http_listen_addr` (default
    /// `127.0.0.1`) and `http_listen_port`; `None` when the port is unset.
    pub fn http_listen(&self) -> Option<(&str, u16)> {
        let port = self.http_listen_port?;
        Some((
            self.http_listen_addr.as_deref().unwrap_or("127.0.0.1"),
            port,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_and_unique() {
        let names: Vec<&str> = Settings::keys().collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn rust_defaults_match_pgbouncer_defaults() {
        let defaults = Settings::default();
        for key in KEYS {
            let Some(pgdef) = key.pgbouncer_default else {
                continue;
            };
            let mut parsed = Settings::default();
            let result = parsed.apply(key.name, &Raw::Str(pgdef));
            assert_eq!(result, Some(Ok(())), "{}", key.name);
            assert_eq!(
                parsed.render(key.name),
                defaults.render(key.name),
                "{}",
                key.name
            );
        }
        // NULL defaults are unset values or numbers PgBouncer leaves at 0.
        assert_eq!(defaults.render("auth_file"), Some(None));
        assert_eq!(defaults.render("verbose"), Some(Some("0".into())));
    }

    #[test]
    fn describe_formats_like_show_config() {
        let mut s = Settings::default();
        s.set("server_idle_timeout", "0.5").unwrap();
        let rows = s.describe();
        let row = |k: &str| rows.iter().find(|r| r.key == k).unwrap().clone();
        assert_eq!(
            row("server_idle_timeout"),
            SettingRow {
                key: "server_idle_timeout",
                value: "0.5".into(),
                default: "600",
                changeable: true
            }
        );
        assert_eq!(row("server_lifetime").value, "3600");
        assert_eq!(row("unix_socket_mode").value, "511");
        assert_eq!(row("unix_socket_mode").default, "0777");
        assert!(!row("listen_port").changeable);
        assert_eq!(row("auth_file").value, "");
        assert_eq!(row("auth_type").value, "md5");
        assert_eq!(row("logfile").value, "");
        assert_eq!(row("query_timeout").value, "0");
        assert_eq!(row("verbose").default, "");
    }

    #[test]
    fn set_checks_key_changeability_and_value() {
        let mut s = Settings::default();
        assert_eq!(s.set("default_pool_size", "50"), Ok(()));
        assert_eq!(s.default_pool_size, 50);
        assert_eq!(s.set("pool_mode", "Transaction"), Ok(()));
        assert_eq!(s.pool_mode, PoolMode::Transaction);
        assert_eq!(s.set("query_timeout", "2.5"), Ok(()));
        assert_eq!(s.query_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(s.set("query_timeout", "0"), Ok(()));
        assert_eq!(s.query_timeout, None);
        assert_eq!(
            s.set("listen_port", "7000"),
            Err(SetError::NotChangeable("listen_port".into()))
        );
        assert_eq!(
            s.set("no_such_key", "1"),
            Err(SetError::Unknown("no_such_key".into()))
        );
        let err = s.set("default_pool_size", "lots").unwrap_err();
        assert_eq!(
            err.to_string(),
            "default_pool_size: invalid value \"lots\": expected an integer from 0 to 18446744073709551615"
        );
        assert!(matches!(
            s.set("auth_type", "ldap"),
            Err(SetError::Unsupported { .. })
        ));
        assert_eq!(s.default_pool_size, 50, "failed SETs change nothing");
    }

    #[test]
    fn enums_parse_and_print() {
        assert_eq!(
            "SCRAM-SHA-256".parse::<AuthType>(),
            Ok(AuthType::ScramSha256)
        );
        assert_eq!(AuthType::ScramSha256.to_string(), "scram-sha-256");
        assert!("bogus".parse::<PoolMode>().is_err());
        assert_eq!(SslMode::VerifyFull.as_str(), "verify-full");
    }

    #[test]
    fn server_check_and_http() {
        let mut s = Settings::default();
        assert_eq!(s.server_check(), ServerCheck::EmptyQuery);
        s.server_check_query = "select 1".into();
        assert_eq!(s.server_check(), ServerCheck::Query("select 1"));
        s.server_check_query = String::new();
        assert_eq!(s.server_check(), ServerCheck::Disabled);
        assert_eq!(s.http_listen(), None);
        s.http_listen_port = Some(9187);
        assert_eq!(s.http_listen(), Some(("127.0.0.1", 9187)));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            super::super::suggest::suggest("listen_prot", Settings::keys()),
            Some("listen_port")
        );
        assert_eq!(
            super::super::suggest::suggest("completely_different", Settings::keys()),
            None
        );
    }
}

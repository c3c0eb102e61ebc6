//! `[databases]` and `[users]` entries: their typed form, the libpq-style
//! connection strings they are written in, and their keys.

use std::time::Duration;

use super::modes::PoolMode;
use super::value::{Codec, Flag, Lookup, Port, Raw, Secs, Text, Uint, ValueError};

/// One `[databases]` entry: where clients of database `name` are sent.
/// Every field but `name` is `None` when the entry does not set it, and
/// then the `[pgbouncer]` setting (or libpq's default) applies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Database {
    /// The name clients connect to; `*` is the fallback entry used for any
    /// name without an entry of its own.
    pub name: String,
    /// Server host name, IP address, or Unix socket directory (starts with
    /// `/`); may be a comma-separated list. Unset means the Unix socket in
    /// `unix_socket_dir`.
    pub host: Option<String>,
    /// Server port (the first, when `port` is a list). Unset means 5432.
    pub port: Option<u16>,
    /// Every port of a comma-separated `port`, one per host; empty when
    /// `port` is a single number, which then applies to every host.
    pub ports: Vec<u16>,
    /// Server-side database name. Unset means the name the client asked for.
    pub dbname: Option<String>,
    /// Forced server user: every client shares this user's pool.
    pub user: Option<String>,
    /// Password of the forced user; unset means the one in `auth_file`.
    pub password: Option<String>,
    /// Per-database `auth_user`: clients of this database who are not in
    /// `auth_file` are looked up with `auth_query` as this user.
    pub auth_user: Option<String>,
    /// Per-database `auth_query`, over the global one.
    pub auth_query: Option<String>,
    /// Per-database `auth_dbname`: the `[databases]` entry whose server
    /// runs `auth_query` (unset: this database's).
    pub auth_dbname: Option<String>,
    /// Pool size for this database (below a `[users]` `pool_size`).
    pub pool_size: Option<usize>,
    /// Minimum pool size for this database.
    pub min_pool_size: Option<usize>,
    /// Reserve pool size for this database (`reserve_pool` is an alias).
    pub reserve_pool_size: Option<usize>,
    /// Pool mode for this database (below a `[users]` `pool_mode`).
    pub pool_mode: Option<PoolMode>,
    /// Most server connections to this database; 0 means the global
    /// `max_db_connections`.
    pub max_db_connections: Option<usize>,
    /// Most client connections to this database; 0 means the global
    /// `max_db_client_connections`.
    pub max_db_client_connections: Option<usize>,
    /// `server_lifetime` for this database; zero means the global one.
    pub server_lifetime: Option<Duration>,
    /// `query_wait_timeout` for this database; `Some(ZERO)` disables it,
    /// `None` (or PgBouncer's `-1`) leaves it to `[users]` or the global one.
    pub query_wait_timeout: Option<Duration>,
    /// Query run on each new server connection before use.
    pub connect_query: Option<String>,
    /// `client_encoding` asked of the server.
    pub client_encoding: Option<String>,
    /// `datestyle` asked of the server.
    pub datestyle: Option<String>,
    /// `timezone` asked of the server.
    pub timezone: Option<String>,
    /// `application_name` asked of the server.
    pub application_name: Option<String>,
    /// `disable` or `round-robin` (the default), for host lists: whether
    /// each new server goes to the next host, or to the same host until it
    /// fails.
    pub load_balance_hosts: Option<String>,
    /// Which hosts' servers are used, with libpq's meanings: `any`,
    /// `read-write`, `read-only`, `primary`, `standby` or `prefer-standby`
    /// (a wharf extension to PgBouncer's configuration).
    pub target_session_attrs: Option<String>,
    /// A standby further behind its primary than this is not used (a
    /// wharf extension).
    pub max_replica_lag: Option<ReplicaLag>,
    /// Read/write routing (a wharf extension): in transaction mode, a
    /// transaction that starts with a plain read may go to a standby of
    /// the host list; the rest go to the primary.
    pub read_routing: Option<bool>,
}

impl Database {
    /// Whether this is the `*` fallback entry.
    pub fn is_fallback(&self) -> bool {
        self.name == "*"
    }

    /// The server-side database for a client that asked for `client_db`:
    /// `dbname` if set, else `client_db`.
    pub fn server_dbname<'a>(&'a self, client_db: &'a str) -> &'a str {
        self.dbname.as_deref().unwrap_or(client_db)
    }

    /// `port`, or PostgreSQL's 5432.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(5432)
    }

    /// Each host with its port: `port` lists pair with `host` lists by
    /// position, a single port goes with every host. An unset host is one
    /// `None` (the Unix socket).
    ///
    /// # Errors
    ///
    /// A `port` list whose length is not the `host` list's.
    pub fn host_ports(&self) -> Result<Vec<(Option<&str>, u16)>, String> {
        let hosts: Vec<Option<&str>> = match self.hosts() {
            hosts if hosts.is_empty() => vec![None],
            hosts => hosts.into_iter().map(Some).collect(),
        };
        if self.ports.len() > 1 && self.ports.len() != hosts.len() {
            return Err(format!(
                "{} ports for {} hosts: give one port, or one per host",
                self.ports.len(),
                hosts.len()
            ));
        }
        Ok(hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = self.ports.get(i).copied();
                (*host, port.unwrap_or_else(|| self.port_or_default()))
            })
            .collect())
    }

    /// Why `read_routing = on` cannot work for this entry, if it cannot:
    /// it needs several hosts to route between, and its writes need a
    /// primary, so `target_session_attrs` may only ask for one.
    pub fn read_routing_problem(&self) -> Option<String> {
        if self.read_routing != Some(true) {
            return None;
        }
        if self.hosts().len() < 2 {
            return Some(
                "read_routing = on needs several hosts (host=primary,replica...) to route between"
                    .to_owned(),
            );
        }
        if let Some(mode) = self.pool_mode.filter(|m| *m != PoolMode::Transaction) {
            return Some(format!(
                "read_routing = on needs pool_mode = transaction, not {}",
                mode.as_str()
            ));
        }
        match self.target_session_attrs.as_deref() {
            None | Some("any" | "read-write" | "primary") => None,
            Some(other) => Some(format!(
                "read_routing = on sends writes to the primary: target_session_attrs = {other} \
                 cannot be used with it (leave it unset, or read-write or primary)"
            )),
        }
    }

    /// The hosts of a comma-separated `host`; empty when unset.
    pub fn hosts(&self) -> Vec<&str> {
        self.host
            .as_deref()
            .map(|h| {
                h.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One `[users]` entry: settings for every pool of one (server-side) user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// The user name.
    pub name: String,
    /// Pool mode for this user's pools (above the database's).
    pub pool_mode: Option<PoolMode>,
    /// Pool size for this user's pools (above the database's).
    pub pool_size: Option<usize>,
    /// Reserve pool size for this user's pools (above the database's).
    pub reserve_pool_size: Option<usize>,
    /// Most server connections for this user; 0 means the global
    /// `max_user_connections`.
    pub max_user_connections: Option<usize>,
    /// Most client connections for this user; 0 means the global
    /// `max_user_client_connections`.
    pub max_user_client_connections: Option<usize>,
    /// `query_timeout` for this user; `Some(ZERO)` disables it.
    pub query_timeout: Option<Duration>,
    /// `query_wait_timeout` for this user; `Some(ZERO)` disables it.
    pub query_wait_timeout: Option<Duration>,
    /// `idle_transaction_timeout` for this user; `Some(ZERO)` disables it.
    pub idle_transaction_timeout: Option<Duration>,
    /// `transaction_timeout` for this user; `Some(ZERO)` disables it.
    pub transaction_timeout: Option<Duration>,
    /// `client_idle_timeout` for this user; `Some(ZERO)` disables it.
    pub client_idle_timeout: Option<Duration>,
}

/// Why an entry's key was refused.
#[derive(Debug)]
pub(crate) enum KeyError {
    /// Not a key of this kind of entry.
    Unknown,
    /// A bad value.
    Value(ValueError),
}

impl From<ValueError> for KeyError {
    fn from(e: ValueError) -> Self {
        KeyError::Value(e)
    }
}

/// The keys a `[databases]` entry accepts.
pub(crate) const DATABASE_KEYS: &[&str] = &[
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "auth_user",
    "auth_query",
    "auth_dbname",
    "pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "reserve_pool",
    "pool_mode",
    "max_db_connections",
    "max_db_client_connections",
    "server_lifetime",
    "query_wait_timeout",
    "connect_query",
    "client_encoding",
    "datestyle",
    "timezone",
    "application_name",
    "load_balance_hosts",
    "target_session_attrs",
    "max_replica_lag",
    "read_routing",
];

/// The keys a `[users]` entry accepts.
pub(crate) const USER_KEYS: &[&str] = &[
    "pool_mode",
    "pool_size",
    "reserve_pool_size",
    "max_user_connections",
    "max_user_client_connections",
    "query_timeout",
    "query_wait_timeout",
    "idle_transaction_timeout",
    "transaction_timeout",
    "client_idle_timeout",
];

fn choice(raw: &Raw<'_>, choices: &[&str]) -> Result<String, ValueError> {
    let text = Text::parse(raw)?;
    let lower = text.trim().to_ascii_lowercase();
    if choices.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(ValueError::invalid(format!(
            "expected one of: {}",
            choices.join(", ")
        )))
    }
}

fn count(raw: &Raw<'_>) -> Result<usize, ValueError> {
    Uint::<usize>::parse(raw)
}

/// A per-entry timeout where PgBouncer's `-1` means "not set".
fn override_secs(raw: &Raw<'_>) -> Result<Option<Duration>, ValueError> {
    match raw {
        Raw::Int(-1) => Ok(None),
        Raw::Str(s) if s.trim() == "-1" => Ok(None),
        _ => Secs::parse(raw).map(Some),
    }
}

/// Sets one key of a `[databases]` entry; returns a warning when wharf
/// stores but does not honour the value.
pub(crate) fn apply_database_key(
    db: &mut Database,
    key: &str,
    raw: &Raw<'_>,
) -> Result<Option<String>, KeyError> {
    let text = || Text::parse(raw).map(Some);
    match key {
        "host" => db.host = text()?,
        "port" => {
            let ports = match raw {
                Raw::Str(list) if list.contains(',') => list
                    .split(',')
                    .map(|p| Port::parse(&Raw::Str(p.trim())))
                    .collect::<Result<Vec<u16>, _>>()?,
                _ => vec![Port::parse(raw)?],
            };
            db.port = ports.first().copied();
            db.ports = if ports.len() > 1 { ports } else { Vec::new() };
        }
        "dbname" => db.dbname = text()?,
        "user" => db.user = text()?,
        "password" => db.password = text()?,
        "auth_user" => db.auth_user = text()?,
        "auth_query" => db.auth_query = text()?,
        "auth_dbname" => db.auth_dbname = text()?,
        "pool_size" => db.pool_size = Some(count(raw)?),
        "min_pool_size" => db.min_pool_size = Some(count(raw)?),
        "reserve_pool_size" | "reserve_pool" => db.reserve_pool_size = Some(count(raw)?),
        "pool_mode" => db.pool_mode = Some(Lookup::<PoolMode>::parse(raw)?),
        "max_db_connections" => db.max_db_connections = Some(count(raw)?),
        "max_db_client_connections" => db.max_db_client_connections = Some(count(raw)?),
        "server_lifetime" => db.server_lifetime = Some(Secs::parse(raw)?),
        "query_wait_timeout" => db.query_wait_timeout = override_secs(raw)?,
        "connect_query" => db.connect_query = text()?,
        "client_encoding" => db.client_encoding = text()?,
        "datestyle" => db.datestyle = text()?,
        "timezone" => db.timezone = text()?,
        "application_name" => db.application_name = text()?,
        "load_balance_hosts" => {
            db.load_balance_hosts = Some(choice(raw, &["disable", "round-robin"])?)
        }
        "target_session_attrs" => {
            db.target_session_attrs = Some(choice(
                raw,
                &[
                    "any",
                    "read-write",
                    "read-only",
                    "primary",
                    "standby",
                    "prefer-standby",
                ],
            )?)
        }
        "max_replica_lag" => db.max_replica_lag = Some(ReplicaLag::parse(raw)?),
        "read_routing" => db.read_routing = Some(Flag::parse(raw)?),
        _ => return Err(KeyError::Unknown),
    }
    Ok(None)
}

/// Sets one key of a `[users]` entry.
pub(crate) fn apply_user_key(user: &mut User, key: &str, raw: &Raw<'_>) -> Result<(), KeyError> {
    match key {
        "pool_mode" => user.pool_mode = Some(Lookup::<PoolMode>::parse(raw)?),
        "pool_size" => user.pool_size = Some(count(raw)?),
        "reserve_pool_size" => user.reserve_pool_size = Some(count(raw)?),
        "max_user_connections" => user.max_user_connections = Some(count(raw)?),
        "max_user_client_connections" => user.max_user_client_connections = Some(count(raw)?),
        "query_timeout" => user.query_timeout = override_secs(raw)?,
        "query_wait_timeout" => user.query_wait_timeout = override_secs(raw)?,
        "idle_transaction_timeout" => user.idle_transaction_timeout = override_secs(raw)?,
        "transaction_timeout" => user.transaction_timeout = override_secs(raw)?,
        "client_idle_timeout" => user.client_idle_timeout = override_secs(raw)?,
        _ => return Err(KeyError::Unknown),
    }
    Ok(())
}

/// Splits a libpq-style connection string (`key=value key2='quoted value'`)
/// into its pairs, in order.
///
/// Values may be single-quoted; inside quotes `\x` stands for `x` (libpq)
/// and `''` for `'` (PgBouncer). Unquoted values end at whitespace and keep
/// backslashes as written (PgBouncer). Empty values are refused, as
/// PgBouncer refuses them.
pub(crate) fn split_connstring(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if key.is_empty() {
            return Err("missing parameter name before \"=\"".to_owned());
        }
        if chars.next() != Some('=') {
            return Err(format!("expected \"=\" after \"{key}\""));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value for \"{key}\"")),
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value for \"{key}\"")),
                    },
                    Some('\'') => {
                        if chars.next_if_eq(&'\'').is_some() {
                            value.push('\'');
                        } else {
                            break;
                        }
                    }
                    Some(c) => value.push(c),
                }
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err(format!("missing space after the quoted value of \"{key}\""));
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        if value.is_empty() {
            return Err(format!("empty value for \"{key}\""));
        }
        pairs.push((key, value));
    }
}

/// How far behind its primary a standby may be (`max_replica_lag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaLag {
    /// Replay lag in time (a number of seconds, or a time with units).
    Time(Duration),
    /// WAL the standby has received and not replayed yet, in bytes (a
    /// size with PostgreSQL's units: `B`, `kB`, `MB`, `GB`, `TB`).
    Bytes(u64),
}

impl ReplicaLag {
    fn parse(raw: &Raw<'_>) -> Result<Self, ValueError> {
        if let Raw::Str(text) = raw {
            if let Some(bytes) = parse_size(text) {
                return Ok(ReplicaLag::Bytes(bytes));
            }
        }
        Secs::parse(raw).map(ReplicaLag::Time).map_err(|_| {
            ValueError::invalid("a time (seconds, or with units) or a size (16MB, 512kB, ...)")
        })
    }
}

/// A size with one of PostgreSQL's memory units (powers of 1024).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let unit_at = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = (text[..unit_at].trim(), &text[unit_at..]);
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        split_connstring(s).unwrap()
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn max_replica_lag_is_a_time_or_a_size() {
        let lag = |s: &str| ReplicaLag::parse(&Raw::Str(s));
        assert_eq!(lag("5"), Ok(ReplicaLag::Time(Duration::from_secs(5))));
        assert_eq!(
            lag("500ms"),
            Ok(ReplicaLag::Time(Duration::from_millis(500)))
        );
        assert_eq!(lag("16MB"), Ok(ReplicaLag::Bytes(16 << 20)));
        assert_eq!(lag(" 512 kB "), Ok(ReplicaLag::Bytes(512 << 10)));
        assert_eq!(lag("100b"), Ok(ReplicaLag::Bytes(100)));
        assert_eq!(
            ReplicaLag::parse(&Raw::Int(3)),
            Ok(ReplicaLag::Time(Duration::from_secs(3)))
        );
        for bad in ["16XB", "MB", "-1MB", "99999999999TB", "soon"] {
            assert!(lag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connstrings() {
        assert_eq!(pairs(""), vec![]);
        assert_eq!(
            pairs("  host=db1  port=5433 "),
            vec![p("host", "db1"), p("port", "5433")]
        );
        assert_eq!(pairs("host = db1"), vec![p("host", "db1")]);
        assert_eq!(
            pairs(r"password='it''s a \'secret\' \\o/' user=bob"),
            vec![p("password", r"it's a 'secret' \o/"), p("user", "bob")]
        );
        assert_eq!(
            pairs(r"password=back\slash"),
            vec![p("password", r"back\slash")]
        );
        assert_eq!(
            pairs("connect_query='SELECT 1; SET x = 2'"),
            vec![p("connect_query", "SELECT 1; SET x = 2")]
        );
        for bad in [
            "host",
            "=x",
            "host=",
            "host=''",
            "password='open",
            "a='x'b=1",
            "host = ",
            r"p='\",
        ] {
            assert!(split_connstring(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn database_keys() {
        let mut db = Database::default();
        apply_database_key(&mut db, "port", &Raw::Str("6000")).unwrap();
        apply_database_key(&mut db, "reserve_pool", &Raw::Str("3")).unwrap();
        apply_database_key(&mut db, "query_wait_timeout", &Raw::Str("-1")).unwrap();
        apply_database_key(&mut db, "pool_mode", &Raw::Str("statement")).unwrap();
        assert_eq!(db.port, Some(6000));
        assert_eq!(db.reserve_pool_size, Some(3));
        assert_eq!(db.query_wait_timeout, None);
        assert_eq!(db.pool_mode, Some(PoolMode::Statement));
        assert!(matches!(
            apply_database_key(&mut db, "hots", &Raw::Str("x")),
            Err(KeyError::Unknown)
        ));
        assert!(matches!(
            apply_database_key(&mut db, "port", &Raw::Str("0")),
            Err(KeyError::Value(_))
        ));
        let warning =
            apply_database_key(&mut db, "target_session_attrs", &Raw::Str("primary")).unwrap();
        assert!(warning.is_none(), "enforced, so no warning");
        assert!(matches!(
            apply_database_key(&mut db, "target_session_attrs", &Raw::Str("master")),
            Err(KeyError::Value(_))
        ));
        db.host = Some("a, b,,c".into());
        assert_eq!(db.hosts(), vec!["a", "b", "c"]);
        assert_eq!(
            db.host_ports().unwrap(),
            vec![(Some("a"), 6000), (Some("b"), 6000), (Some("c"), 6000)]
        );
        apply_database_key(&mut db, "port", &Raw::Str("7001, 7002,7003")).unwrap();
        assert_eq!(
            db.host_ports().unwrap(),
            vec![(Some("a"), 7001), (Some("b"), 7002), (Some("c"), 7003)]
        );
        apply_database_key(&mut db, "port", &Raw::Str("7001,7002")).unwrap();
        assert!(db.host_ports().unwrap_err().contains("2 ports for 3 hosts"));
    }
}

//! Configuration: PgBouncer's `pgbouncer.ini` and `auth_file`, or the same
//! keys in TOML, loaded into one typed [`Config`].
//!
//! ```no_run
//! use std::path::Path;
//! use wharf_pooler::config;
//!
//! let loaded = config::load(Path::new("/etc/pgbouncer/pgbouncer.ini"))?;
//! for warning in &loaded.warnings {
//!     eprintln!("warning: {warning}");
//! }
//! let config = loaded.config;
//! println!("listening on port {}", config.pgbouncer.listen_port);
//! # Ok::<(), config::ConfigError>(())
//! ```
//!
//! # The ini format
//!
//! As PgBouncer reads it: `[databases]`, `[users]`, `[peers]` and
//! `[pgbouncer]` sections; `key = value`
//! lines; lines starting with `;` or `#` are comments (those characters are
//! not special later in a line); values run to the end of the line and are
//! taken literally, quotes included. `%include FILE` reads another file in
//! place, relative to the including file's directory (PgBouncer: relative
//! to its working directory), at most 10 deep. Database and user names with
//! characters other than `[A-Za-z0-9_.*-]` are quoted, `"like ""this"""` or
//! `'like this'`.
//!
//! Unknown `[pgbouncer]` keys are warnings (PgBouncer refuses them), bad
//! values are errors naming the file, line and key. Times are seconds,
//! fractions allowed, as in PgBouncer; wharf also accepts units (`500ms`,
//! `15s`, `5min`, `1h 30m`).
//!
//! # The TOML format
//!
//! The same keys, in a file whose name ends in `.toml`:
//!
//! ```toml
//! [pgbouncer]
//! listen_port = 6432
//! admin_users = ["admin"]        # or "admin,ops"
//! server_idle_timeout = "10min"  # or 600 (seconds)
//!
//! [databases.app]
//! host = "10.0.0.5"
//! pool_size = 40
//!
//! [databases."*"]
//! host = "10.0.0.6"
//!
//! [users.report]
//! pool_mode = "session"
//!
//! [peers.2]
//! host = "/tmp/wharf2"
//! ```
//!
//! A `[databases]`, `[users]` or `[peers]` entry may also be a connection
//! string: `app = "host=10.0.0.5 pool_size=40"`. Unknown keys are warnings.

mod builder;
mod database;
mod error;
mod hba;
mod ini;
mod modes;
mod peers;
mod settings;
mod suggest;
mod support;
mod toml_file;
mod userlist;
mod value;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use builder::{line_of, replace_or_push};
pub(crate) use builder::{Builder, Pos};
pub use database::{Database, ReplicaLag, User};
pub use error::{ConfigError, ConfigWarning};
pub use hba::{HbaAddress, HbaConnection, HbaDatabase, HbaMethod, HbaRule, HbaRules, HbaUser};
pub use modes::{AuthType, PoolMode, SslMode, UnknownName};
pub use peers::{Peer, MAX_PEER_ID};
pub use settings::{ServerCheck, SetError, SettingRow, Settings};
pub use support::Support;
pub use userlist::{load_auth_file, parse_auth_file, Secret};

use database::{apply_database_key, apply_user_key, KeyError, DATABASE_KEYS, USER_KEYS};
use value::{Raw, ValueError};

/// What kind of entry (`[databases]`, `[users]`, `[peers]`) keys are
/// applied to, for messages.
pub(crate) struct EntryKind {
    /// ` for database "app"`.
    pub(crate) context: String,
    /// `unknown connection parameter`.
    pub(crate) unknown: &'static str,
    /// The keys such an entry takes, for suggestions.
    pub(crate) keys: &'static [&'static str],
}

/// A whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// The `[pgbouncer]` section.
    pub pgbouncer: Settings,
    /// The `[databases]` entries in file order, the `*` fallback among them
    /// as an entry named `*`. A name defined twice keeps its first place and
    /// its last definition.
    pub databases: Vec<Database>,
    /// The `[users]` entries in file order.
    pub users: Vec<User>,
    /// The `[peers]` entries in file order, this process's own `peer_id`
    /// among them if the file lists it. A peer id defined twice keeps its
    /// first place and its last definition.
    pub peers: Vec<Peer>,
    /// The file the configuration was loaded from.
    pub path: PathBuf,
    /// The rules of `auth_hba_file` when `auth_type = hba` (see
    /// [`Config::load_hba`]), else `None`.
    pub hba: Option<Arc<HbaRules>>,
    /// Where each `[pgbouncer]` key set in the files was set, so that a
    /// file it names can be blamed on its line.
    positions: Positions,
}

/// Where keys were set: not part of what a configuration is, so two
/// configurations with the same values are equal wherever they came from.
#[derive(Debug, Clone, Default)]
struct Positions(std::collections::BTreeMap<String, Pos>);

impl PartialEq for Positions {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Positions {}

/// A loaded configuration and what was worth telling about it.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Things accepted but ignored or not honoured: unknown keys, peering
    /// that cannot work, features wharf lacks.
    pub warnings: Vec<ConfigWarning>,
}

/// Reads a configuration file: TOML if its name ends in `.toml`, else
/// PgBouncer's ini format.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = read_text(path, None, None, path)?;
    if is_toml(path) {
        parse_toml_str(&text, path)
    } else {
        parse_ini_str(&text, path)
    }
}

/// Parses ini text as if read from `path` (which names it in messages and
/// anchors relative `%include`s).
pub fn parse_ini_str(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let builder = ini::load(text, path)?;
    let mut loaded = builder.finish();
    loaded.config.load_hba()?;
    Ok(loaded)
}

/// Parses TOML text as if read from `path` (which names it in messages).
pub fn parse_toml_str(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let builder = toml_file::load(text, path)?;
    let mut loaded = builder.finish();
    loaded.config.load_hba()?;
    Ok(loaded)
}

fn is_toml(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

/// Reads a file as UTF-8; errors are reported against `file`:`line`.
fn read_text(
    path: &Path,
    line: Option<usize>,
    key: Option<&str>,
    file: &Path,
) -> Result<String, ConfigError> {
    let io_error = |source| ConfigError::Io {
        file: file.to_owned(),
        line,
        key: key.map(str::to_owned),
        path: path.to_owned(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io_error)?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        ConfigError::Syntax {
            file: path.to_owned(),
            line: Some(valid.iter().filter(|b| **b == b'\n').count() + 1),
            message: "not valid UTF-8".to_owned(),
        }
    })
}

/// The settings that apply to one pool, after PgBouncer's precedence:
/// `[users]` over `[databases]` over `[pgbouncer]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Pool mode: user's, else database's, else `pool_mode`.
    pub pool_mode: PoolMode,
    /// Pool size: user's, else database's, else `default_pool_size`.
    pub pool_size: usize,
    /// Database's `min_pool_size`, else the global one.
    pub min_pool_size: usize,
    /// Reserve: user's, else database's, else `reserve_pool_size`.
    pub reserve_pool_size: usize,
    /// Database's non-zero `max_db_connections`, else the global one;
    /// `None` is unlimited.
    pub max_db_connections: Option<usize>,
    /// User's non-zero `max_user_connections`, else the global one; `None`
    /// is unlimited.
    pub max_user_connections: Option<usize>,
    /// Database's non-zero `server_lifetime`, else the global one.
    pub server_lifetime: Duration,
    /// User's, else global `query_timeout`; `None` disables.
    pub query_timeout: Option<Duration>,
    /// User's, else database's, else global `query_wait_timeout`; `None`
    /// disables.
    pub query_wait_timeout: Option<Duration>,
    /// User's, else global `idle_transaction_timeout`; `None` disables.
    pub idle_transaction_timeout: Option<Duration>,
    /// User's, else global `transaction_timeout`; `None` disables.
    pub transaction_timeout: Option<Duration>,
    /// User's, else global `client_idle_timeout`; `None` disables.
    pub client_idle_timeout: Option<Duration>,
}

fn nonzero(value: usize) -> Option<usize> {
    (value != 0).then_some(value)
}

fn enabled(value: Option<Duration>) -> Option<Duration> {
    value.filter(|d| !d.is_zero())
}

impl Config {
    /// The entry for database `name`, else the `*` fallback entry.
    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases
            .iter()
            .find(|db| db.name == name)
            .or_else(|| self.databases.iter().find(|db| db.is_fallback()))
    }

    /// The `[users]` entry for `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The `[peers]` entry for `peer_id`.
    pub fn peer(&self, peer_id: u16) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == peer_id)
    }

    /// How many cancel requests may be in flight to `peer` at once: its
    /// `pool_size`, else `default_pool_size`.
    pub fn peer_pool_size(&self, peer: &Peer) -> usize {
        peer.pool_size.unwrap_or(self.pgbouncer.default_pool_size)
    }

    /// The settings of the pool a client of `database` logged in as
    /// `client_user` uses. The `[users]` entry consulted is the database's
    /// forced `user=` if it has one, else the client's. A database without
    /// an entry (and no `*`) gets the global settings.
    pub fn pool_settings(&self, database: &str, client_user: &str) -> PoolSettings {
        let db = self.database(database);
        let server_user = db.and_then(|d| d.user.as_deref()).unwrap_or(client_user);
        self.settings_of(db, self.user(server_user))
    }

    /// The settings of a pool of the `[databases]` entry `db` whose
    /// servers log in as the user of the `[users]` entry `user` (either
    /// absent: the global settings).
    pub fn settings_of(&self, db: Option<&Database>, user: Option<&User>) -> PoolSettings {
        let g = &self.pgbouncer;
        let from_user = |f: fn(&User) -> Option<Duration>, global| {
            user.and_then(f).map_or(global, |d| enabled(Some(d)))
        };
        PoolSettings {
            pool_mode: user
                .and_then(|u| u.pool_mode)
                .or(db.and_then(|d| d.pool_mode))
                .unwrap_or(g.pool_mode),
            pool_size: user
                .and_then(|u| u.pool_size)
                .or(db.and_then(|d| d.pool_size))
                .unwrap_or(g.default_pool_size),
            min_pool_size: db.and_then(|d| d.min_pool_size).unwrap_or(g.min_pool_size),
            reserve_pool_size: user
                .and_then(|u| u.reserve_pool_size)
                .or(db.and_then(|d| d.reserve_pool_size))
                .unwrap_or(g.reserve_pool_size),
            max_db_connections: db
                .and_then(|d| d.max_db_connections)
                .and_then(nonzero)
                .or(nonzero(g.max_db_connections)),
            max_user_connections: user
                .and_then(|u| u.max_user_connections)
                .and_then(nonzero)
                .or(nonzero(g.max_user_connections)),
            server_lifetime: db
                .and_then(|d| d.server_lifetime)
                .filter(|d| !d.is_zero())
                .unwrap_or(g.server_lifetime),
            query_timeout: from_user(|u| u.query_timeout, g.query_timeout),
            query_wait_timeout: from_user(
                |u| u.query_wait_timeout,
                db.and_then(|d| d.query_wait_timeout)
                    .map_or(g.query_wait_timeout, |d| enabled(Some(d))),
            ),
            idle_transaction_timeout: from_user(
                |u| u.idle_transaction_timeout,
                g.idle_transaction_timeout,
            ),
            transaction_timeout: from_user(|u| u.transaction_timeout, g.transaction_timeout),
            client_idle_timeout: from_user(|u| u.client_idle_timeout, g.client_idle_timeout),
        }
    }

    /// The pool size for (`database`, `client_user`): see
    /// [`Config::pool_settings`].
    pub fn pool_size_for(&self, database: &str, client_user: &str) -> usize {
        self.pool_settings(database, client_user).pool_size
    }

    /// The pool mode for (`database`, `client_user`): see
    /// [`Config::pool_settings`].
    pub fn pool_mode_for(&self, database: &str, client_user: &str) -> PoolMode {
        self.pool_settings(database, client_user).pool_mode
    }

    /// Where `[pgbouncer]` key `key` was set: its file and line, or the
    /// configuration file without a line when the key was not set there.
    pub fn setting_position(&self, key: &str) -> (&Path, Option<usize>) {
        match self.positions.0.get(key) {
            Some(pos) => (&pos.file, pos.line),
            None => (&self.path, None),
        }
    }

    /// Reads `auth_file` (no users when it is unset), as `wharf serve` does
    /// at start and on RELOAD. A file that cannot be read is reported
    /// against the `auth_file` line; a malformed entry against the auth
    /// file's own line.
    pub fn load_auth_file(&self) -> Result<std::collections::HashMap<String, Secret>, ConfigError> {
        let Some(path) = &self.pgbouncer.auth_file else {
            return Ok(std::collections::HashMap::new());
        };
        let (file, line) = self.setting_position("auth_file");
        let text = read_text(path, line, Some("auth_file"), file)?;
        parse_auth_file(&text, path)
    }

    /// `SHOW CONFIG` rows, as [`Settings::describe`], with `conffile` showing
    /// the loaded file when the file does not set it.
    pub fn describe(&self) -> Vec<SettingRow> {
        let mut rows = self.pgbouncer.describe();
        if self.pgbouncer.conffile.is_none() && !self.path.as_os_str().is_empty() {
            if let Some(row) = rows.iter_mut().find(|r| r.key == "conffile") {
                row.value = self.path.to_string_lossy().into_owned();
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        parse_ini_str(text, Path::new("test.ini")).unwrap().config
    }

    #[test]
    fn precedence_user_over_database_over_global() {
        let c = config(
            "[pgbouncer]\ndefault_pool_size = 10\npool_mode = session\nmax_db_connections = 50\n\
             [databases]\napp = pool_size=20 pool_mode=transaction max_db_connections=0\n\
             forced = user=svc pool_size=5\n* = host=fallback\n\
             [users]\nalice = pool_size=30 pool_mode=statement\nsvc = pool_mode=transaction\n",
        );
        assert_eq!(c.pool_size_for("app", "bob"), 20);
        assert_eq!(c.pool_mode_for("app", "bob"), PoolMode::Transaction);
        assert_eq!(c.pool_size_for("app", "alice"), 30);
        assert_eq!(c.pool_mode_for("app", "alice"), PoolMode::Statement);
        assert_eq!(c.pool_size_for("other", "bob"), 10);
        assert_eq!(c.database("other").map(|d| d.name.as_str()), Some("*"));
        // A forced user's [users] entry applies, whoever the client is.
        assert_eq!(c.pool_mode_for("forced", "alice"), PoolMode::Transaction);
        assert_eq!(c.pool_size_for("forced", "alice"), 5);
        let p = c.pool_settings("app", "bob");
        assert_eq!(
            p.max_db_connections,
            Some(50),
            "0 in [databases] falls back to the global"
        );
        assert_eq!(p.max_user_connections, None);
        assert_eq!(p.query_wait_timeout, Some(Duration::from_secs(120)));
    }

    #[test]
    fn read_routing_is_refused_where_it_cannot_work() {
        let two = "host=a,b pool_mode=transaction";
        let c = config(&format!(
            "[pgbouncer]\n[databases]\napp = {two} read_routing=on\n"
        ));
        assert_eq!(c.database("app").unwrap().read_routing, Some(true));
        for (line, why) in [
            ("host=a read_routing=on", "several hosts"),
            ("read_routing=on", "several hosts"),
            (
                "host=a,b pool_mode=session read_routing=on",
                "pool_mode = transaction",
            ),
            (
                &format!("{two} target_session_attrs=standby read_routing=on"),
                "target_session_attrs = standby",
            ),
        ] {
            let ini = format!("[pgbouncer]\n[databases]\napp = {line}\n");
            let err = parse_ini_str(&ini, Path::new("t.ini"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{line}: {err}");
            assert!(err.contains("read_routing"), "{line}: {err}");
        }
        let err = parse_ini_str(
            &format!("[pgbouncer]\n[databases]\napp = {two} read_routing=sometimes\n"),
            Path::new("t.ini"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("boolean"), "{err}");
        // The [pgbouncer] default applies to a line without pool_mode:
        // known only at the end, so a warning.
        let loaded = parse_ini_str(
            "[pgbouncer]\npool_mode = session\n[databases]\napp = host=a,b read_routing=1\n",
            Path::new("t.ini"),
        )
        .unwrap();
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.to_string().contains("only transaction-mode pools route")),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn no_fallback_means_no_database() {
        let c = config("[pgbouncer]\n[databases]\napp =\n");
        assert!(c.database("app").is_some());
        assert!(c.database("nope").is_none());
        assert_eq!(c.pool_size_for("nope", "x"), 20);
    }

    #[test]
    fn error_display() {
        let e = ConfigError::Invalid {
            file: "pgbouncer.ini".into(),
            line: Some(12),
            key: "listen_port".into(),
            message: "invalid value \"abc\": expected a port number (1-65535)".into(),
        };
        assert_eq!(
            e.to_string(),
            "pgbouncer.ini:12: listen_port: invalid value \"abc\": expected a port number (1-65535)"
        );
        let e = ConfigError::Syntax {
            file: "x.ini".into(),
            line: None,
            message: "broken".into(),
        };
        assert_eq!(e.to_string(), "x.ini: broken");
    }
}

//! Loading `pgbouncer.ini`, its TOML twin and `userlist.txt`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wharf_pooler::config::{
    self, AuthType, Config, ConfigError, Database, Peer, PoolMode, Secret, SettingRow, SslMode,
    User,
};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "wharf-config-test-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const MAIN_INI: &str = r#"
;; A production-like pgbouncer.ini
[databases]
; app goes to the primary, with a bigger pool
app = host=10.0.0.5 port=5433 dbname=app_prod pool_size=40 pool_mode=transaction
reports = host=10.0.0.6 user=reporter password='it''s a \'secret\'' connect_query='SET search_path = reports, public' application_name=wharf-reports
"odd name" = host=/var/run/postgresql dbname=odd reserve_pool=3 max_db_connections=10 client_encoding=UTF8 datestyle=ISO timezone=UTC
%include databases.d/extra.ini
* = host=10.0.0.9

[users]
alice = pool_mode=session pool_size=5 max_user_connections=8
bob = query_timeout=30

[peers]
1 = host=/tmp/pgbouncer1

[pgbouncer]
listen_addr = 127.0.0.1, ::1
listen_port = 6433
peer_id = 2
unix_socket_dir =
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
admin_users = admin, ops
stats_users = stats
pool_mode = session
max_client_conn = 500
default_pool_size = 25
min_pool_size = 2
reserve_pool_size = 5
reserve_pool_timeout = 2.5
server_lifetime = 1800
server_idle_timeout = 0
server_check_query = select 1
server_reset_query = DISCARD ALL
query_wait_timeout = 30
client_tls_sslmode = prefer
ignore_startup_parameters = extra_float_digits,options
log_connections = no
server_round_robin = on
unix_socket_mode = 0700
workers = 4
http_listen_port = 9127
dns_max_ttl = 30
"#;

const EXTRA_INI: &str = "; included from pgbouncer.ini\nanalytics = host=10.0.0.7 pool_size=8\n";

const MAIN_TOML: &str = r#"
[databases.app]
host = "10.0.0.5"
port = 5433
dbname = "app_prod"
pool_size = 40
pool_mode = "transaction"

[databases.reports]
host = "10.0.0.6"
user = "reporter"
password = "it's a 'secret'"
connect_query = "SET search_path = reports, public"
application_name = "wharf-reports"

[databases."odd name"]
host = "/var/run/postgresql"
dbname = "odd"
reserve_pool_size = 3
max_db_connections = 10
client_encoding = "UTF8"
datestyle = "ISO"
timezone = "UTC"

[databases]
analytics = "host=10.0.0.7 pool_size=8"

[databases."*"]
host = "10.0.0.9"

[users.alice]
pool_mode = "session"
pool_size = 5
max_user_connections = 8

[users.bob]
query_timeout = "30s"

[peers.1]
host = "/tmp/pgbouncer1"

[pgbouncer]
listen_addr = ["127.0.0.1", "::1"]
listen_port = 6433
peer_id = 2
unix_socket_dir = ""
auth_type = "scram-sha-256"
auth_file = "/etc/pgbouncer/userlist.txt"
admin_users = "admin, ops"
stats_users = ["stats"]
pool_mode = "session"
max_client_conn = 500
default_pool_size = 25
min_pool_size = 2
reserve_pool_size = 5
reserve_pool_timeout = "2500ms"
server_lifetime = "30min"
server_idle_timeout = 0
server_check_query = "select 1"
server_reset_query = "DISCARD ALL"
query_wait_timeout = 30.0
client_tls_sslmode = "prefer"
ignore_startup_parameters = ["extra_float_digits", "options"]
log_connections = false
server_round_robin = true
unix_socket_mode = 0o700
workers = 4
http_listen_port = 9127
dns_max_ttl = 30
"#;

fn write_main(dir: &TempDir) -> PathBuf {
    dir.write("databases.d/extra.ini", EXTRA_INI);
    dir.write("pgbouncer.ini", MAIN_INI)
}

fn expected_databases() -> Vec<Database> {
    vec![
        Database {
            name: "app".into(),
            host: Some("10.0.0.5".into()),
            port: Some(5433),
            dbname: Some("app_prod".into()),
            pool_size: Some(40),
            pool_mode: Some(PoolMode::Transaction),
            ..Database::default()
        },
        Database {
            name: "reports".into(),
            host: Some("10.0.0.6".into()),
            user: Some("reporter".into()),
            password: Some("it's a 'secret'".into()),
            connect_query: Some("SET search_path = reports, public".into()),
            application_name: Some("wharf-reports".into()),
            ..Database::default()
        },
        Database {
            name: "odd name".into(),
            host: Some("/var/run/postgresql".into()),
            dbname: Some("odd".into()),
            reserve_pool_size: Some(3),
            max_db_connections: Some(10),
            client_encoding: Some("UTF8".into()),
            datestyle: Some("ISO".into()),
            timezone: Some("UTC".into()),
            ..Database::default()
        },
        Database {
            name: "analytics".into(),
            host: Some("10.0.0.7".into()),
            pool_size: Some(8),
            ..Database::default()
        },
        Database {
            name: "*".into(),
            host: Some("10.0.0.9".into()),
            ..Database::default()
        },
    ]
}

#[test]
fn realistic_ini_loads_every_section() {
    let dir = TempDir::new();
    let path = write_main(&dir);
    let loaded = config::load(&path).unwrap();
    let c = &loaded.config;
    assert_eq!(c.path, path);
    assert_eq!(c.databases, expected_databases());
    assert_eq!(
        c.users,
        vec![
            User {
                name: "alice".into(),
                pool_mode: Some(PoolMode::Session),
                pool_size: Some(5),
                max_user_connections: Some(8),
                ..User::default()
            },
            User {
                name: "bob".into(),
                query_timeout: Some(Duration::from_secs(30)),
                ..User::default()
            },
        ]
    );
    let s = &c.pgbouncer;
    assert_eq!(s.listen_addr, vec!["127.0.0.1", "::1"]);
    assert_eq!(s.listen_port, 6433);
    assert_eq!(s.unix_socket_dir, None);
    assert_eq!(s.auth_type, AuthType::ScramSha256);
    assert_eq!(
        s.auth_file.as_deref(),
        Some(Path::new("/etc/pgbouncer/userlist.txt"))
    );
    assert_eq!(s.admin_users, vec!["admin", "ops"]);
    assert_eq!(s.max_client_conn, 500);
    assert_eq!(s.default_pool_size, 25);
    assert_eq!(s.reserve_pool_timeout, Some(Duration::from_millis(2500)));
    assert_eq!(s.server_lifetime, Duration::from_secs(1800));
    assert_eq!(s.server_idle_timeout, None);
    assert_eq!(s.query_wait_timeout, Some(Duration::from_secs(30)));
    assert_eq!(s.client_tls_sslmode, SslMode::Prefer);
    assert_eq!(
        s.ignore_startup_parameters,
        vec!["extra_float_digits", "options"]
    );
    assert!(!s.log_connections);
    assert!(s.server_round_robin);
    assert_eq!(s.unix_socket_mode, 0o700);
    assert_eq!(s.workers, 4);
    assert_eq!(s.http_listen(), Some(("127.0.0.1", 9127)));
    // Untouched keys keep PgBouncer's defaults.
    assert_eq!(s.server_connect_timeout, Duration::from_secs(15));
    assert_eq!(s.client_login_timeout, Some(Duration::from_secs(60)));
    assert_eq!(s.max_packet_size, 2_147_483_647);

    // [peers] names the other process of the group.
    assert_eq!(s.peer_id, 2);
    assert_eq!(
        c.peers,
        vec![Peer {
            id: 1,
            host: Some("/tmp/pgbouncer1".into()),
            port: None,
            pool_size: None,
        }]
    );
    // Accepted but not acted on: a warning each, on its line.
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("pgbouncer.ini:41: server_round_robin: accepted but not acted on"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("pgbouncer.ini:45: dns_max_ttl: accepted but not acted on"),
        "{warnings:?}"
    );

    // The "*" entry answers for databases without their own.
    assert_eq!(c.database("app").unwrap().name, "app");
    let fallback = c.database("somewhere_else").unwrap();
    assert!(fallback.is_fallback());
    assert_eq!(fallback.server_dbname("somewhere_else"), "somewhere_else");
    assert_eq!(c.pool_size_for("app", "alice"), 5);
    assert_eq!(c.pool_size_for("app", "carol"), 40);
    assert_eq!(c.pool_size_for("somewhere_else", "carol"), 25);
    assert_eq!(c.pool_mode_for("app", "carol"), PoolMode::Transaction);
    assert_eq!(c.pool_mode_for("app", "alice"), PoolMode::Session);
}

#[test]
fn toml_twin_gives_the_same_config() {
    let dir = TempDir::new();
    let ini = config::load(&write_main(&dir)).unwrap();
    let toml_path = dir.write("wharf.toml", MAIN_TOML);
    let toml = config::load(&toml_path).unwrap();
    let mut from_toml = toml.config;
    assert_eq!(from_toml.path, toml_path);
    from_toml.path = ini.config.path.clone();
    assert_eq!(from_toml, ini.config);
    let warnings: Vec<String> = toml.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "the same two as the ini's: {warnings:?}");
}

/// Loads `[pgbouncer]` plus `line` (as line 3) and returns the error text
/// with the temp dir's path cut off.
fn ini_error(line: &str) -> String {
    let dir = TempDir::new();
    let path = dir.write(
        "pgbouncer.ini",
        &format!("[pgbouncer]\nauth_file = users.txt\n{line}\n[databases]\n"),
    );
    let err = config::load(&path).expect_err(line);
    assert_eq!(err.file(), path);
    err.to_string()
        .replace(&format!("{}", dir.0.display()), "DIR")
}

#[test]
fn every_bad_value_names_file_line_and_key() {
    let cases = [
        ("listen_port = abc", "DIR/pgbouncer.ini:3: listen_port: invalid value \"abc\": expected a port number (1-65535)"),
        ("listen_port = 70000", "DIR/pgbouncer.ini:3: listen_port: invalid value \"70000\": expected a port number (1-65535)"),
        ("listen_port = 0", "DIR/pgbouncer.ini:3: listen_port: invalid value \"0\": expected a port number (1-65535)"),
        ("max_client_conn = -5", "DIR/pgbouncer.ini:3: max_client_conn: invalid value \"-5\": expected an integer from 0 to 18446744073709551615"),
        ("default_pool_size = 20 ; comment", "DIR/pgbouncer.ini:3: default_pool_size: invalid value \"20 ; comment\": expected an integer from 0 to 18446744073709551615 (comments must be on a line of their own)"),
        ("pool_mode = sessions", "DIR/pgbouncer.ini:3: pool_mode: invalid value \"sessions\": expected one of: session, transaction, statement"),
        ("auth_type = magic", "DIR/pgbouncer.ini:3: auth_type: invalid value \"magic\": expected one of: trust, any, plain, md5, scram-sha-256, hba, cert"),
        ("auth_type = hba", "DIR/pgbouncer.ini: auth_hba_file: not set, and auth_type = hba takes its rules from it"),
        ("auth_type = hba\nauth_hba_file = DIR/none.conf", "DIR/pgbouncer.ini:4: auth_hba_file: could not read \"DIR/none.conf\": No such file or directory (os error 2)"),
        ("auth_type = pam", "DIR/pgbouncer.ini:3: auth_type: \"pam\" is not supported by wharf yet (supported: trust, any, plain, md5, scram-sha-256, hba, cert)"),
        ("server_lifetime = forever", "DIR/pgbouncer.ini:3: server_lifetime: invalid value \"forever\": expected a time in seconds (e.g. 15 or 0.5) or with a unit (e.g. 500ms, 15s, 5min)"),
        ("query_timeout = -1", "DIR/pgbouncer.ini:3: query_timeout: invalid value \"-1\": expected a time in seconds (e.g. 15 or 0.5) or with a unit (e.g. 500ms, 15s, 5min)"),
        ("stats_period = 1.5", "DIR/pgbouncer.ini:3: stats_period: invalid value \"1.5\": expected a whole number of seconds"),
        ("log_connections = maybe", "DIR/pgbouncer.ini:3: log_connections: invalid value \"maybe\": expected a boolean (0/1, yes/no, on/off, true/false)"),
        ("server_tls_sslmode = sometimes", "DIR/pgbouncer.ini:3: server_tls_sslmode: invalid value \"sometimes\": expected one of: disable, allow, prefer, require, verify-ca, verify-full"),
        ("listen_port = \"6432\"", "DIR/pgbouncer.ini:3: listen_port: invalid value \"\\\"6432\\\"\": expected a port number (1-65535) (quotes are not removed from values in pgbouncer.ini)"),
        ("[databases]\napp = host=db port=x", "DIR/pgbouncer.ini:4: port: invalid value \"x\" for database \"app\": expected a port number (1-65535)"),
        ("[databases]\napp = host=db pool_size=many", "DIR/pgbouncer.ini:4: pool_size: invalid value \"many\" for database \"app\": expected an integer from 0 to 18446744073709551615"),
        ("[databases]\napp = host=db pool_mode=bulk", "DIR/pgbouncer.ini:4: pool_mode: invalid value \"bulk\" for database \"app\": expected one of: session, transaction, statement"),
        ("[databases]\napp = host=db hots=x", "DIR/pgbouncer.ini:4: hots: unknown connection parameter for database \"app\" (did you mean \"host\"?)"),
        ("[databases]\napp = host=db password='open", "DIR/pgbouncer.ini:4: app: syntax error in connection string: unterminated quoted value for \"password\""),
        ("[databases]\napp = host", "DIR/pgbouncer.ini:4: app: syntax error in connection string: expected \"=\" after \"host\""),
        ("[databases]\npgbouncer = host=db", "DIR/pgbouncer.ini:4: pgbouncer: database name \"pgbouncer\" is reserved for the admin console"),
        ("[users]\nalice = pool_mode=nope", "DIR/pgbouncer.ini:4: pool_mode: invalid value \"nope\" for user \"alice\": expected one of: session, transaction, statement"),
        ("[users]\nalice = pool_size=-1", "DIR/pgbouncer.ini:4: pool_size: invalid value \"-1\" for user \"alice\": expected an integer from 0 to 18446744073709551615"),
        ("[users]\nalice = color=blue", "DIR/pgbouncer.ini:4: color: unknown user parameter for user \"alice\""),
        ("[nonsense]", "DIR/pgbouncer.ini:3: unknown section [nonsense] (expected [pgbouncer], [databases], [users] or [peers])"),
        ("[pgbouncer", "DIR/pgbouncer.ini:3: missing \"]\" after section name"),
        ("just some words", "DIR/pgbouncer.ini:3: expected \"key = value\", found \"just some words\""),
        ("= 5", "DIR/pgbouncer.ini:3: missing key before \"=\""),
    ];
    for (line, expected) in cases {
        assert_eq!(ini_error(line), expected, "for {line:?}");
    }
}

#[test]
fn structural_errors() {
    let dir = TempDir::new();
    let path = dir.write("a.ini", "listen_port = 1\n[pgbouncer]\n");
    let err = config::load(&path).unwrap_err();
    assert_eq!(err.line(), Some(1));
    assert!(
        err.to_string()
            .ends_with("a.ini:1: \"listen_port\" is outside of any section"),
        "{err}"
    );

    let path = dir.write("b.ini", "[databases]\napp = host=x\n");
    let err = config::load(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: no [pgbouncer] section", path.display())
    );

    let err = config::load(&dir.0.join("absent.ini")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");

    let path = dir.0.join("bad-utf8.ini");
    std::fs::write(&path, b"[pgbouncer]\nlogfile = \xff\n").unwrap();
    let err = config::load(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}:2: not valid UTF-8", path.display())
    );
}

#[test]
fn unknown_keys_and_unsupported_features_are_warnings() {
    let dir = TempDir::new();
    let path = dir.write(
        "pgbouncer.ini",
        "[pgbouncer]\nauth_file = u.txt\nlisten_prot = 6000\nfrobnicate = 1\nauth_user = pgbouncer\n\
         server_tls_sslmode = prefer\nlogfile = \"/var/log/pgb.log\"\n\
         [databases]\napp = host=db target_session_attrs=read-write\n",
    );
    let loaded = config::load(&path).unwrap();
    let shown: Vec<String> = loaded
        .warnings
        .iter()
        .map(|w| w.to_string().replace(&dir.0.display().to_string(), "DIR"))
        .collect();
    assert_eq!(
        shown,
        vec![
            "DIR/pgbouncer.ini:3: listen_prot: unknown setting, ignored (did you mean \"listen_port\"?)",
            "DIR/pgbouncer.ini:4: frobnicate: unknown setting, ignored",
            "DIR/pgbouncer.ini:7: logfile: the value keeps its double quotes: pgbouncer.ini values are taken literally",
        ]
    );
    let w = &loaded.warnings[0];
    assert_eq!((w.line, w.key.as_deref()), (Some(3), Some("listen_prot")));
    assert_eq!(
        loaded.config.pgbouncer.listen_port, 6432,
        "unknown keys change nothing"
    );
    assert_eq!(
        loaded.config.pgbouncer.auth_user.as_deref(),
        Some("pgbouncer")
    );
    assert_eq!(
        loaded.config.pgbouncer.logfile.as_deref(),
        Some(Path::new("\"/var/log/pgb.log\""))
    );
}

#[test]
fn whole_config_checks_warn() {
    let dir = TempDir::new();
    let path = dir.write(
        "pgbouncer.ini",
        "[pgbouncer]\nauth_type = any\nunix_socket_dir =\n[databases]\napp = host=db\nforced = host=db user=svc\n",
    );
    let loaded = config::load(&path).unwrap();
    let keys: Vec<_> = loaded
        .warnings
        .iter()
        .map(|w| (w.key.clone().unwrap(), w.line))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("auth_type".to_owned(), None),
            ("listen_addr".to_owned(), None)
        ]
    );
    assert!(loaded.warnings[0].message.contains("\"app\""));

    let path = dir.write("md5.ini", "[pgbouncer]\nlisten_addr = *\n");
    let loaded = config::load(&path).unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(
        loaded.warnings[0].to_string(),
        format!(
            "{}: auth_file: not set, so no user can log in with auth_type = md5",
            path.display()
        )
    );
}

#[test]
fn includes_resolve_relative_to_the_including_file() {
    let dir = TempDir::new();
    dir.write(
        "conf/main.ini",
        "[pgbouncer]\n%include sub/more.ini\nlisten_port = 7000\n",
    );
    dir.write(
        "conf/sub/more.ini",
        "auth_file = users.txt\n%include  deeper.ini  \n",
    );
    dir.write(
        "conf/sub/deeper.ini",
        "[databases]\nviadeep = host=deep\n[pgbouncer]\nmax_client_conn = 7\n",
    );
    let loaded = config::load(&dir.0.join("conf/main.ini")).unwrap();
    let c = loaded.config;
    assert_eq!(c.pgbouncer.listen_port, 7000);
    assert_eq!(c.pgbouncer.max_client_conn, 7);
    assert_eq!(c.databases.len(), 1);
    assert_eq!(c.databases[0].host.as_deref(), Some("deep"));
}

#[test]
fn missing_include_names_the_including_file_and_line() {
    let dir = TempDir::new();
    let path = dir.write("main.ini", "[pgbouncer]\n\n%include nothere.ini\n");
    let err = config::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert_eq!(err.file(), path);
    assert_eq!(err.line(), Some(3));
    assert_eq!(err.key(), Some("%include"));
    let text = err.to_string();
    let prefix = format!(
        "{}:3: %include: could not read \"{}\": ",
        path.display(),
        dir.0.join("nothere.ini").display()
    );
    assert!(text.starts_with(&prefix), "{text}");

    let path = dir.write("empty.ini", "[pgbouncer]\n%include\n");
    let err = config::load(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}:2: %include: missing file name", path.display())
    );
}

#[test]
fn include_loops_and_depth_are_errors() {
    let dir = TempDir::new();
    let a = dir.write("a.ini", "[pgbouncer]\n%include b.ini\n");
    dir.write("b.ini", "listen_port = 7000\n%include a.ini\n");
    let err = config::load(&a).unwrap_err();
    let b = dir.0.join("b.ini");
    assert_eq!(err.file(), b);
    assert_eq!(err.line(), Some(2));
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2: %include: include loop: {} -> {} -> {}",
            b.display(),
            a.display(),
            b.display(),
            dir.0.join("a.ini").display()
        )
    );

    let self_loop = dir.write("self.ini", "[pgbouncer]\n%include self.ini\n");
    assert!(config::load(&self_loop)
        .unwrap_err()
        .to_string()
        .contains("include loop"));

    // Eleven levels: the root plus ten nested includes is the most allowed.
    for i in 0..12 {
        dir.write(
            &format!("deep{i}.ini"),
            &format!("%include deep{}.ini\n", i + 1),
        );
    }
    dir.write("deep12.ini", "listen_port = 7001\n");
    let root = dir.write("root.ini", "[pgbouncer]\n%include deep0.ini\n");
    let err = config::load(&root).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("%include: includes nested more than 10 deep"),
        "{err}"
    );
    assert_eq!(err.file(), dir.0.join("deep9.ini"));

    let ok_root = dir.write("ok.ini", "[pgbouncer]\n%include deep3.ini\n");
    assert_eq!(
        config::load(&ok_root).unwrap().config.pgbouncer.listen_port,
        7001
    );
}

#[test]
fn fallback_entry_and_quoted_libpq_values() {
    let text = "[pgbouncer]\nauth_file=u\n[databases]\n\
                * = host=fallback port=6000\n\
                quoted = password='a b\\\\c \\'d\\' ''e''' dbname='my db'   user=plain\\slash\n\
                socket =\n";
    let c = config::parse_ini_str(text, Path::new("inline.ini"))
        .unwrap()
        .config;
    assert_eq!(c.databases[0].name, "*");
    assert_eq!(c.databases[0].port, Some(6000));
    let q = c.database("quoted").unwrap();
    assert_eq!(q.password.as_deref(), Some("a b\\c 'd' 'e'"));
    assert_eq!(q.dbname.as_deref(), Some("my db"));
    assert_eq!(q.user.as_deref(), Some("plain\\slash"));
    let socket = c.database("socket").unwrap();
    assert_eq!(socket.host, None);
    assert_eq!(socket.port_or_default(), 5432);
    assert_eq!(
        c.database("anything").unwrap().host.as_deref(),
        Some("fallback")
    );
}

#[test]
fn toml_errors_and_warnings_name_the_key_path() {
    let dir = TempDir::new();
    let cases = [
        ("[pgbouncer]\nlisten_port = \"abc\"\n", "wharf.toml:2: pgbouncer.listen_port: invalid value \"abc\": expected a port number (1-65535)"),
        ("[pgbouncer]\n\nlisten_port = 1.5\n", "wharf.toml:3: pgbouncer.listen_port: invalid value 1.5: expected a port number (1-65535)"),
        ("[pgbouncer]\nserver_lifetime = true\n", "wharf.toml:2: pgbouncer.server_lifetime: invalid value true: expected a time in seconds (e.g. 15 or 0.5) or with a unit (e.g. 500ms, 15s, 5min)"),
        ("[pgbouncer]\nadmin_users = [1, 2]\n", "wharf.toml:2: pgbouncer.admin_users: invalid value (array of non-strings): expected a comma-separated list"),
        ("[databases.app]\nport = 0\n", "wharf.toml:2: databases.app.port: invalid value 0 for database \"app\": expected a port number (1-65535)"),
        ("[databases]\napp = \"host='x\"\n", "wharf.toml:2: databases.app: syntax error in connection string: unterminated quoted value for \"host\""),
        ("[databases]\napp = 5\n", "wharf.toml:2: databases.app: expected a table or a connection string, found integer"),
        ("[users.\"bob smith\"]\npool_size = -2\n", "wharf.toml:2: users.\"bob smith\".pool_size: invalid value -2 for user \"bob smith\": expected an integer from 0 to 18446744073709551615"),
        ("pgbouncer = 3\n", "wharf.toml:1: pgbouncer: expected a table, found integer"),
        ("[peers.0]\nhost = \"x\"\n", "wharf.toml:1: peers.0: \"0\" is not a peer id: expected an integer from 1 to 16383"),
        ("[pgbouncer]\nauth_type = \"ldap\"\n", "wharf.toml:2: pgbouncer.auth_type: \"ldap\" is not supported by wharf yet (supported: trust, any, plain, md5, scram-sha-256, hba, cert)"),
    ];
    for (text, expected) in cases {
        let path = dir.write("wharf.toml", text);
        let err = config::load(&path).expect_err(text);
        let shown = err
            .to_string()
            .replace(&format!("{}/", dir.0.display()), "");
        assert_eq!(shown, expected, "for {text:?}");
    }

    let path = dir.write("syntax.toml", "[pgbouncer]\nlisten_port = \n");
    let err = config::load(&path).unwrap_err();
    assert!(
        matches!(err, ConfigError::Syntax { line: Some(2), .. }),
        "{err:?}"
    );

    let path = dir.write(
        "warn.toml",
        "[pgbouncer]\nauth_file = \"u\"\nlisten_prot = 1\n[databases.app]\nhots = \"x\"\n[peers]\n2 = \"host=x prot=1\"\n[extra]\n",
    );
    let loaded = config::load(&path).unwrap();
    let shown: Vec<String> = loaded
        .warnings
        .iter()
        .map(|w| w.to_string().replace(&format!("{}/", dir.0.display()), ""))
        .collect();
    assert_eq!(
        shown,
        vec![
            "warn.toml:3: pgbouncer.listen_prot: unknown setting, ignored (did you mean \"listen_port\"?)",
            "warn.toml:5: databases.app.hots: unknown connection parameter for database \"app\" (did you mean \"host\"?), ignored",
            "warn.toml:7: peers.2.prot: unknown peer parameter for peer 2 (did you mean \"port\"?), ignored",
            "warn.toml:8: extra: unknown key, ignored",
            "warn.toml: peer_id: 0, so peering is off and the [peers] section is not used",
        ]
    );
}

#[test]
fn describe_matches_show_config() {
    let dir = TempDir::new();
    let path = dir.write(
        "pgbouncer.ini",
        "[pgbouncer]\nauth_file = /etc/u.txt\nserver_lifetime = 1800\nquery_timeout = 0.25\n\
         server_idle_timeout = 2000000\nadmin_users = a , b\nunix_socket_mode = 0700\n",
    );
    let c = config::load(&path).unwrap().config;
    let rows = c.describe();
    let row = |key: &str| rows.iter().find(|r| r.key == key).cloned().unwrap();
    assert_eq!(
        row("server_lifetime"),
        SettingRow {
            key: "server_lifetime",
            value: "1800".into(),
            default: "3600",
            changeable: true
        }
    );
    assert_eq!(row("query_timeout").value, "0.25");
    assert_eq!(row("server_idle_timeout").value, "2e+06");
    assert_eq!(row("admin_users").value, "a,b");
    assert_eq!(row("unix_socket_mode").value, "448");
    assert_eq!(
        row("listen_port"),
        SettingRow {
            key: "listen_port",
            value: "6432".into(),
            default: "6432",
            changeable: false
        }
    );
    assert_eq!(row("auth_file").value, "/etc/u.txt");
    assert_eq!(row("auth_file").default, "");
    assert_eq!(row("conffile").value, path.display().to_string());
    assert_eq!(row("server_check_query").default, "<empty>");
    assert_eq!(row("pool_mode").value, "session");
    assert_eq!(row("log_connections").value, "1");
    // Alphabetical, like PgBouncer.
    assert_eq!(rows.first().map(|r| r.key), Some("admin_users"));
    assert!(rows.windows(2).all(|w| w[0].key < w[1].key));

    let mut settings = c.pgbouncer.clone();
    settings.set("query_timeout", "5").unwrap();
    assert_eq!(settings.query_timeout, Some(Duration::from_secs(5)));
    assert!(settings.set("listen_port", "1").is_err());
}

#[test]
fn auth_file_with_every_secret_kind() {
    let dir = TempDir::new();
    let path = dir.write(
        "userlist.txt",
        concat!(
            "; comment\n",
            "# another comment\n",
            "\n",
            "\"alice\" \"plain password\"\n",
            "\"admin\" \"md545f2603610af569b6155c45067268c6b\" trailing junk is ignored\n",
            "\"scram\" \"SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\"\n",
            "  \"quo\"\"ted\"   \"pa\"\"ss\"\n",
            "\"nopass\" \"\"\n",
        ),
    );
    let users = config::load_auth_file(&path).unwrap();
    assert_eq!(users.len(), 5);
    assert_eq!(users["alice"], Secret::Plain("plain password".into()));
    let mut md5 = [0u8; 16];
    for (i, byte) in md5.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(&"45f2603610af569b6155c45067268c6b"[2 * i..2 * i + 2], 16).unwrap();
    }
    assert_eq!(users["admin"], Secret::Md5(md5));
    let mut stored_key = [0u8; 32];
    let mut server_key = [0u8; 32];
    for i in 0..32 {
        stored_key[i] = i as u8;
        server_key[i] = 32 + i as u8;
    }
    assert_eq!(
        users["scram"],
        Secret::Scram {
            iterations: 4096,
            salt: b"saltsaltsalt".to_vec(),
            stored_key,
            server_key
        }
    );
    assert_eq!(users["quo\"ted"], Secret::Plain("pa\"ss".into()));
    assert_eq!(users["nopass"], Secret::Plain(String::new()));
}

#[test]
fn malformed_auth_file_lines_name_file_and_line() {
    let dir = TempDir::new();
    let cases = [
        ("alice password", "expected \"username\" \"secret\""),
        ("\"alice password", "unterminated quoted user name"),
        ("\"alice\"", "expected a quoted secret after user \"alice\""),
        ("\"alice\" secret", "expected a quoted secret after user \"alice\""),
        ("\"alice\" \"secret", "unterminated quoted secret for user \"alice\""),
        ("\"\" \"secret\"", "empty user name"),
        ("\"alice\" \"md5zzf2603610af569b6155c45067268c6b\"", "user \"alice\": an md5 secret needs 32 hex digits after \"md5\""),
        ("\"alice\" \"SCRAM-SHA-256$4096:c2FsdA==\"", "user \"alice\": malformed SCRAM secret: expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"),
        ("\"alice\" \"SCRAM-SHA-256$0:c2FsdA==$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"", "user \"alice\": malformed SCRAM secret: iterations \"0\" is not a positive integer"),
        ("\"alice\" \"SCRAM-SHA-256$4096:c2FsdA==$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"", "user \"alice\": malformed SCRAM secret: StoredKey is 31 bytes, expected 32"),
        ("\"alice\" \"SCRAM-SHA-256$4096:!!!$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"", "user \"alice\": malformed SCRAM secret: salt is not base64"),
    ];
    for (line, expected) in cases {
        let path = dir.write(
            "userlist.txt",
            &format!("\"ok\" \"fine\"\n; comment\n{line}\n"),
        );
        let err = config::load_auth_file(&path).expect_err(line);
        assert_eq!(err.line(), Some(3), "{line}");
        let text = err.to_string();
        let prefix = format!("{}:3: {expected}", path.display());
        assert!(
            text.starts_with(&prefix),
            "{text:?} should start with {prefix:?}"
        );
    }
    let err = config::load_auth_file(&dir.0.join("missing.txt")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { line: None, .. }));
}

#[test]
fn arbitrary_input_never_panics() {
    // A cheap fuzz: every prefix of some tricky documents must load or fail
    // cleanly.
    let docs = [
        MAIN_INI,
        MAIN_TOML,
        "[pgbouncer]\n'x\n\"y\"\"\n[\n%include\n\u{feff}é=ü\n",
    ];
    for doc in docs {
        for (end, _) in doc.char_indices() {
            let part = &doc[..end];
            let _ = config::parse_ini_str(part, Path::new("/nonexistent/fuzz.ini"));
            let _ = config::parse_toml_str(part, Path::new("fuzz.toml"));
            let _ = config::parse_auth_file(part, Path::new("users.txt"));
        }
    }
    let _ = Config::default().describe();
}

#[test]
fn tls_settings_rustls_cannot_honour_are_refused_naming_the_key() {
    use wharf_pooler::tls::TlsContexts;
    let refused = |lines: &str| {
        let mut settings = Config::default().pgbouncer;
        for line in lines.lines() {
            let (key, value) = line.split_once('=').unwrap();
            settings.set(key.trim(), value.trim()).unwrap();
        }
        TlsContexts::from_settings(&settings)
            .err()
            .map(|err| (err.key(), err.to_string()))
    };
    for mode in ["allow", "prefer", "require", "verify-ca", "verify-full"] {
        let (key, why) = refused(&format!("client_tls_sslmode = {mode}")).expect(mode);
        assert_eq!(key, "client_tls_sslmode");
        assert!(
            why.contains("needs client_tls_key_file and client_tls_cert_file"),
            "{why}"
        );
    }
    let (key, why) =
        refused("server_tls_sslmode = verify-full\nserver_tls_ca_file = /nonexistent/ca.pem")
            .unwrap();
    assert_eq!(key, "server_tls_ca_file");
    assert!(why.contains("cannot read /nonexistent/ca.pem"), "{why}");
    let (key, why) = refused("server_tls_protocols = tlsv1.0,tlsv1.1").unwrap();
    assert_eq!(key, "server_tls_protocols");
    assert!(why.contains("tlsv1.2 and tlsv1.3"), "{why}");
    let (key, _) = refused("server_tls_ciphers = RC4-SHA:DES-CBC3-SHA").unwrap();
    assert_eq!(key, "server_tls_ciphers");
    let (key, _) = refused("server_tls_key_file = /some/key.pem").unwrap();
    assert_eq!(key, "server_tls_key_file", "a key without its certificate");
    // What needs no file works: prefer and require to servers.
    assert!(refused("server_tls_sslmode = require").is_none());
    assert!(refused("server_tls_sslmode = disable").is_none());
}

#[tokio::test]
async fn the_unix_socket_gets_unix_socket_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    for mode in [0o700, 0o777] {
        let ini = dir.write(
            "pgbouncer.ini",
            &format!(
                "[databases]\n[pgbouncer]\nauth_type = trust\nauth_file = /dev/null\n\
                 unix_socket_dir = {}\nunix_socket_mode = 0{mode:o}\nlisten_port = 6999\n",
                dir.0.display()
            ),
        );
        let pooler = wharf_pooler::Pooler::bind(config::load(&ini).unwrap().config)
            .await
            .unwrap();
        let socket = dir.0.join(".s.PGSQL.6999");
        let got = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "{got:o}");
        drop(pooler);
        let _ = std::fs::remove_file(socket);
    }
}

/// docs/migrating-from-pgbouncer.md lists every key with what wharf does
/// with it: the same as `Settings::support`, note for note.
#[test]
fn migration_guide_matches_the_settings_table() {
    use wharf_pooler::config::{Settings, Support};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/migrating-from-pgbouncer.md");
    let text = std::fs::read_to_string(&path).expect("the migration guide");
    let mut listed = Vec::new();
    for line in text.lines() {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = row.trim_end_matches(" |").split(" | ").collect();
        let key = cells[0].trim_end_matches('`');
        if cells.len() == 2 {
            // The table of PgBouncer keys wharf does not know.
            assert!(!Settings::is_known(key), "{key} is known to wharf now");
            continue;
        }
        let (status, note) = (cells[1], cells[2]);
        let expected = match Settings::support(key) {
            None => panic!("{key}: listed, but not a wharf key"),
            Some(Support::Supported) => ("supported", None),
            Some(Support::WharfOnly) => ("wharf only", None),
            Some(Support::StoredOnly(why)) => ("stored only", Some(why.to_owned())),
            Some(Support::Refused(why)) => {
                ("refused", Some(format!("any value but the default: {why}")))
            }
        };
        assert_eq!(status, expected.0, "{key}");
        if let Some(why) = expected.1 {
            assert_eq!(note, why, "{key}");
        }
        listed.push(key.to_owned());
    }
    let keys: Vec<String> = Settings::keys().map(str::to_owned).collect();
    assert_eq!(listed, keys, "every key once, in SHOW CONFIG order");
}

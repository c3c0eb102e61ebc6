//! `wharf check`: a good configuration prints its effective settings; a bad
//! one fails with the file, line and key.

use std::path::PathBuf;
use std::process::Command;

fn write_config(name: &str, text: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("wharf-cli-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("pgbouncer.ini");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

fn check(path: &PathBuf) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("check")
        .arg(path)
        .output()
        .expect("run wharf check")
}

#[test]
fn a_good_config_prints_the_effective_settings() {
    let (dir, path) = write_config(
        "good",
        "[databases]\napp = host=127.0.0.1 port=5432\nold = host=127.0.0.1 pool_mode=session\n[pgbouncer]\nlisten_port = 6543\npool_mode = transaction\nauth_type = trust\nauth_file = /dev/null\n",
    );
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");
    let app = stdout
        .lines()
        .find(|l| l.starts_with("  app "))
        .expect("a line for app");
    assert!(
        app.contains("pool_mode = transaction")
            && app.contains("prepared statements: tracked across servers, at most 200 per server"),
        "{app}"
    );
    let old = stdout
        .lines()
        .find(|l| l.starts_with("  old "))
        .expect("a line for old");
    assert!(
        old.contains("pool_mode = session") && old.contains("session mode"),
        "{old}"
    );
    let listen = stdout
        .lines()
        .find(|l| l.starts_with("listen_port "))
        .expect("a listen_port row");
    assert!(
        listen.contains("6543") && listen.contains("6432"),
        "{listen}"
    );
    let mode = stdout
        .lines()
        .find(|l| l.starts_with("pool_mode "))
        .expect("a pool_mode row");
    assert!(mode.contains("transaction"), "{mode}");
    assert!(
        stdout.contains("client_tls_sslmode = disable: plain text only")
            && stdout.contains("server TLS: prefer (TLS if the server offers it"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_tls_mode_without_its_files_fails_the_check() {
    let (dir, path) = write_config(
        "tls",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\nclient_tls_sslmode = require\n",
    );
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("client_tls_sslmode = require needs client_tls_key_file"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_value_names_the_file_line_and_key() {
    let (dir, path) = write_config(
        "bad",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nlisten_port = abc\n",
    );
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:4: listen_port:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("\"abc\""), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hba_rules_are_checked_and_shown_per_database() {
    let (dir, path) = write_config(
        "hba",
        "[databases]\napp = host=127.0.0.1\nother = host=127.0.0.1\n[pgbouncer]\nauth_type = hba\nauth_file = /dev/null\nauth_hba_file = hba.conf\n",
    );
    let hba = dir.join("hba.conf");
    std::fs::write(
        &hba,
        "local all all peer\nhost app all 10.0.0.0/8 scram-sha-256\nhost sameuser all all md5\n",
    )
    .unwrap();
    let config_text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config_text.replace("hba.conf", &hba.display().to_string()),
    )
    .unwrap();
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |db: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("  {db} ")) && l.contains("line 1"))
            .unwrap_or_else(|| panic!("an auth line for {db}: {stdout}"))
            .to_owned()
    };
    assert!(
        line("app").contains(
            "line 1: local all all peer; line 2: host app all 10.0.0.0/8 scram-sha-256; line 3: host sameuser all all md5"
        ),
        "{stdout}"
    );
    assert!(
        line("other").ends_with("line 1: local all all peer; line 3: host sameuser all all md5"),
        "{stdout}"
    );

    std::fs::write(&hba, "local all all peer\nhost all all 10.0.0.0/99 md5\n").unwrap();
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{}:2: invalid CIDR mask in \"10.0.0.0/99\"",
            hba.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn read_routing_is_shown_and_refused_where_it_cannot_work() {
    let (dir, path) = write_config(
        "routing",
        "[databases]\napp = host=10.0.0.1,10.0.0.2 read_routing=on\n[pgbouncer]\npool_mode = transaction\nauth_type = trust\nauth_file = /dev/null\n",
    );
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("read routing: reads to a standby"),
        "{stdout}"
    );
    let (dir2, path) = write_config(
        "routing-one-host",
        "[databases]\napp = host=10.0.0.1 read_routing=on\n[pgbouncer]\nauth_type = trust\nauth_file = /dev/null\n",
    );
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("read_routing") && stderr.contains("needs several hosts"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

fn check_with(path: &PathBuf, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("check")
        .args(args)
        .arg(path)
        .output()
        .expect("run wharf check")
}

/// A configuration in its own directory, `{dir}` in `text` replaced by
/// that directory.
fn write_config_in_dir(name: &str, text: &str) -> (PathBuf, PathBuf) {
    let (dir, path) = write_config(name, "");
    std::fs::write(&path, text.replace("{dir}", &dir.display().to_string())).unwrap();
    (dir, path)
}

#[test]
fn strict_turns_warnings_into_a_failure() {
    let (dir, path) = write_config(
        "strict",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\nauth_file = /dev/null\nserver_round_robin = 1\n",
    );
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: {}:6: server_round_robin: accepted but not acted on",
            path.display()
        )),
        "{stderr}"
    );
    let out = check_with(&path, &["--strict"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("--strict"), "{stderr}");

    // Without a warning, --strict passes.
    std::fs::write(
        &path,
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\nauth_file = /dev/null\nserver_round_robin = 0\n",
    )
    .unwrap();
    let out = check_with(&path, &["--strict"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn exit_codes_are_documented_in_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["check", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for line in ["Exit status:", "  0  ", "  1  ", "  2  ", "  3  --strict"] {
        assert!(help.contains(line), "{line:?} in {help}");
    }
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let (dir, path) = write_config(
        "pipe",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\nauth_file = /dev/null\n",
    );
    // The reading end is gone before wharf writes its first byte, so every
    // write fails with EPIPE, whatever the timing.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(ours);
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("check")
        .arg(&path)
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_or_broken_auth_file_fails_the_check() {
    let (dir, path) = write_config_in_dir(
        "authfile",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = md5\nauth_file = {dir}/userlist.txt\n",
    );
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:5: auth_file: could not read \"{}/userlist.txt\"",
            path.display(),
            dir.display()
        )),
        "{stderr}"
    );
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, "\"alice\" \"secret\"\nbob secret\n").unwrap();
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2: expected \"username\" \"secret\"",
            userlist.display()
        )),
        "{stderr}"
    );
    std::fs::write(&userlist, "\"alice\" \"secret\"\n\"bob\" \"secret\"\n").unwrap();
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("auth_type = md5, 2 user(s) in"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_hba_file_names_its_setting() {
    let (dir, path) = write_config_in_dir(
        "hba-missing",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = hba\nauth_file = /dev/null\nauth_hba_file = {dir}/hba.conf\n",
    );
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:6: auth_hba_file: could not read",
            path.display()
        )),
        "{stderr}"
    );
    // Set without auth_type = hba: never read, so a warning.
    std::fs::write(
        &path,
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\nauth_file = /dev/null\nauth_hba_file = /nowhere/hba.conf\n",
    )
    .unwrap();
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:6: auth_hba_file: not read: auth_type = trust",
            path.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_tls_file_names_its_line() {
    let (dir, path) = write_config_in_dir(
        "tls-missing",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\nauth_file = /dev/null\nclient_tls_sslmode = require\nclient_tls_key_file = {dir}/key.pem\nclient_tls_cert_file = {dir}/cert.pem\n",
    );
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let key_line = format!(
        "{}:7: client_tls_key_file: cannot read {}/key.pem",
        path.display(),
        dir.display()
    );
    let cert_line = format!(
        "{}:8: client_tls_cert_file: cannot read {}/cert.pem",
        path.display(),
        dir.display()
    );
    assert!(
        stderr.contains(&key_line) || stderr.contains(&cert_line),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn log_and_pid_files_in_missing_directories_fail_the_check() {
    for (key, line) in [("logfile", 6), ("pidfile", 6)] {
        let (dir, path) = write_config_in_dir(
            key,
            &format!("[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\nauth_file = /dev/null\n{key} = {{dir}}/missing/wharf.{key}\n"),
        );
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{}:{line}: {key}: the directory of \"{}/missing/wharf.{key}\" does not exist",
                path.display(),
                dir.display()
            )),
            "{stderr}"
        );
        std::fs::create_dir(dir.join("missing")).unwrap();
        let out = check(&path);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dir.join("missing").join(format!("wharf.{key}")).exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_setting_wharf_cannot_honour_safely_is_refused() {
    let (dir, path) = write_config(
        "refused",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\nauth_file = /dev/null\ndisable_pqexec = 1\n",
    );
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:6: disable_pqexec: not supported by wharf",
            path.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_plan_shows_servers_sizes_modes_and_limits_per_database_and_user() {
    let (dir, path) = write_config(
        "plan",
        "[databases]\napp = host=10.0.0.1,10.0.0.2 port=5433 dbname=appdb pool_size=40 max_db_connections=60\n\
         svc = host=/var/run/postgresql user=svc\n\
         [users]\nalice = pool_mode=session pool_size=5 max_user_connections=7\nsvc = pool_size=3\n\
         [pgbouncer]\nauth_type = trust\nauth_file = /dev/null\npool_mode = transaction\nquery_wait_timeout = 0\n",
    );
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(
        has("server: 10.0.0.1:5433, 10.0.0.2:5433, dbname appdb, user the client's"),
        "{stdout}"
    );
    assert!(
        has("pool_mode = transaction, pool_size = 40 (min 0, reserve 0), max_db_connections = 60, max_user_connections = unlimited"),
        "{stdout}"
    );
    assert!(has("query_wait_timeout = off"), "{stdout}");
    assert!(
        has("server: /var/run/postgresql/.s.PGSQL.5432, dbname svc, user svc"),
        "{stdout}"
    );
    assert!(has("pool_mode = transaction, pool_size = 3 "), "{stdout}");
    let alice = lines
        .iter()
        .find(|l| l.trim_start().starts_with("alice@app "))
        .unwrap_or_else(|| panic!("a line for alice@app: {stdout}"));
    assert!(
        alice.contains("pool_mode = session, pool_size = 5 (min 0, reserve 0), max_db_connections = 60, max_user_connections = 7"),
        "{alice}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_unknown_syslog_facility_fails_the_check() {
    let (dir, path) = write_config(
        "syslog",
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\nauth_file = /dev/null\nsyslog = 1\nsyslog_facility = kern\n",
    );
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:7: syslog_facility: unknown facility \"kern\"",
            path.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

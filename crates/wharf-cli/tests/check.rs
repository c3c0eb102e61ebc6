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

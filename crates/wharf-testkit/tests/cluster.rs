use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use wharf_testkit::{Error, PgCluster};

/// Runs psql over TCP with a connection URL or string, as a client under
/// test would connect.
fn psql_tcp(pg: &PgCluster, conninfo: &str, sql: &str) -> Output {
    Command::new(pg.bin("psql"))
        .arg(conninfo)
        .args(["-X", "-A", "-t", "-c", sql])
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .output()
        .expect("run psql")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn process_exists(pid: u32) -> bool {
    // Zombies have no working directory; they hold no resources either.
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok()
}

#[test]
fn starts_and_answers_queries() {
    let pg = PgCluster::start().expect("start cluster");
    assert_eq!(pg.host(), "127.0.0.1");
    assert_ne!(pg.port(), 0);
    assert!(pg.data_dir().join("PG_VERSION").is_file());
    assert!(pg
        .socket_dir()
        .join(format!(".s.PGSQL.{}", pg.port()))
        .exists());
    assert!(pg.log_path().is_file());
    assert!(pg.bin("pgbench").is_file());

    assert_eq!(pg.psql("postgres", "select 1 + 1").expect("psql"), "2");
    assert_eq!(
        pg.psql("postgres", "select 1, 'a' union all select 2, 'b'")
            .expect("psql"),
        "1|a\n2|b"
    );
    assert_eq!(
        pg.psql("postgres", "show fsync; ").expect("psql"),
        "off",
        "testkit settings are applied"
    );

    assert_eq!(
        pg.url("app"),
        format!("postgres://postgres:postgres@127.0.0.1:{}/app", pg.port())
    );
    assert_eq!(
        pg.connection_string("app"),
        format!(
            "host=127.0.0.1 port={} user=postgres password=postgres dbname=app",
            pg.port()
        )
    );

    pg.create_database("app").expect("create database");
    pg.create_user("alice", "s3cret'pw").expect("create user");
    assert_eq!(
        stdout(&psql_tcp(&pg, &pg.url("app"), "select current_database()")),
        "app"
    );
    assert_eq!(
        stdout(&psql_tcp(
            &pg,
            &pg.connection_string("app"),
            "select current_user"
        )),
        "postgres"
    );
    let alice = format!("postgres://alice:s3cret%27pw@127.0.0.1:{}/app", pg.port());
    assert_eq!(
        stdout(&psql_tcp(&pg, &alice, "select current_user")),
        "alice"
    );

    let wrong = format!("postgres://alice:wrong@127.0.0.1:{}/app", pg.port());
    let refused = psql_tcp(&pg, &wrong, "select 1");
    assert!(!refused.status.success(), "TCP logins need the password");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("password authentication failed"));
}

#[test]
fn builder_settings_are_applied() {
    let pg = PgCluster::builder()
        .max_connections(7)
        .setting("work_mem", "8MB")
        .setting("application_name", "testkit")
        .start()
        .expect("start cluster");
    assert_eq!(
        pg.psql("postgres", "show max_connections").expect("psql"),
        "7"
    );
    assert_eq!(pg.psql("postgres", "show work_mem").expect("psql"), "8MB");
}

#[test]
fn psql_reports_sql_errors() {
    let pg = PgCluster::start().expect("start cluster");
    let error = pg
        .psql("postgres", "select * from no_such_table")
        .expect_err("query must fail");
    match error {
        Error::Command { stderr, .. } => {
            assert!(stderr.contains("no_such_table"), "stderr: {stderr}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(pg.create_database("postgres").is_err());
}

#[test]
fn failed_start_reports_the_server_log() {
    let error = PgCluster::builder()
        .setting("no_such_setting", "1")
        .start()
        .expect_err("postgres must reject the setting");
    let message = error.to_string();
    assert!(matches!(error, Error::Start { .. }), "{message}");
    assert!(message.contains("no_such_setting"), "{message}");
}

#[test]
fn stop_and_start_again_keep_port_and_data() {
    let mut pg = PgCluster::start().expect("start cluster");
    let port = pg.port();
    pg.psql(
        "postgres",
        "create table t (n int); insert into t values (1)",
    )
    .expect("psql");

    for round in 2..=4 {
        pg.stop().expect("stop");
        assert!(!pg.is_running());
        assert!(pg.psql("postgres", "select 1").is_err());
        pg.stop().expect("stopping a stopped cluster is a no-op");

        pg.start_again().expect("start again");
        assert!(pg.is_running());
        assert_eq!(pg.port(), port);
        pg.psql("postgres", &format!("insert into t values ({round})"))
            .expect("insert");
        assert_eq!(
            pg.psql("postgres", "select count(*) from t").expect("psql"),
            round.to_string()
        );
    }

    assert!(matches!(pg.start_again(), Err(Error::AlreadyRunning)));
    pg.restart().expect("restart");
    assert_eq!(
        pg.psql("postgres", "select count(*) from t").expect("psql"),
        "4"
    );
}

#[test]
fn kill_and_start_again_recover() {
    let mut pg = PgCluster::start().expect("start cluster");
    let port = pg.port();
    pg.psql("postgres", "create table t (n int)").expect("psql");

    for round in 1..=3 {
        pg.psql("postgres", &format!("insert into t values ({round})"))
            .expect("insert");

        // A backend busy in a query does not notice its postmaster dying.
        let mut sleeper = Command::new(pg.bin("psql"))
            .arg("-h")
            .arg(pg.socket_dir())
            .args(["-p", &port.to_string(), "-U", "postgres", "-X", "-c"])
            .arg("select pg_sleep(600)")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn psql");
        let backend = wait_for_backend(&pg);

        pg.kill().expect("kill");
        assert!(!pg.is_running());
        assert!(
            !process_exists(backend),
            "backend {backend} survived kill()"
        );
        assert!(!sleeper.wait().expect("wait psql").success());

        pg.start_again().expect("start again after kill");
        assert_eq!(pg.port(), port);
        assert_eq!(
            pg.psql("postgres", "select count(*) from t").expect("psql"),
            round.to_string(),
            "committed rows survive a crash"
        );
    }
}

/// The pid of the backend running `pg_sleep`, once it runs.
fn wait_for_backend(pg: &PgCluster) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pid = pg
            .psql(
                "postgres",
                "select pid from pg_stat_activity \
                 where query like 'select pg_sleep%' and pid <> pg_backend_pid()",
            )
            .expect("psql");
        if let Ok(pid) = pid.parse() {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "sleeping backend never showed up"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_clusters_run_side_by_side() {
    let a = PgCluster::start().expect("start cluster a");
    let b = PgCluster::start().expect("start cluster b");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());

    a.psql("postgres", "create table only_in_a ()")
        .expect("psql");
    assert_eq!(
        a.psql(
            "postgres",
            "select count(*) from pg_tables where tablename = 'only_in_a'"
        )
        .expect("psql"),
        "1"
    );
    assert_eq!(
        b.psql(
            "postgres",
            "select count(*) from pg_tables where tablename = 'only_in_a'"
        )
        .expect("psql"),
        "0"
    );
    assert_eq!(
        stdout(&psql_tcp(&b, &b.url("postgres"), "select 1")),
        "1",
        "each cluster answers on its own port"
    );
}

#[test]
fn drop_stops_the_server_and_removes_the_directory() {
    let mut pg = PgCluster::start().expect("start cluster");
    let root = pg.root_dir().to_owned();
    let postmaster: u32 = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .expect("read postmaster.pid")
        .lines()
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("pid in postmaster.pid");
    assert!(pg.data_dir().starts_with(&root));
    assert!(pg.is_running());
    assert!(process_exists(postmaster));

    drop(pg);
    assert!(
        !Path::new(&root).exists(),
        "{} is left over",
        root.display()
    );
    assert!(!process_exists(postmaster), "postmaster survived drop");
}

#[test]
fn drop_after_kill_cleans_up() {
    let mut pg = PgCluster::start().expect("start cluster");
    let root = pg.root_dir().to_owned();
    pg.kill().expect("kill");
    drop(pg);
    assert!(!root.exists(), "{} is left over", root.display());
}

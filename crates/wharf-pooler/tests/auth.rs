//! Authentication end to end: clients logging in to the pooler with each
//! `auth_type` against plain, md5 and SCRAM secrets in the auth file (with
//! tokio-postgres, psql, psycopg 3 and asyncpg), and the pooler logging in
//! to PostgreSQL.

mod common;

use std::time::Duration;

use common::wire::{
    self, auth_failed, current_user, psql, psql_err, psql_ok, refused, trust_failed,
};
use common::{start_with, Setup, TestPooler};
use wharf_testkit::PgCluster;

/// Turns a login that hangs into a failure.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Roles on the server, and how the auth file holds each one's password.
const ALICE: (&str, &str) = ("alice", "alice-pw"); // plain
const BOB: (&str, &str) = ("bob", "bob-pw"); // md5
const CAROL: (&str, &str) = ("carol", "carol-pw"); // SCRAM

fn userlist() -> String {
    format!(
        "\"postgres\" \"postgres\"\n\
         \"{alice}\" \"{alice_pw}\"\n\
         \"{bob}\" \"{bob_md5}\"\n\
         \"{carol}\" \"{carol_scram}\"\n",
        alice = ALICE.0,
        alice_pw = ALICE.1,
        bob = BOB.0,
        bob_md5 = postgres_protocol::password::md5(BOB.1.as_bytes(), BOB.0),
        carol = CAROL.0,
        carol_scram = postgres_protocol::password::scram_sha_256(CAROL.1.as_bytes()),
    )
}

async fn cluster() -> PgCluster {
    tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("cluster task")
        .expect("throwaway PostgreSQL")
}

/// A pooler with `auth_type`, the auth file above, alice, bob and carol
/// created on the server, and a database `sock` that reaches the server
/// over its Unix socket (trusted there), so that client authentication is
/// tested apart from the pooler's own login.
async fn auth_pooler(auth_type: &str) -> TestPooler {
    auth_pooler_with(auth_type, "").await
}

/// As [`auth_pooler`], with more `[databases]` lines; `{sock}` in them
/// stands for the server's Unix socket directory and `{port}` for its port.
async fn auth_pooler_with(auth_type: &str, extra_databases: &str) -> TestPooler {
    let cluster = cluster().await;
    for (user, password) in [ALICE, BOB, CAROL] {
        cluster.create_user(user, password).expect("role created");
    }
    let sock = cluster.socket_dir().display().to_string();
    let port = cluster.port().to_string();
    let databases =
        format!("sock = host={{sock}} port={{port}} dbname=postgres\n{extra_databases}")
            .replace("{sock}", &sock)
            .replace("{port}", &port);
    let pgbouncer = format!("auth_type = {auth_type}\n");
    start_with(
        cluster,
        Setup {
            pgbouncer: &pgbouncer,
            databases: &databases,
            userlist: &userlist(),
            ..Setup::default()
        },
    )
    .await
}

/// The server's client backends, once the setup's own psql sessions have
/// gone (their backends exit a moment after psql does); the pooler's
/// servers would stay.
fn server_connections(pooler: &TestPooler) -> usize {
    tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let count = pooler.server_connections();
            if count == 0 || std::time::Instant::now() > deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

fn psql_as(
    pooler: &TestPooler,
    user: &str,
    password: &str,
    db: &str,
    sql: &str,
) -> std::process::Output {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={user} dbname={db}",
        pooler.port
    );
    let bin = pooler.cluster.bin("psql");
    tokio::task::block_in_place(|| psql(&bin, &conninfo, password, &[], sql))
}

/// Wrong passwords and unknown users get the same error, and neither makes
/// the pooler open a server connection. Run on a fresh pooler.
async fn refuses_wrong_password_and_unknown_user(pooler: &TestPooler) {
    for (user, password) in [
        (ALICE.0, "wrong"),
        (BOB.0, "wrong"),
        (CAROL.0, "wrong"),
        ("mallory", "anything"),
    ] {
        assert_eq!(
            refused(pooler.login(user, password, "sock").await),
            auth_failed(user),
            "{user} with a wrong password"
        );
    }
    let err = psql_err(&psql_as(pooler, ALICE.0, "wrong", "sock", "SELECT 1"));
    assert!(
        err.contains("password authentication failed for user \"alice\""),
        "{err}"
    );
    assert_eq!(
        server_connections(pooler),
        0,
        "failed logins opened servers"
    );
}

/// Each of `roles` logs in to `sock` with its right password, with
/// tokio-postgres and with psql, and is who it says.
async fn logs_in_with_tokio_postgres_and_psql(pooler: &TestPooler, roles: &[(&str, &str)]) {
    for &(user, password) in roles {
        let client = pooler
            .login(user, password, "sock")
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(current_user(&client).await, user);
        let out = psql_as(pooler, user, password, "sock", "SELECT current_user");
        assert_eq!(psql_ok(&out), user);
    }
}

/// One login for [`logs_in_with_every_client`]: user, password, database,
/// and who the client becomes (`None`: refused as a wrong password).
type Login<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);

/// Each login through psql, psycopg 3 and asyncpg (`tests/drivers/
/// auth_logins.py`; `tests/drivers/install.sh` installs the drivers): the
/// client becomes the expected user, or is refused with PostgreSQL's words
/// for a wrong password.
fn logs_in_with_every_client(pooler: &TestPooler, logins: &[Login]) {
    for &(user, password, db, expected) in logins {
        let out = psql_as(pooler, user, password, db, "SELECT current_user");
        match expected {
            Some(who) => assert_eq!(psql_ok(&out), who, "psql {user}/{password}"),
            None => {
                let err = psql_err(&out);
                let want = format!("password authentication failed for user \"{user}\"");
                assert!(err.contains(&want), "psql {user}/{password}: {err}");
            }
        }
    }
    let args: Vec<String> = logins
        .iter()
        .map(|(user, password, db, expected)| {
            format!("{user}:{password}:{db}:{}", expected.unwrap_or("-"))
        })
        .collect();
    let drivers = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers");
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new("python3")
            .arg("auth_logins.py")
            .args(&args)
            .current_dir(drivers)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", pooler.port.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("python3 runs; tests/drivers/install.sh installs the drivers")
    });
    assert!(
        output.status.success(),
        "psycopg/asyncpg logins failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A right and a wrong password for each role.
fn right_and_wrong<'a>(roles: &[(&'a str, &'a str)]) -> Vec<Login<'a>> {
    roles
        .iter()
        .flat_map(|&(user, password)| {
            [
                (user, password, "sock", Some(user)),
                (user, "wrong", "sock", None),
            ]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ini_auth_type_overrides_the_harness_default() {
    // The harness writes `auth_type = md5` first; a later line wins.
    let dir = std::env::temp_dir().join(format!("wharf-auth-ini-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgbouncer.ini");
    std::fs::write(
        &path,
        "[pgbouncer]\nauth_type = md5\nauth_file = /nonexistent\nauth_type = scram-sha-256\n",
    )
    .unwrap();
    let loaded = wharf_pooler::config::load(&path).expect("config loads");
    assert_eq!(
        loaded.config.pgbouncer.auth_type,
        wharf_pooler::config::AuthType::ScramSha256
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // And the running pooler asks for what the last line says.
    let pooler = auth_pooler("scram-sha-256").await;
    assert_eq!(wire::auth_request(pooler.port, ALICE.0, "sock").await, 10);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_lets_listed_users_in_without_checking_the_password() {
    let pooler = auth_pooler("trust").await;
    assert_eq!(wire::auth_request(pooler.port, ALICE.0, "sock").await, 0);
    for (user, _) in [ALICE, BOB, CAROL] {
        let client = pooler
            .login(user, "not-the-password", "sock")
            .await
            .expect("trusted login");
        assert_eq!(current_user(&client).await, user);
    }
    let out = psql_as(&pooler, BOB.0, "", "sock", "SELECT current_user");
    assert_eq!(psql_ok(&out), BOB.0);
    logs_in_with_every_client(
        &pooler,
        &[
            (ALICE.0, ALICE.1, "sock", Some(ALICE.0)),
            (CAROL.0, "wrong", "sock", Some(CAROL.0)),
        ],
    );
    // PgBouncer: "The user name must still exist in auth_file.", and its
    // words when it does not.
    assert_eq!(
        refused(pooler.login("mallory", "x", "sock").await),
        trust_failed()
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_checks_cleartext_passwords_against_every_secret_kind() {
    let pooler = auth_pooler("plain").await;
    assert_eq!(wire::auth_request(pooler.port, ALICE.0, "sock").await, 3);
    assert_eq!(wire::auth_request(pooler.port, "mallory", "sock").await, 3);
    refuses_wrong_password_and_unknown_user(&pooler).await;
    logs_in_with_tokio_postgres_and_psql(&pooler, &[ALICE, BOB, CAROL]).await;
    logs_in_with_every_client(&pooler, &right_and_wrong(&[ALICE, BOB, CAROL]));
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_takes_passwords_as_long_as_postgresql_does() {
    // Issue 14: a 65,530-byte password makes a 65,535-byte message, which
    // was refused as "invalid message length 65535 for message" before the
    // password was even checked. PostgreSQL takes up to 65,535 bytes.
    let long = "p".repeat(65_530);
    let wrong = format!("{}q", &long[1..]);
    let cluster = cluster().await;
    cluster.create_user("tok", "unused").expect("role created");
    let databases = format!(
        "sock = host={} port={} dbname=postgres\n",
        cluster.socket_dir().display(),
        cluster.port()
    );
    let pooler = start_with(
        cluster,
        Setup {
            pgbouncer: "auth_type = plain\n",
            databases: &databases,
            userlist: &format!("\"postgres\" \"postgres\"\n\"tok\" \"{long}\"\n"),
            ..Setup::default()
        },
    )
    .await;
    let client = pooler
        .login("tok", &long, "sock")
        .await
        .expect("a long password");
    assert_eq!(current_user(&client).await, "tok");
    assert_eq!(
        refused(pooler.login("tok", &wrong, "sock").await),
        auth_failed("tok")
    );
    logs_in_with_every_client(
        &pooler,
        &[
            ("tok", &long, "sock", Some("tok")),
            ("tok", &wrong, "sock", None),
        ],
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_checks_md5_responses_and_upgrades_scram_secrets_to_scram() {
    let pooler = auth_pooler("md5").await;
    assert_eq!(wire::auth_request(pooler.port, ALICE.0, "sock").await, 5);
    assert_eq!(wire::auth_request(pooler.port, BOB.0, "sock").await, 5);
    // A SCRAM secret cannot check an md5 response: SCRAM is asked instead,
    // as PostgreSQL and PgBouncer do.
    assert_eq!(wire::auth_request(pooler.port, CAROL.0, "sock").await, 10);
    // An unknown user is asked the same as a known one.
    assert_eq!(wire::auth_request(pooler.port, "mallory", "sock").await, 5);
    refuses_wrong_password_and_unknown_user(&pooler).await;
    logs_in_with_tokio_postgres_and_psql(&pooler, &[ALICE, BOB, CAROL]).await;
    logs_in_with_every_client(&pooler, &right_and_wrong(&[ALICE, BOB, CAROL]));
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_checks_proofs_against_plain_and_scram_secrets() {
    let pooler = auth_pooler("scram-sha-256").await;
    assert_eq!(wire::auth_request(pooler.port, ALICE.0, "sock").await, 10);
    assert_eq!(wire::auth_request(pooler.port, "mallory", "sock").await, 10);
    refuses_wrong_password_and_unknown_user(&pooler).await;
    logs_in_with_tokio_postgres_and_psql(&pooler, &[ALICE, CAROL]).await;
    let mut logins = right_and_wrong(&[ALICE, CAROL]);
    logins.push((BOB.0, BOB.1, "sock", None));
    logs_in_with_every_client(&pooler, &logins);
    // An md5 secret cannot verify a SCRAM proof, even of the right password.
    assert_eq!(
        refused(pooler.login(BOB.0, BOB.1, "sock").await),
        auth_failed(BOB.0)
    );
    let err = psql_err(&psql_as(&pooler, BOB.0, BOB.1, "sock", "SELECT 1"));
    assert!(
        err.contains("password authentication failed for user \"bob\""),
        "{err}"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_ignores_the_client_user_and_needs_a_forced_one() {
    let pooler = auth_pooler_with(
        "any",
        "forced = host={sock} port={port} dbname=postgres user=alice\n",
    )
    .await;
    assert_eq!(
        wire::auth_request(pooler.port, "whoever", "forced").await,
        0
    );
    for (user, password) in [("whoever", "whatever"), (CAROL.0, "x")] {
        let client = pooler
            .login(user, password, "forced")
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(current_user(&client).await, ALICE.0);
    }
    let out = psql_as(&pooler, "whoever", "", "forced", "SELECT current_user");
    assert_eq!(psql_ok(&out), ALICE.0);
    logs_in_with_every_client(
        &pooler,
        &[
            ("whoever", "whatever", "forced", Some(ALICE.0)),
            (BOB.0, "wrong", "forced", Some(ALICE.0)),
        ],
    );
    // Without a forced user there is nobody to log in as (PgBouncer:
    // "bouncer config error"); the client's own name is not taken on trust.
    let (code, message) = refused(pooler.login(BOB.0, "x", "sock").await);
    assert_eq!(code, "08P01");
    assert!(message.starts_with("bouncer config error"), "{message}");
    pooler.stop().await;
}

// --- The pooler's own login to PostgreSQL (SCRAM over TCP) ---

/// A pooler whose `[databases]` lines are made from the cluster's port.
async fn server_login_pooler(
    roles: &[(&str, &str)],
    userlist: &str,
    databases: impl FnOnce(u16) -> String,
) -> TestPooler {
    let cluster = cluster().await;
    for (user, password) in roles {
        cluster.create_user(user, password).expect("role created");
    }
    let databases = databases(cluster.port());
    start_with(
        cluster,
        Setup {
            databases: &databases,
            userlist,
            ..Setup::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_uses_scram_with_the_auth_file_password() {
    let userlist = format!(
        "\"postgres\" \"postgres\"\n\"{}\" \"{}\"\n",
        ALICE.0, ALICE.1
    );
    let pooler = server_login_pooler(&[ALICE], &userlist, |_| String::new()).await;
    // Over TCP the server only takes SCRAM (pg_hba), so these logins prove
    // the pooler's SCRAM client.
    let client = pooler.login(ALICE.0, ALICE.1, "postgres").await.unwrap();
    assert_eq!(current_user(&client).await, ALICE.0);
    let row = client
        .query_one(
            "SELECT client_addr::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("127.0.0.1/32")
    );
    let out = psql_as(&pooler, ALICE.0, ALICE.1, "postgres", "SELECT current_user");
    assert_eq!(psql_ok(&out), ALICE.0);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_uses_the_password_in_the_connection_string() {
    let dave = ("dave", "dave-pw");
    let pooler = server_login_pooler(&[dave], "\"postgres\" \"postgres\"\n", |port| {
        format!("svc = host=127.0.0.1 port={port} dbname=postgres user=dave password=dave-pw\n")
    })
    .await;
    let client = pooler.login("postgres", "postgres", "svc").await.unwrap();
    assert_eq!(current_user(&client).await, "dave");
    pooler.stop().await;
}

/// Logs in and expects the pooler's login to the server to fail, promptly,
/// with an error that names the cause.
async fn server_login_fails(
    pooler: &TestPooler,
    user: &str,
    password: &str,
    db: &str,
) -> (String, String) {
    let started = std::time::Instant::now();
    let outcome = refused(pooler.login(user, password, db).await);
    eprintln!(
        "{user}@{db}: refused after {:?}: {outcome:?}",
        started.elapsed()
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_password_fails_the_client_login_without_hanging() {
    let erin = ("erin", "erin-pw");
    // The auth file's password for erin is not the server's.
    let userlist = "\"postgres\" \"postgres\"\n\"erin\" \"not-erins-pw\"\n";
    let pooler = server_login_pooler(&[erin], userlist, |port| {
        format!("svc = host=127.0.0.1 port={port} dbname=postgres user=erin password=wrong\n")
    })
    .await;
    for (user, password, db) in [
        ("erin", "not-erins-pw", "postgres"),
        ("postgres", "postgres", "svc"),
    ] {
        let (code, message) = server_login_fails(&pooler, user, password, db).await;
        assert_eq!(code, "28P01", "{message}");
        assert!(
            message.contains("password authentication failed for user \"erin\""),
            "{message}"
        );
    }
    // A second try fails the same way, and still promptly.
    let (code, _) = server_login_fails(&pooler, "postgres", "postgres", "svc").await;
    assert_eq!(code, "28P01");
    // The pooler itself is fine.
    let client = pooler.client().await;
    assert_eq!(current_user(&client).await, "postgres");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_scram_pass_through_needs_the_servers_own_secret() {
    // The auth file's SCRAM secret for carol is not the server's (another
    // salt): her key opens the pooler's check, not the server.
    let pooler = server_login_pooler(&[CAROL], &userlist(), |_| String::new()).await;
    let (code, message) = server_login_fails(&pooler, CAROL.0, CAROL.1, "postgres").await;
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("has another salt or iteration count"),
        "{message}"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_pass_through_logs_in_to_the_server_with_no_plain_text_password() {
    let cluster = cluster().await;
    cluster.create_user(CAROL.0, CAROL.1).expect("role created");
    let secret = cluster
        .psql(
            "postgres",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'carol'",
        )
        .expect("carol's secret");
    assert!(secret.starts_with("SCRAM-SHA-256$"), "{secret}");
    let userlist = format!("\"postgres\" \"postgres\"\n\"carol\" \"{secret}\"\n");
    let pooler = start_with(
        cluster,
        Setup {
            userlist: &userlist,
            ..Setup::default()
        },
    )
    .await;
    // Over TCP the server takes only SCRAM: the pooler logs in with the
    // key carol's own login revealed.
    let client = pooler.login(CAROL.0, CAROL.1, "postgres").await.unwrap();
    assert_eq!(current_user(&client).await, CAROL.0);
    let out = psql_as(&pooler, CAROL.0, CAROL.1, "postgres", "SELECT current_user");
    assert_eq!(psql_ok(&out), CAROL.0);
    // A wrong password teaches the pooler nothing.
    let (code, _) = refused(pooler.login(CAROL.0, "wrong", "postgres").await);
    assert_eq!(code, "28P01");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_auth_file_password_matches_nothing() {
    // PgBouncer disallows empty passwords; PostgreSQL never accepts one.
    for auth_type in ["plain", "md5", "scram-sha-256"] {
        let cluster = cluster().await;
        cluster.create_user("nopw", "unused").expect("role created");
        let databases = format!(
            "sock = host={} port={} dbname=postgres\n",
            cluster.socket_dir().display(),
            cluster.port()
        );
        let pgbouncer = format!("auth_type = {auth_type}\n");
        let pooler = start_with(
            cluster,
            Setup {
                pgbouncer: &pgbouncer,
                databases: &databases,
                userlist: "\"postgres\" \"postgres\"\n\"nopw\" \"\"\n",
                ..Setup::default()
            },
        )
        .await;
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(pooler.port)
            .user("nopw")
            .password("")
            .dbname("sock");
        let result = tokio::time::timeout(LOGIN_TIMEOUT, config.connect(tokio_postgres::NoTls))
            .await
            .expect("login finishes")
            .map(|(client, _connection)| client);
        assert_eq!(refused(result), auth_failed("nopw"), "{auth_type}");
        pooler.stop().await;
    }
}

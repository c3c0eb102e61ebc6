//! `auth_type = hba` end to end: a pooler in front of a real PostgreSQL
//! takes each client's method from the first matching rule of
//! `auth_hba_file` (by connection type, address, database and user),
//! refuses with PgBouncer's words when a rule says `reject` or none
//! matches, checks `peer` logins on the Unix socket and `cert` logins
//! against the TLS client certificate, tells `hostssl` from `hostnossl`
//! by the client's TLS, and reads the file at start (a bad line stops it),
//! on RELOAD and on SET (a bad line keeps the old rules).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::certs::{issue, Certs};
use common::wire::{self, auth_failed, current_user, refused};
use common::{start_with, Setup, TestPooler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls};
use wharf_testkit::PgCluster;

/// Roles on the server, and how the auth file holds each one's password.
const ALICE: (&str, &str) = ("alice", "alice-pw"); // plain
const BOB: (&str, &str) = ("bob", "bob-pw"); // md5
const CAROL: (&str, &str) = ("carol", "carol-pw"); // SCRAM
const ERIN: (&str, &str) = ("erin", "erin-pw"); // plain, `password` rule
const TRUSTY: (&str, &str) = ("trusty", "trusty-pw");

const NO_RULE: &str = "no authentication method is found";
const REJECTED: &str = "login rejected";

/// The OS user running the tests, who may log in with `peer`.
fn os_user() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    std::fs::read_to_string("/etc/passwd")
        .expect("/etc/passwd")
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
        })
        .expect("the test's OS user has a name")
}

fn userlist(me: &str) -> String {
    format!(
        "\"postgres\" \"postgres\"\n\
         \"{me}\" \"unused\"\n\
         \"{alice}\" \"{alice_pw}\"\n\
         \"{bob}\" \"{bob_md5}\"\n\
         \"{carol}\" \"{carol_scram}\"\n\
         \"{erin}\" \"{erin_pw}\"\n\
         \"{trusty}\" \"{trusty_pw}\"\n\
         \"blocked\" \"blocked-pw\"\n\
         \"dave\" \"dave-pw\"\n",
        alice = ALICE.0,
        alice_pw = ALICE.1,
        bob = BOB.0,
        bob_md5 = postgres_protocol::password::md5(BOB.1.as_bytes(), BOB.0),
        carol = CAROL.0,
        carol_scram = postgres_protocol::password::scram_sha_256(CAROL.1.as_bytes()),
        erin = ERIN.0,
        erin_pw = ERIN.1,
        trusty = TRUSTY.0,
        trusty_pw = TRUSTY.1,
    )
}

/// A directory of its own for an hba file (the pooler's is made when it
/// starts, and the file must exist before), removed when dropped.
struct HbaDir(PathBuf);

impl HbaDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wharf-hba-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        HbaDir(dir)
    }
}

impl Drop for HbaDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An hba file; its directory goes when it does.
struct HbaFile {
    path: PathBuf,
    _dir: HbaDir,
}

impl std::ops::Deref for HbaFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// A pooler with `auth_type = hba` and `hba` as its rules (`{me}` stands
/// for the OS user), the roles above on the server, and a database `sock`
/// that reaches the server over its trusted Unix socket, so that only the
/// pooler's own client authentication is under test.
async fn hba_pooler(hba: &str) -> (TestPooler, HbaFile) {
    hba_pooler_with(hba, "").await
}

/// As [`hba_pooler`], with more `[pgbouncer]` lines.
async fn hba_pooler_with(hba: &str, extra: &str) -> (TestPooler, HbaFile) {
    let me = os_user();
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("cluster task")
        .expect("throwaway PostgreSQL");
    for (user, password) in [ALICE, BOB, CAROL, ERIN, TRUSTY, (me.as_str(), "unused")] {
        cluster.create_user(user, password).expect("role created");
    }
    let dir = HbaDir::new();
    let hba_path = dir.0.join("hba.conf");
    std::fs::write(&hba_path, hba.replace("{me}", &me)).expect("hba file");
    let databases = format!(
        "sock = host={} port={} dbname=postgres\n",
        cluster.socket_dir().display(),
        cluster.port()
    );
    let pgbouncer = format!(
        "auth_type = hba\nauth_hba_file = {}\n{extra}",
        hba_path.display()
    );
    let pooler = start_with(
        cluster,
        Setup {
            pgbouncer: &pgbouncer,
            databases: &databases,
            userlist: &userlist(&me),
            ..Setup::default()
        },
    )
    .await;
    (
        pooler,
        HbaFile {
            path: hba_path,
            _dir: dir,
        },
    )
}

/// A tokio-postgres login over the pooler's Unix socket.
async fn login_unix(
    pooler: &TestPooler,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let url = format!(
        "host={} port={} user={user} password={password} dbname={db} connect_timeout=10",
        pooler.dir.display(),
        pooler.port
    );
    let connecting = tokio_postgres::connect(&url, NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(30), connecting)
        .await
        .unwrap_or_else(|_| panic!("login of {user} over the Unix socket hung"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The authentication request the pooler answers a startup on its Unix
/// socket with (0 ok, 3 cleartext, 5 md5, 10 SASL).
async fn unix_auth_request(pooler: &TestPooler, user: &str, db: &str) -> i32 {
    let path = pooler.dir.join(format!(".s.PGSQL.{}", pooler.port));
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .expect("the pooler's Unix socket");
    let startup = wire::startup_packet(&[("user", user), ("database", db)]);
    stream.write_all(&startup).await.expect("startup sent");
    let mut header = [0u8; 9];
    tokio::time::timeout(wire::ANSWER_TIMEOUT, stream.read_exact(&mut header))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(header[0], b'R', "expected an authentication request");
    i32::from_be_bytes([header[5], header[6], header[7], header[8]])
}

fn refusal(message: &str) -> (String, String) {
    ("08P01".to_owned(), message.to_owned())
}

/// The server's client backends once the test's own setup psql sessions
/// have gone (their backends exit a moment after psql does); the
/// pooler's servers would stay.
async fn server_connections(pooler: &TestPooler) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let count = tokio::task::block_in_place(|| pooler.server_connections());
        if count == 0 || tokio::time::Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const RULES: &str = "\
# TYPE  DATABASE USER       ADDRESS       METHOD
local   all      {me}                     peer
local   all      postgres                 peer
local   all      all                      trust
host    all      blocked    127.0.0.1/32  reject
hostssl all      dave       all           trust
host    all      dave       all           reject
host    sock     alice,bob  127.0.0.1/32  md5
host    sock     carol      127.0.0.1/32  scram-sha-256
host    sock     erin       127.0.0.0 255.0.0.0 password
host    sock     trusty     127.0.0.1/32  trust
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_method_comes_from_the_first_matching_rule() {
    let (pooler, _hba) = hba_pooler(RULES).await;
    // Over TCP, by user: md5, SCRAM, cleartext, none.
    for (user, code) in [
        (ALICE.0, 5),
        (BOB.0, 5),
        (CAROL.0, 10),
        (ERIN.0, 3),
        (TRUSTY.0, 0),
    ] {
        assert_eq!(
            wire::auth_request(pooler.port, user, "sock").await,
            code,
            "{user} over TCP"
        );
    }
    // Over the Unix socket the `local` lines apply: alice is trusted.
    assert_eq!(unix_auth_request(&pooler, ALICE.0, "sock").await, 0);

    for (user, password) in [ALICE, BOB, CAROL, ERIN, TRUSTY] {
        let client = pooler
            .login(user, password, "sock")
            .await
            .unwrap_or_else(|e| panic!("{user} over TCP: {e}"));
        assert_eq!(current_user(&client).await, user);
    }
    // The password is checked over TCP, not over the Unix socket.
    assert_eq!(
        refused(pooler.login(ALICE.0, "wrong", "sock").await),
        auth_failed(ALICE.0)
    );
    assert_eq!(
        refused(pooler.login(CAROL.0, "wrong", "sock").await),
        auth_failed(CAROL.0)
    );
    let client = login_unix(&pooler, ALICE.0, "wrong", "sock")
        .await
        .expect("alice is trusted on the Unix socket");
    assert_eq!(current_user(&client).await, ALICE.0);
    // trust still wants the user in auth_file.
    assert_eq!(
        refused(login_unix(&pooler, "mallory", "x", "sock").await),
        wire::trust_failed()
    );

    // psql (libpq) through an md5 rule.
    let conninfo = format!("host=127.0.0.1 port={} user=bob dbname=sock", pooler.port);
    let bin = pooler.cluster.bin("psql");
    let out = tokio::task::block_in_place(|| {
        wire::psql(&bin, &conninfo, BOB.1, &[], "SELECT current_user")
    });
    assert_eq!(wire::psql_ok(&out), BOB.0);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_and_no_matching_rule_refuse_with_pgbouncers_words() {
    let (pooler, _hba) = hba_pooler(RULES).await;
    // A reject rule, whatever the password.
    assert_eq!(
        refused(pooler.login("blocked", "blocked-pw", "sock").await),
        refusal(REJECTED)
    );
    // hostssl lines need TLS: a plain connection falls to the next line.
    assert_eq!(
        refused(pooler.login("dave", "dave-pw", "sock").await),
        refusal(REJECTED)
    );
    // No line for alice on another database, or for an unknown user.
    assert_eq!(
        refused(pooler.login(ALICE.0, ALICE.1, "postgres").await),
        refusal(NO_RULE)
    );
    assert_eq!(
        refused(pooler.login("mallory", "x", "sock").await),
        refusal(NO_RULE)
    );
    // The refusal comes before any password is asked for.
    let (tag, body) =
        wire::first_answer(pooler.port, &[("user", "blocked"), ("database", "sock")]).await;
    assert_eq!(tag, b'E', "a refusal, not an authentication request");
    assert_eq!(wire::parse_error(&body).message, REJECTED);
    assert_eq!(
        server_connections(&pooler).await,
        0,
        "refused logins opened servers"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_lets_the_unix_sockets_own_os_user_in() {
    let (pooler, _hba) = hba_pooler(RULES).await;
    let me = os_user();
    let client = login_unix(&pooler, &me, "not-checked", "sock")
        .await
        .unwrap_or_else(|e| panic!("peer login as {me}: {e}"));
    assert_eq!(current_user(&client).await, me);
    if me != "postgres" {
        // The peer is this test's OS user, not postgres.
        assert_eq!(
            refused(login_unix(&pooler, "postgres", "postgres", "sock").await),
            refusal("unix socket login rejected")
        );
    }
    pooler.stop().await;
}

/// Writes a configuration with `auth_type = hba` and `hba` as its rules;
/// returns the ini and hba paths.
fn write_config(hba: &str) -> (PathBuf, HbaFile) {
    let dir = HbaDir::new();
    let hba_path = dir.0.join("hba.conf");
    std::fs::write(&hba_path, hba).expect("hba file");
    let ini = dir.0.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nlisten_port = 1\nauth_type = hba\nauth_file = /dev/null\nauth_hba_file = {}\n",
            hba_path.display()
        ),
    )
    .expect("ini");
    (
        ini,
        HbaFile {
            path: hba_path,
            _dir: dir,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_hba_line_stops_the_start_with_its_file_and_line() {
    let (ini, hba) = write_config("local all all peer\n\nhost all all 10.0.0.0/8 md5 map=x\n");
    let err = wharf_pooler::config::load(&ini).expect_err("the hba line is refused");
    assert_eq!(err.file(), &*hba);
    assert_eq!(err.line(), Some(3));
    assert_eq!(
        err.to_string(),
        format!(
            "{}:3: option map= (user name maps from auth_ident_file) is not supported by wharf yet",
            hba.display()
        )
    );
    // A configuration made in code gets its rules read by Pooler::bind.
    let (ini, _kept) = write_config("local all all trust\n");
    let mut config = wharf_pooler::config::load(&ini).expect("loads").config;
    assert_eq!(config.hba.as_ref().map(|r| r.rules().len()), Some(1));
    config.hba = None;
    config.pgbouncer.auth_hba_file = Some(hba.to_path_buf());
    match wharf_pooler::Pooler::bind(config).await {
        Err(wharf_pooler::StartError::AuthFile(err)) => {
            assert_eq!((err.file(), err.line()), (&*hba, Some(3)), "{err}")
        }
        Err(other) => panic!("expected the hba file's error, got {other}"),
        Ok(_) => panic!("a pooler started with a broken hba file"),
    }
}

fn rewrite(path: &Path, text: &str) {
    std::fs::write(path, text).expect("hba file rewritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_puts_a_new_hba_file_in_force_and_keeps_the_old_on_error() {
    let (pooler, hba) = hba_pooler("host sock alice 127.0.0.1/32 md5\n").await;
    let alice = pooler.login(ALICE.0, ALICE.1, "sock").await.expect("alice");
    assert_eq!(
        refused(pooler.login(BOB.0, BOB.1, "sock").await),
        refusal(NO_RULE)
    );

    rewrite(
        &hba,
        "host sock bob 127.0.0.1/32 trust\nhost sock alice all reject\n",
    );
    pooler.shared.reload().await.expect("reload");
    assert_eq!(wire::auth_request(pooler.port, BOB.0, "sock").await, 0);
    let bob = pooler
        .login(BOB.0, "not-checked", "sock")
        .await
        .expect("bob");
    assert_eq!(current_user(&bob).await, BOB.0);
    assert_eq!(
        refused(pooler.login(ALICE.0, ALICE.1, "sock").await),
        refusal(REJECTED)
    );
    // A client logged in before the reload stays.
    assert_eq!(current_user(&alice).await, ALICE.0);

    rewrite(
        &hba,
        "host sock bob 127.0.0.1/32 md5\nhost sock alice 127.0.0.1/32 nope\n",
    );
    let err = pooler
        .shared
        .reload()
        .await
        .expect_err("a broken hba file is refused");
    assert!(
        err.to_string().contains(&format!(
            "{}:2: unknown authentication method \"nope\"",
            hba.display()
        )),
        "{err}"
    );
    // The old rules stay in force.
    assert_eq!(wire::auth_request(pooler.port, BOB.0, "sock").await, 0);
    assert_eq!(
        refused(pooler.login(ALICE.0, ALICE.1, "sock").await),
        refusal(REJECTED)
    );

    rewrite(&hba, "host sock bob 127.0.0.1/32 md5\n");
    pooler.shared.reload().await.expect("reload");
    assert_eq!(wire::auth_request(pooler.port, BOB.0, "sock").await, 5);
    assert_eq!(
        refused(pooler.login(BOB.0, "wrong", "sock").await),
        auth_failed(BOB.0)
    );
    let bob = pooler.login(BOB.0, BOB.1, "sock").await.expect("bob");
    assert_eq!(current_user(&bob).await, BOB.0);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_auth_hba_file_on_the_console_reads_the_new_file_at_once() {
    let (pooler, hba) = hba_pooler("host sock alice 127.0.0.1/32 md5\n").await;
    // The pooler's own OS user needs no password on the console.
    let admin = login_unix(&pooler, "pgbouncer", "", "pgbouncer")
        .await
        .expect("console as the pooler's own user");
    let broken = hba.with_file_name("broken.conf");
    rewrite(
        &broken,
        "host sock bob 127.0.0.1/32 md5\nhost sock bob all\n",
    );
    let err = admin
        .simple_query(&format!("SET auth_hba_file = '{}'", broken.display()))
        .await
        .expect_err("a broken hba file refuses the SET");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert_eq!(
        message,
        Some(format!("{}:2: missing the method column", broken.display()))
    );
    assert_eq!(wire::auth_request(pooler.port, ALICE.0, "sock").await, 5);

    let other = hba.with_file_name("other.conf");
    rewrite(&other, "host sock alice 127.0.0.1/32 scram-sha-256\n");
    admin
        .simple_query(&format!("SET auth_hba_file = '{}'", other.display()))
        .await
        .expect("SET auth_hba_file");
    assert_eq!(wire::auth_request(pooler.port, ALICE.0, "sock").await, 10);
    let alice = pooler.login(ALICE.0, ALICE.1, "sock").await.expect("alice");
    assert_eq!(current_user(&alice).await, ALICE.0);

    admin
        .simple_query("SET auth_type = md5")
        .await
        .expect("SET auth_type");
    assert_eq!(wire::auth_request(pooler.port, BOB.0, "sock").await, 5);
    pooler.stop().await;
}

/// `[pgbouncer]` lines for client TLS in `mode` with the test certificates.
fn client_tls(certs: &Certs, mode: &str) -> String {
    format!(
        "client_tls_sslmode = {mode}\nclient_tls_key_file = {}\nclient_tls_cert_file = {}\nclient_tls_ca_file = {}\n",
        certs.server_key.display(),
        certs.server_cert.display(),
        certs.ca.display()
    )
}

/// psql through the pooler over TCP as `user` with libpq `options`: its
/// output, or its error.
fn psql_tls(pooler: &TestPooler, user: &str, options: &str) -> Result<String, String> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={user} dbname=sock {options}",
        pooler.port
    );
    let bin = pooler.cluster.bin("psql");
    let out = tokio::task::block_in_place(|| {
        wire::psql(&bin, &conninfo, "not-checked", &[], "SELECT current_user")
    });
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostssl_matches_tls_connections_and_hostnossl_plain_ones() {
    let certs = issue(&["127.0.0.1"], "alice");
    let hba = "hostssl sock alice all trust\nhostnossl sock alice all reject\n";
    let (pooler, _hba) = hba_pooler_with(hba, &client_tls(&certs, "prefer")).await;
    let verified = format!("sslmode=verify-full sslrootcert={}", certs.ca.display());
    assert_eq!(
        psql_tls(&pooler, ALICE.0, &verified).as_deref(),
        Ok(ALICE.0)
    );
    let err = psql_tls(&pooler, ALICE.0, "sslmode=disable").unwrap_err();
    assert!(err.contains(REJECTED), "{err}");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_logs_in_the_user_the_client_certificate_names() {
    let certs = issue(&["127.0.0.1"], "alice");
    let hba = "hostssl sock alice,bob 127.0.0.1/32 cert\n";
    let (pooler, _hba) = hba_pooler_with(hba, &client_tls(&certs, "verify-ca")).await;
    let with_cert = format!(
        "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    assert_eq!(
        psql_tls(&pooler, ALICE.0, &with_cert).as_deref(),
        Ok(ALICE.0)
    );
    // alice's certificate does not make anyone else.
    let err = psql_tls(&pooler, BOB.0, &with_cert).unwrap_err();
    assert!(err.contains("certificate authentication failed"), "{err}");
    pooler.stop().await;
}

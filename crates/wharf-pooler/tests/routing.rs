//! Routing clients to server pools: unknown databases, the `*` fallback,
//! forced users, `max_client_conn`, the Unix socket, and which startup
//! parameters a client may send.

mod common;

use std::time::Duration;

use common::wire::{psql, psql_err, psql_ok, refused};
use common::{start, start_with, Setup, TestPooler};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use wharf_testkit::PgCluster;

const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

async fn cluster() -> PgCluster {
    tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("cluster task")
        .expect("throwaway PostgreSQL")
}

/// Connects with a tokio-postgres config, its connection driven in the
/// background; a login that hangs fails the test.
async fn connect_with(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio::time::timeout(LOGIN_TIMEOUT, config.connect(NoTls))
        .await
        .expect("login finishes")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn config(pooler: &TestPooler, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(pooler.port)
        .user(user)
        .password(password)
        .dbname(db);
    config
}

/// The first column of the first row, by the simple protocol (one message,
/// so a transaction-mode pooler runs it on one server).
async fn one(client: &Client, sql: &str) -> String {
    let messages = tokio::time::timeout(LOGIN_TIMEOUT, client.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql:?} hung"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql:?} returned no row"))
}

fn psql_at(
    pooler: &TestPooler,
    conninfo: &str,
    env: &[(&str, &str)],
    sql: &str,
) -> std::process::Output {
    let bin = pooler.cluster.bin("psql");
    tokio::task::block_in_place(|| psql(&bin, conninfo, "postgres", env, sql))
}

fn tcp(pooler: &TestPooler, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        pooler.port
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_refused_with_3d000() {
    let pooler = start(Setup::default()).await;
    assert_eq!(
        refused(pooler.login("postgres", "postgres", "nope").await),
        ("3D000".to_owned(), "no such database: nope".to_owned())
    );
    let err = psql_err(&psql_at(&pooler, &tcp(&pooler, "nope"), &[], "SELECT 1"));
    assert!(err.contains("no such database: nope"), "{err}");
    // Nothing was opened for it, and known databases still work.
    assert_eq!(
        tokio::task::block_in_place(|| pooler.server_connections()),
        0
    );
    assert_eq!(one(&pooler.client().await, "SELECT 'ok'").await, "ok");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_entry_routes_any_name_to_the_same_named_server_database() {
    let cluster = cluster().await;
    cluster
        .create_database("otherdb")
        .expect("database created");
    let databases = format!("* = host=127.0.0.1 port={}\n", cluster.port());
    let pooler = start_with(
        cluster,
        Setup {
            databases: &databases,
            ..Setup::default()
        },
    )
    .await;
    let client = pooler
        .login("postgres", "postgres", "otherdb")
        .await
        .unwrap();
    assert_eq!(
        one(&client, "SELECT current_database()::text").await,
        "otherdb"
    );
    // The explicit entry still wins for its own name.
    let client = pooler.client().await;
    assert_eq!(
        one(&client, "SELECT current_database()::text").await,
        "postgres"
    );
    let out = psql_at(
        &pooler,
        &tcp(&pooler, "otherdb"),
        &[],
        "SELECT current_database()",
    );
    assert_eq!(psql_ok(&out), "otherdb");
    // A name the server does not have: the server's own error, promptly.
    assert_eq!(
        refused(pooler.login("postgres", "postgres", "ghost").await),
        (
            "3D000".to_owned(),
            "database \"ghost\" does not exist".to_owned()
        )
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_user_makes_clients_share_one_pool() {
    let cluster = cluster().await;
    for user in ["alice", "bob"] {
        cluster.create_user(user, "pw").expect("role created");
    }
    let databases = format!(
        "shared = host=127.0.0.1 port={} dbname=postgres user=postgres pool_size=1\n",
        cluster.port()
    );
    let pooler = start_with(
        cluster,
        Setup {
            databases: &databases,
            userlist: "\"postgres\" \"postgres\"\n\"alice\" \"pw\"\n\"bob\" \"pw\"\n",
            ..Setup::default()
        },
    )
    .await;
    let alice = pooler.login("alice", "pw", "shared").await.unwrap();
    let bob = pooler.login("bob", "pw", "shared").await.unwrap();
    let mut pids = Vec::new();
    for client in [&alice, &bob, &alice, &bob] {
        assert_eq!(one(client, "SELECT current_user::text").await, "postgres");
        pids.push(one(client, "SELECT pg_backend_pid()::text").await);
    }
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    assert_eq!(
        tokio::task::block_in_place(|| pooler.server_connections()),
        1
    );
    // One pool of one: while alice's transaction holds the server, bob waits.
    alice.batch_execute("BEGIN").await.unwrap();
    let bob_query = tokio::spawn(async move { one(&bob, "SELECT 'bob ran'").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !bob_query.is_finished(),
        "bob ran inside alice's transaction"
    );
    alice.batch_execute("COMMIT").await.unwrap();
    let ran = tokio::time::timeout(LOGIN_TIMEOUT, bob_query)
        .await
        .expect("bob gets the server after alice's commit")
        .unwrap();
    assert_eq!(ran, "bob ran");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_the_client_over_the_limit() {
    let pooler = start(Setup {
        pgbouncer: "max_client_conn = 3\n",
        ..Setup::default()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(pooler.client().await);
    }
    assert_eq!(
        refused(pooler.login("postgres", "postgres", "postgres").await),
        (
            "53300".to_owned(),
            "no more connections allowed (max_client_conn)".to_owned()
        )
    );
    let err = psql_err(&psql_at(
        &pooler,
        &tcp(&pooler, "postgres"),
        &[],
        "SELECT 1",
    ));
    assert!(
        err.contains("no more connections allowed (max_client_conn)"),
        "{err}"
    );
    for (i, client) in clients.iter().enumerate() {
        assert_eq!(one(client, &format!("SELECT '{i}'")).await, i.to_string());
    }
    // A freed place is taken again (once the pooler has seen the close).
    drop(clients.pop());
    let deadline = tokio::time::Instant::now() + LOGIN_TIMEOUT;
    let again = loop {
        match pooler.login("postgres", "postgres", "postgres").await {
            Ok(client) => break client,
            Err(err) if tokio::time::Instant::now() < deadline => {
                assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the freed place was not given back: {err}"),
        }
    };
    assert_eq!(one(&again, "SELECT 'again'").await, "again");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_over_the_unix_socket() {
    let pooler = start(Setup::default()).await;
    let dir = pooler.dir().to_owned();
    assert!(dir.join(format!(".s.PGSQL.{}", pooler.port)).exists());
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&dir)
        .port(pooler.port)
        .user("postgres")
        .password("postgres")
        .dbname("postgres");
    let client = connect_with(&config).await.expect("login over the socket");
    assert_eq!(one(&client, "SELECT 'unix'").await, "unix");
    // The same through a libpq connection string with host=<dir>.
    let conninfo = format!(
        "host={} port={} user=postgres password=postgres dbname=postgres",
        dir.display(),
        pooler.port
    );
    let parsed: tokio_postgres::Config = conninfo.parse().unwrap();
    let client = connect_with(&parsed).await.expect("login over the socket");
    assert_eq!(one(&client, "SELECT 1::text").await, "1");
    let out = psql_at(
        &pooler,
        &format!(
            "host={} port={} user=postgres dbname=postgres",
            dir.display(),
            pooler.port
        ),
        &[],
        "SELECT 'psql over unix'",
    );
    assert_eq!(psql_ok(&out), "psql over unix");
    pooler.stop().await;
}

/// `options` (libpq's `options=` and `PGOPTIONS`): `-c name=value` and
/// `--name=value` with backslash escapes set tracked parameters as if sent
/// as startup parameters, kept on whichever server a transaction-mode
/// client gets; anything else is refused with PgBouncer's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_set_tracked_parameters_and_refuse_the_rest() {
    let pooler = start(Setup {
        pgbouncer: "pool_mode = transaction\ndefault_pool_size = 1\n\
                    ignore_startup_parameters = extra_float_digits\n",
        ..Setup::default()
    })
    .await;
    let mut with_options = config(&pooler, "postgres", "postgres", "postgres");
    with_options.options(r"-c TimeZone=Europe/Lisbon  --application_name=from\ options");
    let lisbon = connect_with(&with_options).await.expect("options accepted");
    let plain = connect_with(&config(&pooler, "postgres", "postgres", "postgres"))
        .await
        .expect("plain login");
    // One server, shared in turn: each client keeps its own settings.
    for _ in 0..2 {
        assert_eq!(one(&lisbon, "SHOW TimeZone").await, "Europe/Lisbon");
        assert_eq!(one(&lisbon, "SHOW application_name").await, "from options");
        assert_ne!(one(&plain, "SHOW TimeZone").await, "Europe/Lisbon");
        assert_ne!(one(&plain, "SHOW application_name").await, "from options");
    }
    // Named in ignore_startup_parameters: accepted, not passed on.
    let mut ignored = config(&pooler, "postgres", "postgres", "postgres");
    ignored.options("-c extra_float_digits=2 -c DateStyle=SQL,\\ YMD");
    let client = connect_with(&ignored).await.expect("ignored setting");
    assert_eq!(one(&client, "SHOW extra_float_digits").await, "1");
    assert_eq!(one(&client, "SHOW DateStyle").await, "SQL, YMD");

    // psql: options= in the connection string, and PGOPTIONS.
    let conninfo = format!(
        "{} options='-c timezone=Asia/Tokyo'",
        tcp(&pooler, "postgres")
    );
    let out = psql_at(&pooler, &conninfo, &[], "SHOW TimeZone");
    assert_eq!(psql_ok(&out), "Asia/Tokyo");
    let pgoptions = [(
        "PGOPTIONS",
        r"--DateStyle=ISO,\ YMD -c IntervalStyle=postgres\_verbose",
    )];
    let out = psql_at(
        &pooler,
        &tcp(&pooler, "postgres"),
        &pgoptions,
        "SELECT current_setting('DateStyle') || ' ' || current_setting('IntervalStyle')",
    );
    assert_eq!(psql_ok(&out), "ISO, YMD postgres_verbose");

    // Refusals, as PgBouncer words them.
    let mut untracked = config(&pooler, "postgres", "postgres", "postgres");
    untracked.options("-c geqo=off");
    assert_eq!(
        refused(connect_with(&untracked).await),
        (
            "08P01".to_owned(),
            "unsupported startup parameter in options: geqo".to_owned()
        )
    );
    for bad in ["-d 5", "-c timezone"] {
        let err = psql_err(&psql_at(
            &pooler,
            &tcp(&pooler, "postgres"),
            &[("PGOPTIONS", bad)],
            "SELECT 1",
        ));
        assert!(
            err.contains(
                "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed"
            ),
            "{bad}: {err}"
        );
    }
    pooler.stop().await;

    // `options` itself in ignore_startup_parameters: untracked settings in
    // it are ignored, tracked ones still apply.
    let pooler = start(Setup {
        pgbouncer: "ignore_startup_parameters = extra_float_digits, options\n",
        ..Setup::default()
    })
    .await;
    let mut with_options = config(&pooler, "postgres", "postgres", "postgres");
    with_options.options("-c geqo=off -c TimeZone=Asia/Tokyo");
    let client = connect_with(&with_options).await.expect("options ignored");
    // Ignored means not passed on: the server keeps its default.
    assert_eq!(one(&client, "SHOW geqo").await, "on");
    assert_eq!(one(&client, "SHOW TimeZone").await, "Asia/Tokyo");
    let pgoptions = [("PGOPTIONS", "-c geqo=off")];
    let out = psql_at(&pooler, &tcp(&pooler, "postgres"), &pgoptions, "SHOW geqo");
    assert_eq!(psql_ok(&out), "on");
    pooler.stop().await;
}

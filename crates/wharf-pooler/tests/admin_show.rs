//! The admin console's SHOW commands: PgBouncer 1.25's columns, through
//! psql and tokio-postgres, and figures that match what the pooler is
//! doing; who may log in to the console.

mod common;

use common::console::{
    console, eventually, psql_show, psql_table, setup, show, show_err, try_show,
};
use common::shows::{names as expected_columns, SHOWS};
use common::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_has_pgbouncers_columns_in_psql_and_tokio_postgres() {
    let pooler = start(setup()).await;
    // A server in use, so SERVERS and STATS have rows too.
    let app = pooler.client().await;
    app.simple_query("SELECT 1").await.unwrap();
    let admin = console(&pooler, "admin").await;
    for command in SHOWS {
        let expected = expected_columns(command);
        // Case and a trailing semicolon do not matter.
        let table = show(&admin, &format!("show {};", command.to_lowercase())).await;
        assert_eq!(table.columns, expected, "SHOW {command} by tokio-postgres");
        let table = psql_show(&pooler, "admin", &format!("SHOW {command}"))
            .unwrap_or_else(|e| panic!("psql SHOW {command}: {e}"));
        assert_eq!(table.columns, expected, "SHOW {command} by psql");
        for row in &table.rows {
            assert_eq!(row.len(), expected.len(), "SHOW {command}: {row:?}");
        }
    }
    // SHOW HELP is a notice and an empty result.
    assert!(try_show(&admin, "SHOW HELP").await.unwrap().rows.is_empty());
    let bin = pooler.cluster.bin("psql");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=admin dbname=pgbouncer",
        pooler.port
    );
    let out = tokio::task::block_in_place(|| {
        common::wire::psql(&bin, &conninfo, "admin", &[], "SHOW HELP")
    });
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHOW HELP|CONFIG"));
    // The alias.
    let wharf = pooler.login("admin", "admin", "wharf").await.unwrap();
    assert_eq!(
        show(&wharf, "SHOW STATE").await.columns,
        expected_columns("STATE")
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_and_servers_match_three_open_transactions() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = pooler.client().await;
        client.simple_query("BEGIN").await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        clients.push(client);
    }
    let pools = show(&admin, "SHOW POOLS").await;
    let get = |col: &str| pools.value2("database", "postgres", "user", "postgres", col);
    assert_eq!(get("cl_active"), "3");
    assert_eq!(get("cl_waiting"), "0");
    assert_eq!(get("sv_active"), "3");
    assert_eq!(get("sv_idle"), "0");
    assert_eq!(get("sv_login"), "0");
    assert_eq!(get("maxwait"), "0");
    assert_eq!(get("pool_mode"), "transaction");
    // The console itself is a pool of the admin database.
    assert_eq!(
        pools.value2("database", "pgbouncer", "user", "admin", "cl_active"),
        "1"
    );
    let servers = show(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.rows_where("state", "active").len(), 3);
    assert_eq!(servers.rows_where("database", "postgres").len(), 3);
    let clients_table = show(&admin, "SHOW CLIENTS").await;
    // Every active server is linked to a listed client, and back.
    for row in servers.rows_where("state", "active") {
        let link = row[servers.col("link")].clone().unwrap();
        assert_eq!(clients_table.value("ptr", &link, "state"), "active");
    }
    for client in &clients {
        client.simple_query("COMMIT").await.unwrap();
    }
    // The client hears COMMIT's ReadyForQuery a moment before the relay
    // hands its server back to the pool.
    eventually("the three servers are idle again", || async {
        let pools = show(&admin, "SHOW POOLS").await;
        let get = |col: &str| pools.value2("database", "postgres", "user", "postgres", col);
        get("sv_active") == "0" && get("sv_idle") == "3"
    })
    .await;
    let pools = show(&admin, "SHOW POOLS").await;
    let get = |col: &str| pools.value2("database", "postgres", "user", "postgres", col);
    assert_eq!(get("cl_active"), "3");
    assert_eq!(get("sv_active"), "0");
    assert_eq!(get("sv_idle"), "3");
    let databases = show(&admin, "SHOW DATABASES").await;
    assert_eq!(
        databases.value("name", "postgres", "current_connections"),
        "3"
    );
    assert_eq!(
        databases.value("name", "postgres", "current_client_connections"),
        "3"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_and_servers_describe_each_connection() {
    let pooler = start(setup()).await;
    let mut config: tokio_postgres::Config = pooler
        .url("postgres", "postgres", "postgres")
        .parse()
        .unwrap();
    config.application_name("report-job");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.simple_query("BEGIN").await.unwrap();
    let pid = match &client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .unwrap()[..]
    {
        [_, tokio_postgres::SimpleQueryMessage::Row(row), ..] => row.get(0).unwrap().to_owned(),
        other => panic!("{other:?}"),
    };
    let admin = console(&pooler, "admin").await;
    let clients = show(&admin, "SHOW CLIENTS").await;
    let mine = clients.rows_where("application_name", "report-job");
    assert_eq!(mine.len(), 1, "{clients:?}");
    let row = mine[0];
    let at = |c: &str| row[clients.col(c)].clone().unwrap_or_default();
    assert_eq!(at("type"), "C");
    assert_eq!(at("user"), "postgres");
    assert_eq!(at("database"), "postgres");
    assert_eq!(at("state"), "active");
    assert_eq!(at("addr"), "127.0.0.1");
    assert_eq!(at("local_port"), pooler.port.to_string());
    assert!(
        at("connect_time").ends_with(" UTC"),
        "{}",
        at("connect_time")
    );
    let servers = show(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.value("remote_pid", &pid, "link"), at("ptr"));
    assert_eq!(
        servers.value("remote_pid", &pid, "application_name"),
        "report-job"
    );
    assert_eq!(servers.value("remote_pid", &pid, "state"), "active");
    assert_eq!(
        servers.value("remote_pid", &pid, "port"),
        pooler.cluster.port().to_string()
    );
    // The console session is listed too.
    assert_eq!(clients.rows_where("database", "pgbouncer").len(), 1);
    client.simple_query("COMMIT").await.unwrap();
    // The client hears COMMIT's ReadyForQuery a moment before the relay
    // hands its server back to the pool.
    eventually("the server is idle again", || async {
        let servers = show(&admin, "SHOW SERVERS").await;
        servers.value("remote_pid", &pid, "state") == "idle"
    })
    .await;
    let servers = show(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.value("remote_pid", &pid, "state"), "idle");
    assert_eq!(servers.value("remote_pid", &pid, "link"), "");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_time_moves_with_each_transaction_on_an_idle_server_too() {
    let pooler = start(setup()).await;
    let mut config: tokio_postgres::Config = pooler
        .url("postgres", "postgres", "postgres")
        .parse()
        .unwrap();
    config.application_name("ticker");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let admin = console(&pooler, "admin").await;
    let admin = &admin;
    let request_time = || async move {
        let clients = show(admin, "SHOW CLIENTS").await;
        clients.value("application_name", "ticker", "request_time")
    };
    client.simple_query("SELECT 1").await.unwrap();
    let first = request_time().await;
    // request_time has whole seconds; the server is idle in the pool by
    // now, so the next transaction takes it without waiting.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    client.simple_query("SELECT 2").await.unwrap();
    let second = request_time().await;
    assert!(second > first, "request_time stayed at {first}");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_databases_users_config_lists_version_and_state() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    let databases = show(&admin, "SHOW DATABASES").await;
    let db = |c: &str| databases.value("name", "postgres", c);
    assert_eq!(db("host"), "127.0.0.1");
    assert_eq!(db("port"), pooler.cluster.port().to_string());
    assert_eq!(db("database"), "postgres");
    assert_eq!(db("pool_size"), "5");
    assert_eq!(db("server_lifetime"), "3600");
    assert_eq!(db("paused"), "0");
    assert_eq!(db("disabled"), "0");
    let config = show(&admin, "SHOW CONFIG").await;
    assert_eq!(config.value("key", "default_pool_size", "value"), "5");
    assert_eq!(config.value("key", "default_pool_size", "default"), "20");
    assert_eq!(
        config.value("key", "default_pool_size", "changeable"),
        "yes"
    );
    assert_eq!(config.value("key", "listen_port", "changeable"), "no");
    assert_eq!(config.value("key", "admin_users", "value"), "admin");
    let users = show(&admin, "SHOW USERS").await;
    for user in ["admin", "bob", "postgres", "stats"] {
        assert_eq!(
            users.rows_where("name", user).len(),
            1,
            "{user} in {users:?}"
        );
    }
    assert_eq!(
        users.value("name", "admin", "current_client_connections"),
        "1"
    );
    let lists = show(&admin, "SHOW LISTS").await;
    assert_eq!(lists.value("list", "used_clients", "items"), "1");
    assert_eq!(lists.value("list", "users", "items"), "4");
    let version = show(&admin, "SHOW VERSION").await;
    assert!(version.rows[0][0]
        .as_deref()
        .unwrap()
        .starts_with("PgBouncer 1.25"));
    let state = show(&admin, "SHOW STATE").await;
    assert_eq!(state.value("key", "active", "value"), "yes");
    assert_eq!(state.value("key", "paused", "value"), "no");
    assert_eq!(state.value("key", "suspended", "value"), "no");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_and_stats_users_get_in_and_stats_users_only_show() {
    let pooler = start(setup()).await;
    let (_, message) = common::wire::refused(pooler.login("bob", "bob", "pgbouncer").await);
    assert_eq!(message, "not allowed");
    // A wrong password is still wrong on the console.
    assert!(pooler.login("admin", "nope", "pgbouncer").await.is_err());
    let stats = console(&pooler, "stats").await;
    assert!(!show(&stats, "SHOW POOLS").await.columns.is_empty());
    assert_eq!(show_err(&stats, "PAUSE").await, "admin access needed");
    assert_eq!(
        show_err(&stats, "SET verbose = 1").await,
        "admin access needed"
    );
    assert_eq!(
        show(&stats, "SHOW STATE")
            .await
            .value("key", "paused", "value"),
        "no"
    );
    let err = psql_show(&pooler, "bob", "SHOW POOLS").unwrap_err();
    assert!(err.contains("not allowed"), "{err}");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_errors_and_the_console_goes_on() {
    let pooler = start(setup()).await;
    let admin = console(&pooler, "admin").await;
    assert_eq!(
        show_err(&admin, "SHOW NOTHING").await,
        "invalid command 'SHOW NOTHING', use SHOW HELP;"
    );
    assert!(show_err(&admin, "SELECT 1")
        .await
        .starts_with("invalid command"));
    assert!(show_err(&admin, "PAUSE a b")
        .await
        .starts_with("invalid command"));
    assert_eq!(
        show_err(&admin, "PAUSE nodb").await,
        "no such database: nodb"
    );
    assert_eq!(
        show_err(&admin, "KILL_CLIENT 99999").await,
        "client not found"
    );
    assert_eq!(
        show_err(&admin, "KILL_CLIENT abc").await,
        "invalid client pointer supplied"
    );
    for internal in ["FDS", "SOCKETS", "ACTIVE_SOCKETS", "MEM"] {
        let message = show_err(&admin, &format!("SHOW {internal}")).await;
        assert!(
            message.starts_with(&format!("SHOW {internal} is not supported by wharf: ")),
            "{message}"
        );
    }
    // The extended protocol is refused, and the session stays in step.
    let err = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("simple query protocol"),
        "{err}"
    );
    assert_eq!(show(&admin, "SHOW STATE").await.rows.len(), 3);
    assert!(try_show(&admin, "").await.unwrap().rows.is_empty());
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooler_os_user_needs_no_password_over_the_unix_socket() {
    let pooler = start(setup()).await;
    let me = String::from_utf8(
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let unix = format!(
        "host={} port={} user={me} dbname=pgbouncer",
        pooler.dir().display(),
        pooler.port
    );
    let table = psql_table(&pooler, &unix, "", "SHOW STATE").expect("own user over the socket");
    assert_eq!(table.columns, ["key", "value"]);
    let unix_pgbouncer = format!(
        "host={} port={} user=pgbouncer dbname=pgbouncer",
        pooler.dir().display(),
        pooler.port
    );
    psql_table(&pooler, &unix_pgbouncer, "", "PAUSE postgres").expect("pgbouncer is an admin");
    psql_table(&pooler, &unix_pgbouncer, "", "RESUME postgres").expect("RESUME");
    // Not over TCP.
    let tcp = format!(
        "host=127.0.0.1 port={} user={me} dbname=pgbouncer",
        pooler.port
    );
    assert!(psql_table(&pooler, &tcp, "", "SHOW STATE").is_err());
    pooler.stop().await;
}

/// Connects with `application_name` and returns the client and the value
/// its server has (the welcome's parameters, made once per distinct set
/// of startup parameters, must still be each client's own).
async fn connect_as(pooler: &common::TestPooler, app: &str) -> (tokio_postgres::Client, String) {
    let mut config: tokio_postgres::Config = pooler
        .url("postgres", "postgres", "postgres")
        .parse()
        .unwrap();
    config.application_name(app);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let seen = match &client.simple_query("SHOW application_name").await.unwrap()[..] {
        [_, tokio_postgres::SimpleQueryMessage::Row(row), ..] => row.get(0).unwrap().to_owned(),
        other => panic!("{other:?}"),
    };
    (client, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_keeps_its_own_application_name_through_shared_welcomes() {
    let pooler = start(setup()).await;
    let mut clients = Vec::new();
    for app in ["alpha", "beta", "alpha", "beta"] {
        let (client, seen) = connect_as(&pooler, app).await;
        assert_eq!(seen, app);
        clients.push(client);
    }
    let admin = console(&pooler, "admin").await;
    let table = show(&admin, "SHOW CLIENTS").await;
    assert_eq!(table.rows_where("application_name", "alpha").len(), 2);
    assert_eq!(table.rows_where("application_name", "beta").len(), 2);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_add_host_gives_each_client_its_own_address() {
    let settings = format!(
        "{}application_name_add_host = 1\n",
        common::console::CONSOLE_SETTINGS
    );
    let pooler = start(common::Setup {
        pgbouncer: &settings,
        ..setup()
    })
    .await;
    let (_first, first) = connect_as(&pooler, "app").await;
    let (_second, second) = connect_as(&pooler, "app").await;
    for seen in [&first, &second] {
        assert!(seen.starts_with("app - 127.0.0.1:"), "{seen}");
    }
    // Two connections, two client ports.
    assert_ne!(first, second);
    pooler.stop().await;
}

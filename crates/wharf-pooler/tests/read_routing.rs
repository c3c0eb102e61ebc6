//! Read/write routing (`read_routing = on`) over a primary and a streaming
//! replica made with `pg_basebackup -R`: transactions that start with a
//! plain read go to the replica, everything else to the primary, a client
//! pins itself with `SET wharf.route = primary`, and reads fall back to
//! the primary while the replica is down.

mod common;
#[path = "common/http.rs"]
mod http;

use std::time::Duration;

use common::{start_with, Setup, TestPooler};
use tokio_postgres::{Client, SimpleQueryMessage};
use wharf_testkit::PgCluster;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// The first column of the first row `sql`'s last statement returns.
async fn value(client: &Client, sql: &str) -> String {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .iter()
        .rev()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Whether a query ran on the standby (`t`) or the primary (`f`).
async fn on_standby(client: &Client, sql: &str) -> bool {
    match value(client, sql).await.as_str() {
        "t" => true,
        "f" => false,
        other => panic!("{sql}: {other}"),
    }
}

/// A primary with table `t` (one row) and sequence `s`, its replica once
/// it has replayed them, and a pooler whose database `app` routes reads
/// (`routing` and `extra` on its line).
async fn routed(routing: &str, extra: &str) -> (TestPooler, PgCluster) {
    let primary = blocking(PgCluster::start).await.expect("PostgreSQL");
    primary
        .psql(
            "postgres",
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1); CREATE SEQUENCE s",
        )
        .unwrap();
    let standby = primary.replica().expect("a streaming replica");
    let mut replayed = false;
    for _ in 0..100 {
        if standby.psql("postgres", "SELECT count(*) FROM t").is_ok() {
            replayed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(replayed, "the standby replays the setup");
    let (pp, ps) = (primary.port(), standby.port());
    let databases = format!(
        "app = host=127.0.0.1,127.0.0.1 port={pp},{ps} dbname=postgres \
         pool_mode=transaction read_routing={routing} {extra}\n"
    );
    let pooler = start_with(
        primary,
        Setup {
            databases: &databases,
            pgbouncer: &format!(
                "server_login_retry = 1\nserver_connect_timeout = 2\nhttp_listen_port = {}\n",
                common::free_port()
            ),
            ..Setup::default()
        },
    )
    .await;
    (pooler, standby)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_everything_else_to_the_primary() {
    let (pooler, standby) = routed("on", "").await;
    let client = pooler.connect("postgres", "postgres", "app").await.unwrap();
    let is = "pg_is_in_recovery()";
    assert!(
        on_standby(&client, &format!("SELECT {is}")).await,
        "a plain read"
    );
    assert!(
        on_standby(
            &client,
            &format!("/* c */ WITH x AS (SELECT 1) SELECT {is} FROM x")
        )
        .await,
        "a CTE that only reads"
    );
    for write in [
        format!("SELECT {is} FROM t FOR UPDATE"),
        format!("SELECT {is} FROM t FOR SHARE"),
        format!("SELECT nextval('s'), {is}"),
        format!("SELECT pg_advisory_xact_lock(1), {is}"),
        format!("WITH x AS (INSERT INTO t VALUES (2) RETURNING id) SELECT {is} FROM x"),
        format!("SELECT {is}; INSERT INTO t VALUES (3)"),
        format!("INSERT INTO t VALUES (4) RETURNING {is}"),
    ] {
        let messages = client.simple_query(&write).await;
        let row = messages
            .unwrap_or_else(|e| panic!("{write}: {e:?}"))
            .into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(row.len() - 1).map(str::to_owned)),
                _ => None,
            });
        assert_eq!(
            row,
            Some(Some("f".to_owned())),
            "{write} runs on the primary"
        );
    }
    // A read-write transaction stays on the primary; a read-only one may
    // read from the replica.
    client.simple_query("BEGIN").await.unwrap();
    assert!(
        !on_standby(&client, &format!("SELECT {is}")).await,
        "inside BEGIN"
    );
    client.simple_query("COMMIT").await.unwrap();
    client.simple_query("BEGIN READ ONLY").await.unwrap();
    assert!(
        on_standby(&client, &format!("SELECT {is}")).await,
        "BEGIN READ ONLY"
    );
    client.simple_query("COMMIT").await.unwrap();
    // The extended protocol: a Parse, and later Binds of the prepared
    // statement (tokio-postgres prepares, then binds).
    let read = client.prepare(&format!("SELECT {is}")).await.unwrap();
    for _ in 0..2 {
        let row = client.query_one(&read, &[]).await.unwrap();
        assert!(row.get::<_, bool>(0), "a prepared read");
    }
    let write = client
        .prepare(&format!("SELECT nextval('s'), {is}"))
        .await
        .unwrap();
    let row = client.query_one(&write, &[]).await.unwrap();
    assert!(!row.get::<_, bool>(1), "a prepared nextval");

    // The pin, answered by the pooler, then lifted.
    client
        .simple_query("SET wharf.route = primary")
        .await
        .unwrap();
    assert!(
        !on_standby(&client, &format!("SELECT {is}")).await,
        "pinned"
    );
    let err = client
        .simple_query("SET wharf.route = somewhere")
        .await
        .unwrap_err();
    let err = err.as_db_error().expect("an error from the pooler");
    assert!(err.message().contains("wharf.route"), "{err:?}");
    assert!(
        !on_standby(&client, &format!("SELECT {is}")).await,
        "still pinned"
    );
    client.simple_query("SET wharf.route = auto").await.unwrap();
    assert!(
        on_standby(&client, &format!("SELECT {is}")).await,
        "unpinned"
    );
    // Writes work.
    client
        .simple_query("INSERT INTO t VALUES (10)")
        .await
        .unwrap();
    // Counted per pool in /metrics.
    let (_, metrics) = http::get(pooler.http_port.unwrap(), "/metrics").await;
    let scrape = http::parse(&metrics);
    let routed = |to| {
        let labels = [("database", "app"), ("user", "postgres"), ("to", to)];
        http::value(&scrape, "wharf_pooler_routed_transactions_total", &labels)
    };
    assert!(routed("reads") >= 6.0, "{}", routed("reads"));
    assert!(routed("primary") >= 10.0, "{}", routed("primary"));
    drop(client);
    drop(standby);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_the_primary_while_the_replica_is_down() {
    let (pooler, mut standby) = routed("on", "").await;
    let client = pooler.connect("postgres", "postgres", "app").await.unwrap();
    assert!(on_standby(&client, "SELECT pg_is_in_recovery()").await);
    let mut standby = blocking(move || {
        standby.stop().unwrap();
        standby
    })
    .await;
    // The replica's server is gone with it: its first transaction fails,
    // later ones are read on the primary.
    let mut on_primary = false;
    for _ in 0..20 {
        let client = pooler.connect("postgres", "postgres", "app").await.unwrap();
        if let Ok(messages) = client.simple_query("SELECT pg_is_in_recovery()").await {
            let row = messages.into_iter().find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            });
            if row.as_deref() == Some("f") {
                on_primary = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        on_primary,
        "reads go to the primary while the replica is down"
    );
    // And back to the replica once it is up again.
    standby = blocking(move || {
        standby.start_again().unwrap();
        standby
    })
    .await;
    let mut back = false;
    for _ in 0..60 {
        pooler.shared.router().reconnect(None);
        let client = pooler.connect("postgres", "postgres", "app").await.unwrap();
        if let Ok(messages) = client.simple_query("SELECT pg_is_in_recovery()").await {
            let row = messages.into_iter().find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            });
            if row.as_deref() == Some("t") {
                back = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(back, "reads go back to the replica once it answers again");
    drop(standby);
    pooler.stop().await;
}

/// Rewrites `from` as `to` in the pooler's ini file and reloads it.
async fn reload_replacing(pooler: &TestPooler, from: &str, to: &str) {
    let ini = std::fs::read_to_string(pooler.ini()).unwrap();
    assert!(ini.contains(from), "{from} in the ini");
    std::fs::write(pooler.ini(), ini.replace(from, to)).unwrap();
    pooler.shared.reload().await.expect("reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_turns_routing_on_and_off_for_clients_already_connected() {
    // Without routing, the line's target_session_attrs holds.
    let (pooler, standby) = routed("off", "target_session_attrs=read-write").await;
    let client = pooler.connect("postgres", "postgres", "app").await.unwrap();
    let read = "SELECT pg_is_in_recovery()";
    assert!(!on_standby(&client, read).await, "no routing yet");
    // The reads pool is made by the RELOAD.
    reload_replacing(&pooler, "read_routing=off", "read_routing=on").await;
    assert!(on_standby(&client, read).await, "routing on");
    reload_replacing(&pooler, "read_routing=on", "read_routing=off").await;
    assert!(
        !on_standby(&client, read).await,
        "routing off: all on the primary"
    );
    reload_replacing(&pooler, "read_routing=off", "read_routing=on").await;
    assert!(on_standby(&client, read).await, "routing on again");
    drop(client);
    drop(standby);
    pooler.stop().await;
}

//! Statistics: SHOW STATS totals count exactly what went through the
//! pooler, waits are seen in SHOW POOLS/CLIENTS, and averages are computed
//! every stats_period.

mod common;

use std::time::Duration;

use common::console::{console, eventually, setup, show, CONSOLE_USERLIST};
use common::{start, Setup};

fn num(table: &common::console::Table, col: &str) -> i64 {
    table.number("database", "postgres", col)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_count_transactions_queries_and_messages() {
    let pooler = start(setup()).await;
    let client = pooler.client().await;
    for _ in 0..25 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    for _ in 0..5 {
        client.simple_query("BEGIN").await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        client.simple_query("COMMIT").await.unwrap();
    }
    let admin = console(&pooler, "admin").await;
    let stats = show(&admin, "SHOW STATS").await;
    assert_eq!(num(&stats, "total_xact_count"), 30);
    assert_eq!(num(&stats, "total_query_count"), 40);
    assert_eq!(num(&stats, "total_server_assignment_count"), 30);
    assert_eq!(num(&stats, "total_client_login_count"), 1);
    assert_eq!(num(&stats, "total_client_parse_count"), 0);
    // Every Query message, byte for byte: "SELECT 1" is 14 bytes, "BEGIN"
    // 11, "COMMIT" 12.
    assert_eq!(num(&stats, "total_received"), 25 * 14 + 5 * (11 + 14 + 12));
    assert!(num(&stats, "total_sent") > 0);
    let query_time = num(&stats, "total_query_time");
    assert!(query_time > 0);
    assert!(num(&stats, "total_xact_time") >= query_time);
    // The extended protocol: one Parse and one Bind. The statement is kept
    // until the end: dropping it makes tokio-postgres send Close + Sync in
    // the background, one more transaction that would race the SHOWs below.
    let statement = client.prepare("SELECT $1::int").await.unwrap();
    client.query(&statement, &[&7i32]).await.unwrap();
    // STATS_TOTALS: PgBouncer's names, without `total_`.
    let totals = show(&admin, "SHOW STATS_TOTALS").await;
    assert_eq!(num(&totals, "client_parse_count"), 1);
    assert_eq!(num(&totals, "server_parse_count"), 1);
    assert_eq!(num(&totals, "bind_count"), 1);
    assert_eq!(
        num(&totals, "bytes_received"),
        num(&show(&admin, "SHOW STATS").await, "total_received")
    );
    // SHOW TOTALS sums every database, its rows named after PgBouncer's
    // counters.
    let overall = show(&admin, "SHOW TOTALS").await;
    assert_eq!(
        overall.number("name", "total_xact_count", "value"),
        num(&totals, "xact_count")
    );
    assert_eq!(
        overall.number("name", "total_client_bytes", "value"),
        num(&totals, "bytes_received")
    );
    assert_eq!(overall.number("name", "total_ps_bind_count", "value"), 1);
    drop(statement);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_show_in_pools_and_clients_and_wait_time() {
    let pooler = start(Setup {
        pgbouncer: "admin_users = admin\ndefault_pool_size = 1\n",
        userlist: CONSOLE_USERLIST,
        ..Setup::default()
    })
    .await;
    let admin = console(&pooler, "admin").await;
    let holder = pooler.client().await;
    let mut waiter_config: tokio_postgres::Config = pooler
        .url("postgres", "postgres", "postgres")
        .parse()
        .unwrap();
    waiter_config.application_name("waiter");
    let (waiter, connection) = waiter_config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    holder.simple_query("BEGIN").await.unwrap();
    let waiting =
        tokio::spawn(async move { waiter.simple_query("SELECT 1").await.map(|_| waiter) });
    eventually("a client waits", || async {
        let pools = show(&admin, "SHOW POOLS").await;
        pools.value2("database", "postgres", "user", "postgres", "cl_waiting") == "1"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let clients = show(&admin, "SHOW CLIENTS").await;
    assert_eq!(
        clients.value("application_name", "waiter", "state"),
        "waiting"
    );
    let pools = show(&admin, "SHOW POOLS").await;
    let maxwait_us = pools
        .value2("database", "postgres", "user", "postgres", "maxwait_us")
        .parse::<u64>()
        .unwrap();
    let maxwait = pools
        .value2("database", "postgres", "user", "postgres", "maxwait")
        .parse::<u64>()
        .unwrap();
    assert!(maxwait * 1_000_000 + maxwait_us >= 300_000, "{pools:?}");
    assert_eq!(
        pools.value2("database", "postgres", "user", "postgres", "sv_active"),
        "1"
    );
    holder.simple_query("COMMIT").await.unwrap();
    let _waiter = waiting.await.unwrap().unwrap();
    let stats = show(&admin, "SHOW STATS").await;
    assert!(num(&stats, "total_wait_time") >= 300_000, "{stats:?}");
    let clients = show(&admin, "SHOW CLIENTS").await;
    assert_eq!(clients.value("application_name", "waiter", "state"), "idle");
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn averages_are_computed_every_stats_period() {
    let pooler = start(Setup {
        pgbouncer: "admin_users = admin\nstats_period = 1\n",
        userlist: CONSOLE_USERLIST,
        ..Setup::default()
    })
    .await;
    let admin = console(&pooler, "admin").await;
    let client = pooler.client().await;
    let averages = show(&admin, "SHOW STATS_AVERAGES").await;
    assert!(averages
        .rows
        .iter()
        .all(|r| r[1..].iter().all(|v| v.as_deref() == Some("0"))));
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let averages = show(&admin, "SHOW STATS_AVERAGES").await;
    // STATS_AVERAGES: PgBouncer's names, without `avg_`.
    assert!(num(&averages, "xact_count") > 0, "{averages:?}");
    assert!(num(&averages, "query_count") > 0);
    assert!(num(&averages, "query_time") > 0);
    assert!(num(&averages, "bytes_received") > 0);
    // Once the load stops, the next period's averages drop to zero.
    eventually("averages back to zero", || async {
        let averages = show(&admin, "SHOW STATS_AVERAGES").await;
        num(&averages, "xact_count") == 0
    })
    .await;
    pooler.stop().await;
}

//! Several hosts per database: round-robin and sticky spreading, a stopped
//! host skipped and rejoining, `target_session_attrs` following a
//! promotion, and `max_replica_lag` (a primary and a streaming replica
//! made with `pg_basebackup -R`).

mod common;
#[path = "common/http.rs"]
mod http;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{start_with, Setup, TestPooler};
use tokio_postgres::Client;
use wharf_testkit::PgCluster;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

async fn cluster() -> PgCluster {
    blocking(PgCluster::start).await.expect("PostgreSQL")
}

/// The port of the server a query ran on, and whether it is a standby.
async fn where_am_i(client: &Client) -> Result<(i32, bool), tokio_postgres::Error> {
    let row = client
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// A new client of `db` and where its first query ran.
async fn probe(pooler: &TestPooler, db: &str) -> Result<(i32, bool), String> {
    let client = pooler
        .connect("postgres", "postgres", db)
        .await
        .map_err(|e| e.to_string())?;
    where_am_i(&client).await.map_err(|e| format!("{e:?}"))
}

/// Stops the primary (the pooler's cluster), promotes `standby`, and
/// probes `db` until a query gets through: where it ran, and how long
/// after the promotion began.
async fn fail_over(
    pooler: &mut TestPooler,
    standby: &PgCluster,
    db: &str,
) -> ((i32, bool), Duration) {
    pooler.cluster.stop().unwrap();
    let promoted_at = Instant::now();
    standby.promote().expect("promotion");
    while promoted_at.elapsed() < Duration::from_secs(20) {
        if let Ok(found) = probe(pooler, db).await {
            return (found, promoted_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no query through {db} within 20 s of the promotion");
}

/// Ports the servers of `db` run on, with `n` clients each holding a
/// transaction (so each has a server of its own).
async fn ports_of(pooler: &TestPooler, db: &str, n: usize) -> HashSet<i32> {
    let mut clients = Vec::new();
    let mut ports = HashSet::new();
    for _ in 0..n {
        let client = pooler.connect("postgres", "postgres", db).await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        ports.insert(where_am_i(&client).await.unwrap().0);
        clients.push(client);
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_servers_and_a_stopped_host_is_skipped_then_rejoins() {
    let a = cluster().await;
    let mut b = cluster().await;
    let (pa, pb) = (a.port(), b.port());
    let databases = format!(
        "multi = host=127.0.0.1,127.0.0.1 port={pa},{pb} dbname=postgres\n\
         sticky = host=127.0.0.1,127.0.0.1 port={pa},{pb} dbname=postgres load_balance_hosts=disable\n"
    );
    let pooler = start_with(
        a,
        Setup {
            databases: &databases,
            pgbouncer: &format!(
                "server_connect_timeout = 5\nadmin_users = postgres\nhttp_listen_port = {}\n",
                common::free_port()
            ),
            ..Setup::default()
        },
    )
    .await;
    let expected: HashSet<i32> = [i32::from(pa), i32::from(pb)].into();
    assert_eq!(ports_of(&pooler, "multi", 4).await, expected, "round-robin");
    assert_eq!(
        ports_of(&pooler, "sticky", 4).await,
        [i32::from(pa)].into(),
        "load_balance_hosts = disable stays on the first host"
    );

    blocking(move || {
        b.stop().unwrap();
        b
    })
    .await;
    // Servers on the stopped host are gone; new ones go to the live host,
    // with no client failing or waiting on the dead one.
    let started = Instant::now();
    for _ in 0..6 {
        let (port, _) = probe(&pooler, "multi").await.expect("a live host serves");
        assert_eq!(port, i32::from(pa));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // New servers, several at once: the dead host is tried and skipped.
    pooler.shared.router().reconnect(None);
    assert_eq!(ports_of(&pooler, "multi", 3).await, [i32::from(pa)].into());

    let admin = common::console::console(&pooler, "postgres").await;
    let hosts = common::console::show(&admin, "SHOW HOSTS").await;
    let b_port = pb.to_string();
    let b_row = hosts
        .rows
        .iter()
        .find(|r| {
            r[hosts.col("database")].as_deref() == Some("multi")
                && r[hosts.col("port")].as_deref() == Some(b_port.as_str())
        })
        .expect("the stopped host is listed");
    assert_eq!(b_row[hosts.col("state")].as_deref(), Some("backing_off"));
    let http = pooler.http_port.unwrap();
    let (_, metrics) = http::get(http, "/metrics").await;
    let scrape = http::parse(&metrics);
    let b_addr = format!("127.0.0.1:{pb}");
    let labels = [
        ("database", "multi"),
        ("user", "postgres"),
        ("host", b_addr.as_str()),
    ];
    assert_eq!(http::value(&scrape, "wharf_pooler_host_up", &labels), 0.0);
    // The dashboard's document lists the hosts too.
    let (_, api) = http::get(http, "/api/stats").await;
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    let multi = api["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["database"] == "multi")
        .expect("the multi pool");
    let down: Vec<&str> = multi["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["up"] == false)
        .map(|h| h["addr"].as_str().unwrap())
        .collect();
    assert_eq!(down, vec![b_addr.as_str()]);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_host_rejoins_once_it_answers_again() {
    let a = cluster().await;
    let mut b = cluster().await;
    let (pa, pb) = (a.port(), b.port());
    b.stop().unwrap();
    let databases =
        format!("multi = host=127.0.0.1,127.0.0.1 port={pa},{pb} dbname=postgres pool_size=8\n");
    let pooler = start_with(
        a,
        Setup {
            databases: &databases,
            ..Setup::default()
        },
    )
    .await;
    assert_eq!(ports_of(&pooler, "multi", 3).await, [i32::from(pa)].into());
    let mut b = blocking(move || {
        b.start_again().unwrap();
        b
    })
    .await;
    // After its backoff, new servers reach it again.
    let mut seen_b = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pooler.shared.router().reconnect(None);
        if ports_of(&pooler, "multi", 4).await.contains(&i32::from(pb)) {
            seen_b = true;
            break;
        }
    }
    assert!(seen_b, "the host that came back gets servers again");
    b.stop().unwrap();
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_pick_the_primary_or_the_standby_and_follow_a_promotion() {
    let primary = cluster().await;
    let standby = primary.replica().expect("a streaming replica");
    let (pp, ps) = (primary.port(), standby.port());
    // The standby is listed first: the role, not the order, decides.
    let databases = format!(
        "rw = host=127.0.0.1,127.0.0.1 port={ps},{pp} dbname=postgres target_session_attrs=read-write\n\
         ro = host=127.0.0.1,127.0.0.1 port={pp},{ps} dbname=postgres target_session_attrs=standby\n\
         pref = host=127.0.0.1,127.0.0.1 port={pp},{ps} dbname=postgres target_session_attrs=prefer-standby\n"
    );
    let mut pooler = start_with(
        primary,
        Setup {
            databases: &databases,
            pgbouncer: "server_login_retry = 1\n",
            ..Setup::default()
        },
    )
    .await;
    assert_eq!(probe(&pooler, "rw").await.unwrap(), (i32::from(pp), false));
    assert_eq!(probe(&pooler, "ro").await.unwrap(), (i32::from(ps), true));
    assert_eq!(probe(&pooler, "pref").await.unwrap(), (i32::from(ps), true));

    // Failover: the primary goes away, the standby is promoted.
    let (found, took) = fail_over(&mut pooler, &standby, "rw").await;
    eprintln!("read-write pool on the new primary {took:?} after the promotion began");
    assert_eq!(found, (i32::from(ps), false));
    // No standby is left: the standby pool says so rather than hanging.
    let err = probe(&pooler, "ro").await.unwrap_err();
    assert!(err.contains("is a standby"), "{err}");
    drop(standby);
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_over_max_replica_lag_is_not_used() {
    replica_over_lag_is_not_used("1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_over_max_replica_lag_in_bytes_is_not_used() {
    replica_over_lag_is_not_used("64kB").await;
}

/// A standby within `limit` serves a `prefer-standby` pool; once its
/// replay is paused and the primary writes (some 350 kB of WAL, and 1.5 s
/// pass), it is passed over for the primary.
async fn replica_over_lag_is_not_used(limit: &str) {
    let primary = cluster().await;
    let standby = primary.replica().expect("a streaming replica");
    let (pp, ps) = (primary.port(), standby.port());
    let databases = format!(
        "ro = host=127.0.0.1,127.0.0.1 port={ps},{pp} dbname=postgres \
         target_session_attrs=prefer-standby max_replica_lag={limit}\n"
    );
    // A commit the standby has replayed, so that its lag has a measure.
    primary
        .psql("postgres", "CREATE TABLE before_lag AS SELECT 1 AS x")
        .unwrap();
    let pooler = start_with(
        primary,
        Setup {
            databases: &databases,
            ..Setup::default()
        },
    )
    .await;
    let mut caught_up = false;
    for _ in 0..100 {
        if standby
            .psql("postgres", "SELECT count(*) FROM before_lag")
            .is_ok()
        {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(caught_up, "the standby replays the first commit");
    assert_eq!(probe(&pooler, "ro").await.unwrap(), (i32::from(ps), true));

    standby
        .psql("postgres", "SELECT pg_wal_replay_pause()")
        .unwrap();
    pooler
        .cluster
        .psql(
            "postgres",
            "CREATE TABLE lag_marker AS SELECT generate_series(1, 10000) AS x",
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pooler.shared.router().reconnect(None);
    assert_eq!(
        probe(&pooler, "ro").await.unwrap(),
        (i32::from(pp), false),
        "a standby behind by more than max_replica_lag is passed over"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_pgbench_load_moves_writes_and_no_client_hangs() {
    let primary = cluster().await;
    let pgbench = primary.bin("pgbench");
    common::pgbench::init(&pgbench, primary.port());
    let standby = primary.replica().expect("a streaming replica");
    let (pp, ps) = (primary.port(), standby.port());
    // pgbench uses database "postgres": it becomes the read-write pool.
    let databases = format!(
        "postgres = host=127.0.0.1,127.0.0.1 port={ps},{pp} dbname=postgres \
         target_session_attrs=read-write\n"
    );
    let mut pooler = start_with(
        primary,
        Setup {
            databases: &databases,
            pgbouncer: "server_login_retry = 1\n",
            ..Setup::default()
        },
    )
    .await;
    let load = common::pgbench::spawn(pgbench, pooler.port, &["-c", "4", "-j", "2", "-T", "8"]);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (found, took) = fail_over(&mut pooler, &standby, "postgres").await;
    eprintln!(
        "under pgbench load: read-write pool on the new primary {took:?} after the promotion began"
    );
    assert_eq!(found, (i32::from(ps), false));
    // pgbench's clients lost their servers mid-transaction and got errors;
    // none may hang: pgbench ends within its run time and some slack.
    let output = tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .expect("no pgbench client hangs")
        .unwrap();
    eprintln!(
        "pgbench: {}",
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .last()
            .unwrap_or_default()
    );
    drop(standby);
    pooler.stop().await;
}

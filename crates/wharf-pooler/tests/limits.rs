//! Limits shared across pools (`max_db_connections`, `max_user_connections`)
//! and the reserve pool, with real servers.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start, Setup, TestPooler};
use tokio_postgres::Client;

/// Server connections logged in as one of `users`.
fn server_connections_of(pooler: &TestPooler, users: &[&str]) -> usize {
    let list = users
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(",");
    pooler
        .cluster
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename IN ({list}) AND application_name <> 'psql' \
                 AND backend_type = 'client backend'"
            ),
        )
        .expect("psql")
        .parse()
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_holds_across_the_pools_of_several_users() {
    let pooler = start(Setup {
        pgbouncer: "max_db_connections = 2\ndefault_pool_size = 5",
        userlist: "\"alice\" \"pw-a\"\n\"bob\" \"pw-b\"\n",
        ..Setup::default()
    })
    .await;
    pooler.cluster.create_user("alice", "pw-a").unwrap();
    pooler.cluster.create_user("bob", "pw-b").unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (user, password) in [("alice", "pw-a"), ("bob", "pw-b")] {
        for _ in 0..6 {
            let url = pooler.url(user, password, "postgres");
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("login through the pooler");
                tokio::spawn(connection);
                for _ in 0..4 {
                    client
                        .simple_query("SELECT pg_sleep(0.05)")
                        .await
                        .expect("query under the shared limit");
                }
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
    }
    let mut most = 0;
    while done.load(Ordering::SeqCst) < tasks.len() {
        most = most.max(server_connections_of(&pooler, &["alice", "bob"]));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            tasks.iter().all(|t| !t.is_finished()) || done.load(Ordering::SeqCst) > 0,
            "a client task failed"
        );
    }
    for task in tasks {
        task.await.expect("client task");
    }
    assert!(most >= 1, "never saw a server connection");
    assert!(
        most <= 2,
        "{most} server connections with max_db_connections = 2"
    );
    pooler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserve_pool_serves_a_client_that_waited_reserve_pool_timeout() {
    let pooler = start(Setup {
        pgbouncer: "default_pool_size = 1\nreserve_pool_size = 1\nreserve_pool_timeout = 1",
        ..Setup::default()
    })
    .await;
    let holder = pooler.client().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = pooler.client().await;
    let started = tokio::time::Instant::now();
    let rows = tokio::time::timeout(Duration::from_secs(20), waiter.simple_query("SELECT 2"))
        .await
        .expect("served from the reserve, not after query_wait_timeout")
        .expect("query");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the reserve opened before reserve_pool_timeout: {:?}",
        started.elapsed()
    );
    let values: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["2"]);
    let activity = pooler
        .cluster
        .psql(
            "postgres",
            "SELECT usename, application_name, state, query FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .unwrap();
    // The reserve server closed when it came back with nobody waiting;
    // the holder's is left.
    assert_eq!(
        server_connections_of(&pooler, &["postgres"]),
        1,
        "pg_stat_activity:\n{activity}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    pooler.stop().await;
}

/// Waits up to 5 s for `want` server connections of `postgres`; the last
/// count seen.
async fn settle_at(pooler: &TestPooler, want: usize) -> usize {
    let mut seen = 0;
    for _ in 0..50 {
        seen = tokio::task::block_in_place(|| server_connections_of(pooler, &["postgres"]));
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// PgBouncer 1.21+: a database with a forced user keeps `min_pool_size`
/// servers open from the start, before any client comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_fills_a_forced_user_pool_with_no_client() {
    let cluster = tokio::task::spawn_blocking(wharf_testkit::PgCluster::start)
        .await
        .expect("cluster task")
        .expect("throwaway PostgreSQL");
    let databases = format!(
        "forced = host=127.0.0.1 port={} dbname=postgres user=postgres",
        cluster.port()
    );
    let pooler = common::start_with(
        cluster,
        Setup {
            pgbouncer: "min_pool_size = 3\n",
            databases: &databases,
            ..Setup::default()
        },
    )
    .await;
    let seen = settle_at(&pooler, 3).await;
    let activity = pooler
        .cluster
        .psql(
            "postgres",
            "SELECT usename, datname, application_name, state, query FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .unwrap();
    assert_eq!(seen, 3, "min_pool_size = 3 at start:\n{activity}");
    pooler.stop().await;
}

/// `min_pool_size` is the least number of servers of a pool in total, as
/// PgBouncer documents ("add more server connections to pool if below
/// this number"): servers in use count, so a pool under load opens no
/// idle servers on top of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_counts_servers_in_use() {
    let pooler = start(Setup {
        pgbouncer: "min_pool_size = 3\ndefault_pool_size = 10\n",
        ..Setup::default()
    })
    .await;
    let first = pooler.client().await;
    first.simple_query("SELECT 1").await.unwrap();
    assert_eq!(settle_at(&pooler, 3).await, 3, "min_pool_size = 3");
    let mut clients = vec![first];
    for _ in 0..4 {
        clients.push(pooler.client().await);
    }
    for client in &clients {
        client.simple_query("BEGIN").await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
    }
    // Five in use; give the engine's upkeep (every second) time to open
    // more if it would.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = tokio::task::block_in_place(|| server_connections_of(&pooler, &["postgres"]));
    assert_eq!(seen, 5, "five servers in use, none idle on top");
    pooler.stop().await;
}

/// Logs in through the pooler, or gives the refusal's SQLSTATE and message.
async fn try_login(
    pooler: &TestPooler,
    user: &str,
    password: &str,
) -> Result<Client, (String, String)> {
    match pooler.login(user, password, "postgres").await {
        Ok(client) => Ok(client),
        Err(err) => {
            let db = err.as_db_error().unwrap_or_else(|| panic!("{user}: {err}"));
            Err((db.code().code().to_owned(), db.message().to_owned()))
        }
    }
}

/// Waits until `user` logs in again: a closed client leaves the registry a
/// moment after its socket closes.
async fn logs_in_again(pooler: &TestPooler, user: &str, password: &str) -> Client {
    for _ in 0..100 {
        if let Ok(client) = try_login(pooler, user, password).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user} never got in again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limits_per_database_and_per_user_refuse_with_pgbouncers_words() {
    let pooler = start(Setup {
        pgbouncer: "max_db_client_connections = 3\nmax_user_client_connections = 2\n\
                    admin_users = postgres",
        userlist: "\"postgres\" \"postgres\"\n\"alice\" \"pw-a\"\n\"bob\" \"pw-b\"\n",
        ..Setup::default()
    })
    .await;
    pooler.cluster.create_user("alice", "pw-a").unwrap();
    pooler.cluster.create_user("bob", "pw-b").unwrap();
    let user_limit = (
        "53300".to_owned(),
        "client connections exceeded (max_user_client_connections)".to_owned(),
    );
    let db_limit = (
        "53300".to_owned(),
        "client connections exceeded (max_db_client_connections)".to_owned(),
    );
    let a1 = try_login(&pooler, "alice", "pw-a").await.expect("alice 1");
    let _a2 = try_login(&pooler, "alice", "pw-a").await.expect("alice 2");
    assert_eq!(
        try_login(&pooler, "alice", "pw-a").await.err(),
        Some(user_limit.clone())
    );
    // The console is not counted, and does not count.
    let _console = pooler
        .login("postgres", "postgres", "pgbouncer")
        .await
        .expect("the console");
    let _b1 = try_login(&pooler, "bob", "pw-b").await.expect("bob 1");
    // Three clients on the database: the fourth is refused, whoever it is.
    assert_eq!(
        try_login(&pooler, "bob", "pw-b").await.err(),
        Some(db_limit.clone())
    );
    // A client that leaves makes room.
    drop(a1);
    let a3 = logs_in_again(&pooler, "alice", "pw-a").await;
    a3.simple_query("SELECT 1")
        .await
        .expect("a query after the limit");
    // Full again; the database's limit is checked first, as in PgBouncer.
    assert_eq!(
        try_login(&pooler, "alice", "pw-a").await.err(),
        Some(db_limit)
    );
    pooler.stop().await;
}

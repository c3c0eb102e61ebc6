//! The engine against a real, throwaway PostgreSQL: limits, hooks, backends
//! killed behind the pool's back, and a database that goes away and comes
//! back.

#[path = "../examples/support/pg_manager.rs"]
mod pg_manager;

use std::time::Duration;

use pg_manager::PgManager;
use wharf::{Error, Pool};
use wharf_testkit::PgCluster;

async fn cluster() -> PgCluster {
    tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("cluster start task")
        .expect("start a throwaway PostgreSQL")
}

/// Runs a blocking lifecycle step (stop, start) off the runtime's threads.
async fn blocking(
    mut cluster: PgCluster,
    step: fn(&mut PgCluster) -> Result<(), wharf_testkit::Error>,
) -> PgCluster {
    tokio::task::spawn_blocking(move || {
        step(&mut cluster).expect("cluster lifecycle step");
        cluster
    })
    .await
    .expect("lifecycle task")
}

fn psql(cluster: &PgCluster, sql: &str) -> String {
    cluster.psql("postgres", sql).expect("psql")
}

fn backends(cluster: &PgCluster, app: &str) -> usize {
    psql(
        cluster,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"),
    )
    .parse()
    .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_a_few_server_connections() {
    let cluster = cluster().await;
    let pool = Pool::builder(PgManager::new(&cluster.url("postgres")).unwrap())
        .max_size(5)
        .on_connect(|client| {
            Box::pin(async move {
                client
                    .batch_execute("SET application_name = 'wharf_share'")
                    .await?;
                Ok(())
            })
        })
        .build()
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..50i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..20i64 {
                let client = pool.get().await?;
                let row = client
                    .query_one("SELECT $1::bigint * 2", &[&(i * j)])
                    .await?;
                assert_eq!(row.get::<_, i64>(0), i * j * 2);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let m = pool.metrics();
    assert_eq!(m.acquired(), 1000);
    assert!(
        m.created <= 5,
        "opened {} connections for a pool of 5",
        m.created
    );
    assert_eq!(m.timeouts, 0);
    let on_server = backends(&cluster, "wharf_share");
    assert!(
        (1..=5).contains(&on_server),
        "{on_server} server connections for a pool of 5"
    );
    pool.close().await;
    // Closing drops the clients; the server notices shortly after.
    for _ in 0..50 {
        if backends(&cluster, "wharf_share") == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server connections still open after close()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_terminated_behind_the_pools_back_are_replaced_unseen() {
    let cluster = cluster().await;
    let pool = Pool::builder(PgManager::new(&cluster.url("postgres")).unwrap())
        .max_size(4)
        .min_idle(4)
        .validate_after(Duration::from_millis(100))
        .on_connect(|client| {
            Box::pin(async move {
                client
                    .batch_execute("SET application_name = 'wharf_kill'")
                    .await?;
                Ok(())
            })
        })
        .build()
        .unwrap();
    pool.ready().await.unwrap();
    assert_eq!(backends(&cluster, "wharf_kill"), 4);

    let killed = psql(
        &cluster,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'wharf_kill'",
    );
    assert_eq!(killed, "4");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Every one of these would fail on a dead connection; the pre-checkout
    // check catches them and the caller never knows.
    let mut held = Vec::new();
    for _ in 0..4 {
        let client = pool.get().await.expect("a healthy connection");
        client
            .simple_query("SELECT 1")
            .await
            .expect("query on a fresh connection");
        held.push(client);
    }
    drop(held);
    let m = pool.metrics();
    assert_eq!(m.closed_for(wharf::CloseReason::FailedCheck), 4);
    assert_eq!(m.created, 8);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_gives_clear_errors_and_the_pool_recovers() {
    let cluster = cluster().await;
    let pool = Pool::builder(PgManager::new(&cluster.url("postgres")).unwrap())
        .max_size(3)
        .acquire_timeout(Duration::from_millis(500))
        .validate_after(Duration::ZERO)
        .connect_backoff(Duration::from_millis(20))
        .connect_backoff_max(Duration::from_millis(200))
        .build()
        .unwrap();
    pool.get()
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();

    let cluster = blocking(cluster, PgCluster::stop).await;

    let started = tokio::time::Instant::now();
    let err = pool.get().await.expect_err("no database, no connection");
    assert!(started.elapsed() < Duration::from_secs(2), "get() hung");
    match &err {
        Error::Timeout { last_error, .. } => {
            assert!(
                last_error.is_some(),
                "the timeout should carry the connect error"
            )
        }
        other => panic!("expected a timeout, got {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("last connect error"), "{message}");

    let _cluster = blocking(cluster, PgCluster::start_again).await;
    let mut recovered = false;
    for _ in 0..40 {
        if let Ok(client) = pool.get().await {
            if client.simple_query("SELECT 1").await.is_ok() {
                recovered = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "pool did not recover after the database came back"
    );
    let status = pool.status();
    assert_eq!(status.in_use, 0);
    assert!(status.size <= 3);
    pool.close().await;
}

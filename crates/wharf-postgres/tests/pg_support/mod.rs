//! Shared by this crate's own integration tests: throwaway clusters, pools
//! tagged with an application name, and what the server says about them.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use wharf_postgres::{PgManager, Pool};
use wharf_testkit::{PgCluster, PgClusterBuilder};

pub async fn cluster() -> PgCluster {
    cluster_with(PgCluster::builder()).await
}

pub async fn cluster_with(builder: PgClusterBuilder) -> PgCluster {
    tokio::task::spawn_blocking(move || builder.start())
        .await
        .expect("cluster start task")
        .expect("start a throwaway PostgreSQL")
}

pub fn psql(cluster: &PgCluster, sql: &str) -> String {
    cluster.psql("postgres", sql).expect("psql")
}

/// A pool whose connections carry `application_name = app`, so the tests
/// can find their backends in `pg_stat_activity`.
pub fn pool(manager: PgManager, app: &str, max_size: usize) -> Pool {
    let set_name = format!("SET application_name = '{app}'");
    Pool::builder(manager)
        .max_size(max_size)
        .acquire_timeout(Duration::from_secs(5))
        .on_connect(move |client| {
            let set_name = set_name.clone();
            Box::pin(async move {
                client.batch_execute(&set_name).await?;
                Ok(())
            })
        })
        .build()
        .expect("build the pool")
}

/// The `state` of every backend serving `app`.
pub fn backend_states(cluster: &PgCluster, app: &str) -> Vec<String> {
    let out = psql(
        cluster,
        &format!(
            "SELECT state FROM pg_stat_activity WHERE application_name = '{app}' ORDER BY pid"
        ),
    );
    out.lines().map(str::to_owned).collect()
}

/// Waits (up to 10 s) until the backends serving `app` are in exactly
/// `expected` states, and returns what it last saw.
pub async fn await_backend_states(
    cluster: &PgCluster,
    app: &str,
    expected: &[&str],
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states = backend_states(cluster, app);
        if states == expected || Instant::now() >= deadline {
            return states;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the pool's counts agree with each other and nothing is in use,
/// allowing up to 10 s for connects already under way (`size` counts them)
/// to finish.
pub async fn assert_settled(pool: &Pool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = pool.status();
        let settled = status.in_use == 0 && status.waiting == 0 && status.size == status.idle;
        if settled {
            return;
        }
        assert!(Instant::now() < deadline, "pool never settled: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

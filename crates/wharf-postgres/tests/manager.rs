//! `PgManager` as the pool sees it: connect failures that say why, and
//! connections found broken when they come back.

mod common;

use std::time::Duration;

use common::{cluster, pool, psql};
use wharf::CloseReason;
use wharf_postgres::{Error, PgManager, Pool, PoolExt};
use wharf_testkit::PgCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_connect_is_explained_in_the_timeout() {
    let cluster = cluster(PgCluster::builder()).await;
    let url = format!(
        "postgres://{}:wrong-password@{}:{}/postgres",
        cluster.user(),
        cluster.host(),
        cluster.port()
    );
    let pool = Pool::builder(PgManager::from_url(&url).unwrap())
        .max_size(1)
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();

    let err = pool.query("SELECT 1", &[]).await.unwrap_err();
    assert!(
        matches!(err, Error::Pool(wharf::Error::Timeout { .. })),
        "{err:?}"
    );
    // tokio-postgres alone would say only "db error".
    let message = err.to_string();
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_died_in_use_is_not_kept() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = pool(
        PgManager::from_url(&cluster.url("postgres")).unwrap(),
        "broken_in_use",
        1,
    );

    let conn = pool.get().await.unwrap();
    let pid: i32 = conn
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        psql(
            &cluster,
            &format!("SELECT pg_terminate_backend({pid}, 5000)")
        ),
        "t"
    );
    assert!(conn.simple_query("SELECT 1").await.is_err());
    // The socket's end may reach the driver task a moment after the error
    // reaches us.
    for _ in 0..500 {
        if conn.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(conn);

    assert_eq!(pool.metrics().closed_for(CloseReason::Broken), 1);
    assert_eq!(pool.status().size, 0, "{:?}", pool.status());
    let row = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap();
    assert_ne!(row.get::<_, i32>(0), pid);
    pool.close().await;
}

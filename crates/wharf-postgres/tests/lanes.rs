//! Lanes against a real PostgreSQL: a slow lane saturated by `pg_sleep`
//! (its cap in use, more callers queued in it) leaves the fast lane its
//! connections, and every fast query completes while all the slow ones are
//! still sleeping.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, eventually, pg_config, psql};
use wharf_postgres::{PgManager, Pool};
use wharf_testkit::PgCluster;

const SLOW_CALLERS: usize = 5;

fn sleeping_backends(cluster: &PgCluster) -> usize {
    psql(
        cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'",
    )
    .parse()
    .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lane_saturated_by_pg_sleep_leaves_the_fast_lane_its_connections() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = Pool::builder(PgManager::new(pg_config(&cluster, "lanes")))
        .max_size(4)
        .acquire_timeout(Duration::from_secs(120))
        .lane("fast", 2)
        .lane("slow", 2)
        .build()
        .unwrap();

    let slow_done = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..SLOW_CALLERS)
        .map(|_| {
            let pool = pool.clone();
            let slow_done = slow_done.clone();
            tokio::spawn(async move {
                let conn = pool.get_in("slow").await.expect("a slow-lane connection");
                // Cancelled by the test once the fast lane has been served.
                let _ = conn.simple_query("SELECT pg_sleep(600)").await;
                slow_done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let saturated = eventually(Duration::from_secs(30), || {
        let lane = &pool.metrics().lanes[1];
        lane.in_use == 2 && lane.waiting == SLOW_CALLERS - 2 && sleeping_backends(&cluster) == 2
    })
    .await;
    assert!(saturated, "slow lane: {:?}", pool.metrics().lanes[1]);

    for i in 0..20i32 {
        let conn = pool.get_in("fast").await.expect("the fast lane is served");
        let row = conn.query_one("SELECT $1::int + 1", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    assert_eq!(
        slow_done.load(Ordering::SeqCst),
        0,
        "fast work finished first"
    );
    let lanes = pool.metrics().lanes;
    assert_eq!((lanes[1].in_use, lanes[1].waiting), (2, SLOW_CALLERS - 2));
    assert_eq!((lanes[0].acquired, lanes[0].timeouts), (20, 0));
    assert!(pool.status().size <= 4);

    // Wake the sleepers (and the ones queued behind them) and clean up.
    let all_done = eventually(Duration::from_secs(60), || {
        psql(
            &cluster,
            "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'",
        );
        slow.iter().all(|task| task.is_finished())
    })
    .await;
    assert!(all_done, "slow callers still running");
    assert_eq!(slow_done.load(Ordering::SeqCst), SLOW_CALLERS);
    pool.close().await;
}

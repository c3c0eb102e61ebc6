//! Slow queries hold every connection of the pool (`pg_sleep(2)` on all
//! four): other callers get the pool's acquire-timeout error, which says
//! what the pool was doing, within the acquire timeout; once the slow
//! queries end the pool serves again.

mod common;

use std::time::Duration;

use common::{assert_settled, cluster, eventually, pg_config};
use tokio::time::Instant;
use wharf_postgres::{Error, PgManager, Pool, PoolExt};
use wharf_testkit::PgCluster;

const APP: &str = "faults_slow";
const MAX_SIZE: usize = 4;
const OTHERS: usize = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);
const SLOW_QUERY: Duration = Duration::from_secs(2);
/// Scheduling noise on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_queries_on_every_connection_time_others_out_then_the_pool_serves_again() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool: Pool = Pool::builder(PgManager::new(pg_config(&cluster, APP)))
        .name(APP)
        .max_size(MAX_SIZE)
        .min_idle(MAX_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .build()
        .unwrap();
    pool.ready().await.unwrap();

    let slow_started = Instant::now();
    let slow: Vec<_> = (0..MAX_SIZE)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute(
                    &format!("SELECT pg_sleep({})", SLOW_QUERY.as_secs_f64()),
                    &[],
                )
                .await
            })
        })
        .collect();
    assert!(
        eventually(SLACK, || pool.status().in_use == MAX_SIZE).await,
        "the slow queries did not take every connection: {:?}",
        pool.status()
    );

    let others: Vec<_> = (0..OTHERS)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = pool.query("SELECT 1", &[]).await;
                (started.elapsed(), result)
            })
        })
        .collect();
    let mut waits = Vec::new();
    let mut message = String::new();
    for other in others {
        let (took, result) = other.await.unwrap();
        waits.push(took);
        let error = result.expect_err("a connection while all were busy");
        message = error.to_string();
        match &error {
            Error::Pool(wharf::Error::Timeout {
                waited,
                status,
                last_error,
            }) => {
                assert!(*waited >= ACQUIRE_TIMEOUT, "gave up early: {message}");
                assert_eq!(status.in_use, MAX_SIZE, "{message}");
                assert_eq!(status.max_size, MAX_SIZE, "{message}");
                assert_eq!(status.idle, 0, "{message}");
                assert!(last_error.is_none(), "no connect failed, yet: {message}");
            }
            other => panic!("expected the pool's acquire timeout, got {other:?}"),
        }
        assert!(message.starts_with("timed out after "), "{message}");
        assert!(
            message.contains(" waiting for a connection: 4/4 in use, 0 idle, "),
            "{message}"
        );
        assert!(message.contains(" waiting"), "{message}");
        assert!(
            took >= ACQUIRE_TIMEOUT && took <= ACQUIRE_TIMEOUT + SLACK,
            "a caller waited {took:?} for a {ACQUIRE_TIMEOUT:?} acquire timeout"
        );
    }
    assert!(
        slow_started.elapsed() < SLOW_QUERY,
        "the slow queries ended before the others timed out: the test proved nothing"
    );

    for query in slow {
        query
            .await
            .unwrap()
            .expect("the slow query itself succeeds");
    }
    let slow_took = slow_started.elapsed();
    let served = Instant::now();
    let row = pool.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let served_in = served.elapsed();
    assert!(served_in < SLACK, "served only after {served_in:?}");

    let m = pool.metrics();
    let status = assert_settled(&pool).await;
    eprintln!(
        "faults_slow: {OTHERS} callers timed out after {:?}..{:?} (acquire timeout {ACQUIRE_TIMEOUT:?}) \
         with \"{message}\"; slow queries took {slow_took:?}; next query served in {served_in:?}; \
         {status:?}, leaked 0",
        waits.iter().min().unwrap(),
        waits.iter().max().unwrap(),
    );
    assert_eq!(m.timeouts, OTHERS as u64);
    assert_eq!(
        m.created, MAX_SIZE as u64,
        "the pool grew or churned: {m:?}"
    );
    assert_eq!(status.size, MAX_SIZE);
    pool.close().await;
}

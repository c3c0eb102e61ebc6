//! The circuit breaker against a real PostgreSQL: it opens while the
//! server is stopped (queries on dead connections, failed connects and
//! acquire timeouts all count), refuses callers at once while open, and
//! after the server is back a single probe closes it.

mod common;

use std::time::Duration;

use common::{cluster, lifecycle, pg_config};
use tokio::time::sleep;
use wharf::{BreakerConfig, CircuitState, Failure};
use wharf_postgres::{Error, PgManager, Pool};
use wharf_testkit::PgCluster;

/// Longer than a failing call takes (`ACQUIRE_TIMEOUT`), so that the call
/// after the one that opened the circuit finds it still open, not already
/// half-open.
const OPEN_FOR: Duration = Duration::from_secs(3);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

async fn select_one(pool: &Pool) -> Result<(), Error> {
    pool.run(|conn| {
        Box::pin(async move {
            conn.simple_query("SELECT 1").await?;
            Ok::<_, Error>(())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_while_postgres_is_stopped_and_one_probe_closes_it_once_it_is_back() {
    let cluster = cluster(PgCluster::builder()).await;
    let pool = Pool::builder(PgManager::new(pg_config(&cluster, "circuit")))
        .max_size(2)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .connect_backoff(Duration::from_millis(50))
        .connect_backoff_max(Duration::from_millis(200))
        .circuit_breaker(BreakerConfig {
            failure_rate: 0.5,
            min_calls: 3,
            window: Duration::from_secs(600),
            open_for: OPEN_FOR,
            half_open_probes: 1,
        })
        .build()
        .unwrap();
    for _ in 0..3 {
        select_one(&pool).await.expect("the server is up");
    }
    assert_eq!(pool.status().circuit, CircuitState::Closed);

    let cluster = lifecycle(cluster, PgCluster::stop).await;
    let mut failures = 0;
    let refusal = loop {
        match select_one(&pool).await {
            Err(Error::Pool(err @ wharf::Error::CircuitOpen { .. })) => break err,
            Err(_) => failures += 1,
            Ok(()) => panic!("a query succeeded with the server stopped"),
        }
        assert!(
            failures <= 10,
            "the circuit never opened: {:?}",
            pool.metrics().circuit
        );
    };
    // Failed connects count too, so the circuit may open before the third
    // failed call; it must open by then (3 of 6 calls at 50 %).
    assert!((1..=3).contains(&failures), "{failures} failed calls");
    assert_eq!(pool.status().circuit, CircuitState::Open);
    match &refusal {
        wharf::Error::CircuitOpen {
            last_failure: Some(failure),
            ..
        } => assert!(
            matches!(
                failure,
                Failure::Connect(_) | Failure::AcquireTimeout(_) | Failure::Work(_)
            ),
            "{failure:?}"
        ),
        other => panic!("no cause in {other:?}"),
    }
    assert!(refusal.to_string().starts_with("circuit open"), "{refusal}");

    let _cluster = lifecycle(cluster, PgCluster::start_again).await;
    // Not a timing assertion: waiting past open_for is what lets a probe in.
    sleep(OPEN_FOR + Duration::from_millis(100)).await;
    select_one(&pool)
        .await
        .expect("the probe is served by the restarted server");
    assert_eq!(pool.status().circuit, CircuitState::Closed);
    let circuit = pool.metrics().circuit.unwrap();
    assert_eq!(
        (circuit.opened, circuit.half_opened, circuit.closed),
        (1, 1, 1),
        "one probe closed it"
    );
    select_one(&pool).await.expect("closed: calls go through");
    pool.close().await;
}

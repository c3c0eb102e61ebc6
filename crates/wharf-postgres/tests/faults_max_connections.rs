//! The server is at its connection limit: other clients hold every slot,
//! so each connect the pool tries is refused with "sorry, too many clients
//! already" (SQLSTATE 53300). Callers get that error, clearly, the pool
//! retries with backoff rather than in a loop, and it recovers once the
//! other clients let go.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_settled, backends, cluster, densest, eventually, pg_config, sqlstate, Recording,
};
use tokio::time::{sleep, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use wharf::Pool;
use wharf_postgres::{Error, PgManager, PoolExt};
use wharf_testkit::PgCluster;

/// Small, and with no slots kept back for superusers (every client here
/// is one), so that a few clients fill the server.
const SERVER_SLOTS: u32 = 8;
const MAX_SIZE: usize = 4;
/// Many more callers than connections: the connect rate must not grow
/// with the number of callers waiting.
const CALLERS: usize = 20;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_BACKOFF: Duration = Duration::from_millis(100);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
const REFUSING: Duration = Duration::from_secs(3);
/// Scheduling noise on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(2);

async fn full_cluster() -> (PgCluster, Vec<Client>) {
    let cluster = cluster(
        PgCluster::builder()
            .max_connections(SERVER_SLOTS)
            .setting("superuser_reserved_connections", "0"),
    )
    .await;
    let config = pg_config(&cluster, "faults_hog");
    let mut hogs = Vec::new();
    for _ in 0..SERVER_SLOTS {
        let (client, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        hogs.push(client);
    }
    let refused = config
        .connect(NoTls)
        .await
        .map(drop)
        .expect_err("the server should be full");
    assert_eq!(
        refused.code(),
        Some(&SqlState::TOO_MANY_CONNECTIONS),
        "{refused}"
    );
    (cluster, hogs)
}

#[derive(Default)]
struct Seen {
    timeouts: u64,
    /// Timeouts whose last connect error was the server's 53300.
    too_many: u64,
    other: Vec<String>,
    /// One timeout as the caller prints it.
    sample: Option<String>,
    first_success: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_is_reported_retried_with_backoff_and_recovered_from() {
    const APP: &str = "faults_max_connections";
    let (cluster, hogs) = full_cluster().await;
    let (manager, attempts) = Recording::new(PgManager::new(pg_config(&cluster, APP)));
    let pool = Pool::builder(manager)
        .name(APP)
        .max_size(MAX_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_backoff(CONNECT_BACKOFF)
        .connect_backoff_max(CONNECT_BACKOFF_MAX)
        .build()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let pool = pool.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Seen::default();
                while !stop.load(Ordering::Relaxed) && seen.first_success.is_none() {
                    match pool.get().await {
                        Ok(client) => {
                            client.simple_query("SELECT 1").await.unwrap();
                            seen.first_success = Some(Instant::now());
                        }
                        Err(error @ wharf::Error::Timeout { .. }) => {
                            seen.timeouts += 1;
                            let wharf::Error::Timeout {
                                last_error: Some(cause),
                                ..
                            } = &error
                            else {
                                continue;
                            };
                            // What a caller logs must say why, not just
                            // that it timed out.
                            let message = error.to_string();
                            assert!(message.contains("too many clients"), "{message}");
                            assert_eq!(
                                sqlstate(&**cause),
                                Some(SqlState::TOO_MANY_CONNECTIONS),
                                "{message}"
                            );
                            seen.too_many += 1;
                            seen.sample.get_or_insert(message);
                        }
                        Err(other) => seen.other.push(other.to_string()),
                    }
                }
                seen
            })
        })
        .collect();

    sleep(REFUSING).await;
    let refusing_for = started.elapsed();
    let tried = attempts.between(started, Instant::now());
    let metrics = pool.metrics();
    assert_eq!(metrics.created, 0, "connected to a full server?");

    drop(hogs);
    let released = Instant::now();
    let recovered = eventually(CONNECT_BACKOFF_MAX + SLACK, || {
        callers.iter().all(tokio::task::JoinHandle::is_finished)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for caller in callers {
        seen.push(caller.await.unwrap());
    }
    let recovered_in = seen
        .iter()
        .filter_map(|s| s.first_success)
        .max()
        .map(|t| t.saturating_duration_since(released));
    let timeouts: u64 = seen.iter().map(|s| s.timeouts).sum();
    let too_many: u64 = seen.iter().map(|s| s.too_many).sum();
    let other: Vec<&String> = seen.iter().flat_map(|s| &s.other).collect();
    let densest_100ms = densest(&tried, Duration::from_millis(100));
    // One connect per waiting caller per acquire timeout would be at least
    // this many; a loop without backoff, thousands.
    let naive = CALLERS as f64 * refusing_for.as_secs_f64() / ACQUIRE_TIMEOUT.as_secs_f64();

    eprintln!(
        "faults_max_connections: {} connect attempts in {refusing_for:?} of refusal \
         (a connect per waiting caller would be ~{naive:.0}), densest 100 ms window {densest_100ms}, \
         {} connect errors; {timeouts} acquire timeouts, {too_many} carrying SQLSTATE 53300; \
         {} other errors; all callers served {} ms after the other clients left",
        tried.len(),
        metrics.create_errors,
        other.len(),
        recovered_in.map_or(-1, |d| d.as_millis() as i128),
    );

    let sample = seen.iter().find_map(|s| s.sample.clone());
    eprintln!("faults_max_connections: a caller's error: {sample:?}");
    assert!(other.is_empty(), "unexpected errors: {other:#?}");
    assert!(timeouts > 0, "no caller was told the server is full");
    assert!(too_many > 0, "no timeout carried the server's 53300");
    assert!(
        tried.len() >= 2,
        "the pool gave up probing: {} attempts",
        tried.len()
    );
    let per_second = tried.len() as f64 / refusing_for.as_secs_f64();
    assert!(
        per_second <= 10.0,
        "{} connect attempts in {refusing_for:?} ({per_second:.1}/s): not backing off",
        tried.len()
    );
    assert!(
        densest_100ms <= 6,
        "{densest_100ms} attempts within 100 ms: a burst"
    );
    assert!(
        recovered,
        "the pool did not recover within {:?} of the other clients leaving: {:?}",
        CONNECT_BACKOFF_MAX + SLACK,
        pool.status()
    );

    let status = assert_settled(&pool).await;
    assert!(
        eventually(SLACK, || backends(&cluster, APP) == pool.status().size).await,
        "{} server sessions for {:?}",
        backends(&cluster, APP),
        pool.status()
    );
    eprintln!("faults_max_connections: afterwards {status:?}, leaked 0");
    pool.close().await;
}

/// With `fail_fast`, callers are not kept waiting for the acquire timeout
/// while the server refuses: the first failed connect answers them, with
/// the server's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_fast_pool_answers_at_once_while_the_server_is_full() {
    const APP: &str = "faults_max_connections_ff";
    let long_wait = Duration::from_secs(10);
    let (cluster, hogs) = full_cluster().await;
    let pool: wharf_postgres::Pool = Pool::builder(PgManager::new(pg_config(&cluster, APP)))
        .name(APP)
        .max_size(MAX_SIZE)
        .acquire_timeout(long_wait)
        .fail_fast(true)
        .connect_backoff(CONNECT_BACKOFF)
        .connect_backoff_max(CONNECT_BACKOFF_MAX)
        .build()
        .unwrap();

    let mut answered_in = Vec::new();
    let mut sample = None;
    for _ in 0..5 {
        let asked = Instant::now();
        let error = pool
            .query("SELECT 1", &[])
            .await
            .expect_err("the server is full");
        answered_in.push(asked.elapsed());
        let message = error.to_string();
        match &error {
            Error::Pool(wharf::Error::Unavailable {
                last_error: Some(cause),
            }) => {
                assert_eq!(
                    sqlstate(&**cause),
                    Some(SqlState::TOO_MANY_CONNECTIONS),
                    "{message}"
                );
            }
            other => panic!("expected Unavailable with the connect error, got {other:?}"),
        }
        assert!(
            message.starts_with("no connection available: connecting to the backend is failing"),
            "{message}"
        );
        assert!(message.contains("too many clients"), "{message}");
        sample = Some(message);
    }
    let slowest = answered_in.iter().max().copied().unwrap();
    assert!(
        slowest < SLACK,
        "a caller was kept {slowest:?} (acquire timeout {long_wait:?})"
    );

    drop(hogs);
    let released = Instant::now();
    let mut served = false;
    while released.elapsed() < CONNECT_BACKOFF_MAX + SLACK {
        if pool.query_one("SELECT 1", &[]).await.is_ok() {
            served = true;
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    let recovered_in = released.elapsed();
    eprintln!(
        "faults_max_connections (fail_fast): callers answered in {:?}..{slowest:?} \
         (acquire timeout {long_wait:?}); served again {} ms after the other clients left",
        answered_in.iter().min().unwrap(),
        recovered_in.as_millis(),
    );
    eprintln!("faults_max_connections (fail_fast): a caller's error: {sample:?}");
    assert!(
        served,
        "not served {recovered_in:?} after the server had room"
    );
    let status = assert_settled(&pool).await;
    eprintln!("faults_max_connections (fail_fast): afterwards {status:?}, leaked 0");
    pool.close().await;
}

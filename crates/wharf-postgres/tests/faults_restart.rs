//! The database restarts under load: 50 tasks keep querying through a pool
//! of 10 while the server is stopped for three seconds and started again.
//!
//! What must hold: no request hangs (each ends within the acquire timeout
//! plus slack, with an error that says what happened), every task is served
//! again within two seconds of the server being back, nothing is leaked,
//! and the pool probes the dead server with jittered backoff instead of
//! hammering it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    assert_settled, backends, cluster, densest, eventually, gaps, lifecycle, pg_config, Recording,
};
use tokio::time::{sleep, Instant};
use wharf::Pool;
use wharf_postgres::PgManager;
use wharf_testkit::PgCluster;

const APP: &str = "faults_restart";
const TASKS: usize = 50;
const MAX_SIZE: usize = 10;
const MAX_CONNECTING: usize = 2;
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);
const OUTAGE: Duration = Duration::from_secs(3);
/// Scheduling noise on a loaded two-core machine; a request that hangs
/// blows through it.
const SLACK: Duration = Duration::from_secs(1);
/// What the issue asks for: every task served again within two seconds.
const RECOVERY_LIMIT: Duration = Duration::from_secs(2);

/// What one task saw.
#[derive(Default)]
struct Seen {
    successes: u64,
    pool_timeouts: u64,
    timeouts_with_cause: u64,
    query_errors: u64,
    other_errors: Vec<String>,
    /// One acquire timeout during the outage as the caller prints it.
    sample: Option<String>,
    slowest: Duration,
    slowest_error: Option<String>,
    /// The longest `get()` alone, and whether it ended with a connection.
    slowest_get: Duration,
    slowest_get_served: bool,
    /// The first success that ended after the server was back.
    first_success_after_restart: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_gives_clear_errors_then_recovers_without_a_stampede() {
    let cluster = cluster(PgCluster::builder()).await;
    let (manager, attempts) = Recording::new(PgManager::new(pg_config(&cluster, APP)));
    let pool = Pool::builder(manager)
        .name(APP)
        .max_size(MAX_SIZE)
        .max_connecting(MAX_CONNECTING)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .connect_backoff(CONNECT_BACKOFF)
        .connect_backoff_max(CONNECT_BACKOFF_MAX)
        .build()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let restarted_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let pool = pool.clone();
            let stop = stop.clone();
            let restarted_at = restarted_at.clone();
            tokio::spawn(async move { hammer(pool, stop, restarted_at).await })
        })
        .collect();

    // Warm: the pool at its size, serving everyone.
    assert!(
        eventually(Duration::from_secs(10), || pool.status().size == MAX_SIZE).await,
        "the pool never filled: {:?}",
        pool.status()
    );
    sleep(Duration::from_millis(500)).await;
    let timeouts_before = pool.metrics().timeouts;

    let outage_began = Instant::now();
    let cluster = lifecycle(cluster, PgCluster::stop).await;
    sleep(OUTAGE).await;
    let cluster = lifecycle(cluster, PgCluster::start_again).await;
    let back_at = Instant::now();
    *restarted_at.lock().unwrap() = Some(back_at);
    let outage = back_at - outage_began;

    // The tasks report when they end: give them time to be served (or to
    // show that they are not) before stopping them.
    sleep(RECOVERY_LIMIT + Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }

    // Liveness: no request outlived the acquire timeout by more than slack.
    let slowest = seen.iter().map(|s| s.slowest).max().unwrap();
    let slowest_error = seen
        .iter()
        .max_by_key(|s| s.slowest)
        .and_then(|s| s.slowest_error.clone());
    let (slowest_get, slowest_get_served) = seen
        .iter()
        .map(|s| (s.slowest_get, s.slowest_get_served))
        .max_by_key(|&(took, _)| took)
        .unwrap();
    let pool_timeouts: u64 = seen.iter().map(|s| s.pool_timeouts).sum();
    let with_cause: u64 = seen.iter().map(|s| s.timeouts_with_cause).sum();
    let query_errors: u64 = seen.iter().map(|s| s.query_errors).sum();
    let successes: u64 = seen.iter().map(|s| s.successes).sum();
    let other: Vec<&String> = seen.iter().flat_map(|s| &s.other_errors).collect();

    // Recovery: the moment the last task had its first success.
    let recovered_in = seen
        .iter()
        .map(|s| {
            s.first_success_after_restart
                .map(|t| t.saturating_duration_since(back_at))
        })
        .collect::<Option<Vec<_>>>()
        .map(|each| each.into_iter().max().unwrap_or_default());

    // Backoff: what the pool did to the server while it was away.
    let during = attempts.between(outage_began, back_at);
    let densest_100ms = densest(&during, Duration::from_millis(100));
    let gaps = gaps(&during);
    let widest_gap = gaps.iter().max().copied().unwrap_or_default();
    let narrowest_gap = gaps.iter().min().copied().unwrap_or_default();
    // A pool that connected on behalf of each waiting caller would make
    // about this many attempts.
    let naive = TASKS as f64 * outage.as_secs_f64() / ACQUIRE_TIMEOUT.as_secs_f64();

    eprintln!(
        "faults_restart: outage {outage:?} (stop + {OUTAGE:?} + start_again); \
         recovered in {} ms after start_again returned (limit {} ms); \
         {} connect attempts during the outage (a connect per waiting caller would be ~{naive:.0}), \
         densest 100 ms window {densest_100ms}, gaps {:?}..{:?}; \
         {pool_timeouts} acquire timeouts ({with_cause} carrying the connect error), \
         {query_errors} query errors on connections cut by the shutdown, \
         {} other errors; slowest request {} ms ({}), slowest get() {} ms ({}); {successes} successes \
         ({timeouts_before} timeouts before the outage)",
        recovered_in.map_or(-1, |d| d.as_millis() as i128),
        RECOVERY_LIMIT.as_millis(),
        during.len(),
        narrowest_gap,
        widest_gap,
        other.len(),
        slowest.as_millis(),
        slowest_error.as_deref().unwrap_or("served"),
        slowest_get.as_millis(),
        if slowest_get_served { "served" } else { "not served" },
    );

    let sample = seen.iter().find_map(|s| s.sample.clone());
    eprintln!("faults_restart: a caller's error during the outage: {sample:?}");
    assert!(other.is_empty(), "unexpected errors: {other:#?}");
    // The pool's part first: a get() that outlives its deadline is the
    // pool's fault; a request that does with a get() in time spent the rest
    // in the query, on a server that was slow to answer.
    assert!(
        slowest_get <= ACQUIRE_TIMEOUT + SLACK,
        "a get() took {slowest_get:?} (acquire timeout {ACQUIRE_TIMEOUT:?}), served: {slowest_get_served}"
    );
    assert!(
        slowest <= ACQUIRE_TIMEOUT + SLACK,
        "a request took {slowest:?} (acquire timeout {ACQUIRE_TIMEOUT:?}; the slowest get() \
         {slowest_get:?}): {slowest_error:?}"
    );
    assert!(
        pool_timeouts > timeouts_before,
        "the outage produced no acquire timeouts"
    );
    assert!(
        with_cause > 0,
        "no acquire timeout carried the last connect error"
    );
    let recovered_in = recovered_in.expect("some task never succeeded after the restart");
    assert!(
        recovered_in <= RECOVERY_LIMIT,
        "all {TASKS} tasks were served again only {recovered_in:?} after the restart"
    );

    // The pool kept probing throughout the outage, one attempt at a time
    // with a random delay, rather than in one burst or a hot loop.
    assert!(
        during.len() >= 3,
        "only {} connect attempts in {outage:?}: the pool stopped probing",
        during.len()
    );
    let per_second = during.len() as f64 / outage.as_secs_f64();
    assert!(
        per_second <= 10.0,
        "{} connect attempts in {outage:?} ({per_second:.1}/s): not backing off",
        during.len()
    );
    assert!(
        densest_100ms <= 3 * MAX_CONNECTING,
        "{densest_100ms} connect attempts within 100 ms: a burst"
    );
    assert!(
        widest_gap <= CONNECT_BACKOFF_MAX + SLACK,
        "a {widest_gap:?} gap between probes: the pool stopped probing"
    );
    assert!(
        widest_gap - narrowest_gap >= Duration::from_millis(50),
        "probes {narrowest_gap:?}..{widest_gap:?} apart: no jitter"
    );

    // Nothing leaked: every connection the pool counts is idle, and the
    // server sees exactly those.
    let status = assert_settled(&pool).await;
    // A backend the pool dropped may take a moment to leave the server's
    // view.
    let matches = eventually(Duration::from_secs(5), || {
        backends(&cluster, APP) == pool.status().size
    })
    .await;
    let on_server = backends(&cluster, APP);
    eprintln!(
        "faults_restart: afterwards {status:?}, {on_server} backends on the server, leaked 0"
    );
    assert!(
        matches,
        "{on_server} server sessions for a pool holding {:?}",
        pool.status()
    );

    pool.close().await;
    assert_eq!(pool.status().size, 0);
    assert!(
        eventually(Duration::from_secs(5), || backends(&cluster, APP) == 0).await,
        "server sessions left after close()"
    );
}

/// One task: `SELECT 1` in a loop until told to stop, timing every request.
async fn hammer(
    pool: Pool<Recording>,
    stop: Arc<AtomicBool>,
    restarted_at: Arc<Mutex<Option<Instant>>>,
) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let got = pool.get().await;
        let took_get = started.elapsed();
        if took_get > seen.slowest_get {
            seen.slowest_get = took_get;
            seen.slowest_get_served = got.is_ok();
        }
        let outcome = match got {
            Ok(client) => client
                .simple_query("SELECT 1")
                .await
                .map_err(Failure::Query),
            Err(error) => Err(Failure::Pool(error)),
        };
        let ended = Instant::now();
        let took = ended - started;
        let error_text = outcome.as_ref().err().map(ToString::to_string);
        if took > seen.slowest {
            seen.slowest = took;
            seen.slowest_error.clone_from(&error_text);
        }
        match outcome {
            Ok(_) => {
                seen.successes += 1;
                if seen.first_success_after_restart.is_none() {
                    let back = *restarted_at.lock().unwrap();
                    if back.is_some_and(|back| ended >= back) {
                        seen.first_success_after_restart = Some(ended);
                    }
                }
            }
            Err(Failure::Pool(error @ wharf::Error::Timeout { .. })) => {
                seen.pool_timeouts += 1;
                if let wharf::Error::Timeout {
                    last_error: Some(_),
                    ..
                } = &error
                {
                    seen.timeouts_with_cause += 1;
                    seen.sample.get_or_insert_with(|| error.to_string());
                }
            }
            Err(Failure::Query(error)) => {
                assert!(!error.to_string().is_empty());
                seen.query_errors += 1;
            }
            Err(error) => seen.other_errors.push(error.to_string()),
        }
        if error_text.is_some() && took < Duration::from_millis(5) {
            // A failure that came back at once must not turn this loop
            // into a spin that starves the runtime.
            sleep(Duration::from_millis(5)).await;
        }
    }
    seen
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("acquire: {0}")]
    Pool(wharf::Error),
    #[error("query: {0}")]
    Query(tokio_postgres::Error),
}

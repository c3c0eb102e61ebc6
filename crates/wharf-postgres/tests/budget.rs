//! Two tenant pools sharing a budget of 10 against a server that takes 13
//! clients: hammered together, they never get "too many clients", never
//! hold more than 10 sessions between them, and the tenant that arrives
//! second still gets its guaranteed share from the one that took all.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, eventually, pg_config};
use tokio::time::{sleep, Instant};
use tokio_postgres::NoTls;
use wharf::{Budget, CloseReason};
use wharf_postgres::{PgManager, Pool};
use wharf_testkit::PgCluster;

const SERVER_SLOTS: u32 = 13;
const BUDGET: usize = 10;
const GUARANTEED: usize = 3;
const CALLERS_A: usize = 6;
const CALLERS_B: usize = 12;
const SOLO: Duration = Duration::from_millis(1500);
const TOGETHER: Duration = Duration::from_secs(3);

fn tenant(cluster: &PgCluster, budget: &Budget, app: &str) -> Pool {
    Pool::builder(PgManager::new(pg_config(cluster, app)))
        .name(app)
        .max_size(10)
        .acquire_timeout(Duration::from_secs(10))
        .budget(budget, GUARANTEED)
        .build()
        .expect("build a tenant pool")
}

/// What one tenant's callers saw.
#[derive(Default)]
struct Seen {
    queries: AtomicUsize,
    errors: std::sync::Mutex<Vec<String>>,
}

/// `callers` tasks running short queries on `pool` until `stop`.
fn hammer(
    pool: &Pool,
    callers: usize,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Seen>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..callers)
        .map(|_| {
            let (pool, stop, seen) = (pool.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = match pool.get().await {
                        Ok(client) => client
                            .simple_query("SELECT pg_sleep(0.003)")
                            .await
                            .map(drop)
                            .map_err(|err| err.to_string()),
                        Err(err) => Err(err.to_string()),
                    };
                    match outcome {
                        Ok(()) => seen.queries.fetch_add(1, Ordering::Relaxed),
                        Err(err) => {
                            seen.errors.lock().expect("errors").push(err);
                            0
                        }
                    };
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_under_one_budget_stay_within_the_servers_limit_and_keep_their_guarantee() {
    let cluster = cluster(PgCluster::builder().max_connections(SERVER_SLOTS)).await;
    let (monitor, connection) = pg_config(&cluster, "budget_monitor")
        .connect(NoTls)
        .await
        .expect("the monitoring session");
    tokio::spawn(connection);
    let budget = Budget::new(BUDGET);
    let a = tenant(&cluster, &budget, "tenant_a");
    let b = tenant(&cluster, &budget, "tenant_b");

    // Sample the server's own count of the tenants' sessions throughout.
    let most_sessions = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (most, sampling) = (most_sessions.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let row = monitor
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE application_name IN ('tenant_a', 'tenant_b')",
                        &[],
                    )
                    .await
                    .expect("count the sessions");
                let now: i64 = row.get(0);
                most.fetch_max(usize::try_from(now).unwrap_or(0), Ordering::Relaxed);
                sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Tenant b alone, with more callers than the budget: it takes it all.
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_a, seen_b) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let mut callers = hammer(&b, CALLERS_B, &stop, &seen_b);
    sleep(SOLO).await;
    let shares = budget.status();
    assert_eq!(shares.in_use, BUDGET, "b took the whole budget: {shares:?}");
    assert_eq!(b.status().size, BUDGET);

    // Tenant a arrives: its guarantee is taken back from b, busy as b is.
    let arrived = Instant::now();
    callers.extend(hammer(&a, CALLERS_A, &stop, &seen_a));
    let mut a_most = 0;
    while arrived.elapsed() < TOGETHER {
        let held = budget.status().pools[0].held;
        a_most = a_most.max(held);
        sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("a caller task");
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("the sampler");

    let errors_a = seen_a.errors.lock().expect("errors").clone();
    let errors_b = seen_b.errors.lock().expect("errors").clone();
    assert!(
        errors_a.is_empty() && errors_b.is_empty(),
        "a: {errors_a:?}\nb: {errors_b:?}"
    );
    assert!(seen_a.queries.load(Ordering::Relaxed) > 0);
    assert!(seen_b.queries.load(Ordering::Relaxed) > 0);
    assert!(a_most >= GUARANTEED, "a held at most {a_most} units");
    assert!(b.metrics().closed_for(CloseReason::Reclaimed) >= GUARANTEED as u64);
    let most = most_sessions.load(Ordering::Relaxed);
    assert!(most <= BUDGET, "{most} sessions at once, budget {BUDGET}");
    assert!(most >= BUDGET - 1, "the sampler saw only {most} sessions");
    assert!(budget.status().in_use <= BUDGET);
    a.close().await;
    b.close().await;
    // Connects under way when the pools closed finish, and are closed.
    let returned = eventually(Duration::from_secs(5), || budget.status().in_use == 0).await;
    assert!(
        returned,
        "units still held after close: {:?}",
        budget.status()
    );
}

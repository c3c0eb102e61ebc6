//! Every backend of the pool is killed with `pg_terminate_backend` while
//! its connections sit idle (an administrator's cleanup, a failover proxy, an
//! idle-session timeout). With `validate_after` short, the pool checks each
//! connection before handing it out, drops the dead ones and opens new ones:
//! callers never see an error.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{assert_settled, backends, cluster, eventually, pg_config, psql};
use tokio::time::sleep;
use wharf::CloseReason;
use wharf_postgres::{PgManager, Pool, PoolExt};
use wharf_testkit::PgCluster;

const MAX_SIZE: usize = 4;
const CALLERS: usize = 16;
const QUERIES_EACH: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_terminated_while_idle_are_replaced_unseen_validate_after_1ms() {
    terminated_backends_are_replaced_unseen("faults_terminated_1ms", Duration::from_millis(1))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_terminated_while_idle_are_replaced_unseen_validate_after_0() {
    terminated_backends_are_replaced_unseen("faults_terminated_0", Duration::ZERO).await;
}

async fn terminated_backends_are_replaced_unseen(app: &str, validate_after: Duration) {
    let cluster = cluster(PgCluster::builder()).await;
    let pool: Pool = Pool::builder(PgManager::new(pg_config(&cluster, app)))
        .name(app)
        .max_size(MAX_SIZE)
        .min_idle(MAX_SIZE)
        .validate_after(validate_after)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    pool.ready().await.unwrap();
    let before = pids(&pool).await;
    assert_eq!(before.len(), MAX_SIZE, "{before:?}");
    assert_eq!(backends(&cluster, app), MAX_SIZE);

    // The two-argument form waits for each backend to exit.
    let killed = psql(
        &cluster,
        &format!(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
             FROM pg_stat_activity WHERE application_name = '{app}'"
        ),
    );
    assert_eq!(killed, MAX_SIZE.to_string());
    assert_eq!(backends(&cluster, app), 0);
    // Idle past validate_after, so the next checkouts check first.
    sleep(validate_after + Duration::from_millis(50)).await;
    let status = pool.status();
    assert_eq!(
        (status.size, status.idle),
        (MAX_SIZE, MAX_SIZE),
        "the pool cannot know yet: {status:?}"
    );

    // More callers than connections, all at once: every query must work.
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut pids = Vec::new();
                for j in 0..QUERIES_EACH {
                    let n = (i * QUERIES_EACH + j) as i64;
                    let row = pool
                        .query_one("SELECT $1::bigint + 1, pg_backend_pid()", &[&n])
                        .await
                        .unwrap_or_else(|e| panic!("caller {i} query {j} saw: {e}"));
                    assert_eq!(row.get::<_, i64>(0), n + 1);
                    pids.push(row.get::<_, i32>(1));
                }
                pids
            })
        })
        .collect();
    let mut after = BTreeSet::new();
    for caller in callers {
        after.extend(caller.await.unwrap());
    }
    assert!(
        after.is_disjoint(&before),
        "a dead backend served a query: before {before:?}, after {after:?}"
    );
    assert!(after.len() <= MAX_SIZE, "{after:?}");

    // Status adds up: the dead ones were closed after a failed check and
    // replaced (min_idle tops up what the callers did not), and nothing else
    // was opened or lost.
    assert!(
        eventually(Duration::from_secs(5), || pool.status().idle == MAX_SIZE).await,
        "min_idle not restored: {:?}",
        pool.status()
    );
    let status = assert_settled(&pool).await;
    let m = pool.metrics();
    eprintln!(
        "{app}: {} queries, 0 errors; closed failed_check={} broken={}; created {}; {status:?}",
        CALLERS * QUERIES_EACH,
        m.closed_for(CloseReason::FailedCheck),
        m.closed_for(CloseReason::Broken),
        m.created,
    );
    assert_eq!(
        m.closed_for(CloseReason::FailedCheck) + m.closed_for(CloseReason::Broken),
        MAX_SIZE as u64,
        "{m:?}"
    );
    assert_eq!(m.closed_total(), MAX_SIZE as u64, "{m:?}");
    assert_eq!(m.created, 2 * MAX_SIZE as u64, "{m:?}");
    assert_eq!(m.timeouts, 0);
    assert!(
        eventually(Duration::from_secs(5), || backends(&cluster, app)
            == MAX_SIZE)
        .await,
        "{} server sessions for a pool of {MAX_SIZE}",
        backends(&cluster, app)
    );
    pool.close().await;
}

/// The backend pids behind the pool's idle connections, found by holding
/// all of them at once.
async fn pids(pool: &Pool) -> BTreeSet<i32> {
    let mut held = Vec::new();
    for _ in 0..MAX_SIZE {
        held.push(pool.get().await.unwrap());
    }
    let mut pids = BTreeSet::new();
    for client in &held {
        let row = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap();
        pids.insert(row.get::<_, i32>(0));
    }
    pids
}

//! redis-server killed and started again under load: callers fail cleanly
//! during the outage and all recover after it, leaking nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};
use wharf_redis::{Pool, RedisManager};
use wharf_testkit::redis::RedisServer;

const TASKS: usize = 16;
const MAX_SIZE: usize = 6;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longer than any single operation may take: the acquire timeout plus the
/// redis crate's response timeout (500 ms), with room to spare.
const HANG: Duration = Duration::from_secs(4);
const OUTAGE: Duration = Duration::from_secs(2);
/// How long after the restart every task must have succeeded again.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);

/// One operation of one task.
struct Outcome {
    /// When the operation ended.
    at: Instant,
    /// `None` on success, else the error message.
    error: Option<String>,
}

/// INCR then GET on a pooled connection, bounded so that a hang shows.
async fn incr_and_get(pool: &Pool, key: &str) -> Result<(), String> {
    let op = async {
        let mut conn = pool.get().await.map_err(|e| format!("pool: {e}"))?;
        let n: i64 = redis::cmd("INCR")
            .arg(key)
            .query_async(&mut *conn)
            .await
            .map_err(|e| format!("INCR: {e}"))?;
        let read: i64 = redis::cmd("GET")
            .arg(key)
            .query_async(&mut *conn)
            .await
            .map_err(|e| format!("GET: {e}"))?;
        // Keys are per task, so nobody else moves them.
        if read != n {
            return Err(format!("GET returned {read} after INCR returned {n}"));
        }
        Ok(())
    };
    match timeout(HANG, op).await {
        Ok(result) => result,
        Err(_) => Err(format!("HANG: no answer within {HANG:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovers_after_redis_restarts_under_load() {
    let mut redis = RedisServer::start().unwrap();
    let pool = Pool::builder(RedisManager::new(redis.url()).unwrap())
        .max_size(MAX_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .connect_backoff(Duration::from_millis(50))
        .connect_backoff_max(Duration::from_millis(500))
        .build()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let pool = pool.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("counter:{task}");
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let error = incr_and_get(&pool, &key).await.err();
                let failed = error.is_some();
                outcomes.push(Outcome {
                    at: Instant::now(),
                    error,
                });
                // Keeps a failing loop from spinning; also paces the load.
                sleep(Duration::from_millis(if failed { 20 } else { 2 })).await;
            }
            outcomes
        }));
    }

    sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| redis.kill()).unwrap();
    sleep(OUTAGE).await;
    tokio::task::block_in_place(|| redis.start_again()).unwrap();
    let restarted_at = Instant::now();
    // Long enough for every task to recover, then for a clean second.
    sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);

    let mut per_task = Vec::new();
    for task in tasks {
        per_task.push(timeout(HANG * 2, task).await.unwrap().unwrap());
    }

    let all = || per_task.iter().flatten();
    let before: Vec<_> = all().filter(|o| o.at < killed_at).collect();
    assert!(!before.is_empty());
    assert!(
        before.iter().all(|o| o.error.is_none()),
        "failures before the kill: {:?}",
        before
            .iter()
            .filter_map(|o| o.error.as_ref())
            .collect::<Vec<_>>()
    );

    let hangs: Vec<_> = all()
        .filter_map(|o| o.error.as_deref())
        .filter(|e| e.starts_with("HANG"))
        .collect();
    assert!(hangs.is_empty(), "{} operations hung", hangs.len());

    let outage_errors: Vec<&str> = all()
        .filter(|o| o.at > killed_at && o.at < restarted_at)
        .filter_map(|o| o.error.as_deref())
        .collect();
    assert!(
        !outage_errors.is_empty(),
        "nothing failed while redis was down"
    );
    let mut kinds: Vec<&str> = outage_errors.clone();
    kinds.sort_unstable();
    kinds.dedup_by(|a, b| a.get(..40) == b.get(..40));
    eprintln!(
        "{} operations failed during the {OUTAGE:?} outage; kinds of error:",
        outage_errors.len()
    );
    for kind in &kinds {
        eprintln!("  {kind}");
    }
    // Waiters give up with the pool's timeout naming why connecting fails.
    assert!(
        outage_errors
            .iter()
            .any(|e| e.starts_with("pool: timed out after ")
                && e.to_lowercase().contains("connection refused")),
        "no acquire timeout naming the refused connects: {kinds:#?}"
    );

    // Every task succeeds again soon after the restart, and from then on.
    let mut recovery = Vec::new();
    for (task, outcomes) in per_task.iter().enumerate() {
        let after: Vec<_> = outcomes.iter().filter(|o| o.at > restarted_at).collect();
        let Some(first_ok) = after.iter().position(|o| o.error.is_none()) else {
            panic!("task {task} never succeeded after the restart");
        };
        let took = after[first_ok].at - restarted_at;
        assert!(
            took < RECOVERY_BOUND,
            "task {task} took {took:?} to recover"
        );
        let later_failures: Vec<_> = after[first_ok..]
            .iter()
            .filter_map(|o| o.error.as_ref())
            .collect();
        assert!(
            later_failures.is_empty(),
            "task {task} failed after recovering: {later_failures:?}"
        );
        recovery.push(took);
    }
    recovery.sort_unstable();
    let total_ops: usize = per_task.iter().map(Vec::len).sum();
    eprintln!(
        "recovery after restart: first task {:?}, median {:?}, last task {:?} \
         ({TASKS} tasks, max_size {MAX_SIZE}, {total_ops} operations)",
        recovery[0],
        recovery[recovery.len() / 2],
        recovery[recovery.len() - 1]
    );

    // Nothing leaked: everything is back, and the server sees exactly the
    // connections the pool holds.
    let status = pool.status();
    assert_eq!((status.in_use, status.waiting), (0, 0), "{status:?}");
    assert_eq!(status.size, status.idle, "{status:?}");
    assert!(status.size <= MAX_SIZE, "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let server_side = redis.connected_clients().unwrap();
        if server_side == pool.status().size {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server has {server_side} clients, pool {:?}",
            pool.status()
        );
        sleep(Duration::from_millis(50)).await;
    }
    let metrics = pool.metrics();
    eprintln!(
        "after recovery: {status:?}; created {}, connect errors {}, closed {:?}",
        metrics.created, metrics.create_errors, metrics.closed
    );
    assert!(metrics.create_errors > 0);
    pool.close().await;
    assert_eq!(pool.status().size, 0);
}

//! Randomized stress on the multi-thread runtime: thousands of concurrent
//! gets, cancelled acquires, refused connects and broken connections, with
//! the pool's size bound and books checked during and after.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_balanced, ScriptedManager};
use tokio::time::{sleep, timeout, Instant};
use wharf::{CloseReason, Error, Pool};

const SEED: u64 = 0x57_2e55;
const CLIENTS: u64 = 128;
const GETS_PER_CLIENT: usize = 30;
const MAX_SIZE: usize = 8;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn micros(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// What the clients saw, to check the pool's counters against.
#[derive(Default)]
struct Tally {
    started: AtomicU64,
    acquired: AtomicU64,
    timeouts: AtomicU64,
    cancelled: AtomicU64,
    detached: AtomicU64,
    discarded: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Uses a connection for 0-2 ms, then returns, discards, dirties (so the
/// `on_checkin` hook rejects it) or detaches it.
async fn use_conn(
    mut conn: wharf::Pooled<ScriptedManager>,
    rng: &mut fastrand::Rng,
    tally: &Tally,
) {
    sleep(micros(rng.u64(0..=2000))).await;
    match rng.u32(0..100) {
        0..=2 => {
            count(&tally.discarded);
            conn.discard();
        }
        3..=4 => {
            conn.dirty = true;
            drop(conn);
        }
        5 => {
            count(&tally.detached);
            drop(conn.detach());
        }
        _ => drop(conn),
    }
}

#[track_caller]
fn expect_timeout(err: Error) {
    assert!(
        matches!(err, Error::Timeout { .. }),
        "unexpected error: {err:?}"
    );
}

/// Settles an acquire that ran in its own task and may have been aborted.
fn tally_task(
    result: Result<Result<wharf::Pooled<ScriptedManager>, Error>, tokio::task::JoinError>,
    tally: &Tally,
) {
    match result {
        Ok(Ok(conn)) => {
            count(&tally.acquired);
            drop(conn);
        }
        Ok(Err(err)) => {
            count(&tally.timeouts);
            expect_timeout(err);
        }
        Err(join) => {
            assert!(join.is_cancelled(), "{join}");
            count(&tally.cancelled);
        }
    }
}

async fn client(pool: Pool<ScriptedManager>, seed: u64, tally: Arc<Tally>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..GETS_PER_CLIENT {
        // Now and then think for a while, so the load comes and goes and
        // connections sit idle long enough to be checked and evicted.
        if rng.u32(0..100) < 40 {
            sleep(micros(rng.u64(0..25_000))).await;
        }
        count(&tally.started);
        match rng.u32(0..100) {
            // Give up on the acquire after a random 0-3 ms.
            0..=14 => match timeout(micros(rng.u64(0..3000)), pool.get()).await {
                Ok(Ok(conn)) => {
                    count(&tally.acquired);
                    use_conn(conn, &mut rng, &tally).await;
                }
                Ok(Err(err)) => {
                    count(&tally.timeouts);
                    expect_timeout(err);
                }
                Err(_) => count(&tally.cancelled),
            },
            // Abort the task that is acquiring.
            15..=24 => {
                let task = tokio::spawn(pool.get());
                if rng.bool() {
                    tokio::task::yield_now().await;
                } else {
                    sleep(micros(rng.u64(0..1000))).await;
                }
                task.abort();
                tally_task(task.await, &tally);
            }
            // Hand our connection to callers queued behind us and abort them
            // at once, likely before the one it went to has run.
            25..=39 => match pool.get().await {
                Ok(conn) => {
                    count(&tally.acquired);
                    let behind: Vec<_> = (0..3).map(|_| tokio::spawn(pool.get())).collect();
                    tally.started.fetch_add(3, Ordering::Relaxed);
                    sleep(micros(rng.u64(0..500))).await;
                    drop(conn);
                    for task in &behind {
                        task.abort();
                    }
                    for task in behind {
                        tally_task(task.await, &tally);
                    }
                }
                Err(err) => {
                    count(&tally.timeouts);
                    expect_timeout(err);
                }
            },
            _ => match pool.get().await {
                Ok(conn) => {
                    count(&tally.acquired);
                    use_conn(conn, &mut rng, &tally).await;
                }
                Err(err) => {
                    count(&tally.timeouts);
                    expect_timeout(err);
                }
            },
        }
    }
}

/// Refuses and hangs connects, fails checks and breaks connections at
/// random until told to stop, then heals everything.
async fn chaos(script: Arc<common::Script>, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = fastrand::Rng::with_seed(SEED ^ 0xc4a05);
    let mut events = 0;
    while !stop.load(Ordering::Relaxed) {
        sleep(micros(rng.u64(500..3000))).await;
        events += 1;
        match rng.u32(0..100) {
            0..=14 => script.refuse(true),
            15..=39 => script.refuse(false),
            40..=41 => script.hang(true),
            42..=49 => script.hang(false),
            50..=54 => script.fail_checks(true),
            55..=64 => script.fail_checks(false),
            65..=66 => script.break_all(),
            _ => script.break_conn(rng.u64(1..=script.attempts().max(1))),
        }
    }
    script.refuse(false);
    script.hang(false);
    script.fail_checks(false);
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_load_with_failures_keeps_the_pool_bounded_and_balanced() {
    let (manager, script) = ScriptedManager::new();
    script.set_connect_delay(micros(300));
    let closed_by_hook = Arc::new(AtomicU64::new(0));
    let on_close = closed_by_hook.clone();
    let pool = Pool::builder(manager)
        .max_size(MAX_SIZE)
        .min_idle(2)
        .max_connecting(3)
        .acquire_timeout(ms(20))
        .connect_timeout(ms(10))
        .connect_backoff(ms(1))
        .connect_backoff_max(ms(5))
        .validate_after(ms(2))
        .validation_timeout(ms(5))
        .idle_timeout(ms(30))
        .max_lifetime(ms(200))
        .lifetime_jitter(0.5)
        .max_uses(40u64)
        .keepalive_interval(ms(10))
        .maintenance_interval(ms(5))
        .on_checkin(|conn| !conn.dirty)
        .on_close(move |_, _| {
            on_close.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();

    // Samples the size bound from a plain thread, as often as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = std::thread::spawn({
        let (pool, stop, samples) = (pool.clone(), stop.clone(), samples.clone());
        move || {
            let mut max_seen = 0;
            while !stop.load(Ordering::Relaxed) {
                let s = pool.status();
                assert!(s.size <= s.max_size, "size above max_size: {s:?}");
                assert!(s.idle + s.in_use <= s.size, "status inconsistent: {s:?}");
                max_seen = max_seen.max(s.size);
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(micros(50));
            }
            max_seen
        }
    });
    let chaos = tokio::spawn(chaos(script.clone(), stop.clone()));

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(pool.clone(), SEED + i, tally.clone())))
        .collect();
    let all_done = async {
        for client in clients {
            client.await.expect("client panicked");
        }
    };
    timeout(Duration::from_secs(20), all_done)
        .await
        .expect("the workload did not finish in 20s");
    let took = started.elapsed();

    stop.store(true, Ordering::Relaxed);
    let chaos_events = chaos.await.unwrap();
    let max_seen = sampler.join().expect("the size bound was broken");
    assert!(samples.load(Ordering::Relaxed) > 100, "sampler barely ran");
    assert!(max_seen <= MAX_SIZE);
    assert!(
        chaos_events > 10,
        "chaos barely ran ({chaos_events} events in {took:?})"
    );

    // Settles: nobody waiting, nothing being opened or checked, the manager
    // agreeing on the number of live connections.
    let settled = async {
        loop {
            let s = pool.status();
            if s.waiting == 0 && s.size == s.idle + s.in_use && script.alive() == s.size {
                return;
            }
            sleep(ms(2)).await;
        }
    };
    timeout(Duration::from_secs(5), settled)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "never settled: {:?}, alive {}",
                pool.status(),
                script.alive()
            )
        });

    let m = pool.metrics();
    let t = &tally;
    // Shown when the test fails.
    eprintln!(
        "workload took {took:?}, {} size samples, {chaos_events} chaos events; \
         clients: acquired {:?}, timeouts {:?}, cancelled {:?}, detached {:?}; pool: {m:?}",
        samples.load(Ordering::Relaxed),
        t.acquired,
        t.timeouts,
        t.cancelled,
        t.detached,
    );
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let gets = load(&t.started);
    assert!(gets >= CLIENTS * GETS_PER_CLIENT as u64);
    assert_eq!(
        load(&t.acquired) + load(&t.timeouts) + load(&t.cancelled),
        gets,
        "every get ended one way or another"
    );
    assert!(
        load(&t.acquired) > gets / 10,
        "too few gets succeeded: {}",
        load(&t.acquired)
    );
    assert_eq!(m.acquired(), load(&t.acquired), "acquired");
    assert_eq!(m.timeouts, load(&t.timeouts), "timeouts");
    assert_eq!(m.closed_for(CloseReason::Discarded), load(&t.discarded));
    assert!(m.create_errors > 0, "chaos never failed a connect");
    assert!(m.closed_for(CloseReason::Broken) + m.closed_for(CloseReason::FailedCheck) > 0);

    // Take every connection the pool can give, so nothing moves in the
    // background, and check the books.
    let mut held = Vec::new();
    for _ in 0..MAX_SIZE {
        held.push(
            pool.get_timeout(Duration::from_secs(2))
                .await
                .expect("healed pool serves"),
        );
    }
    assert_balanced(&pool, &script);
    let m = pool.metrics();
    let detached = load(&t.detached);
    assert_eq!(m.status.size, MAX_SIZE);
    assert_eq!(m.status.waiting, 0);
    assert_eq!(
        m.created,
        m.closed_total() + m.status.size as u64 + detached,
        "created != closed + open + detached: {m:#?}"
    );
    assert_eq!(closed_by_hook.load(Ordering::Relaxed), m.closed_total());

    drop(held);
    pool.close().await;
    // close() waits for connections in use; one out for a keepalive check
    // or a connect in flight is closed when that finishes, just after.
    let drained = async {
        while script.alive() > 0 || pool.status().size > 0 {
            sleep(ms(1)).await;
        }
    };
    let _ = timeout(Duration::from_secs(1), drained).await;
    let m = pool.metrics();
    assert_eq!(script.alive(), 0, "connections outlived close()");
    assert_eq!(m.status.size, 0);
    assert_eq!(m.created, m.closed_total() + detached);
    assert_eq!(closed_by_hook.load(Ordering::Relaxed), m.closed_total());
}

//! Checkout throughput against a floor: issue 17's harness.
//!
//! Every task loops get → `tokio::task::yield_now()` → drop on a no-op
//! connection, on a runtime of exactly 2 workers, for the rows
//! tasks/pool size = 1/16, 8/16, 64/16, 512/16, 64/4 and 512/4. Besides
//! wharf, deadpool and bb8 it measures a **floor**: a bare
//! `tokio::sync::Semaphore` acquire plus a `Mutex<Vec>` pop and push, the
//! least any pool with a waiting queue can do. Rounds are interleaved (each
//! round runs all four, starting with a different one each time) so that
//! drift in the machine's load hits all of them alike; each figure is the
//! median over the rounds, and the ratios are computed within each round and
//! then their median taken.
//!
//! ```text
//! cargo bench -p wharf --bench checkout                       # 9 rounds of 1 s, ~5 min
//! cargo bench -p wharf --bench checkout -- --rounds 3 --secs 0.3  # a look, ~30 s
//! ```
//!
//! `--only wharf` (or another name) runs just that one and `--row 512/4`
//! just that row, for profiling. `--cycles N` replaces the timed window by
//! exactly N get+drop cycles (split evenly between the tasks, no warm-up):
//! for counting instructions per cycle under callgrind, where two runs with
//! different N leave the start-up cost out of the difference.
//!
//! Built as a test (`cargo test --benches`, without `--bench`) it runs one
//! tiny round only, to prove the code works.
//!
//! Settings are those of `pools.rs`: every pool warm (all connections open)
//! before timing, a 30 s acquire timeout that never fires, no per-checkout
//! validation (wharf `validate_after = None`, bb8 `test_on_check_out(false)`,
//! deadpool's `recycle` an empty `async fn`), all else at defaults.

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

mod support;
use support::{Conn, Noop};

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The rows: (tasks, pool size).
const ROWS: [(usize, usize); 6] = [(1, 16), (8, 16), (64, 16), (512, 16), (64, 4), (512, 4)];

const NAMES: [&str; 4] = ["floor", "wharf", "deadpool", "bb8"];

/// One checkout and return, holding the connection across one yield.
trait Contender: Clone + Send + Sync + 'static {
    fn cycle(&self) -> impl Future<Output = ()> + Send;
}

impl Contender for wharf::Pool<Noop> {
    async fn cycle(&self) {
        let conn = self.get().await.expect("wharf get failed");
        tokio::task::yield_now().await;
        black_box(&conn.0);
    }
}

impl Contender for deadpool::managed::Pool<Noop> {
    async fn cycle(&self) {
        let conn = self.get().await.expect("deadpool get failed");
        tokio::task::yield_now().await;
        black_box(&conn.0);
    }
}

impl Contender for bb8::Pool<Noop> {
    async fn cycle(&self) {
        let conn = self.get().await.expect("bb8 get failed");
        tokio::task::yield_now().await;
        black_box(&conn.0);
    }
}

/// The floor: a FIFO semaphore for the waiting and a locked stack for the
/// connections, nothing else (no timeout, no metrics, no lifetimes).
#[derive(Clone)]
struct Floor(Arc<(Semaphore, Mutex<Vec<Conn>>)>);

impl Floor {
    fn new(size: usize) -> Self {
        let conns = (0..size as u64).map(Conn).collect();
        Self(Arc::new((Semaphore::new(size), Mutex::new(conns))))
    }
}

impl Contender for Floor {
    async fn cycle(&self) {
        let (permits, conns) = &*self.0;
        let permit = permits.acquire().await.expect("never closed");
        let conn = conns.lock().unwrap().pop().expect("a permit means a conn");
        tokio::task::yield_now().await;
        black_box(&conn.0);
        conns.lock().unwrap().push(conn);
        drop(permit);
    }
}

/// The four contenders for one pool size.
struct Set {
    floor: Floor,
    wharf: wharf::Pool<Noop>,
    deadpool: deadpool::managed::Pool<Noop>,
    bb8: bb8::Pool<Noop>,
}

impl Set {
    async fn warm(size: usize) -> Set {
        let wharf = wharf::Pool::builder(Noop)
            .max_size(size)
            .min_idle(size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .validate_after(None)
            .build()
            .expect("wharf config");
        wharf.ready().await.expect("wharf warm-up");
        assert_eq!(wharf.status().idle, size, "wharf not warm");

        let deadpool = deadpool::managed::Pool::builder(Noop)
            .max_size(size)
            .wait_timeout(Some(ACQUIRE_TIMEOUT))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("deadpool config");
        // deadpool creates on demand: holding `size` at once opens them all.
        let held: Vec<_> = {
            let mut held = Vec::with_capacity(size);
            for _ in 0..size {
                held.push(deadpool.get().await.expect("deadpool warm-up"));
            }
            held
        };
        drop(held);
        assert_eq!(deadpool.status().available, size, "deadpool not warm");

        let max = u32::try_from(size).expect("pool size fits u32");
        let bb8 = bb8::Pool::builder()
            .max_size(max)
            .min_idle(Some(max))
            .test_on_check_out(false)
            .connection_timeout(ACQUIRE_TIMEOUT)
            .build(Noop)
            .await
            .expect("bb8 build");

        Set {
            floor: Floor::new(size),
            wharf,
            deadpool,
            bb8,
        }
    }

    async fn run(&self, index: usize, tasks: usize, plan: &Plan) -> f64 {
        match index {
            0 => throughput(&self.floor, tasks, plan).await,
            1 => throughput(&self.wharf, tasks, plan).await,
            2 => throughput(&self.deadpool, tasks, plan).await,
            _ => throughput(&self.bb8, tasks, plan).await,
        }
    }
}

struct Plan {
    rounds: usize,
    warm_up: Duration,
    measure: Duration,
    /// A fixed number of cycles instead of the timed window.
    cycles: Option<u64>,
}

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPING: u8 = 2;

/// Checkouts per second completed by `tasks` tasks sharing `pool`. Tasks go
/// from warm-up into the measured window without pausing, so the window sees
/// the steady state (full queues), not the start-up stampede.
async fn throughput<P: Contender>(pool: &P, tasks: usize, plan: &Plan) -> f64 {
    if let Some(cycles) = plan.cycles {
        return counted(pool, tasks, cycles).await;
    }
    let phase = Arc::new(AtomicU8::new(WARMING));
    let start_line = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (pool, phase, start_line) = (pool.clone(), phase.clone(), start_line.clone());
            tokio::spawn(async move {
                start_line.wait().await;
                let mut done = 0u64;
                loop {
                    let now = phase.load(Ordering::Relaxed);
                    if now == STOPPING {
                        return done;
                    }
                    pool.cycle().await;
                    done += u64::from(now == MEASURING);
                }
            })
        })
        .collect();
    start_line.wait().await;
    tokio::time::sleep(plan.warm_up).await;
    phase.store(MEASURING, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(plan.measure).await;
    phase.store(STOPPING, Ordering::Relaxed);
    let window = start.elapsed();
    let mut total = 0;
    for handle in handles {
        total += handle.await.expect("bench task panicked");
    }
    total as f64 / window.as_secs_f64()
}

/// Runs `cycles` get+drop cycles in all, split between `tasks` tasks, and
/// returns the rate (meaningless under callgrind, which is what it is for).
async fn counted<P: Contender>(pool: &P, tasks: usize, cycles: u64) -> f64 {
    let start = Instant::now();
    let per_task = cycles / tasks as u64;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    pool.cycle().await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("bench task panicked");
    }
    (per_task * tasks as u64) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let plan = if bench {
        let secs: f64 = arg(&args, "--secs").unwrap_or(1.0);
        Plan {
            rounds: arg(&args, "--rounds").unwrap_or(9),
            warm_up: Duration::from_secs_f64(secs / 5.0),
            measure: Duration::from_secs_f64(secs),
            cycles: arg(&args, "--cycles"),
        }
    } else {
        Plan {
            rounds: 1,
            warm_up: Duration::from_millis(1),
            measure: Duration::from_millis(10),
            cycles: None,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    eprintln!(
        "2 tokio workers; {} interleaved rounds of {:?} per row",
        plan.rounds, plan.measure
    );

    // Per row: medians in NAMES order, then wharf/best peer and wharf/floor.
    let only: Option<String> = arg(&args, "--only");
    let only = only.map(|name| {
        NAMES
            .iter()
            .position(|n| *n == name)
            .expect("--only takes floor, wharf, deadpool or bb8")
    });
    let row: Option<String> = arg(&args, "--row");
    let table = runtime.block_on(async {
        let mut table = Vec::new();
        for size in [16, 4] {
            let set = Set::warm(size).await;
            let rows = ROWS.iter().filter(|(t, s)| {
                *s == size && row.as_ref().is_none_or(|row| *row == format!("{t}/{s}"))
            });
            for (tasks, _) in rows {
                let mut rounds = Vec::with_capacity(plan.rounds);
                for round in 0..plan.rounds {
                    let mut ops = [0.0; 4];
                    for offset in 0..NAMES.len() {
                        let index = (round + offset) % NAMES.len();
                        if only.is_none_or(|only| only == index) {
                            ops[index] = set.run(index, *tasks, &plan).await;
                        }
                    }
                    rounds.push(ops);
                }
                eprintln!("{tasks} / {size}");
                for (i, name) in NAMES.iter().enumerate() {
                    let cells: Vec<_> = rounds
                        .iter()
                        .map(|r| format!("{:.3}", r[i] / 1e6))
                        .collect();
                    eprintln!("    {name:<8} {}", cells.join(" "));
                }
                let column = |i: usize| median(rounds.iter().map(|r| r[i]).collect());
                let peer = median(rounds.iter().map(|r| r[1] / r[2].max(r[3])).collect());
                let floor = median(rounds.iter().map(|r| r[1] / r[0]).collect());
                table.push((
                    *tasks,
                    size,
                    std::array::from_fn::<_, 4, _>(column),
                    peer,
                    floor,
                ));
            }
        }
        table
    });

    println!();
    println!("| tasks / pool size | floor | wharf | deadpool | bb8 | wharf / best peer | wharf / floor |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (tasks, size, ops, peer, floor) in table {
        let [f, w, d, b] = ops.map(|v| format!("{:.2} M", v / 1e6));
        println!("| {tasks} / {size} | {f} | {w} | {d} | {b} | {peer:.2} | {floor:.2} |");
    }
}

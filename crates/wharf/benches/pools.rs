//! Engine benchmark: wharf against deadpool (managed) and bb8.
//!
//! Absolute numbers from a shared 2-core machine mean little; what this is for
//! is the *ratio* between the three pools, so all three are measured in one
//! process, on one runtime, round by round (interleaved) so that drift in the
//! machine's load hits each of them alike. That is also why this is a custom
//! harness and not criterion: criterion measures one benchmark after another
//! and has no notion of a comparison table.
//!
//! ```text
//! cargo bench -p wharf --bench pools              # full run, under 2 minutes
//! cargo bench -p wharf --bench pools -- --quick   # ~15 s, for a look
//! cargo bench -p wharf --bench pools -- --features-only   # the breaker and lane table alone
//! ```
//!
//! The machine is shared with other people's builds, so the harness also
//! watches /proc for CPU taken by other processes and leaves disturbed rounds
//! out of the medians (see [`CLEAN_BELOW`]); the table says how many rounds
//! each row kept. Results and their reading are in docs/BENCHMARKS.md.
//!
//! Built as a test (`cargo test --benches`/`--all-targets`, where cargo does
//! not pass `--bench`) it only runs a tiny smoke pass, so that test runs stay
//! fast while still proving the benchmark code works.
//!
//! Fairness: every pool gets the same no-op manager, the same `max_size`, a
//! 30 s acquire timeout (never reached, but it makes each pool pay for its
//! timeout machinery as it would in production) and is warm (all `max_size`
//! connections open) before anything is timed. None does I/O per checkout:
//! wharf has `validate_after = None`, bb8 `test_on_check_out(false)`, and
//! deadpool always calls `Manager::recycle`, which here is an empty `async fn`.
//! Everything else stays at each pool's defaults (lifetime and idle timeouts
//! are just timestamp comparisons on these paths).

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::Noop;

#[path = "support/features.rs"]
mod features;

/// Generous enough never to fire: a timeout would abort the run, and a short
/// one could make a pool take a cheaper "no wait" path than production would.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The one operation measured, behind a trait so that the measuring loops are
/// written once and monomorphised per pool (no dynamic dispatch that would
/// add the same constant to every column and blur the ratios).
trait Contender: Clone + Send + Sync + 'static {
    /// Checks a connection out and returns it. With `hold`, yields to the
    /// scheduler while holding it, standing in for a tiny query: without that,
    /// tasks on 2 workers would rarely overlap and "contention" would measure
    /// nothing but the uncontended path.
    fn cycle(&self, hold: bool) -> impl Future<Output = ()> + Send;
}

impl Contender for wharf::Pool<Noop> {
    async fn cycle(&self, hold: bool) {
        let conn = self.get().await.expect("wharf get failed");
        if hold {
            tokio::task::yield_now().await;
        }
        // Touching the connection after the yield keeps it provably held
        // across it, and stops the compiler from treating the guard as unused.
        black_box(&conn.0);
    }
}

impl Contender for deadpool::managed::Pool<Noop> {
    async fn cycle(&self, hold: bool) {
        let conn = self.get().await.expect("deadpool get failed");
        if hold {
            tokio::task::yield_now().await;
        }
        black_box(&conn.0);
    }
}

impl Contender for bb8::Pool<Noop> {
    async fn cycle(&self, hold: bool) {
        // `get` (borrowing) rather than `get_owned`: it is the cheaper of
        // bb8's two, and the task owns a pool clone anyway.
        let conn = self.get().await.expect("bb8 get failed");
        if hold {
            tokio::task::yield_now().await;
        }
        black_box(&conn.0);
    }
}

/// The three pools of one size, built with the shared settings above.
struct Trio {
    wharf: wharf::Pool<Noop>,
    deadpool: deadpool::managed::Pool<Noop>,
    bb8: bb8::Pool<Noop>,
}

const NAMES: [&str; 3] = ["wharf", "deadpool", "bb8"];

impl Trio {
    /// Builds all three and waits until each holds `size` open connections,
    /// so that no measurement includes connection creation.
    async fn warm(size: usize) -> Trio {
        let wharf = wharf::Pool::builder(Noop)
            .max_size(size)
            .min_idle(size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .validate_after(None)
            .build()
            .expect("wharf config");
        wharf.ready().await.expect("wharf did not warm up");
        assert_eq!(wharf.status().idle, size, "wharf not warm");

        let deadpool = deadpool::managed::Pool::builder(Noop)
            .max_size(size)
            .wait_timeout(Some(ACQUIRE_TIMEOUT))
            // Required by deadpool as soon as any timeout is set.
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("deadpool config");
        // deadpool has no min_idle: it creates on demand, so holding `size`
        // objects at once forces all of them into existence.
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            held.push(deadpool.get().await.expect("deadpool warm-up get"));
        }
        drop(held);
        assert_eq!(deadpool.status().available, size, "deadpool not warm");

        let max = u32::try_from(size).expect("pool size fits u32");
        let bb8 = bb8::Pool::builder()
            .max_size(max)
            .min_idle(Some(max))
            .test_on_check_out(false)
            .connection_timeout(ACQUIRE_TIMEOUT)
            // `build` (not `build_unchecked`) returns only once min_idle
            // connections are open.
            .build(Noop)
            .await
            .expect("bb8 build");
        assert_eq!(bb8.state().idle_connections, max, "bb8 not warm");

        Trio {
            wharf,
            deadpool,
            bb8,
        }
    }

    /// Runs `scenario` on the pool at `index` in [`NAMES`] order.
    async fn run(&self, index: usize, scenario: Scenario, plan: &Plan) -> Sample {
        match index {
            0 => scenario.run(&self.wharf, plan).await,
            1 => scenario.run(&self.deadpool, plan).await,
            _ => scenario.run(&self.bb8, plan).await,
        }
    }
}

/// How long and how often to measure.
struct Plan {
    rounds: usize,
    latency_ops: u64,
    warm_up: Duration,
    measure: Duration,
}

impl Plan {
    /// Full: many short rounds rather than a few long ones. On a shared
    /// machine disturbances come in bursts of seconds; with 9 interleaved
    /// rounds a burst spoils a minority of them, which are then left out
    /// (see [`CLEAN_BELOW`]) or outvoted by the median. Sized so the whole
    /// run stays under two minutes.
    const FULL: Plan = Plan {
        rounds: 9,
        latency_ops: 1_000_000,
        warm_up: Duration::from_millis(100),
        measure: Duration::from_millis(500),
    };
    /// `--quick`: still three rounds so there is a median, ~15 s in all.
    const QUICK: Plan = Plan {
        rounds: 3,
        latency_ops: 200_000,
        warm_up: Duration::from_millis(20),
        measure: Duration::from_millis(200),
    };
    /// Under `cargo test`: just exercise every code path once.
    const SMOKE: Plan = Plan {
        rounds: 1,
        latency_ops: 1_000,
        warm_up: Duration::from_millis(1),
        measure: Duration::from_millis(10),
    };
}

#[derive(Clone, Copy)]
enum Scenario {
    /// One task, get then drop, nothing else running: the fixed cost of a
    /// checkout. Reported as mean ns per get+drop.
    Latency,
    /// `tasks` tasks each looping get, yield, drop: how the pool copes with
    /// lock contention and (when tasks > max_size) with queued waiters.
    /// Reported as completed checkouts per second.
    Throughput { tasks: usize },
}

/// One pool's result in one round.
#[derive(Clone, Copy)]
struct Sample {
    /// ns/op for latency, ops/s for throughput.
    value: f64,
    /// For throughput: the slowest task's ops over the mean task's ops. A
    /// pool can buy throughput by letting the task that just returned a
    /// connection take it straight back (barging) while others starve; this
    /// makes that trade visible next to the ops/s it buys.
    fairness: Option<f64>,
}

impl Scenario {
    async fn run<P: Contender>(self, pool: &P, plan: &Plan) -> Sample {
        match self {
            Scenario::Latency => Sample {
                value: latency(pool, plan).await,
                fairness: None,
            },
            Scenario::Throughput { tasks } => throughput(pool, tasks, plan).await,
        }
    }

    /// For latency lower is better, for throughput higher: the ratio column
    /// is oriented so that > 1 always means wharf wins.
    fn lower_is_better(self) -> bool {
        matches!(self, Scenario::Latency)
    }

    fn format(self, value: f64) -> String {
        if self.lower_is_better() {
            format!("{value:.1} ns")
        } else {
            format!("{:.3} M/s", value / 1e6)
        }
    }

    /// wharf against the best of the others in one round, > 1 meaning wharf
    /// is better.
    fn ratio(self, [wharf, deadpool, bb8]: [f64; 3]) -> f64 {
        if self.lower_is_better() {
            deadpool.min(bb8) / wharf
        } else {
            wharf / deadpool.max(bb8)
        }
    }
}

/// Mean ns per get+drop of a single task.
async fn latency<P: Contender>(pool: &P, plan: &Plan) -> f64 {
    let pool = pool.clone();
    let ops = plan.latency_ops;
    // Spawned rather than run in `block_on`, so that it runs on a worker
    // thread like real request handlers do (block_on's thread has no worker
    // context, which changes how wakes and coop budgeting behave).
    let elapsed = tokio::spawn(async move {
        // Warm caches and branch predictors on this very pool first.
        for _ in 0..ops / 10 {
            pool.cycle(false).await;
        }
        let start = Instant::now();
        for _ in 0..ops {
            pool.cycle(false).await;
        }
        start.elapsed()
    })
    .await
    .expect("latency task panicked");
    elapsed.as_nanos() as f64 / ops as f64
}

/// Phases of a throughput run, read by every task at the top of each loop.
const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPING: u8 = 2;

/// Checkouts per second completed by `tasks` tasks sharing the pool.
///
/// Tasks run through a warm-up phase into the measured one without pausing,
/// so the measured window sees the steady state (full waiter queues), not the
/// start-up stampede. An op counts if it started inside the window; the ones
/// cut at either edge roughly cancel out.
async fn throughput<P: Contender>(pool: &P, tasks: usize, plan: &Plan) -> Sample {
    let phase = Arc::new(AtomicU8::new(WARMING));
    // All tasks start together, so the warm-up is not spent spawning.
    let start_line = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let pool = pool.clone();
            let phase = phase.clone();
            let start_line = start_line.clone();
            tokio::spawn(async move {
                start_line.wait().await;
                let mut done = 0u64;
                loop {
                    // Relaxed is enough: a task seeing a phase change a few
                    // ops late changes nothing measurable.
                    let now = phase.load(Ordering::Relaxed);
                    if now == STOPPING {
                        return done;
                    }
                    pool.cycle(true).await;
                    if now == MEASURING {
                        done += 1;
                    }
                }
            })
        })
        .collect();
    start_line.wait().await;
    tokio::time::sleep(plan.warm_up).await;
    phase.store(MEASURING, Ordering::Relaxed);
    // The window is timed with the clock, not taken from the sleep, which
    // may overshoot when both workers are busy.
    let start = Instant::now();
    tokio::time::sleep(plan.measure).await;
    phase.store(STOPPING, Ordering::Relaxed);
    let window = start.elapsed();
    let mut per_task = Vec::with_capacity(tasks);
    for handle in handles {
        per_task.push(handle.await.expect("throughput task panicked"));
    }
    let total: u64 = per_task.iter().sum();
    let slowest = per_task.iter().copied().min().unwrap_or(0);
    let mean = total as f64 / tasks as f64;
    Sample {
        value: total as f64 / window.as_secs_f64(),
        fairness: Some(if mean > 0.0 {
            slowest as f64 / mean
        } else {
            0.0
        }),
    }
}

/// The middle value; of an even count, the mean of the two middle ones (the
/// clean-round filter can leave any count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// A round counts as clean when other processes took less than this share
/// of the machine during each of its three samples. Busier rounds are kept
/// out of the medians (when at least one clean round exists): with 2 CPUs, a
/// parallel build takes one of them from whichever pool happens to run, and
/// no amount of interleaving makes that fair.
const CLEAN_BELOW: f64 = 0.10;

/// One row of the final tables.
struct Row {
    label: String,
    scenario: Scenario,
    /// Median per pool over the rounds used, in [`NAMES`] order.
    medians: [f64; 3],
    /// Median fairness per pool (throughput rows only).
    fairness: Option<[f64; 3]>,
    /// wharf against the best other, computed within each round and then
    /// summarised: a burst of load hits the three pools of a round alike, so
    /// per-round ratios are steadier than a ratio of medians taken from
    /// different rounds.
    ratio_median: f64,
    ratio_min: f64,
    ratio_max: f64,
    /// Clean rounds (used for the figures above; when there are none, all
    /// rounds are used and the row says so), and rounds run.
    clean: usize,
    run: usize,
    /// Share of the machine other processes used over the whole row.
    others_cpu: Option<f64>,
}

/// One round: a sample per pool, in [`NAMES`] order, and the worst share of
/// the machine other processes took during any of them.
struct Round {
    samples: [Sample; 3],
    others: Option<f64>,
}

impl Round {
    /// Unknown disturbance (no /proc) counts as clean: there is nothing to
    /// tell the rounds apart by.
    fn is_clean(&self) -> bool {
        self.others.is_none_or(|share| share < CLEAN_BELOW)
    }
}

/// Measures one scenario for all three pools and returns its table row.
async fn measure(trio: &Trio, label: String, scenario: Scenario, plan: &Plan) -> Row {
    let row_start = CpuTicks::read();
    let mut rounds: Vec<Round> = Vec::with_capacity(plan.rounds);
    for round in 0..plan.rounds {
        let mut samples = [None; 3];
        let mut others: Option<f64> = None;
        // Interleaved, and the starting pool rotates each round: a fixed
        // order would always give the same pool the slot right after a
        // 512-task teardown or a background wake-up.
        for offset in 0..NAMES.len() {
            let index = (round + offset) % NAMES.len();
            let before = CpuTicks::read();
            samples[index] = Some(trio.run(index, scenario, plan).await);
            let share = CpuTicks::others_share(before, CpuTicks::read());
            others = match (others, share) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        rounds.push(Round {
            samples: samples.map(|s| s.expect("every pool ran this round")),
            others,
        });
    }
    let others_cpu = CpuTicks::others_share(row_start, CpuTicks::read());

    // Every round on stderr, clean or not, so a reader can judge the spread
    // behind each median without re-running.
    let ratio = |r: &Round| scenario.ratio(r.samples.map(|s| s.value));
    eprintln!("{label}");
    for (i, name) in NAMES.iter().enumerate() {
        let cells: Vec<_> = rounds
            .iter()
            .map(|r| scenario.format(r.samples[i].value))
            .collect();
        eprintln!("    {name:<8} {}", cells.join("  "));
    }
    let cells: Vec<_> = rounds.iter().map(|r| format!("{:.2}", ratio(r))).collect();
    eprintln!("    ratio    {}", cells.join("  "));
    let cells: Vec<_> = rounds.iter().map(|r| percent(r.others)).collect();
    eprintln!("    others   {}", cells.join("  "));

    let run = rounds.len();
    let clean = rounds.iter().filter(|r| r.is_clean()).count();
    if clean > 0 {
        rounds.retain(Round::is_clean);
    }
    let values = |i: usize| rounds.iter().map(|r| r.samples[i].value).collect();
    let ratios: Vec<f64> = rounds.iter().map(ratio).collect();
    let fairness = (0..3)
        .map(|i| {
            rounds
                .iter()
                .map(|r| r.samples[i].fairness)
                .collect::<Option<Vec<_>>>()
        })
        .collect::<Option<Vec<_>>>()
        .map(|per_pool| std::array::from_fn(|i| median(per_pool[i].clone())));

    Row {
        medians: std::array::from_fn(|i| median(values(i))),
        fairness,
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ratio_median: median(ratios),
        clean,
        run,
        others_cpu,
        label,
        scenario,
    }
}

/// CPU time counters from /proc, to tell how much of the machine other
/// processes (builds, tests, the hypervisor) took while a row was measured.
/// On a shared machine that is the first thing to check before trusting a
/// row; where /proc is missing the figure is simply not shown.
#[derive(Clone, Copy)]
struct CpuTicks {
    /// All CPU time of all CPUs, busy or not.
    all: u64,
    /// Time CPUs were busy, plus time the hypervisor took (steal).
    taken: u64,
    /// Our own process's CPU time.
    own: u64,
}

impl CpuTicks {
    fn read() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // user nice system idle iowait irq softirq steal (guest time is
        // already counted in user).
        let t: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        if t.len() < 8 {
            return None;
        }
        let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may contain spaces, so count fields from the ')'
        // that ends it: utime and stime are the 12th and 13th after it.
        let after_name: Vec<&str> = own_stat.rsplit_once(')')?.1.split_whitespace().collect();
        let own =
            after_name.get(11)?.parse::<u64>().ok()? + after_name.get(12)?.parse::<u64>().ok()?;
        Some(CpuTicks {
            all: t.iter().sum(),
            taken: t[0] + t[1] + t[2] + t[5] + t[6] + t[7],
            own,
        })
    }

    fn others_share(before: Option<CpuTicks>, after: Option<CpuTicks>) -> Option<f64> {
        let (b, a) = (before?, after?);
        let all = a.all.checked_sub(b.all).filter(|&all| all > 0)?;
        let taken = a.taken.saturating_sub(b.taken);
        let own = a.own.saturating_sub(b.own);
        Some(taken.saturating_sub(own) as f64 / all as f64)
    }
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "n/a".to_owned(), |s| format!("{:.0} %", s * 100.0))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    // cargo passes `--bench` only under `cargo bench`; without it we are
    // running as a test target and must not spend two minutes.
    let (plan, mode) = if has("--quick") {
        (Plan::QUICK, "quick")
    } else if has("--bench") {
        (Plan::FULL, "full")
    } else {
        (Plan::SMOKE, "smoke (run through `cargo bench` to measure)")
    };

    // The default worker count is the machine's parallelism, which is what a
    // service would run with; it is printed so the table can be read with it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let workers = runtime.metrics().num_workers();
    eprintln!(
        "mode: {mode}; {workers} tokio workers; {} rounds per cell, pools interleaved \
         within each round; load average before: {}",
        plan.rounds,
        load_average()
    );

    if has("--features-only") {
        runtime.block_on(features::compare(&plan));
        return;
    }

    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for size in [16, 4] {
            // Pools of one size at a time, so the idle ones' background tasks
            // are not running during the other size's measurements.
            let trio = Trio::warm(size).await;
            if size == 16 {
                let label = "uncontended get+drop, 1 task, max_size 16 (ns/op)".to_owned();
                rows.push(measure(&trio, label, Scenario::Latency, &plan).await);
            }
            for tasks in [8, 64, 512] {
                let label = format!("{tasks} tasks, get+yield+drop, max_size {size} (ops/s)");
                rows.push(measure(&trio, label, Scenario::Throughput { tasks }, &plan).await);
            }
        }
        rows
    });
    eprintln!("load average after: {}", load_average());

    println!();
    println!(
        "| scenario | wharf | deadpool | bb8 | wharf vs best other, median of rounds \
         (>1 = wharf better) | range over rounds | clean rounds used | CPU used by other \
         processes (whole row) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let [w, d, b] = row.medians.map(|v| row.scenario.format(v));
        println!(
            "| {} | {w} | {d} | {b} | {:.2} | {:.2}–{:.2} | {}/{}{} | {} |",
            row.label,
            row.ratio_median,
            row.ratio_min,
            row.ratio_max,
            row.clean,
            row.run,
            if row.clean == 0 {
                " (none clean: all used)"
            } else {
                ""
            },
            percent(row.others_cpu)
        );
    }

    println!();
    println!("| fairness: slowest task's ops / mean task's ops (1 = all equal) | wharf | deadpool | bb8 |");
    println!("|---|---:|---:|---:|");
    for row in &rows {
        if let Some([w, d, b]) = row.fairness {
            println!("| {} | {w:.2} | {d:.2} | {b:.2} |", row.label);
        }
    }

    // After the comparison tables, which stay as they were.
    runtime.block_on(features::compare(&plan));
}

//! What a replica set costs a checkout: the uncontended get+drop of
//! `pools.rs`'s first row, on a plain pool's `get()`, a set's `primary()`
//! and a set's `replica()` (two replicas, the least busy chosen by reading
//! each one's status), measured interleaved round by round, each reported
//! against the plain pool of the same round.
//!
//! ```text
//! cargo bench -p wharf --bench replicas               # 9 rounds, ~20 s
//! cargo bench -p wharf --bench replicas -- --quick    # 3 rounds
//! ```
//!
//! Built as a test (without `--bench`) it runs one tiny round only.

use std::hint::black_box;
use std::time::{Duration, Instant};

mod support;
use support::Noop;

const SIZE: usize = 16;

struct Plan {
    rounds: usize,
    ops: u64,
}

/// One way to check a connection out.
#[derive(Clone, Copy, PartialEq)]
enum Checkout {
    Plain,
    Primary,
    Replica,
}

const CHECKOUTS: [Checkout; 3] = [Checkout::Plain, Checkout::Primary, Checkout::Replica];

async fn warm() -> wharf::Pool<Noop> {
    let pool = wharf::Pool::builder(Noop)
        .max_size(SIZE)
        .min_idle(SIZE)
        .acquire_timeout(Duration::from_secs(30))
        .validate_after(None)
        .build()
        .expect("wharf config");
    pool.ready().await.expect("wharf did not warm up");
    pool
}

/// Mean ns per get+drop of a single task on a worker thread.
async fn latency(
    plain: &wharf::Pool<Noop>,
    set: &wharf::ReplicaSet<Noop>,
    how: Checkout,
    ops: u64,
) -> f64 {
    let (plain, set) = (plain.clone(), set.clone());
    tokio::spawn(async move {
        let cycle = || async {
            let conn = match how {
                Checkout::Plain => plain.get().await,
                Checkout::Primary => set.primary().await,
                Checkout::Replica => set.replica().await,
            };
            black_box(&conn.expect("checkout failed").0);
        };
        for _ in 0..ops / 10 {
            cycle().await;
        }
        let start = Instant::now();
        for _ in 0..ops {
            cycle().await;
        }
        start.elapsed().as_nanos() as f64 / ops as f64
    })
    .await
    .expect("latency task panicked")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let plan = if has("--quick") {
        Plan {
            rounds: 3,
            ops: 200_000,
        }
    } else if has("--bench") {
        Plan {
            rounds: 9,
            ops: 1_000_000,
        }
    } else {
        Plan {
            rounds: 1,
            ops: 1_000,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let plain = warm().await;
        let set = wharf::ReplicaSet::builder(warm().await)
            .replica(warm().await)
            .replica(warm().await)
            .build()
            .expect("replica set");
        set.probe().await;
        let mut ns: [Vec<f64>; 3] = Default::default();
        let mut ratios: [Vec<f64>; 2] = Default::default();
        for round in 0..plan.rounds {
            let mut sample = [0.0; 3];
            for offset in 0..3 {
                let index = (round + offset) % 3;
                sample[index] = latency(&plain, &set, CHECKOUTS[index], plan.ops).await;
            }
            for (all, value) in ns.iter_mut().zip(sample) {
                all.push(value);
            }
            ratios[0].push(sample[1] / sample[0]);
            ratios[1].push(sample[2] / sample[0]);
        }
        let status = set.status();
        assert_eq!(status.primary_fallbacks, 0, "every replica() on a replica");
        eprintln!("rounds (ns/op):");
        for (name, values) in ["plain", "primary", "replica"].iter().zip(&ns) {
            let cells: Vec<_> = values.iter().map(|v| format!("{v:.1}")).collect();
            eprintln!("    {name:<8} {}", cells.join("  "));
        }
        println!();
        println!(
            "| uncontended get+drop, 1 task, max_size {SIZE} | ns/op (median) | vs plain, \
             median of rounds | range over rounds |"
        );
        println!("|---|---:|---:|---:|");
        println!("| plain `get()` | {:.1} | 1.00 | |", median(ns[0].clone()));
        for (i, label) in ["`set.primary()`", "`set.replica()`, 2 replicas"]
            .iter()
            .enumerate()
        {
            let r = &ratios[i];
            let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            println!(
                "| {label} | {:.1} | {:.2} | {lo:.2}–{hi:.2} |",
                median(ns[i + 1].clone()),
                median(r.clone())
            );
        }
    });
}

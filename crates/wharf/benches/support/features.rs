//! What the circuit breaker and lanes cost on an uncontended get+drop:
//! three wharf pools, plain, with a breaker, and checked out through a
//! lane, measured interleaved round by round like the comparison above,
//! each reported against the plain pool of the same round.

use std::hint::black_box;

use super::support::Noop;
use super::{latency, median, percent, Contender, CpuTicks, Plan, ACQUIRE_TIMEOUT};

/// A pool with a circuit breaker (default settings: always closed here).
#[derive(Clone)]
struct WithBreaker(wharf::Pool<Noop>);

/// A pool checked out through its one lane, as wide as the pool.
#[derive(Clone)]
struct ThroughLane(wharf::Pool<Noop>);

impl Contender for WithBreaker {
    async fn cycle(&self, _hold: bool) {
        let conn = self.0.get().await.expect("get with breaker failed");
        black_box(&conn.0);
    }
}

impl Contender for ThroughLane {
    async fn cycle(&self, _hold: bool) {
        let conn = self.0.get_in("fast").await.expect("get_in failed");
        black_box(&conn.0);
    }
}

const SIZE: usize = 16;

async fn warm(builder: wharf::Builder<Noop>) -> wharf::Pool<Noop> {
    let pool = builder
        .max_size(SIZE)
        .min_idle(SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .validate_after(None)
        .build()
        .expect("wharf config");
    pool.ready().await.expect("wharf did not warm up");
    pool
}

/// Measures the three and prints a table row per feature.
pub(crate) async fn compare(plan: &Plan) {
    let plain = warm(wharf::Pool::builder(Noop)).await;
    let breaker = WithBreaker(
        warm(wharf::Pool::builder(Noop).circuit_breaker(wharf::BreakerConfig::default())).await,
    );
    let lane = ThroughLane(warm(wharf::Pool::builder(Noop).lane("fast", SIZE)).await);

    let mut ns: [Vec<f64>; 3] = Default::default();
    let mut ratios: [Vec<f64>; 2] = Default::default();
    let before = CpuTicks::read();
    for round in 0..plan.rounds {
        let mut sample = [0.0; 3];
        for offset in 0..3 {
            let index = (round + offset) % 3;
            sample[index] = match index {
                0 => latency(&plain, plan).await,
                1 => latency(&breaker, plan).await,
                _ => latency(&lane, plan).await,
            };
        }
        for (all, value) in ns.iter_mut().zip(sample) {
            all.push(value);
        }
        ratios[0].push(sample[1] / sample[0]);
        ratios[1].push(sample[2] / sample[0]);
    }
    let others = CpuTicks::others_share(before, CpuTicks::read());
    eprintln!("features, uncontended get+drop (ns/op), rounds:");
    for (name, values) in ["plain", "breaker", "lane"].iter().zip(&ns) {
        let cells: Vec<_> = values.iter().map(|v| format!("{v:.1}")).collect();
        eprintln!("    {name:<8} {}", cells.join("  "));
    }

    println!();
    println!(
        "| uncontended get+drop, 1 task, max_size {SIZE} | ns/op (median) | vs plain, median \
         of rounds | range over rounds | CPU used by other processes |"
    );
    println!("|---|---:|---:|---:|---:|");
    let plain_ns = median(ns[0].clone());
    println!(
        "| plain `get()` | {plain_ns:.1} | 1.00 | | {} |",
        percent(others)
    );
    let labels = [
        "`get()`, circuit breaker on",
        "`get_in(\"fast\")`, one lane",
    ];
    for (i, label) in labels.iter().enumerate() {
        let r = &ratios[i];
        let (lo, hi) = (
            r.iter().copied().fold(f64::INFINITY, f64::min),
            r.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        println!(
            "| {label} | {:.1} | {:.2} | {lo:.2}–{hi:.2} | |",
            median(ns[i + 1].clone()),
            median(r.clone()),
        );
    }
}

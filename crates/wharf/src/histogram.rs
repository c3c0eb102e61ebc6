//! A lock-free latency histogram.
//!
//! Every `get()` and every return records into one of these, so recording must
//! not take a lock: it is a single relaxed `fetch_add` on a bucket plus one on
//! the running sum (none for a zero sample), on the recording thread's shard. Buckets are log-linear (16 linear sub-buckets per power of
//! two of microseconds), so any recorded value is known to within 6.25 %, which
//! is plenty for p50/p95/p99 reporting and Prometheus buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::padded::{shard_count, thread_index, CachePadded};

const SUB_BITS: u32 = 4;
const SUB_COUNT: u64 = 1 << SUB_BITS;
/// Values up to 2^40 µs (about 12.7 days) get their own bucket; larger ones
/// land in the last bucket.
const MAX_MAGNITUDE: u32 = 40;
const BUCKETS: usize = ((MAX_MAGNITUDE - SUB_BITS + 2) as usize) * SUB_COUNT as usize;

/// The bucket boundaries (in seconds) used when rendering Prometheus
/// histograms: 100 µs to 60 s, roughly 1-2.5-5 per decade.
pub const PROMETHEUS_BOUNDS_SECS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The recording side of a latency histogram: lock-free, shared by
/// reference between the tasks that record into it, read with
/// [`snapshot`](Self::snapshot).
///
/// Striped: each thread records into one of a few shards (one per core, at
/// most 8) and a snapshot adds them up, so that workers recording at once
/// do not take turns owning the same cache line.
pub struct AtomicHistogram {
    shards: Box<[CachePadded<Shard>]>,
}

struct Shard {
    buckets: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl Shard {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

fn bucket_index(micros: u64) -> usize {
    if micros < SUB_COUNT {
        return micros as usize;
    }
    let magnitude = 63 - micros.leading_zeros();
    if magnitude > MAX_MAGNITUDE {
        return BUCKETS - 1;
    }
    let shift = magnitude - SUB_BITS;
    let sub = (micros >> shift) & (SUB_COUNT - 1);
    ((shift + 1) as usize) * SUB_COUNT as usize + sub as usize
}

/// The largest value (in µs) that falls into bucket `index`.
fn bucket_upper(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_COUNT {
        return index;
    }
    let shift = index / SUB_COUNT - 1;
    let sub = index % SUB_COUNT;
    ((SUB_COUNT + sub + 1) << shift) - 1
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicHistogram")
            .field("sum_micros", &self.sum_micros())
            .finish_non_exhaustive()
    }
}

impl AtomicHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            shards: (0..shard_count())
                .map(|_| CachePadded(Shard::new()))
                .collect(),
        }
    }

    /// Records one sample: at most two relaxed atomic adds, no lock.
    pub fn record(&self, value: Duration) {
        // Not `as_micros`: its u128 arithmetic is a library call per sample.
        let micros = value
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(value.subsec_micros()));
        // The shard count is a power of two.
        let shard = &self.shards[thread_index() & (self.shards.len() - 1)];
        shard.buckets[bucket_index(micros)].fetch_add(1, Ordering::Relaxed);
        // Most acquires of a busy pool wait for nothing: adding their zero
        // would only cost a write.
        if micros > 0 {
            shard.sum_micros.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// Samples recorded so far (a sum over every shard and bucket: for
    /// occasional reads, not per sample).
    pub(crate) fn count(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.buckets.iter())
            .map(|b| b.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    fn sum_micros(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.sum_micros.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// A point-in-time copy, for quantiles and rendering.
    pub fn snapshot(&self) -> Histogram {
        let counts: Vec<(u64, u64)> = (0..BUCKETS)
            .filter_map(|i| {
                let n = self
                    .shards
                    .iter()
                    .map(|s| s.buckets[i].load(Ordering::Relaxed))
                    .sum();
                (n > 0).then(|| (bucket_upper(i), n))
            })
            .collect();
        Histogram {
            count: counts.iter().map(|(_, n)| n).sum(),
            sum_micros: self.sum_micros(),
            counts,
        }
    }
}

/// A point-in-time copy of a latency histogram.
///
/// Quantiles are accurate to within 6.25 % of the true value (the resolution
/// of the underlying buckets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    count: u64,
    sum_micros: u64,
    /// (upper bound of the bucket in µs, number of samples), ascending, only
    /// non-empty buckets.
    counts: Vec<(u64, u64)>,
}

impl Histogram {
    /// How many samples were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of all samples.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros)
    }

    /// The mean of all samples, or zero when there are none.
    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.sum_micros / self.count)
    }

    /// The value below which the fraction `q` (0.0 to 1.0) of samples fall,
    /// e.g. `quantile(0.99)` for p99. Zero when there are no samples.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(upper, n) in &self.counts {
            seen += n;
            if seen >= rank {
                return Duration::from_micros(upper);
            }
        }
        self.max()
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.quantile(0.50)
    }

    /// The 95th percentile.
    pub fn p95(&self) -> Duration {
        self.quantile(0.95)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    /// The largest sample (to bucket resolution).
    pub fn max(&self) -> Duration {
        self.counts
            .last()
            .map_or(Duration::ZERO, |&(upper, _)| Duration::from_micros(upper))
    }

    /// Cumulative counts at each of `bounds_secs` (upper bounds, ascending),
    /// as Prometheus' `le` buckets want them: exporters rendering their
    /// own histograms, and the difference of two snapshots' counts for the
    /// samples recorded in between.
    pub fn cumulative(&self, bounds_secs: &[f64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds_secs.len());
        let mut iter = self.counts.iter().peekable();
        let mut running = 0;
        for bound in bounds_secs {
            let bound_micros = (bound * 1e6) as u64;
            while let Some(&&(upper, n)) = iter.peek() {
                if upper > bound_micros {
                    break;
                }
                running += n;
                iter.next();
            }
            out.push(running);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_contain_their_values() {
        for micros in (0..5000).chain([65_535, 65_536, 1 << 30, (1 << 39) + 12_345]) {
            let i = bucket_index(micros);
            assert!(bucket_upper(i) >= micros, "{micros} above bucket {i}");
            if i > 0 {
                assert!(bucket_upper(i - 1) < micros, "{micros} below bucket {i}");
            }
            let upper = bucket_upper(i) as f64;
            assert!(upper <= micros as f64 * 1.0625 + 1.0, "{micros} too coarse");
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_follow_the_samples() {
        let h = AtomicHistogram::new();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.sum(), Duration::from_millis(5050));
        let p50 = s.p50().as_secs_f64() * 1000.0;
        let p99 = s.p99().as_secs_f64() * 1000.0;
        assert!((50.0..=53.2).contains(&p50), "p50 {p50}");
        assert!((99.0..=105.2).contains(&p99), "p99 {p99}");
        assert!(s.max() >= Duration::from_millis(100));
        // 10 ms lands in a bucket reaching 10.239 ms, so it is above the
        // 10 ms bound; 49 ms lands in one ending at 49.151 ms, within 50 ms.
        assert_eq!(
            s.cumulative(&[0.0005, 0.01, 0.05, 1.0]),
            vec![0, 9, 49, 100]
        );
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let s = AtomicHistogram::new().snapshot();
        assert_eq!(s.p99(), Duration::ZERO);
        assert_eq!(s.mean(), Duration::ZERO);
        assert_eq!(s.max(), Duration::ZERO);
    }
}

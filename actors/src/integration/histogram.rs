//! A fixed-bucket histogram of durations, lock-free, for Prometheus: cumulative counts
//! per upper bound, a sum and a count, read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds: 1 ms to 5 minutes (a retried message's end to end).
pub const BOUNDS_S: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_S.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A reading: cumulative counts per bound (the last, `+Inf`, is `count`).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations at or below each of [`BOUNDS_S`].
    pub cumulative: Vec<u64>,
    /// Sum of observations, seconds.
    pub sum_s: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BOUNDS_S.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// A reading. Concurrent records may land between the loads; a scrape can be off by
    /// what is recorded meanwhile, never by more.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_over_the_top_counts_only_in_inf() {
        let h = Histogram::default();
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(400));
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[2], 3, "3 ms is at or below 5 ms");
        assert_eq!(*s.cumulative.last().unwrap_or(&0), 3, "400 s is above every bound");
        assert_eq!(s.count, 4);
        assert!((s.sum_s - 400.0065).abs() < 1e-6, "{}", s.sum_s);
    }
}

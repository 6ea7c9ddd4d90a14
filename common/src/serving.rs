//! Serving telemetry: what an agent measures while it serves a model, and the drift test the
//! coordinator runs on it.
//!
//! The serving process summarises every window of traffic into a [`ServingWindow`]: request,
//! error and rejection counts, latency percentiles, its own RSS, and per tensor a compact
//! [`TensorStats`] (count, mean, std, min, max and the values at [`QUANTILE_POINTS`], from a
//! bounded reservoir sample, so memory does not grow with traffic). Token inputs (integer
//! tensors) also carry [`TokenStats`]: the mean non-padding length and the rate of the
//! unknown-token id.
//!
//! Drift is the population stability index ([`psi`]) of a window's values against reference
//! statistics: the reference quantiles cut the value axis into bins, each side's share of a bin
//! comes from its own piecewise-linear CDF ([`cdf_at`]). Ties (a pixel value that is 0 for 80%
//! of the data) collapse into one bin instead of many empty ones.

use serde::{Deserialize, Serialize};

/// Cumulative probabilities at which [`TensorStats::quantiles`] are taken: 5%, 10%, …, 95%.
pub const QUANTILE_POINTS: [f64; 19] = [
    0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80,
    0.85, 0.90, 0.95,
];

/// Values a [`StatsAccumulator`] keeps for its quantiles (a uniform reservoir sample).
pub const RESERVOIR: usize = 4096;

/// At most this many tensors are summarised per side (inputs, outputs) in one window.
pub const MAX_TENSORS: usize = 16;

/// PSI above which inputs are said to have drifted (the customary "significant shift").
pub const PSI_DRIFT: f64 = 0.25;

/// Summary statistics of the values of one tensor over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorStats {
    /// Tensor name (graph input or output).
    pub name: String,
    /// Values seen (elements, over every request of the window).
    pub count: u64,
    /// Mean value.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Values at [`QUANTILE_POINTS`] (from the reservoir sample); empty when `count` is 0.
    pub quantiles: Vec<f32>,
    /// For integer (token id) tensors.
    pub tokens: Option<TokenStats>,
}

/// Statistics of a token-id tensor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenStats {
    /// Mean count of non-padding (non-zero) ids per sequence (last axis).
    pub mean_length: f64,
    /// Fraction of non-padding ids equal to the unknown-token id (0 when none was given).
    pub unknown_rate: f64,
}

/// One window of serving, as measured by the serving process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServingWindow {
    /// Unix ms when the window opened.
    pub window_start_ms: u64,
    /// Its length, ms.
    pub window_ms: u64,
    /// Inference requests answered (success or error), not counting rejections.
    pub requests: u64,
    /// Requests answered with an error (4xx for the request, 5xx for the model).
    pub errors: u64,
    /// Requests refused because the queue was full (503).
    pub rejected: u64,
    /// Latency of the successful requests (server side: body parsed to response ready).
    pub latency: Option<WindowLatency>,
    /// RSS of the serving process at the end of the window, bytes.
    pub rss_bytes: u64,
    /// Input statistics, at most [`MAX_TENSORS`].
    pub inputs: Vec<TensorStats>,
    /// Output statistics, at most [`MAX_TENSORS`].
    pub outputs: Vec<TensorStats>,
}

/// Latency percentiles of a window, ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowLatency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
}

impl WindowLatency {
    /// Nearest-rank percentiles of `samples_ms`; `None` when there are none.
    pub fn from_samples(samples_ms: &[f64]) -> Option<WindowLatency> {
        let s = crate::bench::LatencyStats::from_samples(samples_ms)?;
        Some(WindowLatency { p50_ms: s.p50_ms, p90_ms: s.p90_ms, p99_ms: s.p99_ms, max_ms: s.max_ms })
    }
}

/// Accumulates [`TensorStats`] over a window with bounded memory.
#[derive(Debug, Clone)]
pub struct StatsAccumulator {
    name: String,
    count: u64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
    reservoir: Vec<f32>,
    rng: u64,
    sequences: u64,
    length_sum: u64,
    nonzero: u64,
    unknown: u64,
    integer: bool,
}

impl StatsAccumulator {
    /// A new accumulator for tensor `name`; `integer` marks token-id tensors.
    pub fn new(name: &str, integer: bool) -> StatsAccumulator {
        StatsAccumulator {
            name: name.to_string(),
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            reservoir: Vec::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
            sequences: 0,
            length_sum: 0,
            nonzero: 0,
            unknown: 0,
            integer,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic, so two runs over the same data give the same sketch.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Adds float values. Non-finite values are skipped.
    pub fn add_f32(&mut self, values: &[f32]) {
        for &v in values {
            if v.is_finite() {
                self.push(v);
            }
        }
    }

    /// Adds token ids laid out as sequences of `seq_len` (the last axis); `unknown` is the
    /// unknown-token id, if known. Id 0 is padding.
    pub fn add_tokens(&mut self, ids: &[i64], seq_len: usize, unknown: Option<i64>) {
        for seq in ids.chunks(seq_len.max(1)) {
            self.sequences += 1;
            let len = seq.iter().filter(|&&i| i != 0).count() as u64;
            self.length_sum += len;
            self.nonzero += len;
            if let Some(u) = unknown {
                self.unknown += seq.iter().filter(|&&i| i == u && i != 0).count() as u64;
            }
        }
        for &v in ids {
            self.push(v as f32);
        }
    }

    fn push(&mut self, v: f32) {
        self.count += 1;
        let x = f64::from(v);
        self.sum += x;
        self.sum_sq += x * x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if self.reservoir.len() < RESERVOIR {
            self.reservoir.push(v);
        } else {
            let j = self.next_random() % self.count;
            if (j as usize) < RESERVOIR {
                self.reservoir[j as usize] = v;
            }
        }
    }

    /// Values seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The statistics so far.
    pub fn finish(&self) -> TensorStats {
        let n = self.count.max(1) as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let mut sorted = self.reservoir.clone();
        sorted.sort_by(f32::total_cmp);
        let quantiles = if sorted.is_empty() {
            Vec::new()
        } else {
            QUANTILE_POINTS
                .iter()
                .map(|p| {
                    let rank = (p * sorted.len() as f64).ceil() as usize;
                    sorted[rank.clamp(1, sorted.len()) - 1]
                })
                .collect()
        };
        TensorStats {
            name: self.name.clone(),
            count: self.count,
            mean: if self.count == 0 { 0.0 } else { mean },
            std: var.sqrt(),
            min: if self.count == 0 { 0.0 } else { self.min },
            max: if self.count == 0 { 0.0 } else { self.max },
            quantiles,
            tokens: self.integer.then(|| TokenStats {
                mean_length: self.length_sum as f64 / self.sequences.max(1) as f64,
                unknown_rate: self.unknown as f64 / self.nonzero.max(1) as f64,
            }),
        }
    }
}

/// The empirical CDF of `stats` at `x`: piecewise linear through `(min, 0)`, the quantiles
/// and `(max, 1)`; with ties, the largest probability at that value (right-continuous).
pub fn cdf_at(stats: &TensorStats, x: f64) -> f64 {
    if stats.count == 0 || stats.quantiles.len() != QUANTILE_POINTS.len() {
        return f64::NAN;
    }
    let mut points: Vec<(f64, f64)> = Vec::with_capacity(QUANTILE_POINTS.len() + 2);
    points.push((stats.min, 0.0));
    points.extend(stats.quantiles.iter().zip(QUANTILE_POINTS).map(|(q, p)| (f64::from(*q), p)));
    points.push((stats.max, 1.0));
    if x < points[0].0 {
        return 0.0;
    }
    if x >= points[points.len() - 1].0 {
        return 1.0;
    }
    // The last point at or below x, and the first point strictly above it.
    let below = points.iter().rposition(|(v, _)| *v <= x).unwrap_or(0);
    let (x0, p0) = points[below];
    let (x1, p1) = points[below + 1];
    if x1 <= x0 {
        return p1;
    }
    p0 + (p1 - p0) * (x - x0) / (x1 - x0)
}

/// Population stability index of `observed` against `reference`, over bins cut at the
/// reference's distinct quantiles. `None` when either side has no values.
pub fn psi(reference: &TensorStats, observed: &TensorStats) -> Option<f64> {
    if reference.count == 0 || observed.count == 0 {
        return None;
    }
    if reference.quantiles.len() != QUANTILE_POINTS.len()
        || observed.quantiles.len() != QUANTILE_POINTS.len()
    {
        return None;
    }
    let mut edges: Vec<f64> = reference.quantiles.iter().map(|q| f64::from(*q)).collect();
    edges.dedup();
    const FLOOR: f64 = 1e-4;
    let mut total = 0.0;
    let (mut prev_e, mut prev_o) = (0.0, 0.0);
    for edge in edges.iter().copied().chain(std::iter::once(f64::INFINITY)) {
        let (ce, co) = if edge.is_infinite() {
            (1.0, 1.0)
        } else {
            (cdf_at(reference, edge), cdf_at(observed, edge))
        };
        let e = (ce - prev_e).max(FLOOR);
        let o = (co - prev_o).max(FLOOR);
        total += (o - e) * (o / e).ln();
        (prev_e, prev_o) = (ce.max(prev_e), co.max(prev_o));
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(values: impl Iterator<Item = f32>) -> TensorStats {
        let mut a = StatsAccumulator::new("x", false);
        a.add_f32(&values.collect::<Vec<_>>());
        a.finish()
    }

    fn uniform(n: usize, lo: f32, hi: f32) -> impl Iterator<Item = f32> {
        (0..n).map(move |i| lo + (hi - lo) * (i as f32 + 0.5) / n as f32)
    }

    #[test]
    fn quantiles_of_a_uniform_ramp() {
        let s = stats(uniform(10_000, 0.0, 1.0));
        assert_eq!(s.count, 10_000);
        assert!((s.mean - 0.5).abs() < 1e-3, "{}", s.mean);
        assert!((s.std - (1.0f64 / 12.0).sqrt()).abs() < 1e-3, "{}", s.std);
        for (q, p) in s.quantiles.iter().zip(QUANTILE_POINTS) {
            assert!((f64::from(*q) - p).abs() < 0.03, "q({p}) = {q}");
        }
        assert!((cdf_at(&s, 0.3) - 0.3).abs() < 0.03);
    }

    #[test]
    fn the_reservoir_stays_bounded() {
        let mut a = StatsAccumulator::new("x", false);
        for _ in 0..50 {
            a.add_f32(&uniform(10_000, -1.0, 1.0).collect::<Vec<_>>());
        }
        assert_eq!(a.count(), 500_000);
        assert_eq!(a.reservoir.len(), RESERVOIR);
        let s = a.finish();
        assert!(s.quantiles[9].abs() < 0.1, "median of [-1, 1] ≈ 0, got {}", s.quantiles[9]);
    }

    #[test]
    fn same_distribution_has_low_psi_shifted_has_high() {
        let reference = stats(uniform(20_000, 0.0, 1.0));
        let same = stats(uniform(3_000, 0.0, 1.0));
        let shifted = stats(uniform(3_000, 0.5, 1.5));
        let same_psi = psi(&reference, &same).unwrap();
        let shifted_psi = psi(&reference, &shifted).unwrap();
        assert!(same_psi < 0.05, "{same_psi}");
        assert!(shifted_psi > PSI_DRIFT, "{shifted_psi}");
    }

    #[test]
    fn ties_collapse_into_one_bin() {
        // 80% zeros (blank pixels), the rest a ramp: many equal quantiles.
        let mk = |n: usize, hi: f32| {
            stats((0..n).map(move |i| if i % 5 == 0 { hi * (i as f32) / n as f32 } else { 0.0 }))
        };
        let reference = mk(20_000, 1.0);
        assert!(reference.quantiles[0] == reference.quantiles[14]);
        let same = mk(5_000, 1.0);
        let p = psi(&reference, &same).unwrap();
        assert!(p.is_finite() && p < 0.05, "{p}");
        // Far fewer blanks: a different population.
        let dense = stats(uniform(5_000, 0.0, 1.0));
        assert!(psi(&reference, &dense).unwrap() > PSI_DRIFT);
    }

    #[test]
    fn token_statistics_count_length_and_unknowns() {
        let mut a = StatsAccumulator::new("input_ids", true);
        // Two sequences of 6 with padding 0 and unknown id 100.
        a.add_tokens(&[101, 7, 100, 102, 0, 0, 101, 100, 100, 5, 6, 102], 6, Some(100));
        let t = a.finish().tokens.unwrap();
        assert!((t.mean_length - 5.0).abs() < 1e-9, "{t:?}");
        assert!((t.unknown_rate - 3.0 / 10.0).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn empty_windows_have_no_psi() {
        let reference = stats(uniform(100, 0.0, 1.0));
        let empty = StatsAccumulator::new("x", false).finish();
        assert_eq!(psi(&reference, &empty), None);
        assert!(empty.quantiles.is_empty());
    }
}

//! Learning-rate schedule: linear warm-up, then cosine decay to a floor.

/// `lr(step)`: rises linearly from `base / warmup` to `base` over the first `warmup` steps, then
/// follows half a cosine from `base` down to `base × min_ratio` at step `total − 1`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub base: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Total steps of the run.
    pub total: u64,
    /// Final learning rate as a fraction of `base`.
    pub min_ratio: f64,
}

/// Linear warm-up over `warmup` steps to `peak`, then linear decay towards 0 at step `steps`:
/// the learning rate of `step` (0-based). Fine-tunes and distillations use it.
pub fn linear_warmup_decay(peak: f64, step: usize, steps: usize, warmup: usize) -> f64 {
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        peak * steps.saturating_sub(step) as f64 / steps.saturating_sub(warmup).max(1) as f64
    }
}

impl LrSchedule {
    /// A constant learning rate.
    pub fn constant(lr: f64) -> LrSchedule {
        LrSchedule { base: lr, warmup: 0, total: 0, min_ratio: 1.0 }
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.base * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup + 1);
        if span == 0 {
            return if self.total > self.warmup { self.base } else { self.base * self.min_ratio };
        }
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let floor = self.base * self.min_ratio;
        floor + (self.base - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = LrSchedule { base: 1.0, warmup: 4, total: 14, min_ratio: 0.1 };
        let lrs: Vec<f64> = (0..16).map(|i| s.lr(i)).collect();
        assert_eq!(&lrs[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert!((lrs[4] - 1.0).abs() < 1e-12);
        // half way through the decay: (1 + 0.1) / 2
        assert!(
            (s.lr(4 + 9 / 2)
                - (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 4.0 / 9.0).cos())))
            .abs()
                < 1e-12
        );
        assert!((lrs[13] - 0.1).abs() < 1e-12);
        assert!((lrs[15] - 0.1).abs() < 1e-12);
        assert!(lrs[4..14].windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn constant_schedule_is_constant() {
        let s = LrSchedule::constant(0.3);
        assert!((0..5).all(|i| s.lr(i) == 0.3));
    }
}

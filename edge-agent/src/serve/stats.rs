//! One window of serving telemetry, accumulated with bounded memory and taken as a
//! [`ServingWindow`] (see [`hone_common::serving`]).

use hone_common::serving::{MAX_TENSORS, ServingWindow, StatsAccumulator, WindowLatency};

use super::kserve::{Tensor, Values};

/// Latency samples kept per window; beyond it, a uniform reservoir sample (the maximum stays
/// exact).
pub(crate) const MAX_LATENCY_SAMPLES: usize = 65_536;

/// The window being accumulated.
#[derive(Debug)]
pub(crate) struct Window {
    start_ms: u64,
    requests: u64,
    errors: u64,
    rejected: u64,
    latencies: Vec<f64>,
    successes: u64,
    max_ms: f64,
    rng: u64,
    inputs: Vec<(String, StatsAccumulator)>,
    outputs: Vec<(String, StatsAccumulator)>,
}

impl Window {
    /// An empty window opened at `start_ms` (unix ms).
    pub(crate) fn new(start_ms: u64) -> Window {
        Window {
            start_ms,
            requests: 0,
            errors: 0,
            rejected: 0,
            latencies: Vec::new(),
            successes: 0,
            max_ms: 0.0,
            rng: 0x2545_F491_4F6C_DD1D,
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// An inference request answered with an error.
    pub(crate) fn error(&mut self) {
        self.requests += 1;
        self.errors += 1;
    }

    /// A request refused because the queue was full.
    pub(crate) fn rejected(&mut self) {
        self.rejected += 1;
    }

    /// A successful inference: its latency and tensors.
    pub(crate) fn success(
        &mut self,
        latency_ms: f64,
        inputs: &[Tensor],
        outputs: &[Tensor],
        unknown_token_id: Option<i64>,
    ) {
        self.requests += 1;
        self.successes += 1;
        self.max_ms = self.max_ms.max(latency_ms);
        if self.latencies.len() < MAX_LATENCY_SAMPLES {
            self.latencies.push(latency_ms);
        } else {
            // xorshift64: a reservoir slot for this sample with probability capacity / seen.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let j = (self.rng % self.successes) as usize;
            if j < MAX_LATENCY_SAMPLES {
                self.latencies[j] = latency_ms;
            }
        }
        for t in inputs {
            accumulate(&mut self.inputs, t, unknown_token_id);
        }
        for t in outputs {
            accumulate(&mut self.outputs, t, None);
        }
    }

    /// Closes the window at `now_ms` with the process's RSS and opens the next one.
    pub(crate) fn take(&mut self, now_ms: u64, rss_bytes: u64) -> ServingWindow {
        let done = std::mem::replace(self, Window::new(now_ms));
        let latency = WindowLatency::from_samples(&done.latencies)
            .map(|l| WindowLatency { max_ms: done.max_ms, ..l });
        ServingWindow {
            window_start_ms: done.start_ms,
            window_ms: now_ms.saturating_sub(done.start_ms),
            requests: done.requests,
            errors: done.errors,
            rejected: done.rejected,
            latency,
            rss_bytes,
            inputs: done.inputs.iter().map(|(_, a)| a.finish()).collect(),
            outputs: done.outputs.iter().map(|(_, a)| a.finish()).collect(),
        }
    }
}

fn accumulate(accs: &mut Vec<(String, StatsAccumulator)>, t: &Tensor, unknown: Option<i64>) {
    let integer = t.values.datatype().is_integer();
    let ix = match accs.iter().position(|(name, _)| *name == t.name) {
        Some(ix) => ix,
        None if accs.len() < MAX_TENSORS => {
            accs.push((t.name.clone(), StatsAccumulator::new(&t.name, integer)));
            accs.len() - 1
        }
        None => return,
    };
    let acc = &mut accs[ix].1;
    let seq = t.shape.last().copied().unwrap_or(1);
    match &t.values {
        Values::F32(v) => acc.add_f32(v),
        Values::F64(v) => {
            for chunk in v.chunks(4096) {
                acc.add_f32(&chunk.iter().map(|x| *x as f32).collect::<Vec<_>>());
            }
        }
        Values::Bool(v) => {
            for chunk in v.chunks(4096) {
                acc.add_f32(&chunk.iter().map(|b| f32::from(u8::from(*b))).collect::<Vec<_>>());
            }
        }
        Values::I64(v) => acc.add_tokens(v, seq, unknown),
        Values::I32(v) => acc.add_tokens(&widen(v), seq, unknown),
        Values::I8(v) => acc.add_tokens(&widen(v), seq, unknown),
        Values::U8(v) => acc.add_tokens(&widen(v), seq, unknown),
    }
}

fn widen<T: Copy + Into<i64>>(v: &[T]) -> Vec<i64> {
    v.iter().map(|x| (*x).into()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: &[usize], values: Values) -> Tensor {
        Tensor { name: name.into(), shape: shape.to_vec(), values }
    }

    #[test]
    fn a_window_counts_summarises_and_starts_afresh() {
        let mut w = Window::new(1_000);
        let ids = tensor("ids", &[2, 3], Values::I64(vec![5, 9, 0, 9, 9, 9]));
        let x = tensor("x", &[1, 2], Values::F32(vec![1.0, 3.0]));
        let y = tensor("y", &[1], Values::Bool(vec![true]));
        w.success(4.0, &[ids.clone(), x.clone()], std::slice::from_ref(&y), Some(9));
        w.success(2.0, &[ids, x], &[y], Some(9));
        w.error();
        w.rejected();
        let s = w.take(3_500, 42);
        assert_eq!((s.window_start_ms, s.window_ms, s.rss_bytes), (1_000, 2_500, 42));
        assert_eq!((s.requests, s.errors, s.rejected), (3, 1, 1));
        assert_eq!(s.latency.map(|l| (l.p50_ms, l.max_ms)), Some((2.0, 4.0)));
        assert_eq!(s.inputs.len(), 2);
        let tokens = s.inputs[0].tokens.expect("INT64 input has token statistics");
        assert!((tokens.mean_length - 2.5).abs() < 1e-9, "{tokens:?}");
        assert!((tokens.unknown_rate - 0.8).abs() < 1e-9, "{tokens:?}");
        assert_eq!((s.inputs[1].count, s.inputs[1].mean), (4, 2.0));
        assert!(s.inputs[1].tokens.is_none());
        assert_eq!((s.outputs[0].name.as_str(), s.outputs[0].mean), ("y", 1.0));
        let next = w.take(4_000, 0);
        assert_eq!((next.window_start_ms, next.requests, next.latency), (3_500, 0, None));
        assert!(next.inputs.is_empty());
    }

    #[test]
    fn at_most_max_tensors_are_summarised_per_side() {
        let mut w = Window::new(0);
        let many: Vec<Tensor> = (0..MAX_TENSORS + 5)
            .map(|i| tensor(&format!("t{i}"), &[1], Values::F32(vec![i as f32])))
            .collect();
        w.success(1.0, &many, &many, None);
        let s = w.take(1, 0);
        assert_eq!((s.inputs.len(), s.outputs.len()), (MAX_TENSORS, MAX_TENSORS));
        assert_eq!(s.inputs.last().unwrap().name, format!("t{}", MAX_TENSORS - 1));
    }
}

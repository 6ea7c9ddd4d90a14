//! Side-by-side latency of several models in several runtimes, in one run: every plan and
//! session is built and warmed up, then they run in turn (a, b, c, a, b, c …) on the same
//! inputs, so machine noise hits all alike. Figures are medians; compare them as ratios.

use std::time::{Duration, Instant};

use candle_core::DType;
use tract_onnx::prelude::*;

use hone_graph::Graph;
use hone_learn::eval::ort::{OrtInputs, OrtModel};
use hone_learn::eval::tract::TractPlan;
use serde::{Deserialize, Serialize};

use crate::prune::latency::Timing;

/// A runtime to time in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimedRuntime {
    /// tract (one thread).
    Tract,
    /// ONNX Runtime on `threads` intra-op threads, spinning off.
    Ort,
}

crate::named_enum!(TimedRuntime, "runtime" { Tract => "tract", Ort => "ort" });

enum Runner {
    Tract(TractPlan),
    Ort(OrtModel, OrtInputs),
}

/// Times every `(graph, runtime)` of `entries` in turn for about `budget` (at least 5 rounds),
/// after `warmup` runs each, on inputs of `inputs` (element type and dims, in graph input
/// order; token ids look real, masks are ones). ONNX Runtime uses `threads` threads.
pub fn side_by_side(
    entries: &[(&Graph, TimedRuntime)],
    inputs: &[(DType, Vec<usize>)],
    threads: usize,
    warmup: usize,
    budget: Duration,
) -> anyhow::Result<Vec<Timing>> {
    let mut runners = Vec::with_capacity(entries.len());
    for (graph, runtime) in entries {
        let mut values = crate::prune::latency::inputs_for(inputs);
        crate::prune::latency::fix_masks(graph, &mut values);
        runners.push(match runtime {
            TimedRuntime::Tract => (Runner::Tract(TractPlan::new(graph.proto(), inputs)?), values),
            TimedRuntime::Ort => {
                let model = OrtModel::new(graph, threads)?;
                let names = hone_learn::eval::tract::true_inputs(graph);
                let named: Vec<(String, candle_core::Tensor)> = names
                    .into_iter()
                    .zip(values.iter())
                    .map(|(n, v)| Ok((n, to_candle(v)?)))
                    .collect::<anyhow::Result<_>>()?;
                let ort_values = model.values(&named)?;
                (Runner::Ort(model, ort_values), values)
            }
        });
    }
    let run = |r: &(Runner, TVec<TValue>)| -> anyhow::Result<()> {
        match &r.0 {
            Runner::Tract(p) => {
                p.runnable().run(r.1.clone()).map_err(|e| anyhow::anyhow!("tract: {e:#}"))?;
            }
            Runner::Ort(m, v) => m.run_discard(v)?,
        }
        Ok(())
    };
    for r in &runners {
        for _ in 0..warmup {
            run(r)?;
        }
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); runners.len()];
    let start = Instant::now();
    while (start.elapsed() < budget || times[0].len() < 5) && times[0].len() < 20_000 {
        for (k, r) in runners.iter().enumerate() {
            let t = Instant::now();
            run(r)?;
            times[k].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            Timing { p50_ms: v[v.len() / 2], min_ms: v[0], runs: v.len() }
        })
        .collect())
}

fn to_candle(v: &TValue) -> anyhow::Result<candle_core::Tensor> {
    let dims = v.shape().to_vec();
    let cpu = &candle_core::Device::Cpu;
    if let Ok(a) = v.to_plain_array_view::<i64>() {
        return Ok(candle_core::Tensor::from_vec(
            a.iter().copied().collect::<Vec<_>>(),
            dims,
            cpu,
        )?);
    }
    let a = v.to_plain_array_view::<f32>().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(candle_core::Tensor::from_vec(a.iter().copied().collect::<Vec<_>>(), dims, cpu)?)
}

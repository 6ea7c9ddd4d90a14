//! Parent and child latency in tract, measured side by side in one run: both plans are built,
//! warmed up, then run alternately (parent, child, parent, child …) on the same inputs, so that
//! machine noise hits both alike. The figure is the ratio of medians.

use std::time::{Duration, Instant};

use candle_core::DType;
use tract_onnx::prelude::*;

use hone_graph::Graph;
use hone_learn::eval::tract::TractPlan;
use hone_learn::train::TrainError;

/// One model's timings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Timing {
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// Fastest run, milliseconds.
    pub min_ms: f64,
    /// Runs.
    pub runs: usize,
}

pub(crate) fn inputs_for(inputs: &[(DType, Vec<usize>)]) -> TVec<TValue> {
    inputs
        .iter()
        .map(|(dt, dims)| {
            let n: usize = dims.iter().product();
            let t = if *dt == DType::I64 {
                // Token ids: a real-looking, in-vocabulary sequence (101 = [CLS] … 102 = [SEP]).
                let mut v: Vec<i64> = (0..n).map(|i| 1000 + (i as i64 * 37) % 20000).collect();
                if let Some(f) = v.first_mut() {
                    *f = 101;
                }
                if let Some(l) = v.last_mut() {
                    *l = 102;
                }
                tract_ndarray::ArrayD::from_shape_vec(dims.clone(), v)
                    .map(|a| a.into_tensor())
                    .unwrap_or_else(|_| Tensor::zero::<i64>(dims).unwrap_or_else(|_| tensor0(0i64)))
            } else {
                let v: Vec<f32> =
                    (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
                tract_ndarray::ArrayD::from_shape_vec(dims.clone(), v)
                    .map(|a| a.into_tensor())
                    .unwrap_or_else(|_| tensor0(0f32))
            };
            t.into_tvalue()
        })
        .collect()
}

/// The attention mask input, when named so, is all ones.
pub(crate) fn fix_masks(graph: &Graph, values: &mut TVec<TValue>) {
    let names = hone_learn::eval::tract::true_inputs(graph);
    for (ix, name) in names.iter().enumerate() {
        if name.contains("mask")
            && let Some(v) = values.get_mut(ix)
            && let Ok(view) = v.to_plain_array_view::<i64>()
        {
            let ones = view.mapv(|_| 1i64);
            *v = ones.into_tensor().into_tvalue();
        }
    }
}

/// Times `parent` and `child` alternately for about `budget`, after `warmup` runs each.
pub fn side_by_side(
    parent: &Graph,
    child: &Graph,
    inputs: &[(DType, Vec<usize>)],
    warmup: usize,
    budget: Duration,
) -> Result<(Timing, Timing), TrainError> {
    let plans = [TractPlan::new(parent.proto(), inputs)?, TractPlan::new(child.proto(), inputs)?];
    let plans = plans.each_ref().map(TractPlan::runnable);
    let mut values = inputs_for(inputs);
    fix_masks(parent, &mut values);
    let fail = |e: TractError| TrainError::config(format!("tract: {e:#}"));
    for p in &plans {
        for _ in 0..warmup {
            p.run(values.clone()).map_err(fail)?;
        }
    }
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let start = Instant::now();
    while (start.elapsed() < budget || times[0].len() < 5) && times[0].len() < 20_000 {
        for (k, p) in plans.iter().enumerate() {
            let t = Instant::now();
            p.run(values.clone()).map_err(fail)?;
            times[k].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let summarize = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        Timing { p50_ms: v[v.len() / 2], min_ms: v[0], runs: v.len() }
    };
    let [mut a, mut b] = times;
    Ok((summarize(&mut a), summarize(&mut b)))
}

/// Input facts for timing: declared dims with symbolic ones set (batch 1, others `seq`), and the
/// declared element types.
pub fn timing_inputs(
    graph: &Graph,
    seq: usize,
    given: &hone_common::shapes::InputShapes,
) -> Vec<(DType, Vec<usize>)> {
    let names = hone_learn::eval::tract::true_inputs(graph);
    let mut out = Vec::new();
    for info in graph.inputs().into_iter().filter(|i| names.contains(&i.name)) {
        let dt = match info.data_type {
            Some(hone_graph::DataType::I64) => DType::I64,
            _ => DType::F32,
        };
        let dims = super::input_dims(&info, 1, seq, given).unwrap_or_default();
        out.push((dt, dims));
    }
    out
}

//! `coordinator exec-bench`: forward-only speed of the candle executor against tract on the same
//! model and the same real inputs, measured side by side in one process.
//!
//! Both runtimes get the first batch of the data set's test part (see [`EvalData::batches`]).
//! tract runs an optimised plan for that exact shape; the executor runs the graph with every
//! initializer frozen (no autograd graph is kept). After `warmup` runs of each, the measured runs
//! alternate (tract, candle, tract, candle, …) so that both see the same machine state, and the
//! summary is the nearest-rank percentiles of each ([`LatencyStats`]). tract runs on one thread;
//! candle uses its own thread pool (`RAYON_NUM_THREADS`, default: every core), which the report
//! states. Like every benchmark in Hone, this prints figures and asserts nothing.

use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::DType;
use hone_common::bench::LatencyStats;

use hone_graph::Graph;

use crate::data::Part;
use crate::eval::{EvalData, TractRunner};
use crate::train::exec::Executor;

/// Settings of one side-by-side run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ExecBenchOptions {
    /// Examples per run.
    pub batch_size: usize,
    /// Measured runs of each runtime.
    pub iterations: usize,
    /// Unmeasured runs of each runtime first.
    pub warmup: usize,
}

/// What [`exec_bench`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecBenchReport {
    /// The data set.
    pub data: String,
    /// The inputs fed to both runtimes: name and shape.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// The settings.
    pub options: ExecBenchOptions,
    /// tract's latency per run.
    pub tract: LatencyStats,
    /// The candle executor's latency per run.
    pub candle: LatencyStats,
    /// `candle p50 / tract p50`.
    pub ratio_p50: f64,
    /// Milliseconds tract took to optimise and plan the model for this shape and run it once.
    pub tract_plan_ms: f64,
    /// Milliseconds the executor took to decode the graph.
    pub candle_load_ms: f64,
    /// Threads of candle's pool (tract runs on one).
    pub candle_threads: usize,
    /// Largest |tract − candle| over the float outputs, relative to tract's largest magnitude
    /// of that output (a sanity check that both computed the same thing).
    pub max_rel_diff: f32,
}

/// Runs the side-by-side benchmark (see the [module](self) documentation).
pub fn exec_bench(
    model: &Graph,
    data: &EvalData,
    options: ExecBenchOptions,
) -> anyhow::Result<ExecBenchReport> {
    if options.iterations == 0 || options.batch_size == 0 {
        bail!("iterations and batch size must be at least 1");
    }
    let batch = data
        .batches(model, Part::Test, options.batch_size, Some(options.batch_size), None)?
        .into_iter()
        .next()
        .context("the test part is empty")?;
    let inputs: Vec<(String, Vec<usize>)> =
        batch.inputs.iter().map(|(n, t)| (n.clone(), t.dims().to_vec())).collect();
    let mut tract = TractRunner::new(model.clone());
    let start = Instant::now();
    let reference = tract.run(&batch)?;
    let tract_plan_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let exec = Executor::with_trainable(model, |_| false)
        .context("the candle executor cannot run this model")?;
    let candle_load_ms = start.elapsed().as_secs_f64() * 1e3;
    let run_candle = || exec.forward(batch.inputs.iter().cloned());
    let ours = run_candle()?;
    let mut max_rel_diff = 0f32;
    for (name, (_, want)) in exec.output_names().iter().zip(&reference) {
        let got = &ours[name];
        if !got.dtype().is_float() {
            continue;
        }
        let got: Vec<f32> = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
        let diff = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        max_rel_diff = max_rel_diff.max(diff / scale);
    }
    for _ in 1..options.warmup {
        tract.run(&batch)?;
        run_candle()?;
    }
    let (mut t_ms, mut c_ms) = (Vec::new(), Vec::new());
    for _ in 0..options.iterations {
        let start = Instant::now();
        tract.run(&batch)?;
        t_ms.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        run_candle()?;
        c_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let tract = LatencyStats::from_samples(&t_ms).context("no tract sample")?;
    let candle = LatencyStats::from_samples(&c_ms).context("no candle sample")?;
    Ok(ExecBenchReport {
        data: data.name().to_owned(),
        inputs,
        options,
        ratio_p50: candle.p50_ms / tract.p50_ms.max(1e-9),
        tract,
        candle,
        tract_plan_ms,
        candle_load_ms,
        candle_threads: candle_core::utils::get_num_threads(),
        max_rel_diff,
    })
}

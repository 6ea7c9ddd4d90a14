//! ONNX Runtime as the second runtime of evaluation and timing: a model meant for ONNX Runtime
//! (int8 `MatMulInteger`, QDQ) is judged and timed in the runtime that will run it. The one
//! module of the engine crates that runs ONNX Runtime.
//!
//! The library is `HONE_ORT_LIB`, else the asset `onnxruntime-lib` (the pinned
//! `onnxruntime==1.31.1` wheel's `libonnxruntime.so.1.31.1`), loaded once per process at run
//! time. Sessions run with all graph optimisations, the given intra-op threads, one inter-op
//! thread and spinning off, as on the agents.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, anyhow};
use candle_core::{DType, Tensor};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::DynValue;

use super::tract::Output;
use hone_graph::Graph;

/// Where ONNX Runtime's library is: `HONE_ORT_LIB`, else the asset cache's (checked).
pub fn library() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("HONE_ORT_LIB") {
        return Ok(PathBuf::from(p));
    }
    hone_assets::path("onnxruntime-lib").context(
        "ONNX Runtime's library is missing: run `scripts/fetch-assets.sh onnxruntime-lib` or \
         set HONE_ORT_LIB to a libonnxruntime.so of version 1.31",
    )
}

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime environment (loaded on first use; a failure is kept and repeated).
fn environment() -> anyhow::Result<&'static ort::environment::Environment> {
    let env = ENV.get_or_init(|| {
        let lib = library().map_err(|e| format!("{e:#}"))?;
        if !lib.is_file() {
            return Err(format!("no ONNX Runtime library at {}", lib.display()));
        }
        ort::init_from(&lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?
            .with_name("hone")
            .build()
            .map_err(|e| format!("ONNX Runtime failed to start: {e}"))
    });
    env.as_ref().map_err(|e| anyhow!("{e}"))
}

/// Whether ONNX Runtime can be used in this process (`Err`: why not).
pub fn available() -> anyhow::Result<()> {
    environment().map(drop)
}

/// Inputs made once for an [`OrtModel`] ([`OrtModel::values`]), to run many times.
pub struct OrtInputs(Vec<(String, DynValue)>);

impl std::fmt::Debug for OrtInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(n, _)| n)).finish()
    }
}

/// A model in an ONNX Runtime session.
pub struct OrtModel {
    session: Mutex<Session>,
    inputs: Vec<String>,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel").field("inputs", &self.inputs).finish_non_exhaustive()
    }
}

impl OrtModel {
    /// A session of `graph` on `threads` intra-op threads. Loading is ONNX Runtime's gate: a
    /// model it cannot load is an error with its reason.
    pub fn new(graph: &Graph, threads: usize) -> anyhow::Result<OrtModel> {
        let env = environment()?;
        let opts = |e: ort::Error| anyhow!("ONNX Runtime session options: {e}");
        let session = Session::builder(env)
            .map_err(opts)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| opts(e.into()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| opts(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| opts(e.into()))?
            .with_intra_op_spinning(false)
            .map_err(|e| opts(e.into()))?
            .with_inter_op_spinning(false)
            .map_err(|e| opts(e.into()))?
            .commit_from_memory(&graph.to_bytes())
            .map_err(|e| anyhow!("ONNX Runtime cannot load the model: {e}"))?;
        let inputs = super::tract::true_inputs(graph);
        Ok(OrtModel { session: Mutex::new(session), inputs })
    }

    /// Every output on `inputs` (named), in graph output order, as f32 with its shape.
    pub fn run(&self, inputs: &[(String, Tensor)]) -> anyhow::Result<Vec<Output>> {
        let values = self.values(inputs)?;
        self.run_values(&values)
    }

    /// `inputs` as ONNX Runtime values, in the model's input order (for timing loops).
    pub fn values(&self, inputs: &[(String, Tensor)]) -> anyhow::Result<OrtInputs> {
        let values = self
            .inputs
            .iter()
            .map(|name| {
                let (_, t) = inputs
                    .iter()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| anyhow!("no input `{name}` given"))?;
                Ok((name.clone(), to_ort(t).with_context(|| format!("input `{name}`"))?))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(OrtInputs(values))
    }

    /// Runs on values made by [`OrtModel::values`], discarding the outputs (timing loops).
    pub fn run_discard(&self, values: &OrtInputs) -> anyhow::Result<()> {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let inputs: Vec<(&str, &DynValue)> =
            values.0.iter().map(|(n, v)| (n.as_str(), v)).collect();
        session
            .run(inputs)
            .map(drop)
            .map_err(|e| anyhow!("ONNX Runtime failed to run the model: {e}"))
    }

    /// Runs on values made by [`OrtModel::values`].
    pub fn run_values(&self, values: &OrtInputs) -> anyhow::Result<Vec<Output>> {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let inputs: Vec<(&str, &DynValue)> =
            values.0.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let outputs = session
            .run(inputs)
            .map_err(|e| anyhow!("ONNX Runtime failed to run the model: {e}"))?;
        outputs
            .iter()
            .map(|(name, v)| {
                from_ort(&v).with_context(|| format!("output `{name}` of ONNX Runtime"))
            })
            .collect()
    }
}

fn to_ort(t: &Tensor) -> anyhow::Result<DynValue> {
    let shape: Vec<i64> = t.dims().iter().map(|d| *d as i64).collect();
    let flat = t.flatten_all()?;
    let value = match t.dtype() {
        DType::F32 => ort::value::Tensor::from_array((shape, flat.to_vec1::<f32>()?))?.into_dyn(),
        DType::I64 => ort::value::Tensor::from_array((shape, flat.to_vec1::<i64>()?))?.into_dyn(),
        other => return Err(anyhow!("input type {other:?} is not supported")),
    };
    Ok(value)
}

fn from_ort(v: &ort::value::DynValueRef<'_>) -> anyhow::Result<Output> {
    if let Ok((shape, data)) = v.try_extract_tensor::<f32>() {
        return Ok((shape.iter().map(|d| *d as usize).collect(), data.to_vec()));
    }
    if let Ok((shape, data)) = v.try_extract_tensor::<i64>() {
        let data = data.iter().map(|x| *x as f32).collect();
        return Ok((shape.iter().map(|d| *d as usize).collect(), data));
    }
    Err(anyhow!("not an f32 or i64 tensor"))
}

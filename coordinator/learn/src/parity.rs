//! Parity of the differentiable executor (candle) with tract on the same inputs: the check every
//! saved model passes after training. Here the two runtimes meet; `train` and `eval` do not
//! call each other.

use candle_core::{DType, Tensor};
use hone_graph::Graph;

use crate::TrainError;
use crate::eval::tract::{TractPlan, true_inputs};
use crate::train::exec::Executor;

/// How closely tract and the executor agree on one output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Parity {
    /// The output.
    pub output: String,
    /// Largest absolute difference.
    pub max_abs_diff: f32,
    /// Largest magnitude of tract's output.
    pub scale: f32,
}

/// Runs `graph` with tract and `exec` on the same inputs (named, every true input) and checks
/// that every graph output agrees within `tolerance × scale`.
pub fn check_parity(
    graph: &Graph,
    exec: &Executor,
    inputs: &[(&str, Tensor)],
    tolerance: f32,
) -> Result<Vec<Parity>, TrainError> {
    let order = true_inputs(graph);
    let mut ordered = Vec::with_capacity(order.len());
    for name in &order {
        let t = inputs
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| TrainError::config(format!("parity check: input `{name}` not given")))?;
        ordered.push(t.1.clone());
    }
    let facts: Vec<(DType, Vec<usize>)> =
        ordered.iter().map(|t| (t.dtype(), t.dims().to_vec())).collect();
    let plan = TractPlan::new(graph.proto(), &facts)?;
    let reference = plan.run(&ordered)?;
    let ours = exec.forward(inputs.iter().map(|(n, t)| ((*n).to_owned(), t.clone())))?;
    let mut report = Vec::new();
    for (name, (shape, want)) in exec.output_names().iter().zip(reference) {
        let got =
            ours.get(name).ok_or_else(|| TrainError::config(format!("no output `{name}`")))?;
        if got.dims() != shape.as_slice() {
            return Err(TrainError::config(format!(
                "output `{name}`: executor shape {:?}, tract shape {shape:?}",
                got.dims()
            )));
        }
        let got: Vec<f32> = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
        let max_abs_diff = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        if max_abs_diff.is_nan() || max_abs_diff > tolerance * scale {
            return Err(TrainError::Parity {
                output: name.clone(),
                max_abs_diff,
                scale,
                tolerance,
            });
        }
        report.push(Parity { output: name.clone(), max_abs_diff, scale });
    }
    Ok(report)
}

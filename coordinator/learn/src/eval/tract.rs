//! tract as the reference runtime: plans and runs a graph on candle tensors, and evaluates
//! image classifiers fast. The one module of this crate that runs tract.

use std::collections::HashSet;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use tract_onnx::pb;
use tract_onnx::prelude::{
    Datum as _, Framework as _, InferenceFact, InferenceModelExt as _, IntoRunnable as _,
    IntoTValue as _, IntoTensor as _, TValue, TVec, Tensor as TractTensor, TypedSimplePlan,
};

use crate::TrainError;
use crate::data::ImageDataset;
use hone_graph::Graph;

/// One output of a tract run: its shape and its values as f32.
pub type Output = (Vec<usize>, Vec<f32>);

/// A model optimised and planned by tract for fixed input shapes.
pub struct TractPlan {
    plan: Arc<TypedSimplePlan>,
    shapes: Vec<Vec<usize>>,
}

impl std::fmt::Debug for TractPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractPlan").field("shapes", &self.shapes).finish_non_exhaustive()
    }
}

/// The true inputs of a graph (declared inputs that are not initializers), in order.
pub fn true_inputs(graph: &Graph) -> Vec<String> {
    let inits: HashSet<&str> = graph.initializer_names().into_iter().collect();
    graph.inputs().into_iter().map(|v| v.name).filter(|n| !inits.contains(n.as_str())).collect()
}

impl TractPlan {
    /// Optimises `proto` for inputs of the given element types (`f32` or `i64`) and shapes,
    /// in graph input order.
    pub fn new(proto: &pb::ModelProto, inputs: &[(DType, Vec<usize>)]) -> Result<Self, TrainError> {
        let mut model =
            tract_onnx::onnx().model_for_proto_model(proto).map_err(TrainError::tract)?;
        for (ix, (dt, shape)) in inputs.iter().enumerate() {
            let fact = match dt {
                DType::F32 => InferenceFact::dt_shape(f32::datum_type(), shape.clone()),
                DType::I64 => InferenceFact::dt_shape(i64::datum_type(), shape.clone()),
                other => {
                    return Err(TrainError::config(format!(
                        "input type {other:?} is not supported"
                    )));
                }
            };
            model.set_input_fact(ix, fact).map_err(TrainError::tract)?;
        }
        let plan =
            model.into_optimized().and_then(|m| m.into_runnable()).map_err(TrainError::tract)?;
        Ok(TractPlan { plan, shapes: inputs.iter().map(|(_, s)| s.clone()).collect() })
    }

    /// Runs on candle tensors (in graph input order); returns every output as f32 values with
    /// their shape.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Output>, TrainError> {
        let tv: TVec<TValue> = inputs
            .iter()
            .map(to_tract)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|t| t.into_tvalue())
            .collect();
        let out = self.plan.run(tv).map_err(TrainError::tract)?;
        out.into_iter()
            .map(|v| {
                let t = v.into_tensor();
                let shape = t.shape().to_vec();
                let t = t.cast_to::<f32>().map_err(TrainError::tract)?;
                let data: Vec<f32> = t
                    .to_plain_array_view::<f32>()
                    .map_err(TrainError::tract)?
                    .iter()
                    .copied()
                    .collect();
                Ok((shape, data))
            })
            .collect()
    }

    /// The optimised tract plan, for callers that feed tract values directly (timing loops).
    pub fn runnable(&self) -> &Arc<TypedSimplePlan> {
        &self.plan
    }

    /// The input shapes the plan was made for.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }
}

fn to_tract(t: &Tensor) -> Result<TractTensor, TrainError> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    let tensor = match t.dtype() {
        DType::F32 => TractTensor::from_shape(&shape, &flat.to_vec1::<f32>()?),
        DType::I64 => TractTensor::from_shape(&shape, &flat.to_vec1::<i64>()?),
        other => return Err(TrainError::config(format!("input type {other:?} is not supported"))),
    };
    tensor.map_err(TrainError::tract)
}

/// Accuracy of an image classifier (first input `[N, C, H, W]` f32, first output
/// `[N, classes]` logits or scores) on the examples `indices` of `data`, run by tract in
/// batches of `batch` (the last batch is padded with zeros and the padding ignored).
pub fn tract_accuracy(
    proto: &pb::ModelProto,
    data: &ImageDataset,
    indices: &[usize],
    batch: usize,
) -> Result<Accuracy, TrainError> {
    if batch == 0 {
        return Err(TrainError::config("batch size must be at least 1"));
    }
    let [c, h, w] = data.shape;
    let plan = TractPlan::new(proto, &[(DType::F32, vec![batch, c, h, w])])?;
    let mut correct = 0usize;
    for chunk in indices.chunks(batch) {
        let mut b = data.batch(chunk);
        b.pixels.resize(batch * data.image_len(), 0.0);
        let x = Tensor::from_vec(b.pixels, (batch, c, h, w), &candle_core::Device::Cpu)?;
        let out = plan.run(&[x])?;
        let (shape, scores) =
            out.into_iter().next().ok_or_else(|| TrainError::config("the model has no output"))?;
        if shape.len() != 2 || shape[0] != batch {
            return Err(TrainError::config(format!(
                "the first output is {shape:?}, expected [{batch}, classes]"
            )));
        }
        let k = shape[1];
        for (row, &label) in b.labels.iter().enumerate() {
            let s = &scores[row * k..(row + 1) * k];
            let best = s
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc })
                .0;
            correct += usize::from(best == label as usize);
        }
    }
    Ok(Accuracy { correct, total: indices.len() })
}

/// Correct predictions out of a total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Accuracy {
    /// Correct predictions.
    pub correct: usize,
    /// Examples.
    pub total: usize,
}

impl Accuracy {
    /// `correct / total` (0 when there are no examples).
    pub fn value(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.correct as f64 / self.total as f64 }
    }
}

//! A data set's examples as a model's inputs, one example at a time: the reference statistics
//! that serving telemetry is compared with (drift), and request bodies for load and drift
//! tests.

use candle_core::DType;
use hone_common::serving::{StatsAccumulator, TensorStats};
use hone_graph::Graph;

use super::EvalData;
use crate::data::Part;

/// The values of one input of one example.
#[derive(Debug, Clone, PartialEq)]
pub enum InputValues {
    /// Float inputs (images, features).
    F32(Vec<f32>),
    /// Token ids.
    I64(Vec<i64>),
}

/// One input of one example, as a model receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleInput {
    /// Input name.
    pub name: String,
    /// Shape, batch of one.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: InputValues,
}

/// The first `limit` examples of `part` (the fixed subset of [`EvalData::examples`]), each as
/// `model`'s inputs with a batch of one.
pub fn example_inputs(
    data: &EvalData,
    model: &Graph,
    part: Part,
    limit: usize,
) -> anyhow::Result<Vec<Vec<ExampleInput>>> {
    let mut out = Vec::new();
    for batch in data.batches(model, part, 1, Some(limit), None)? {
        let mut example = Vec::new();
        for (name, t) in batch.inputs {
            let shape = t.dims().to_vec();
            let values = match t.dtype() {
                DType::I64 => InputValues::I64(t.flatten_all()?.to_vec1::<i64>()?),
                _ => InputValues::F32(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            };
            example.push(ExampleInput { name, shape, values });
        }
        out.push(example);
    }
    Ok(out)
}

/// Statistics of every input over the first `limit` examples of `part`: what a deployed model
/// should see if its traffic looks like the data it was validated on. Token inputs count
/// `unknown_token` as the unknown id.
pub fn input_stats(
    data: &EvalData,
    model: &Graph,
    part: Part,
    limit: usize,
    unknown_token: Option<i64>,
) -> anyhow::Result<Vec<TensorStats>> {
    let mut names: Vec<String> = Vec::new();
    let mut acc: Vec<StatsAccumulator> = Vec::new();
    for example in example_inputs(data, model, part, limit)? {
        for input in example {
            let i = match names.iter().position(|n| *n == input.name) {
                Some(i) => i,
                None => {
                    let integer = matches!(input.values, InputValues::I64(_));
                    acc.push(StatsAccumulator::new(&input.name, integer));
                    names.push(input.name.clone());
                    acc.len() - 1
                }
            };
            match &input.values {
                InputValues::F32(v) => acc[i].add_f32(v),
                InputValues::I64(v) => {
                    let seq = input.shape.last().copied().unwrap_or(v.len());
                    acc[i].add_tokens(v, seq, unknown_token)
                }
            }
        }
    }
    Ok(acc.iter().map(StatsAccumulator::finish).collect())
}

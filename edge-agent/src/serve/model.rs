//! The serving process's side of tract (with [`crate::bench::tract`], the only modules that
//! know it): load and optimise a model for concrete input shapes, warm it up, and run requests,
//! converting between KServe tensors and tract's.

use std::path::Path;

use hone_common::bench::BenchSpec;
use hone_common::shapes::InputShapes;
use tract_onnx::prelude::*;

use super::Engine;
use super::kserve::{DataType, TensorMeta, Values};
use crate::bench::tract::{self as bt, BenchFailure, InputPlan, Runnable};

/// A model loaded and optimised by tract, ready to serve.
pub(crate) struct TractModel {
    runnable: Runnable,
    plans: Vec<InputPlan>,
    inputs: Vec<TensorMeta>,
    outputs: Vec<TensorMeta>,
}

/// Loads `path` with its inputs fixed as the benchmarks fix them: `inputs` first, then named
/// symbols from `symbols`, the other symbolic axes at their defaults (1 for a batch).
pub(crate) fn load(
    path: &Path,
    symbols: &[(String, u64)],
    inputs: &InputShapes,
) -> Result<TractModel, BenchFailure> {
    let proto = bt::read_proto(path)?;
    let spec =
        BenchSpec { symbols: symbols.to_vec(), inputs: inputs.clone(), ..BenchSpec::default() };
    let plans = bt::plan_inputs(&proto, &spec, None)?;
    let runnable = bt::load(&proto, &plans)?;
    let inputs = plans
        .iter()
        .map(|p| {
            Ok(TensorMeta {
                name: p.name.clone(),
                datatype: datatype(p.datum).ok_or_else(|| {
                    BenchFailure::invalid(format!("input `{}`: cannot serve {:?}", p.name, p.datum))
                })?,
                shape: p.shape.iter().map(|d| *d as i64).collect(),
            })
        })
        .collect::<Result<Vec<_>, BenchFailure>>()?;
    let names: Vec<String> = proto
        .graph
        .as_ref()
        .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
        .unwrap_or_default();
    let model = runnable.model();
    let outputs = (0..model.output_outlets().map_err(fail)?.len())
        .map(|i| {
            let fact = model.output_fact(i).map_err(fail)?;
            Ok(TensorMeta {
                name: names.get(i).cloned().unwrap_or_else(|| format!("output{i}")),
                datatype: datatype(fact.datum_type).unwrap_or(DataType::F32),
                shape: fact.shape.iter().map(|d| d.to_i64().unwrap_or(-1)).collect(),
            })
        })
        .collect::<Result<Vec<_>, BenchFailure>>()?;
    Ok(TractModel { runnable, plans, inputs, outputs })
}

fn fail(e: TractError) -> BenchFailure {
    BenchFailure::invalid(format!("{e:#}"))
}

/// The KServe type of a tract type, where there is one.
fn datatype(datum: DatumType) -> Option<DataType> {
    Some(match datum {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::U8,
        DatumType::I8 => DataType::I8,
        DatumType::I32 => DataType::I32,
        DatumType::I64 => DataType::I64,
        DatumType::F32 => DataType::F32,
        DatumType::F64 => DataType::F64,
        _ => return None,
    })
}

impl TractModel {
    /// The model's inputs, with the shapes it was planned for.
    pub(crate) fn inputs(&self) -> &[TensorMeta] {
        &self.inputs
    }

    /// The model's outputs.
    pub(crate) fn outputs(&self) -> &[TensorMeta] {
        &self.outputs
    }

    /// Runs `n` inferences on synthetic inputs (the benchmarks' deterministic values).
    pub(crate) fn warm_up(&self, n: u32) -> Result<(), BenchFailure> {
        if n == 0 {
            return Ok(());
        }
        let inputs = bt::inputs_for(&self.plans)?;
        for _ in 0..n {
            bt::run_once(&self.runnable, &inputs)?;
        }
        Ok(())
    }
}

fn to_tract(shape: &[usize], values: &Values) -> TractResult<Tensor> {
    match values {
        Values::Bool(v) => Tensor::from_shape(shape, v.as_slice()),
        Values::U8(v) => Tensor::from_shape(shape, v.as_slice()),
        Values::I8(v) => Tensor::from_shape(shape, v.as_slice()),
        Values::I32(v) => Tensor::from_shape(shape, v.as_slice()),
        Values::I64(v) => Tensor::from_shape(shape, v.as_slice()),
        Values::F32(v) => Tensor::from_shape(shape, v.as_slice()),
        Values::F64(v) => Tensor::from_shape(shape, v.as_slice()),
    }
}

fn from_tract(t: &Tensor) -> TractResult<Values> {
    Ok(match t.datum_type() {
        DatumType::Bool => Values::Bool(t.to_plain_array_view::<bool>()?.iter().copied().collect()),
        DatumType::U8 => Values::U8(t.to_plain_array_view::<u8>()?.iter().copied().collect()),
        DatumType::I8 => Values::I8(t.to_plain_array_view::<i8>()?.iter().copied().collect()),
        DatumType::I32 => Values::I32(t.to_plain_array_view::<i32>()?.iter().copied().collect()),
        DatumType::I64 => Values::I64(t.to_plain_array_view::<i64>()?.iter().copied().collect()),
        DatumType::F64 => Values::F64(t.to_plain_array_view::<f64>()?.iter().copied().collect()),
        DatumType::F32 => Values::F32(t.to_plain_array_view::<f32>()?.iter().copied().collect()),
        _ => {
            Values::F32(t.cast_to::<f32>()?.to_plain_array_view::<f32>()?.iter().copied().collect())
        }
    })
}

impl Engine for TractModel {
    fn run(&self, inputs: &[super::kserve::Tensor]) -> Result<Vec<super::kserve::Tensor>, String> {
        let tensors = inputs
            .iter()
            .map(|t| to_tract(&t.shape, &t.values).map(|x| x.into_tvalue()))
            .collect::<TractResult<TVec<TValue>>>()
            .map_err(|e| format!("cannot build the input tensors: {e:#}"))?;
        let outputs = self
            .runnable
            .run(tensors)
            .map_err(|e| format!("tract failed to run the model: {e:#}"))?;
        outputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let name =
                    self.outputs.get(i).map_or_else(|| format!("output{i}"), |m| m.name.clone());
                let values =
                    from_tract(t).map_err(|e| format!("output `{name}` cannot be read: {e:#}"))?;
                Ok(super::kserve::Tensor { name, shape: t.shape().to_vec(), values })
            })
            .collect()
    }
}

/// Writes a one-node model `y = op(x)` with `x` FP32 `[batch, 4]` (a named symbol) to `path`.
#[cfg(test)]
pub(crate) fn write_unary_model(path: &Path, op: &str) {
    use prost::Message as _;
    use tract_onnx::pb;
    let info = |name: &str| {
        hone_graph::ValueInfo::tensor(
            name,
            hone_graph::DataType::F32,
            vec![hone_graph::Dim::Symbol("batch".into()), hone_graph::Dim::Value(4)],
        )
        .to_proto()
    };
    let bytes = pb::ModelProto {
        ir_version: 8,
        producer_name: "hone-tests".into(),
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: vec![pb::NodeProto {
                name: "n".into(),
                op_type: op.into(),
                input: vec!["x".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            input: vec![info("x")],
            output: vec![info("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    std::fs::write(path, bytes).expect("writing the test model");
}

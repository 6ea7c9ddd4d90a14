//! Test helpers: small graphs built in code and a tract runner.

use tract_onnx::pb;
use tract_onnx::prelude::{
    Framework as _, InferenceFact, InferenceModelExt as _, IntoRunnable as _, IntoTValue as _,
    IntoTensor as _, TValue, Tensor as TractTensor, TractResult,
};

use super::{DataType, Dim, Graph, Node, Tensor, TensorData, ValueInfo};

/// A declared f32 tensor value.
pub(crate) fn f32_value(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    ValueInfo::tensor(name, DataType::F32, dims.iter().map(|&d| Dim::Value(d)).collect()).to_proto()
}

/// A model of opset 17 from its parts.
pub(crate) fn model(
    nodes: Vec<Node>,
    initializers: Vec<(&str, Tensor)>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
) -> Graph {
    let proto = pb::ModelProto {
        ir_version: 8,
        producer_name: "hone-graph-tests".into(),
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: nodes.iter().map(Node::to_proto).collect(),
            initializer: initializers.iter().map(|(n, t)| t.to_proto(n)).collect(),
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    };
    Graph::from_proto(proto).unwrap()
}

/// A 2×3 f32 tensor.
pub(crate) fn mat(values: [f32; 6]) -> Tensor {
    Tensor::new(vec![2, 3], TensorData::F32(values.to_vec())).unwrap()
}

/// `y = relu(x · W + b)` with x: f32[2, 2], W: f32[2, 3], b: f32[3], plus an unused
/// initializer `unused` and a dead `dead = Neg(x)` node.
pub(crate) fn mlp() -> Graph {
    let w = mat([0.5, -1.0, 2.0, 1.5, 0.25, -0.75]);
    let b = Tensor::new(vec![3], TensorData::F32(vec![0.1, -0.2, 0.3])).unwrap();
    model(
        vec![
            Node::new("mm", "MatMul", &["x", "W"], &["h"]),
            Node::new("bias", "Add", &["h", "b"], &["z"]),
            Node::new("act", "Relu", &["z"], &["y"]),
            Node::new("dead", "Neg", &["x"], &["nx"]),
        ],
        vec![("W", w), ("b", b), ("unused", Tensor::scalar_f32(1.0))],
        vec![f32_value("x", &[2, 2])],
        vec![f32_value("y", &[2, 3])],
    )
}

/// The input used with [`mlp`].
pub(crate) fn mlp_input() -> TractTensor {
    TractTensor::from_shape(&[2, 2], &[1.0f32, -2.0, 0.5, 3.0]).unwrap()
}

/// Runs a model with tract (optimised, as agents run it) on `inputs`.
pub(crate) fn run_proto(proto: &pb::ModelProto, inputs: &[TractTensor]) -> Vec<TractTensor> {
    let model = tract_onnx::onnx().model_for_proto_model(proto).unwrap();
    run_model(model, inputs).unwrap()
}

/// Runs a model file with tract (external data resolved by tract itself).
pub(crate) fn run_path(path: &std::path::Path, inputs: &[TractTensor]) -> Vec<TractTensor> {
    let model = tract_onnx::onnx().model_for_path(path).unwrap();
    run_model(model, inputs).unwrap()
}

fn run_model(
    mut model: tract_onnx::prelude::InferenceModel,
    inputs: &[TractTensor],
) -> TractResult<Vec<TractTensor>> {
    for (ix, t) in inputs.iter().enumerate() {
        model.set_input_fact(ix, InferenceFact::dt_shape(t.datum_type(), t.shape()))?;
    }
    let plan = model.into_optimized()?.into_runnable()?;
    let inputs: tract_onnx::prelude::TVec<TValue> =
        inputs.iter().cloned().map(|t| t.into_tvalue()).collect();
    Ok(plan.run(inputs)?.into_iter().map(|v| v.into_tensor()).collect())
}

/// Asserts two output lists are bitwise identical.
pub(crate) fn assert_bitwise_equal(a: &[TractTensor], b: &[TractTensor]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.datum_type(), y.datum_type());
        assert_eq!(x.shape(), y.shape());
        assert!(x.as_bytes() == y.as_bytes(), "outputs differ bitwise");
    }
}

/// Asserts two f32 output lists agree within `rel` relative error (scaled by the largest
/// magnitude of the reference).
pub(crate) fn assert_close(reference: &[TractTensor], other: &[TractTensor], rel: f32) {
    assert_eq!(reference.len(), other.len());
    for (x, y) in reference.iter().zip(other) {
        assert_eq!(x.shape(), y.shape());
        let x = x.cast_to::<f32>().unwrap();
        let y = y.cast_to::<f32>().unwrap();
        let x = x.to_plain_array_view::<f32>().unwrap();
        let y = y.to_plain_array_view::<f32>().unwrap();
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
        let worst = x.iter().zip(y.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= rel * scale, "max abs diff {worst} > {rel} × {scale}");
    }
}

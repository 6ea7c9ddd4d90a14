//! Tiny ONNX models built in code (no Python), for fast and hostile test cases.

use hone_graph::{DataType, Dim, ValueInfo, pb};
use prost::Message as _;

/// A declared f32 tensor: `Ok(size)` or `Err(symbol)` per axis (hone-graph's builder).
fn value_info(name: &str, dims: &[Result<i64, &str>]) -> pb::ValueInfoProto {
    let dims = dims.iter().map(|d| match d {
        Ok(v) => Dim::Value(*v),
        Err(p) => Dim::Symbol(p.to_string()),
    });
    ValueInfo::tensor(name, DataType::F32, dims.collect()).to_proto()
}

fn model(
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    input: pb::ValueInfoProto,
    output: pb::ValueInfoProto,
) -> Vec<u8> {
    pb::ModelProto {
        ir_version: 8,
        producer_name: "hone-tests".into(),
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: inits,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `y = relu(x · W)`, x: f32[N, width] (N symbolic, named `batch`), W deterministic.
pub fn mlp(width: i64) -> Vec<u8> {
    let w: Vec<f32> = (0..width * width).map(|i| ((i % 7) as f32 - 3.0) / 10.0).collect();
    let init = pb::TensorProto {
        name: "W".into(),
        dims: vec![width, width],
        data_type: 1,
        float_data: w,
        ..Default::default()
    };
    let nodes = vec![
        pb::NodeProto {
            name: "mm".into(),
            op_type: "MatMul".into(),
            input: vec!["x".into(), "W".into()],
            output: vec!["h".into()],
            ..Default::default()
        },
        pb::NodeProto {
            name: "act".into(),
            op_type: "Relu".into(),
            input: vec!["h".into()],
            output: vec!["y".into()],
            ..Default::default()
        },
    ];
    model(
        nodes,
        vec![init],
        value_info("x", &[Err("batch"), Ok(width)]),
        value_info("y", &[Err("batch"), Ok(width)]),
    )
}

/// A graph with an op no runtime knows.
pub fn unknown_op() -> Vec<u8> {
    let nodes = vec![pb::NodeProto {
        name: "mystery_node".into(),
        op_type: "HoneMysteryOp".into(),
        input: vec!["x".into()],
        output: vec!["y".into()],
        ..Default::default()
    }];
    model(nodes, vec![], value_info("x", &[Ok(1), Ok(4)]), value_info("y", &[Ok(1), Ok(4)]))
}

/// `y = relu(x)`, x: f32[-1, 3, ?, ?] as Paddle2ONNX writes it: two unnamed dynamic axes that only
/// an explicit input shape can fill.
pub fn dynamic_image() -> Vec<u8> {
    let nodes = vec![pb::NodeProto {
        name: "act".into(),
        op_type: "Relu".into(),
        input: vec!["x".into()],
        output: vec!["y".into()],
        ..Default::default()
    }];
    model(
        nodes,
        vec![],
        value_info("x", &[Ok(-1), Ok(3), Err("?"), Err("?")]),
        value_info("y", &[Ok(-1), Ok(3), Err("?"), Err("?")]),
    )
}

/// A small MNIST-shaped CNN, untrained but deterministic: x f32[batch, 1, 28, 28] →
/// Conv(`channels` 3×3, stride 2) → Relu → Flatten → MatMul → y f32[batch, 10]. `seed` varies
/// the weights (two seeds: two different models of the same shape).
pub fn mnist_cnn(channels: i64, seed: u64) -> Vec<u8> {
    let weights = |n: i64, salt: u64| -> Vec<f32> {
        (0..n as u64).map(|i| (((i * 31 + seed * 7 + salt) % 11) as f32 - 5.0) / 25.0).collect()
    };
    let int_list = |name: &str, v: &[i64]| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    };
    let flat = channels * 13 * 13;
    let inits = vec![
        pb::TensorProto {
            name: "Wc".into(),
            dims: vec![channels, 1, 3, 3],
            data_type: 1,
            float_data: weights(channels * 9, 1),
            ..Default::default()
        },
        pb::TensorProto {
            name: "Bc".into(),
            dims: vec![channels],
            data_type: 1,
            float_data: weights(channels, 2),
            ..Default::default()
        },
        pb::TensorProto {
            name: "Wf".into(),
            dims: vec![flat, 10],
            data_type: 1,
            float_data: weights(flat * 10, 3),
            ..Default::default()
        },
    ];
    let nodes = vec![
        pb::NodeProto {
            name: "conv".into(),
            op_type: "Conv".into(),
            input: vec!["x".into(), "Wc".into(), "Bc".into()],
            output: vec!["c".into()],
            attribute: vec![int_list("kernel_shape", &[3, 3]), int_list("strides", &[2, 2])],
            ..Default::default()
        },
        pb::NodeProto {
            name: "act".into(),
            op_type: "Relu".into(),
            input: vec!["c".into()],
            output: vec!["r".into()],
            ..Default::default()
        },
        pb::NodeProto {
            name: "flat".into(),
            op_type: "Flatten".into(),
            input: vec!["r".into()],
            output: vec!["f".into()],
            attribute: vec![pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            }],
            ..Default::default()
        },
        pb::NodeProto {
            name: "fc".into(),
            op_type: "MatMul".into(),
            input: vec!["f".into(), "Wf".into()],
            output: vec!["y".into()],
            ..Default::default()
        },
    ];
    model(
        nodes,
        inits,
        value_info("x", &[Err("batch"), Ok(1), Ok(28), Ok(28)]),
        value_info("y", &[Err("batch"), Ok(10)]),
    )
}

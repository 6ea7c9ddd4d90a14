//! Tiny ONNX models built in code (no Python), for fast and hostile test cases.

use prost::Message as _;
use tract_onnx::pb;

fn value_info(name: &str, dims: &[Result<i64, &str>]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(match d {
                                Ok(v) => pb::tensor_shape_proto::dimension::Value::DimValue(*v),
                                Err(p) => pb::tensor_shape_proto::dimension::Value::DimParam(
                                    p.to_string(),
                                ),
                            }),
                        })
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    }
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

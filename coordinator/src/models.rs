//! Model registration: the tract gate and the model summary.
//!
//! A model is accepted only if tract parses and optimises it; otherwise the rejection carries
//! tract's own error chain, which names the failing node and op. The check runs on a blocking
//! thread with panics caught, so a hostile file cannot take the coordinator down with a panic.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message as _;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Why a model was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Not an ONNX protobuf.
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// tract refused it.
    #[error("tract cannot load this model: {0}")]
    Unloadable(String),
    /// tract panicked on it.
    #[error("tract crashed while loading this model: {0}")]
    Panicked(String),
    /// Disk error.
    #[error("reading the model: {0}")]
    Io(#[from] std::io::Error),
}

/// What registration learns about a model.
pub fn summarize(proto: &pb::ModelProto) -> serde_json::Value {
    let graph = proto.graph.clone().unwrap_or_default();
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    for node in &graph.node {
        *ops.entry(node.op_type.clone()).or_default() += 1;
    }
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let params: i64 = graph.initializer.iter().map(|t| t.dims.iter().product::<i64>().max(0)).sum();
    let describe = |v: &pb::ValueInfoProto| {
        let (elem, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => (
                t.elem_type,
                t.shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match &d.value {
                                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                                    v.to_string()
                                }
                                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                                    p.clone()
                                }
                                None => "?".into(),
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
            ),
            None => (0, vec![]),
        };
        serde_json::json!({ "name": v.name, "elem_type": elem, "dims": dims })
    };
    serde_json::json!({
        "ir_version": proto.ir_version,
        "opset": proto.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version),
        "producer": proto.producer_name,
        "nodes": graph.node.len(),
        "ops": ops,
        "params": params,
        "inputs": graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).map(describe).collect::<Vec<_>>(),
        "outputs": graph.output.iter().map(describe).collect::<Vec<_>>(),
    })
}

/// Parses and optimises the model with tract; returns its summary.
pub fn check_with_tract(bytes: &[u8]) -> Result<serde_json::Value, ModelError> {
    let proto = pb::ModelProto::decode(bytes).map_err(|e| ModelError::NotOnnx(e.to_string()))?;
    if proto.graph.is_none() {
        return Err(ModelError::NotOnnx("the protobuf has no graph".into()));
    }
    let summary = summarize(&proto);
    let outcome = std::panic::catch_unwind(|| -> TractResult<()> {
        let mut model = tract_onnx::onnx().model_for_proto_model(&proto)?;
        // Symbolic dimensions are fixed the way agents fix them for a default benchmark (first
        // axis 1, others 128), so the gate checks the same graph agents will run.
        for (ix, (datum, shape)) in concrete_inputs(&proto).into_iter().enumerate() {
            if let Some(datum) = datum {
                model.set_input_fact(ix, InferenceFact::dt_shape(datum, shape))?;
            }
        }
        model.into_optimized()?;
        Ok(())
    });
    match outcome {
        Ok(Ok(())) => Ok(summary),
        Ok(Err(e)) => Err(ModelError::Unloadable(format!("{e:#}"))),
        Err(panic) => Err(ModelError::Panicked(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into()),
        )),
    }
}

/// Datum type (when tract knows it) and concrete shape of every true graph input.
fn concrete_inputs(proto: &pb::ModelProto) -> Vec<(Option<DatumType>, Vec<usize>)> {
    let Some(graph) = proto.graph.as_ref() else { return vec![] };
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .map(|input| match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => {
                use pb::tensor_proto::DataType as D;
                let datum = match D::try_from(t.elem_type).ok() {
                    Some(D::Float) => Some(DatumType::F32),
                    Some(D::Double) => Some(DatumType::F64),
                    Some(D::Int64) => Some(DatumType::I64),
                    Some(D::Int32) => Some(DatumType::I32),
                    Some(D::Int8) => Some(DatumType::I8),
                    Some(D::Uint8) => Some(DatumType::U8),
                    Some(D::Bool) => Some(DatumType::Bool),
                    _ => None,
                };
                let dims = t.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
                let shape = dims
                    .iter()
                    .enumerate()
                    .map(|(axis, d)| match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                            v as usize
                        }
                        _ if axis == 0 => 1,
                        _ => 128,
                    })
                    .collect();
                (datum, shape)
            }
            _ => (None, vec![]),
        })
        .collect()
}

/// [`check_with_tract`] on a file, on a blocking thread.
pub async fn check_file(path: &Path) -> Result<serde_json::Value, ModelError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path)?;
        check_with_tract(&bytes)
    })
    .await
    .map_err(|e| ModelError::Panicked(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_bytes_are_not_onnx() {
        assert!(matches!(check_with_tract(b"\xff\xfe garbage"), Err(ModelError::NotOnnx(_))));
    }

    #[test]
    fn an_unknown_op_is_named_in_the_rejection() {
        let proto = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(pb::GraphProto {
                name: "g".into(),
                node: vec![pb::NodeProto {
                    name: "weird_node".into(),
                    op_type: "FrobnicateTensor".into(),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                input: vec![crate::models::tests::f32_input("x", &[1, 4])],
                output: vec![crate::models::tests::f32_input("y", &[1, 4])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = check_with_tract(&proto.encode_to_vec()).unwrap_err().to_string();
        assert!(err.contains("FrobnicateTensor") || err.contains("weird_node"), "{err}");
    }

    pub(crate) fn f32_input(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
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
                                value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(*d)),
                            })
                            .collect(),
                    }),
                })),
            }),
            ..Default::default()
        }
    }
}

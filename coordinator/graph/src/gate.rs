//! Model registration: the tract gate and the model summary.
//!
//! A model is accepted only if tract parses and optimises it; otherwise the rejection carries
//! tract's own error chain, which names the failing node and op. Panics are caught, so a hostile
//! file cannot take the caller down with a panic; the coordinator runs the check on a blocking
//! thread.

use std::collections::BTreeMap;

use hone_common::shapes::InputShapes;
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
    /// Its inputs cannot be made concrete without shapes (`--input NAME=DIMS`).
    #[error("the model's input shapes are not fixed: {0}")]
    Shapes(String),
    /// tract panicked on it.
    #[error("tract crashed while loading this model: {0}")]
    Panicked(String),
    /// Disk error.
    #[error("reading the model: {0}")]
    Io(#[from] std::io::Error),
}

/// Element count of declared dims, or why it cannot be one: dims come from untrusted files,
/// so a negative dim or a product past `i64` is an error, never a wrapped number or a panic.
pub fn element_count(dims: &[i64]) -> Result<i64, String> {
    let dims_usize = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d} in {dims:?}")))
        .collect::<Result<Vec<usize>, String>>()?;
    crate::tensor::element_count(&dims_usize)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| format!("dimensions {dims:?} overflow an element count"))
}

/// What registration learns about a model. Initializer dims are untrusted: one that is
/// negative, or whose element count (or the model's total) overflows, is an error.
pub fn summarize(proto: &pb::ModelProto) -> Result<serde_json::Value, ModelError> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| ModelError::NotOnnx("the protobuf has no graph".into()))?;
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    for node in &graph.node {
        *ops.entry(node.op_type.clone()).or_default() += 1;
    }
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut params = 0i64;
    for t in &graph.initializer {
        let n = element_count(&t.dims)
            .map_err(|why| ModelError::NotOnnx(format!("initializer `{}`: {why}", t.name)))?;
        params = params.checked_add(n).ok_or_else(|| {
            ModelError::NotOnnx("the initializers' element counts overflow".into())
        })?;
    }
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
    Ok(serde_json::json!({
        "ir_version": proto.ir_version,
        "opset": proto.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version),
        "producer": proto.producer_name,
        "nodes": graph.node.len(),
        "ops": ops,
        "params": params,
        "inputs": graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).map(describe).collect::<Vec<_>>(),
        "outputs": graph.output.iter().map(describe).collect::<Vec<_>>(),
    }))
}

/// Parses and optimises the model with tract, with its inputs made concrete the way agents make
/// them (`given` shapes, then [`crate::shapes::concrete_inputs`]' rules); returns its summary.
/// A model whose inputs cannot be made concrete without `given` shapes is refused with the
/// reason, which names the input and asks for a shape.
pub fn check_with_tract(
    bytes: &[u8],
    given: &InputShapes,
) -> Result<serde_json::Value, ModelError> {
    let proto = pb::ModelProto::decode(bytes).map_err(|e| ModelError::NotOnnx(e.to_string()))?;
    let Some(graph) = proto.graph.as_ref() else {
        return Err(ModelError::NotOnnx("the protobuf has no graph".into()));
    };
    let summary = summarize(&proto)?;
    let inputs = crate::shapes::concrete_inputs(graph, given, None)
        .map_err(|e| ModelError::Shapes(e.to_string()))?;
    let datums: Vec<Option<DatumType>> = crate::shapes::declared_inputs(graph)
        .into_iter()
        .map(|(_, elem)| elem.and_then(crate::shapes::tract_datum))
        .collect();
    // The check runs the graph agents will run: concrete inputs, and the exporter's symbolic
    // hints on intermediate values relaxed (see `relax_shape_hints`).
    let checked = crate::shapes::relaxed(&proto);
    let outcome = std::panic::catch_unwind(|| -> TractResult<()> {
        let mut model = tract_onnx::onnx().model_for_proto_model(&checked)?;
        for (ix, ((_, shape), datum)) in inputs.iter().zip(&datums).enumerate() {
            if let Some(datum) = datum {
                model.set_input_fact(ix, InferenceFact::dt_shape(*datum, shape.clone()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_dims_are_an_error_not_a_panic_or_a_wrapped_count() {
        let tensor = |name: &str, dims: Vec<i64>| pb::TensorProto {
            name: name.into(),
            dims,
            data_type: 1,
            ..Default::default()
        };
        let model = |inits: Vec<pb::TensorProto>| pb::ModelProto {
            graph: Some(pb::GraphProto { initializer: inits, ..Default::default() }),
            ..Default::default()
        };
        for dims in [vec![i64::MAX, 2], vec![1 << 32, 1 << 32], vec![-3, 4]] {
            let e = summarize(&model(vec![tensor("w", dims.clone())])).unwrap_err().to_string();
            assert!(e.contains("initializer `w`"), "{dims:?}: {e}");
            let e = check_with_tract(
                &model(vec![tensor("w", dims)]).encode_to_vec(),
                &InputShapes::default(),
            )
            .unwrap_err();
            assert!(matches!(e, ModelError::NotOnnx(_)), "{e}");
        }
        // Each fits, the sum does not.
        let big = || tensor("w", vec![1 << 31, 1 << 31]);
        let e = summarize(&model(vec![big(), big(), big()])).unwrap_err().to_string();
        assert!(e.contains("overflow"), "{e}");
        let ok = summarize(&model(vec![tensor("a", vec![3, 4]), tensor("b", vec![])])).unwrap();
        assert_eq!(ok["params"], 13);
        assert_eq!(element_count(&[0, i64::MAX]), Ok(0));
    }

    #[test]
    fn garbage_bytes_are_not_onnx() {
        assert!(matches!(
            check_with_tract(b"\xff\xfe garbage", &InputShapes::default()),
            Err(ModelError::NotOnnx(_))
        ));
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
                input: vec![crate::testing::f32_value("x", &[1, 4])],
                output: vec![crate::testing::f32_value("y", &[1, 4])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = check_with_tract(&proto.encode_to_vec(), &InputShapes::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("FrobnicateTensor") || err.contains("weird_node"), "{err}");

        // Gate before write: the rejected model never reaches the disk, and nothing that was
        // there before is touched.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/rejected.onnx");
        let g = crate::Graph::from_proto(proto).unwrap();
        let e = g.save_gated(&path, &InputShapes::default()).unwrap_err();
        assert!(matches!(e, crate::GraphError::Rejected { .. }), "{e}");
        assert!(e.to_string().contains("was not written"), "{e}");
        assert!(!path.exists());
        let good = crate::testing::model(
            vec![crate::Node::new("r", "Relu", &["x"], &["y"])],
            vec![],
            vec![crate::testing::f32_value("x", &[1, 4])],
            vec![crate::testing::f32_value("y", &[1, 4])],
        );
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"previous").unwrap();
        assert!(g.save_gated(&path, &InputShapes::default()).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"previous");
        good.save_gated(&path, &InputShapes::default()).unwrap();
        check_with_tract(&std::fs::read(&path).unwrap(), &InputShapes::default()).unwrap();
    }
}

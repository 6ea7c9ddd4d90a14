//! Bad graphs and bad inputs give errors that name the op, the node or the input.

use candle_core::{DType, Device, Tensor};

use crate::train::exec::{ExecError, Executor};
use hone_graph::{Attribute, DataType};

use super::testing::{Builder, node};

fn zeros(dims: &[usize]) -> Tensor {
    Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn an_unsupported_op_is_refused_when_the_executor_is_built_naming_op_and_node() {
    let mut b = Builder::new(1, DataType::F32);
    b.input("x", &[2, 3]);
    b.node(node("relu", "Relu", &["x"], &["r"], vec![]));
    b.node(node("my_lstm", "LSTM", &["r"], &["y"], vec![]));
    let case = b.output("y").build();
    let err = Executor::new(&case.graph).unwrap_err();
    assert!(
        matches!(&err, ExecError::UnsupportedOp { op, node, .. } if op == "LSTM" && node == "my_lstm")
    );
    assert_eq!(
        err.to_string(),
        "node `my_lstm`: operator `LSTM` is not supported by the differentiable executor"
    );

    let mut b = Builder::new(1, DataType::F32);
    b.input("x", &[2, 3]);
    let mut custom = node("", "Relu", &["x"], &["y"], vec![]);
    custom.domain = "com.example".into();
    b.node(custom);
    let err = Executor::new(&b.output("y").build().graph).unwrap_err();
    assert!(
        err.to_string().contains("`#0 Relu`") && err.to_string().contains("com.example"),
        "{err}"
    );
}

#[test]
fn an_unsupported_op_off_the_output_path_does_not_matter() {
    let mut b = Builder::new(1, DataType::F32);
    b.input("x", &[2, 3]);
    b.node(node("relu", "Relu", &["x"], &["y"], vec![]));
    b.node(node("dead", "NonMaxSuppression", &["x"], &["z"], vec![]));
    let exec = Executor::new(&b.output("y").build().graph).unwrap();
    exec.forward([("x", zeros(&[2, 3]))]).unwrap();
    // Asking for the dead branch explicitly reaches the op.
    let err = exec.run([("x", zeros(&[2, 3]))], &["z"]).unwrap_err();
    assert!(
        matches!(err, ExecError::UnsupportedOp { ref op, .. } if op == "NonMaxSuppression"),
        "{err}"
    );
}

#[test]
fn wrong_inputs_are_refused_naming_the_input_and_the_shapes() {
    let mut b = Builder::new(1, DataType::F32);
    b.input("x", &[2, 3]).init("w", &[3, 4]);
    b.node(node("mm", "MatMul", &["x", "w"], &["y"], vec![]));
    let exec = Executor::new(&b.output("y").build().graph).unwrap();

    let err = exec.forward([("x", zeros(&[3, 2]))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "graph input `x`: expected shape (2, 3), got [3, 2]: dimension 0 is 3, not 2"
    );
    let err = exec.forward([("x", zeros(&[2, 3, 1]))]).unwrap_err();
    assert!(err.to_string().contains("expected rank 2"), "{err}");
    let ints = Tensor::zeros((2, 3), DType::I64, &Device::Cpu).unwrap();
    let err = exec.forward([("x", ints)]).unwrap_err();
    assert!(err.to_string().contains("expected element type f32, got I64"), "{err}");
    let err = exec.forward(Vec::<(String, Tensor)>::new()).unwrap_err();
    assert!(matches!(err, ExecError::MissingInput(ref n) if n == "x"), "{err}");
    let err = exec.forward([("x", zeros(&[2, 3])), ("q", zeros(&[1]))]).unwrap_err();
    assert!(matches!(err, ExecError::UnknownInput(ref n) if n == "q"), "{err}");
    let err = exec.run([("x", zeros(&[2, 3]))], &["nope"]).unwrap_err();
    assert!(matches!(err, ExecError::UnknownValue(ref n) if n == "nope"), "{err}");
}

#[test]
fn symbolic_dimensions_must_agree_across_inputs() {
    let mut b = Builder::new(1, DataType::F32);
    b.input("a", &[2, 3]).input("b", &[2, 3]);
    b.node(node("add", "Add", &["a", "b"], &["y"], vec![]));
    let mut case = b.output("y").build();
    for i in &mut case.graph.graph_proto_mut().input {
        let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
            i.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            unreachable!()
        };
        t.shape.as_mut().unwrap().dim[0].value =
            Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimParam("batch".into()));
    }
    let exec = Executor::new(&case.graph).unwrap();
    let out = exec.forward([("a", zeros(&[5, 3])), ("b", zeros(&[5, 3]))]).unwrap();
    assert_eq!(out["y"].dims(), [5, 3]);
    let err = exec.forward([("a", zeros(&[5, 3])), ("b", zeros(&[4, 3]))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "graph input `b`: dimension 0 (`batch`) is 4, but `a` gave `batch` = 5"
    );
}

#[test]
fn anonymous_dimensions_bind_nothing() {
    // `?` marks each unknown dimension on its own (PaddleOCR's `x: [?, 3, 48, ?]`).
    let mut b = Builder::new(1, DataType::F32);
    b.input("a", &[2, 3]).input("b", &[2, 3]);
    b.node(node("add", "Add", &["a", "b"], &["y"], vec![]));
    let mut case = b.output("y").build();
    let input = &mut case.graph.graph_proto_mut().input[0];
    let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
        input.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        unreachable!()
    };
    for d in &mut t.shape.as_mut().unwrap().dim {
        d.value = Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimParam("?".into()));
    }
    let exec = Executor::new(&case.graph).unwrap();
    let out = exec.forward([("a", zeros(&[2, 3])), ("b", zeros(&[2, 3]))]).unwrap();
    assert_eq!(out["y"].dims(), [2, 3], "`?` = 2 on axis 0 and `?` = 3 on axis 1");
}

#[test]
fn a_node_that_fails_at_run_time_is_named_with_its_op() {
    let mut b = Builder::new(1, DataType::F32);
    b.input("x", &[2, 3]).ints("shape", &[4, -1]);
    b.node(node("bad_reshape", "Reshape", &["x", "shape"], &["y"], vec![]));
    let exec = Executor::new(&b.output("y").build().graph).unwrap();
    let err = exec.forward([("x", zeros(&[2, 3]))]).unwrap_err();
    assert_eq!(err.to_string(), "node `bad_reshape` (Reshape): cannot reshape [2, 3] to [4, -1]");

    let mut b = Builder::new(1, DataType::F32);
    b.input("x", &[2, 3]).init("w", &[4, 5]);
    b.node(node("mm", "MatMul", &["x", "w"], &["y"], vec![]));
    let exec = Executor::new(&b.output("y").build().graph).unwrap();
    let err = exec.forward([("x", zeros(&[2, 3]))]).unwrap_err();
    assert!(
        matches!(err, ExecError::Candle { ref node, ref op, .. } if node == "mm" && op == "MatMul"),
        "{err}"
    );

    let mut b = Builder::new(1, DataType::F32);
    b.input("x", &[1, 2, 4, 4]);
    b.node(node(
        "pool",
        "MaxPool",
        &["x"],
        &["y"],
        vec![("kernel_shape", Attribute::Ints(vec![5, 5]))],
    ));
    let exec = Executor::new(&b.output("y").build().graph).unwrap();
    let err = exec.forward([("x", zeros(&[1, 2, 4, 4]))]).unwrap_err();
    assert!(err.to_string().starts_with("node `pool` (MaxPool): the window spans 5"), "{err}");
}

#[test]
fn corrupt_and_unordered_graphs_are_refused() {
    let err = hone_graph::Graph::from_bytes(b"\xff\xfe not onnx").unwrap_err();
    assert!(err.to_string().contains("not a valid ONNX model"));

    let mut b = Builder::new(1, DataType::F32);
    b.input("x", &[2]);
    b.node(node("second", "Relu", &["h"], &["y"], vec![]));
    b.node(node("first", "Neg", &["x"], &["h"], vec![]));
    let err = Executor::new(&b.output("y").build().graph).unwrap_err();
    assert!(matches!(err, ExecError::Graph(_)) && err.to_string().contains("second"), "{err}");
}

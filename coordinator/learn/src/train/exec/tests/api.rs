//! The executor's interface: named gradients, freezing, intermediate values, and writing
//! trained weights back into a graph that tract then runs with the same outputs.

use candle_core::{Device, Tensor};

use crate::train::exec::{Executor, to_candle};
use hone_graph::{Attribute, DataType};

use super::testing::{Builder, Case, candle_flat, node, run_tract, worst_relative};

fn mlp() -> Case {
    let mut b = Builder::new(42, DataType::F32);
    b.input("x", &[8, 3]).init("w1", &[3, 6]).init("b1", &[6]).init("w2", &[2, 6]).init("b2", &[2]);
    b.node(node("fc1", "Gemm", &["x", "w1", "b1"], &["h"], vec![]));
    b.node(node("act", "Relu", &["h"], &["a"], vec![]));
    b.node(node("fc2", "Gemm", &["a", "w2", "b2"], &["y"], vec![("transB", Attribute::Int(1))]));
    b.output("y").build()
}

fn x(case: &Case) -> Tensor {
    to_candle(&case.inputs[0].1).unwrap()
}

#[test]
fn sgd_steps_on_named_gradients_lower_the_loss_and_write_back_into_the_graph() {
    let case = mlp();
    let exec = Executor::new(&case.graph).unwrap();
    let names: Vec<&str> = exec.parameters().map(|(n, _)| n).collect();
    assert_eq!(names, ["w1", "b1", "w2", "b2"]);
    let target = Tensor::ones((8, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let loss_of = |exec: &Executor| {
        let y = exec.forward([("x", x(&case))]).unwrap().remove("y").unwrap();
        y.sub(&target).unwrap().sqr().unwrap().mean_all().unwrap()
    };
    let first = loss_of(&exec).to_vec0::<f32>().unwrap();
    for _ in 0..20 {
        let grads = exec.backward(&loss_of(&exec)).unwrap();
        assert_eq!(grads.len(), 4);
        for (name, var) in exec.parameters() {
            let g = grads.get(name).unwrap();
            var.set(&var.as_tensor().sub(&g.affine(0.1, 0.0).unwrap()).unwrap()).unwrap();
        }
    }
    let last = loss_of(&exec).to_vec0::<f32>().unwrap();
    assert!(last < first * 0.5, "loss {first} → {last}");

    let mut trained = case.graph.clone();
    exec.write_back(&mut trained).unwrap();
    assert_ne!(trained.initializer("w1").unwrap(), case.graph.initializer("w1").unwrap());
    let ours = exec.forward([("x", x(&case))]).unwrap();
    let reference = run_tract(trained.proto(), &case.inputs);
    assert!(worst_relative(&reference[0], &candle_flat(&ours["y"])) <= 1e-5);
}

#[test]
fn frozen_initializers_get_no_gradient_and_intermediate_values_can_be_read() {
    let case = mlp();
    let exec = Executor::with_trainable(&case.graph, |n| n == "w2").unwrap();
    assert_eq!(exec.parameters().map(|(n, _)| n).collect::<Vec<_>>(), ["w2"]);
    let out = exec.run([("x", x(&case))], &["h", "y"]).unwrap();
    assert_eq!(out["h"].dims(), [8, 6]);
    let grads = exec.backward(&out["y"].sum_all().unwrap()).unwrap();
    assert!(grads.get("w2").is_some() && grads.get("w1").is_none() && grads.len() == 1);

    // A Var given as an input gets its gradient through `Gradients::of`.
    let input = candle_core::Var::from_tensor(&x(&case)).unwrap();
    let y = exec.forward([("x", input.as_tensor().clone())]).unwrap().remove("y").unwrap();
    let grads = exec.backward(&y.sum_all().unwrap()).unwrap();
    assert_eq!(grads.of(input.as_tensor()).unwrap().dims(), [8, 3]);
}

#[test]
fn an_overridden_value_replaces_its_producer_and_carries_gradients() {
    let case = mlp();
    let exec = Executor::new(&case.graph).unwrap();
    let plain = exec.run([("x", x(&case))], &["h", "y"]).unwrap();
    // Giving `h` as computed reproduces `y`; giving zeros makes `y` the bias `b2` alone.
    let same = exec
        .run_overriding([("x", x(&case))], vec![("h".into(), plain["h"].clone())], &["y"])
        .unwrap();
    let diff = (&same["y"] - &plain["y"]).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_vec0::<f32>().unwrap(), 0.0);
    let h = candle_core::Var::from_tensor(&plain["h"].zeros_like().unwrap()).unwrap();
    let zeroed = exec
        .run_overriding([("x", x(&case))], vec![("h".into(), h.as_tensor().clone())], &["y"])
        .unwrap();
    let b2 = exec.parameter("b2").unwrap().as_tensor().to_vec1::<f32>().unwrap();
    for row in zeroed["y"].to_vec2::<f32>().unwrap() {
        assert_eq!(row, b2);
    }
    // The gradient reaches the given tensor (integrated gradients need it), and not `w1`,
    // whose node was skipped.
    let grads = exec.backward(&zeroed["y"].sum_all().unwrap()).unwrap();
    assert!(grads.of(h.as_tensor()).is_some());
    assert!(grads.get("w1").is_none());
    let err = exec.run_overriding(
        [("x", x(&case))],
        vec![("nope".into(), h.as_tensor().clone())],
        &["y"],
    );
    assert!(err.is_err());
}

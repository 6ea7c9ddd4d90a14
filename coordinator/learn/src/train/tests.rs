//! Training tests on real data: the loss falls, seeds reproduce, and tract runs the trained,
//! written-back graph with the executor's outputs.

use candle_core::{Device, Tensor};

use super::builder::{INPUT, Layer, ModelSpec, OUTPUT};
use super::exec::Executor;
use super::fit::{TrainConfig, fit_classifier};
use super::optim::OptimizerConfig;
use crate::data::{ImageDataset, fashion_mnist};
use crate::eval::tract::tract_accuracy;
use crate::parity::check_parity;
use hone_graph::Graph;

fn small_cnn(seed: u64) -> ModelSpec {
    ModelSpec {
        name: "smoke".into(),
        input: [1, 28, 28],
        layers: vec![
            Layer::Conv { out: 8, kernel: 3, pad: 1, stride: 1 },
            Layer::Relu,
            Layer::pool2(),
            Layer::Flatten,
            Layer::Dense { out: 32 },
            Layer::Relu,
            Layer::Dense { out: 10 },
        ],
        seed,
    }
}

fn data() -> ImageDataset {
    fashion_mnist().expect("Fashion-MNIST (scripts/fetch-assets.sh)")
}

fn batch_tensor(data: &ImageDataset, idx: &[usize]) -> Tensor {
    let b = data.batch(idx);
    Tensor::from_vec(b.pixels, b.shape.to_vec(), &Device::Cpu).unwrap()
}

#[test]
fn smoke_training_reduces_loss_on_fashion_mnist_and_tract_agrees() {
    let data = data();
    let built = small_cnn(7).build().unwrap();
    let mut graph: Graph = built.graph;
    let exec = Executor::new(&graph).unwrap();
    let train = &data.split.train[..4000];
    let test = &data.split.test[..1000];
    let before = tract_accuracy(graph.proto(), &data, test, 250).unwrap().value();
    let cfg = TrainConfig { max_steps: Some(100), ..TrainConfig::new(1, 32, 3e-3) };
    let summary = fit_classifier(&exec, INPUT, OUTPUT, &data, train, &cfg).unwrap();
    assert_eq!(summary.steps, 100);
    let early: f32 = summary.losses[..10].iter().sum::<f32>() / 10.0;
    let late: f32 = summary.losses[90..].iter().sum::<f32>() / 10.0;
    assert!(late < 0.6 * early, "loss {early} → {late}");
    exec.write_back(&mut graph).unwrap();
    let reloaded = Graph::from_bytes(&graph.to_bytes()).unwrap();
    let x = batch_tensor(&data, &test[..64]);
    let parity = check_parity(&reloaded, &exec, &[(INPUT, x)], 1e-4).unwrap();
    assert!(parity[0].max_abs_diff <= 1e-4 * parity[0].scale, "{parity:?}");
    let after = tract_accuracy(reloaded.proto(), &data, test, 250).unwrap().value();
    assert!(after > 0.6 && after > before + 0.3, "test accuracy {before} → {after}");
}

#[test]
fn the_same_seed_gives_identical_losses() {
    let data = data();
    let train = &data.split.train[..640];
    let run = |model_seed: u64, seed: u64, opt: OptimizerConfig| {
        let graph = small_cnn(model_seed).build().unwrap().graph;
        let exec = Executor::new(&graph).unwrap();
        let cfg = TrainConfig {
            seed,
            optimizer: opt,
            max_steps: Some(6),
            ..TrainConfig::new(1, 32, 0.01)
        };
        fit_classifier(&exec, INPUT, OUTPUT, &data, train, &cfg).unwrap().losses
    };
    let a = run(1, 5, OptimizerConfig::adamw(0.01));
    assert_eq!(a, run(1, 5, OptimizerConfig::adamw(0.01)));
    assert_ne!(a, run(1, 6, OptimizerConfig::adamw(0.01)));
    assert_ne!(a, run(2, 5, OptimizerConfig::adamw(0.01)));
    let s = run(1, 5, OptimizerConfig::sgd(0.0));
    assert_eq!(s, run(1, 5, OptimizerConfig::sgd(0.0)));
}

#[test]
fn bad_settings_are_clear_errors() {
    let data = data();
    let graph = small_cnn(1).build().unwrap().graph;
    let exec = Executor::new(&graph).unwrap();
    let err = fit_classifier(&exec, INPUT, OUTPUT, &data, &[0, 1], &TrainConfig::new(1, 32, 0.1))
        .unwrap_err();
    assert!(err.to_string().contains("fewer than one batch"), "{err}");
    let err = fit_classifier(
        &exec,
        INPUT,
        "nope",
        &data,
        &data.split.train[..64],
        &TrainConfig::new(1, 32, 0.1),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn tract_accuracy_pads_the_last_batch() {
    let data = data();
    let graph = small_cnn(3).build().unwrap().graph;
    let idx = &data.split.test[..700];
    let a = tract_accuracy(graph.proto(), &data, idx, 700).unwrap();
    let b = tract_accuracy(graph.proto(), &data, idx, 300).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.total, 700);
    assert!(tract_accuracy(graph.proto(), &data, idx, 0).is_err());
}

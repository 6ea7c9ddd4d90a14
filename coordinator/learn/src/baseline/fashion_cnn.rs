//! `fashion-cnn`: a CNN (three 3×3 convolutions of 32, 64 and 256 channels, each followed by
//! ReLU and 2×2 max pooling, then two dense layers; 11.7 M multiply-accumulates per image)
//! trained on Fashion-MNIST.
//!
//! Why this shape: the executor's convolution is an im2col whose cost grows with the number of
//! kernel taps and the spatial size, so the compute sits in a wide 3×3 convolution at 7×7,
//! where the matmul dominates (measured: 5×5 kernels cost twice as much per image for the same
//! MACs).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::data::{Part, fashion_mnist};
use crate::eval::tract::tract_accuracy;
use crate::parity::check_parity;
use crate::train::TrainError;
use crate::train::builder::{INPUT, Layer, ModelSpec, OUTPUT};
use crate::train::exec::Executor;
use crate::train::fit::{TrainConfig, fit_classifier, peak_rss_bytes};
use crate::train::optim::OptimizerConfig;

/// Settings of the `fashion-cnn` baseline (the defaults are the published ones).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FashionCnnOptions {
    /// Output folder (`model.onnx`, `summary.json`).
    pub out: PathBuf,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Seed of the initial weights and of the shuffles.
    pub seed: u64,
    /// Stop after this many steps (for quick runs; the published baseline runs every step).
    pub max_steps: Option<u64>,
    /// Progress on stderr.
    pub progress: bool,
}

impl FashionCnnOptions {
    /// The published settings, writing into `out`.
    pub fn new(out: PathBuf) -> FashionCnnOptions {
        FashionCnnOptions {
            out,
            epochs: 3,
            batch_size: 64,
            lr: 1.5e-3,
            weight_decay: 1e-4,
            seed: 42,
            max_steps: None,
            progress: true,
        }
    }
}

/// The architecture: `[N,1,28,28]` → conv 32 → pool → conv 64 → pool → conv 256 → pool →
/// dense 256 → dense 10 (3×3 convolutions with padding 1, ReLU after each hidden layer).
pub fn fashion_cnn_spec(seed: u64) -> ModelSpec {
    ModelSpec {
        name: "hone-fashion-cnn".into(),
        input: [1, 28, 28],
        layers: vec![
            Layer::conv3(32),
            Layer::Relu,
            Layer::pool2(),
            Layer::conv3(64),
            Layer::Relu,
            Layer::pool2(),
            Layer::conv3(256),
            Layer::Relu,
            Layer::pool2(),
            Layer::Flatten,
            Layer::Dense { out: 256 },
            Layer::Relu,
            Layer::Dense { out: 10 },
        ],
        seed,
    }
}

/// What the baseline run produced (`summary.json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FashionCnnSummary {
    /// `fashion-cnn`.
    pub baseline: &'static str,
    /// The written model.
    pub model: PathBuf,
    /// Accuracy on the 10,000 official test images (tract).
    pub test_accuracy: f64,
    /// Accuracy on the 6,000 validation images (tract).
    pub validation_accuracy: f64,
    /// Training wall time, seconds.
    pub train_seconds: f64,
    /// Weights and biases.
    pub params: usize,
    /// Multiply-accumulates per image.
    pub macs_per_image: u64,
    /// Training throughput, images per second.
    pub samples_per_second: f64,
    /// Peak resident memory of the process, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Largest |tract − executor| on 256 test images, and tract's output scale.
    pub parity_max_abs_diff: f32,
    /// Largest |logit| of tract on the parity batch.
    pub parity_scale: f32,
    /// Seconds tract took to evaluate the 16,000 images.
    pub eval_seconds: f64,
    /// The training run.
    pub train: crate::train::fit::TrainSummary,
    /// The settings.
    pub options: FashionCnnOptions,
    /// The architecture.
    pub spec: ModelSpec,
}

/// Builds, trains, checks and writes the `fashion-cnn` baseline.
pub fn fashion_cnn(opts: &FashionCnnOptions) -> Result<FashionCnnSummary, TrainError> {
    let data = fashion_mnist()?;
    let spec = fashion_cnn_spec(opts.seed);
    let built = spec.build()?;
    let mut graph = built.graph;
    let exec = Executor::new(&graph)?;
    let cfg = TrainConfig {
        seed: opts.seed,
        optimizer: OptimizerConfig::adamw(opts.weight_decay),
        max_steps: opts.max_steps,
        progress: opts.progress,
        ..TrainConfig::new(opts.epochs, opts.batch_size, opts.lr)
    };
    let train = fit_classifier(&exec, INPUT, OUTPUT, &data, data.split.part(Part::Train), &cfg)?;
    exec.write_back(&mut graph)?;
    std::fs::create_dir_all(&opts.out)
        .map_err(|source| TrainError::Io { path: opts.out.display().to_string(), source })?;
    let model = opts.out.join("model.onnx");
    graph.save_gated(&model, &Default::default())?;
    // What the agents will run: the saved file, read back.
    let saved = hone_graph::Graph::load(&model)?;
    let probe = &data.split.test[..256];
    let b = data.batch(probe);
    let x = Tensor::from_vec(b.pixels, b.shape.to_vec(), &Device::Cpu)?;
    let parity = check_parity(&saved, &exec, &[(INPUT, x)], 1e-4)?;
    let start = Instant::now();
    let test = tract_accuracy(saved.proto(), &data, data.split.part(Part::Test), 500)?;
    let validation = tract_accuracy(saved.proto(), &data, data.split.part(Part::Validation), 500)?;
    let eval_seconds = start.elapsed().as_secs_f64();
    let summary = FashionCnnSummary {
        baseline: "fashion-cnn",
        model,
        test_accuracy: test.value(),
        validation_accuracy: validation.value(),
        train_seconds: train.train_seconds,
        params: built.params,
        macs_per_image: built.macs,
        samples_per_second: train.samples_per_second,
        peak_rss_bytes: peak_rss_bytes(),
        parity_max_abs_diff: parity[0].max_abs_diff,
        parity_scale: parity[0].scale,
        eval_seconds,
        train,
        options: opts.clone(),
        spec,
    };
    super::write_json(&opts.out.join("summary.json"), &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_architecture_is_edge_sized() {
        let m = fashion_cnn_spec(1).build().unwrap();
        assert!(m.macs >= 10_000_000, "{} MACs", m.macs);
        assert_eq!(m.classes, 10);
    }
}

//! `minilm-sentiment`: paraphrase-MiniLM-L3 (the asset ONNX, mean-pooled sentence embedding
//! `461`) plus a linear head added as a graph edit, trained on the VADER movie-review sentences
//! (label = sign of the human rating).
//!
//! The encoder is frozen (for time, on 2 cores): its sentence embeddings are computed once by
//! the candle executor (batches sorted by length, each padded to its longest sentence), the head
//! `Gemm(461, head.weight [2, 384], head.bias [2]) → logits` is trained on them (standardised
//! per feature) with the executor and AdamW; the standardisation is folded into the head's
//! weights, and the head is spliced into the MiniLM graph, whose only output becomes `logits`.
//! Test accuracy is measured by tract on the saved model.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::data::{Padding, Part, SentimentDataset, SplitMix64, Tokenizer, vader_movie_reviews};
use crate::eval::tract::TractPlan;
use crate::parity::check_parity;
use crate::train::TrainError;
use crate::train::builder::{INPUT, Layer, ModelSpec, OUTPUT};
use crate::train::exec::Executor;
use crate::train::fit::{StepOutput, TrainConfig, TrainSummary, fit, peak_rss_bytes};
use crate::train::loss::{correct, cross_entropy};
use crate::train::optim::OptimizerConfig;
use hone_graph::{Attribute, Graph, Node};

/// The pooled sentence embedding of the MiniLM export.
const POOLED: &str = "461";
/// Embedding width.
const WIDTH: usize = 384;
/// Longest tokenization kept (the longest VADER sentence has 79 tokens).
const MAX_LEN: usize = 128;

/// Settings of the `minilm-sentiment` baseline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MinilmOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Epochs of head training.
    pub epochs: usize,
    /// Batch size of head training.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Seed.
    pub seed: u64,
    /// Epochs of fine-tuning the whole model after the head (0: frozen encoder).
    pub finetune_epochs: usize,
    /// Peak learning rate of the fine-tuning.
    pub finetune_lr: f64,
    /// Use only this many sentences of each part, drawn with the seed (quick runs).
    pub limit: Option<usize>,
    /// Progress on stderr.
    pub progress: bool,
}

impl MinilmOptions {
    /// The published settings.
    pub fn new(out: PathBuf) -> MinilmOptions {
        MinilmOptions {
            out,
            epochs: 20,
            batch_size: 64,
            lr: 3e-3,
            finetune_epochs: 1,
            finetune_lr: 8e-5,
            seed: 42,
            limit: None,
            progress: true,
        }
    }
}

/// What the run produced (`summary.json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MinilmSummary {
    /// `minilm-sentiment`.
    pub baseline: &'static str,
    /// The written model.
    pub model: PathBuf,
    /// Accuracy on the test sentences (tract on the saved model).
    pub test_accuracy: f64,
    /// Accuracy on the validation sentences (head on the executor's embeddings).
    pub validation_accuracy: f64,
    /// Seconds of embedding, head training and fine-tuning.
    pub train_seconds: f64,
    /// Seconds of embedding alone.
    pub embed_seconds: f64,
    /// Parameters of the whole model.
    pub params: usize,
    /// Trained parameters (the head, or everything fine-tuned).
    pub trainable_params: usize,
    /// Peak resident memory, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Largest |tract − executor| on 32 test sentences, and tract's output scale.
    pub parity_max_abs_diff: f32,
    /// tract's largest |logit| on the parity batch.
    pub parity_scale: f32,
    /// Test sentences evaluated.
    pub test_sentences: usize,
    /// The head's training run (on the frozen encoder's embeddings).
    pub train: TrainSummary,
    /// The fine-tuning run of the whole model (embedding tables frozen), when there is one.
    pub finetune: Option<TrainSummary>,
    /// The settings.
    pub options: MinilmOptions,
}

/// Token inputs of a batch as candle tensors.
fn token_inputs(
    data: &SentimentDataset,
    idx: &[usize],
    tok: &Tokenizer,
    padding: Padding,
) -> Result<(Tensor, Tensor, Vec<u32>), TrainError> {
    let b = data.batch(idx, tok, MAX_LEN, padding);
    let shape = (b.encoding.batch, b.encoding.seq_len);
    let ids = Tensor::from_vec(b.encoding.input_ids, shape, &Device::Cpu)?;
    let mask = Tensor::from_vec(b.encoding.attention_mask, shape, &Device::Cpu)?;
    Ok((ids, mask, b.labels))
}

/// Mean-pooled embeddings of `idx` by the frozen encoder, `[idx.len(), 384]` row-major.
fn embed(
    exec: &Executor,
    data: &SentimentDataset,
    idx: &[usize],
    tok: &Tokenizer,
) -> Result<Vec<f32>, TrainError> {
    rows_of(exec, data, idx, tok, POOLED, WIDTH)
}

/// Value `value` (`[batch, width]`) for every sentence of `idx`, row-major, in `idx` order.
fn rows_of(
    exec: &Executor,
    data: &SentimentDataset,
    idx: &[usize],
    tok: &Tokenizer,
    value: &str,
    width: usize,
) -> Result<Vec<f32>, TrainError> {
    let mut order: Vec<usize> = (0..idx.len()).collect();
    let lens: Vec<usize> =
        idx.iter().map(|&i| tok.encode(&data.sentences[i], MAX_LEN).len()).collect();
    order.sort_by_key(|&k| lens[k]);
    let mut out = vec![0f32; idx.len() * width];
    for chunk in order.chunks(64) {
        let ex: Vec<usize> = chunk.iter().map(|&k| idx[k]).collect();
        let (ids, mask, _) = token_inputs(data, &ex, tok, Padding::Longest)?;
        let r = exec.run([("input_ids", ids), ("attention_mask", mask)], &[value])?;
        let e: Vec<Vec<f32>> = r[value].to_dtype(DType::F32)?.to_vec2()?;
        for (&k, row) in chunk.iter().zip(e) {
            out[k * width..(k + 1) * width].copy_from_slice(&row);
        }
    }
    Ok(out)
}

/// Per-feature mean and standard deviation (floored at 1e-6) of row-major `[n, 384]` rows.
fn moments(x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / WIDTH).max(1) as f64;
    let mut mean = vec![0f64; WIDTH];
    let mut sq = vec![0f64; WIDTH];
    for row in x.chunks(WIDTH) {
        for (k, &v) in row.iter().enumerate() {
            mean[k] += f64::from(v);
            sq[k] += f64::from(v) * f64::from(v);
        }
    }
    let std = (0..WIDTH)
        .map(|k| {
            mean[k] /= n;
            (sq[k] / n - mean[k] * mean[k]).max(0.0).sqrt().max(1e-6)
        })
        .collect();
    (mean, std)
}

/// `x ← (x − mean) / std`, per feature.
fn standardise(x: &mut [f32], mean: &[f64], std: &[f64]) {
    for row in x.chunks_mut(WIDTH) {
        for (k, v) in row.iter_mut().enumerate() {
            *v = ((f64::from(*v) - mean[k]) / std[k]) as f32;
        }
    }
}

/// A head `W z + b` on standardised `z = (x − μ) / σ` as a head on raw `x`:
/// `W' = W / σ` (per column), `b' = b − W' μ`.
fn fold_standardisation(
    w: &hone_graph::Tensor,
    b: &hone_graph::Tensor,
    mean: &[f64],
    std: &[f64],
) -> Result<(hone_graph::Tensor, hone_graph::Tensor), TrainError> {
    let (Some(wv), Some(bv)) = (w.as_f32(), b.as_f32()) else {
        return Err(TrainError::config("the head is not f32"));
    };
    let classes = bv.len();
    let mut w2 = vec![0f32; wv.len()];
    let mut b2 = vec![0f32; classes];
    for c in 0..classes {
        let mut shift = 0f64;
        for k in 0..WIDTH {
            let scaled = f64::from(wv[c * WIDTH + k]) / std[k];
            w2[c * WIDTH + k] = scaled as f32;
            shift += scaled * mean[k];
        }
        b2[c] = (f64::from(bv[c]) - shift) as f32;
    }
    let wt = hone_graph::Tensor::new(vec![classes, WIDTH], hone_graph::TensorData::F32(w2))?;
    let bt = hone_graph::Tensor::new(vec![classes], hone_graph::TensorData::F32(b2))?;
    Ok((wt, bt))
}

/// Builds, trains, checks and writes the `minilm-sentiment` baseline.
pub fn minilm_sentiment(opts: &MinilmOptions) -> Result<MinilmSummary, TrainError> {
    let data = vader_movie_reviews()?;
    let tok = Tokenizer::minilm()?;
    let path =
        hone_assets::path("minilm-l3-onnx").map_err(|e| TrainError::config(e.to_string()))?;
    let mut graph = Graph::load(&path)?;
    // A quick run takes a seeded random subset of each part (the file is sorted by label).
    let take = |p: Part| -> Vec<usize> {
        let mut v = data.split.part(p).to_vec();
        if let Some(l) = opts.limit {
            SplitMix64::new(opts.seed).shuffle(&mut v);
            v.truncate(l);
            v.sort_unstable();
        }
        v
    };
    let (train_idx, val_idx, test_idx) =
        (take(Part::Train), take(Part::Validation), take(Part::Test));
    // Frozen encoder: nothing trainable, so no autograd graph is kept.
    let encoder = Executor::with_trainable(&graph, |_| false)?;
    let start = Instant::now();
    if opts.progress {
        eprintln!("minilm-sentiment: embedding {} + {} sentences", train_idx.len(), val_idx.len());
    }
    let mut train_x = embed(&encoder, &data, &train_idx, &tok)?;
    let mut val_x = embed(&encoder, &data, &val_idx, &tok)?;
    // The head trains on standardised embeddings; the standardisation is folded into its
    // weights afterwards, so the graph reads the raw embedding.
    let (mean, std) = moments(&train_x);
    standardise(&mut train_x, &mean, &std);
    standardise(&mut val_x, &mean, &std);
    let embed_seconds = start.elapsed().as_secs_f64();
    // The head as its own graph: [N, 384, 1, 1] → Flatten → Gemm → [N, 2].
    let head = ModelSpec {
        name: "head".into(),
        input: [WIDTH, 1, 1],
        layers: vec![Layer::Flatten, Layer::Dense { out: 2 }],
        seed: opts.seed,
    }
    .build()?;
    let mut head_graph = head.graph;
    let head_exec = Executor::new(&head_graph)?;
    let cfg = TrainConfig {
        seed: opts.seed,
        optimizer: OptimizerConfig::adamw(1e-2),
        progress: opts.progress,
        ..TrainConfig::new(opts.epochs, opts.batch_size, opts.lr)
    };
    let labels = &data.labels;
    let positions: Vec<usize> = (0..train_idx.len()).collect();
    let features = |x: &[f32], rows: &[usize]| -> Result<Tensor, TrainError> {
        let mut v = Vec::with_capacity(rows.len() * WIDTH);
        for &r in rows {
            v.extend_from_slice(&x[r * WIDTH..(r + 1) * WIDTH]);
        }
        Ok(Tensor::from_vec(v, (rows.len(), WIDTH, 1, 1), &Device::Cpu)?)
    };
    let train = fit(&head_exec, &positions, &cfg, |batch| {
        let x = features(&train_x, batch)?;
        let y: Vec<u32> = batch.iter().map(|&r| labels[train_idx[r]]).collect();
        let mut out = head_exec.run([(INPUT, x)], &[OUTPUT])?;
        let logits = out.remove(OUTPUT).ok_or_else(|| TrainError::config("no logits"))?;
        Ok(StepOutput { loss: cross_entropy(&logits, &y)?, correct: Some(correct(&logits, &y)?) })
    })?;
    let val_rows: Vec<usize> = (0..val_idx.len()).collect();
    let val_logits = head_exec.run([(INPUT, features(&val_x, &val_rows)?)], &[OUTPUT])?;
    let val_y: Vec<u32> = val_idx.iter().map(|&i| labels[i]).collect();
    let validation_accuracy =
        correct(&val_logits[OUTPUT], &val_y)? as f64 / val_idx.len().max(1) as f64;
    // Splice the head into MiniLM.
    head_exec.write_back(&mut head_graph)?;
    let (w, b) = fold_standardisation(
        &head_graph.initializer("fc1.weight")?,
        &head_graph.initializer("fc1.bias")?,
        &mean,
        &std,
    )?;
    graph.add_initializer("head.weight", &w)?;
    graph.add_initializer("head.bias", &b)?;
    graph.insert_nodes([Node::new(
        "head",
        "Gemm",
        &[POOLED, "head.weight", "head.bias"],
        &["logits"],
    )
    .with_attribute("transB", Attribute::Int(1))])?;
    graph.graph_proto_mut().output.clear();
    graph.add_output("logits")?;
    graph.prune_unused();
    graph.validate()?;
    // Fine-tune everything but the large embedding tables, starting from the probed head.
    let mut finetune = None;
    let mut trainable_params = head.params;
    let mut validation_accuracy = validation_accuracy;
    if opts.finetune_epochs > 0 {
        let big: std::collections::HashSet<String> = graph
            .initializers()?
            .into_iter()
            .filter(|(_, t)| t.len() > 1_000_000)
            .map(|(n, _)| n)
            .collect();
        let trainable: std::collections::HashSet<String> =
            crate::train::exec::default_trainable(&graph)
                .into_iter()
                .filter(|n| !big.contains(n))
                .collect();
        let ft = Executor::with_trainable(&graph, |n| trainable.contains(n))?;
        trainable_params = ft.parameters().map(|(_, v)| v.elem_count()).sum();
        let cfg = TrainConfig {
            seed: opts.seed,
            optimizer: OptimizerConfig::adamw(1e-2),
            progress: opts.progress,
            min_lr_ratio: 0.0,
            ..TrainConfig::new(opts.finetune_epochs, 32, opts.finetune_lr)
        };
        let summary = fit(&ft, &train_idx, &cfg, |batch| {
            let (ids, mask, y) = token_inputs(&data, batch, &tok, Padding::Longest)?;
            let mut out = ft.run([("input_ids", ids), ("attention_mask", mask)], &["logits"])?;
            let logits = out.remove("logits").ok_or_else(|| TrainError::config("no logits"))?;
            Ok(StepOutput {
                loss: cross_entropy(&logits, &y)?,
                correct: Some(correct(&logits, &y)?),
            })
        })?;
        ft.write_back(&mut graph)?;
        let scores = rows_of(&ft, &data, &val_idx, &tok, "logits", 2)?;
        let hits = val_idx
            .iter()
            .enumerate()
            .filter(|&(r, &i)| u32::from(scores[2 * r + 1] > scores[2 * r]) == data.labels[i])
            .count();
        validation_accuracy = hits as f64 / val_idx.len().max(1) as f64;
        finetune = Some(summary);
    }
    let train_seconds = start.elapsed().as_secs_f64();
    std::fs::create_dir_all(&opts.out)
        .map_err(|source| TrainError::Io { path: opts.out.display().to_string(), source })?;
    let model = opts.out.join("model.onnx");
    graph.save_gated(&model, &Default::default())?;
    let saved = Graph::load(&model)?;
    // Parity of the whole saved model against the executor, on 32 test sentences.
    let full = Executor::with_trainable(&saved, |_| false)?;
    let probe = &test_idx[..32.min(test_idx.len())];
    let (ids, mask, _) = token_inputs(&data, probe, &tok, Padding::Longest)?;
    let parity =
        check_parity(&saved, &full, &[("input_ids", ids), ("attention_mask", mask)], 1e-4)?;
    // Test accuracy with tract: one plan, every sentence padded to the longest test sentence.
    let longest =
        test_idx.iter().map(|&i| tok.encode(&data.sentences[i], MAX_LEN).len()).max().unwrap_or(2);
    let chunk = 64;
    let plan = TractPlan::new(
        saved.proto(),
        &[(DType::I64, vec![chunk, longest]), (DType::I64, vec![chunk, longest])],
    )?;
    let mut hits = 0;
    for part in test_idx.chunks(chunk) {
        let mut ex = part.to_vec();
        ex.resize(chunk, part[0]);
        let b = data.batch(&ex, &tok, longest, Padding::Fixed);
        let shape = (chunk, b.encoding.seq_len);
        let ids = Tensor::from_vec(b.encoding.input_ids, shape, &Device::Cpu)?;
        let mask = Tensor::from_vec(b.encoding.attention_mask, shape, &Device::Cpu)?;
        let (_, scores) = plan.run(&[ids, mask])?.remove(0);
        for (r, &i) in part.iter().enumerate() {
            let pred = u32::from(scores[r * 2 + 1] > scores[r * 2]);
            hits += usize::from(pred == data.labels[i]);
        }
    }
    let params = saved
        .initializers()?
        .iter()
        .filter(|(_, t)| t.data_type() == hone_graph::DataType::F32)
        .map(|(_, t)| t.len())
        .sum();
    let summary = MinilmSummary {
        baseline: "minilm-sentiment",
        model,
        test_accuracy: hits as f64 / test_idx.len().max(1) as f64,
        validation_accuracy,
        train_seconds,
        embed_seconds,
        params,
        trainable_params,
        peak_rss_bytes: peak_rss_bytes(),
        parity_max_abs_diff: parity[0].max_abs_diff,
        parity_scale: parity[0].scale,
        test_sentences: test_idx.len(),
        train,
        finetune,
        options: opts.clone(),
    };
    super::write_json(&opts.out.join("summary.json"), &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_the_standardisation_keeps_the_head_outputs() {
        let mut rng = SplitMix64::new(3);
        let x: Vec<f32> = (0..4 * WIDTH).map(|_| rng.next_f32() * 4.0 - 1.0).collect();
        let (mean, std) = moments(&x);
        let mut z = x.clone();
        standardise(&mut z, &mean, &std);
        let w: Vec<f32> = (0..2 * WIDTH).map(|_| rng.next_f32() - 0.5).collect();
        let b = [0.3f32, -0.2];
        let wt = hone_graph::Tensor::new(vec![2, WIDTH], hone_graph::TensorData::F32(w.clone()))
            .unwrap();
        let bt = hone_graph::Tensor::new(vec![2], hone_graph::TensorData::F32(b.to_vec())).unwrap();
        let (w2, b2) = fold_standardisation(&wt, &bt, &mean, &std).unwrap();
        let (w2, b2) = (w2.as_f32().unwrap(), b2.as_f32().unwrap());
        for r in 0..4 {
            for c in 0..2 {
                let dot = |w: &[f32], v: &[f32]| -> f64 {
                    (0..WIDTH)
                        .map(|k| f64::from(w[c * WIDTH + k]) * f64::from(v[r * WIDTH + k]))
                        .sum()
                };
                let on_z = dot(&w, &z) + f64::from(b[c]);
                let on_x = dot(w2, &x) + f64::from(b2[c]);
                assert!((on_z - on_x).abs() < 1e-3, "{on_z} vs {on_x}");
            }
        }
    }

    #[test]
    fn a_quick_run_splices_a_head_that_tract_runs() {
        let dir = tempfile::tempdir().unwrap();
        let opts = MinilmOptions {
            epochs: 3,
            limit: Some(128),
            progress: false,
            ..MinilmOptions::new(dir.path().to_path_buf())
        };
        let s = minilm_sentiment(&opts).unwrap();
        assert!(s.parity_max_abs_diff <= 1e-4 * s.parity_scale);
        assert_eq!(s.test_sentences, 128);
        assert!(s.trainable_params > 1_000_000 && s.finetune.is_some());
        let g = Graph::load(&s.model).unwrap();
        let outs: Vec<String> = g.outputs().into_iter().map(|o| o.name).collect();
        assert_eq!(outs, ["logits"]);
        assert!(dir.path().join("summary.json").exists());
    }
}

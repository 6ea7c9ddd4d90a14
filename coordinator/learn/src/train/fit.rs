//! The mini-batch training loop: seeded shuffles, an optimizer and a learning-rate schedule,
//! progress on stderr, and a JSON-ready summary.

use std::io::IsTerminal as _;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::TrainError;
use super::exec::Executor;
use super::loss::{correct, cross_entropy};
use super::optim::OptimizerConfig;
use super::schedule::LrSchedule;
use crate::data::{Batches, ImageDataset, epoch_seed};

/// Settings of a training run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainConfig {
    /// Passes over the training examples.
    pub epochs: usize,
    /// Examples per step (the last, smaller batch of an epoch is dropped).
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps of the schedule.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// Seed of the shuffles (epoch `e` uses [`epoch_seed`]`(seed, e)`).
    pub seed: u64,
    /// Stop after this many steps (the schedule still spans them).
    pub max_steps: Option<u64>,
    /// Show progress on stderr (a bar on a terminal, plain lines otherwise).
    pub progress: bool,
}

impl TrainConfig {
    /// AdamW at `lr` with 2 % warm-up and cosine decay to 1 %, no progress output.
    pub fn new(epochs: usize, batch_size: usize, lr: f64) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size,
            lr,
            warmup_steps: 0,
            min_lr_ratio: 0.01,
            optimizer: OptimizerConfig::adamw(1e-4),
            seed: 0,
            max_steps: None,
            progress: false,
        }
    }

    /// The schedule for `n` training examples.
    pub fn schedule(&self, n: usize) -> LrSchedule {
        let total = self.total_steps(n);
        let warmup = if self.warmup_steps > 0 { self.warmup_steps } else { (total / 50).max(1) };
        LrSchedule { base: self.lr, warmup: warmup.min(total), total, min_ratio: self.min_lr_ratio }
    }

    /// Steps of the run on `n` examples.
    pub fn total_steps(&self, n: usize) -> u64 {
        let per_epoch = (n / self.batch_size.max(1)) as u64;
        let all = per_epoch * self.epochs as u64;
        self.max_steps.map_or(all, |m| m.min(all))
    }
}

/// What a training run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSummary {
    /// Optimizer steps.
    pub steps: u64,
    /// Epochs started.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Examples seen (steps × batch).
    pub samples: u64,
    /// Wall time of the loop, seconds.
    pub train_seconds: f64,
    /// Training throughput.
    pub samples_per_second: f64,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Mean loss of the last (up to) 50 steps.
    pub final_loss: f64,
    /// Mean loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// Training accuracy of each epoch (classification only; running, during training).
    pub epoch_train_accuracy: Vec<f64>,
    /// Learning rate of the last step.
    pub last_lr: f64,
    /// Every step's loss.
    #[serde(skip)]
    pub losses: Vec<f32>,
}

/// One step's result: the loss (a scalar in the autograd graph) and, for classifiers, the
/// number of correct predictions in the batch.
pub struct StepOutput {
    /// The loss to minimise.
    pub loss: Tensor,
    /// Correct predictions, when the task is classification.
    pub correct: Option<usize>,
}

/// Trains the parameters of `exec` on the examples `indices`: each epoch shuffles them with
/// [`epoch_seed`]`(cfg.seed, epoch)`, and each full batch goes through `step` (which runs the
/// model and returns the loss), backward, and an optimizer update at the scheduled rate.
pub fn fit(
    exec: &Executor,
    indices: &[usize],
    cfg: &TrainConfig,
    mut step: impl FnMut(&[usize]) -> Result<StepOutput, TrainError>,
) -> Result<TrainSummary, TrainError> {
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(TrainError::config("epochs and batch size must be at least 1"));
    }
    if indices.len() < cfg.batch_size {
        return Err(TrainError::config(format!(
            "{} training examples are fewer than one batch of {}",
            indices.len(),
            cfg.batch_size
        )));
    }
    let schedule = cfg.schedule(indices.len());
    let total = schedule.total;
    let mut opt = cfg.optimizer.build(exec);
    let mut progress = Progress::new(cfg.progress, total);
    let start = Instant::now();
    let mut losses = Vec::with_capacity(total as usize);
    let (mut epoch_losses, mut epoch_acc) = (Vec::new(), Vec::new());
    let mut step_no = 0u64;
    let mut last_lr = 0.0;
    let mut epochs = 0;
    'outer: for epoch in 0..cfg.epochs {
        epochs += 1;
        let (mut sum, mut count, mut hits, mut seen) = (0.0f64, 0usize, 0usize, 0usize);
        let batches =
            Batches::new(indices, cfg.batch_size, Some(epoch_seed(cfg.seed, epoch as u64)))
                .drop_last(true);
        for batch in batches {
            if step_no >= total {
                break 'outer;
            }
            let out = step(&batch)?;
            let value = f64::from(out.loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?);
            if !value.is_finite() {
                return Err(TrainError::config(format!(
                    "the loss is {value} at step {step_no} (learning rate too high?)"
                )));
            }
            let grads = exec.backward(&out.loss)?;
            last_lr = schedule.lr(step_no);
            opt.step(&grads, last_lr)?;
            losses.push(value as f32);
            sum += value;
            count += 1;
            if let Some(c) = out.correct {
                hits += c;
                seen += batch.len();
            }
            step_no += 1;
            progress.step(step_no, epoch, value, last_lr, sum / count as f64);
        }
        epoch_losses.push(if count > 0 { sum / count as f64 } else { f64::NAN });
        if seen > 0 {
            epoch_acc.push(hits as f64 / seen as f64);
        }
        progress.epoch_end(
            epoch,
            sum / count.max(1) as f64,
            (seen > 0).then(|| hits as f64 / seen as f64),
        );
    }
    progress.finish();
    let train_seconds = start.elapsed().as_secs_f64();
    let samples = step_no * cfg.batch_size as u64;
    let tail = &losses[losses.len().saturating_sub(50)..];
    Ok(TrainSummary {
        steps: step_no,
        epochs,
        batch_size: cfg.batch_size,
        samples,
        train_seconds,
        samples_per_second: samples as f64 / train_seconds.max(1e-9),
        first_loss: losses.first().map_or(f64::NAN, |&l| f64::from(l)),
        final_loss: tail.iter().map(|&l| f64::from(l)).sum::<f64>() / tail.len().max(1) as f64,
        epoch_losses,
        epoch_train_accuracy: epoch_acc,
        last_lr,
        losses,
    })
}

/// Trains an image classifier (`input` `[N, C, H, W]` → `output` `[N, classes]` logits) with
/// cross-entropy on the examples `indices` of `data`.
pub fn fit_classifier(
    exec: &Executor,
    input: &str,
    output: &str,
    data: &ImageDataset,
    indices: &[usize],
    cfg: &TrainConfig,
) -> Result<TrainSummary, TrainError> {
    fit(exec, indices, cfg, |batch| {
        let b = data.batch(batch);
        let x = Tensor::from_vec(b.pixels, b.shape.to_vec(), &Device::Cpu)?;
        let mut out = exec.run([(input, x)], &[output])?;
        let logits = out
            .remove(output)
            .ok_or_else(|| TrainError::config(format!("no output `{output}`")))?;
        let loss = cross_entropy(&logits, &b.labels)?;
        let hits = correct(&logits, &b.labels)?;
        Ok(StepOutput { loss, correct: Some(hits) })
    })
}

/// Peak resident memory of this process (VmHWM), when the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Resident memory now (`VmRSS` in `/proc/self/status`), bytes; `None` off Linux.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Progress on stderr: an indicatif bar on a terminal, a plain line every 5 % otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    total: u64,
    every: u64,
    start: Instant,
}

impl Progress {
    fn new(enabled: bool, total: u64) -> Progress {
        let tty = enabled && std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix("train");
            b
        });
        Progress {
            bar,
            plain: enabled && !tty,
            total,
            every: (total / 20).max(1),
            start: Instant::now(),
        }
    }

    fn step(&mut self, step: u64, epoch: usize, loss: f64, lr: f64, mean: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            if step.is_multiple_of(10) || step == self.total {
                bar.set_message(format!(
                    "epoch {} loss {loss:.4} (mean {mean:.4}) lr {lr:.2e}",
                    epoch + 1
                ));
            }
        } else if self.plain && (step.is_multiple_of(self.every) || step == 1) {
            let secs = self.start.elapsed().as_secs_f64();
            eprintln!(
                "train: step {step}/{} epoch {} loss {loss:.4} (epoch mean {mean:.4}) lr {lr:.2e} \
                 {secs:.0}s",
                self.total,
                epoch + 1
            );
        }
    }

    fn epoch_end(&mut self, epoch: usize, mean: f64, acc: Option<f64>) {
        let acc = acc.map(|a| format!(", train accuracy {:.2} %", a * 100.0)).unwrap_or_default();
        let line = format!("epoch {}: mean loss {mean:.4}{acc}", epoch + 1);
        if let Some(bar) = &self.bar {
            bar.println(line);
        } else if self.plain {
            eprintln!("train: {line}");
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

//! What distilling a 3B model into a 0.5B one costs on this design, measured on this machine
//! and extrapolated (`coordinator distill-scale`, `docs/distill.md`).
//!
//! - **Teacher**: the shapes of Llama-3.2-3B (hidden 3072, 28 blocks, 24 query and 8 key/value
//!   heads, FFN 8192, vocabulary 128,256, tied embedding: 3.21 B parameters) with seeded random
//!   weights (no real weights of that size are among the assets), written once in bf16 as
//!   safetensors (6.4 GB) and streamed block by block from the page cache ([`Bf16Llama`];
//!   positioned reads rather than a map, since Hone forbids `unsafe`), so its f32 copy never
//!   exists. Its top-k next tokens are written to disk in the cache format of
//!   [`super::lm`], as a real run would, and the study reports the disk a run would need.
//! - **Student**: a Llama of about 0.5 B with the teacher's vocabulary (hidden 1024, 24 blocks,
//!   16 query and 4 key/value heads, FFN 4096: 0.50 B, 6.5× fewer). Its training step (executor
//!   forward, reverse-KL loss against the teacher's top-k, backward, AdamW) is timed on two
//!   slices of its depth (default 2 and 8 blocks, embedding and head included) and extrapolated
//!   linearly to the full depth: `step(L) = step(a) + (L − a) · (step(b) − step(a)) / (b − a)`.
//!   The head over 128,256 tokens dominates a slice's step, so the slices are far apart; when
//!   their difference is lost in noise (the deeper slice not slower), the study says so in its
//!   `notes` and extrapolates nothing from it.
//!   Memory is extrapolated the same way from the resident size after each slice's steps.
//! - **A run over N tokens** then takes `N / teacher tokens/s` (the cache, computed once) plus
//!   `N / student tokens/s` (one pass) on this machine.
//!
//! The token ids are seeded random draws from the vocabulary (the Llama-3 tokenizer is not an
//! asset either); with random weights, nothing here depends on what the tokens say.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use hone_learn::data::SplitMix64;
use hone_learn::llm::stream::{Bf16Llama, write_random_bf16};
use hone_learn::llm::{GraphForm, LlamaConfig, LlamaWeights, build_graph};
use hone_learn::train::exec::Executor;
use hone_learn::train::kd::{Divergence, KdLoss, TopK, kd_loss};
use hone_learn::train::optim::{AdamW, Optimizer};

use super::lm::{cache_header, cache_record};

/// The shapes of Llama-3.2-3B (its `config.json`).
pub fn llama_3_2_3b() -> LlamaConfig {
    LlamaConfig {
        vocab: 128_256,
        hidden: 3072,
        layers: 28,
        heads: 24,
        kv_heads: 8,
        ffn: 8192,
        rope_base: 500_000.0,
        rms_eps: 1e-5,
        context: 131_072,
    }
}

/// A student of about 0.5 B parameters with Llama-3's vocabulary.
pub fn student_0_5b() -> LlamaConfig {
    LlamaConfig { hidden: 1024, layers: 24, heads: 16, kv_heads: 4, ffn: 4096, ..llama_3_2_3b() }
}

/// Settings of the scale study.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleConfig {
    /// The teacher's shapes.
    pub teacher: LlamaConfig,
    /// The student's shapes (full depth).
    pub student: LlamaConfig,
    /// Where the teacher's weights and top-k are written (the weights are reused when present).
    pub work_dir: PathBuf,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per teacher batch, and batches timed.
    pub teacher_seqs: usize,
    /// See `teacher_seqs`.
    pub teacher_batches: usize,
    /// Teacher tokens kept per position.
    pub top_k: usize,
    /// Sequences per student step.
    pub student_seqs: usize,
    /// The two slice depths timed.
    pub slices: [usize; 2],
    /// Steps timed per slice (after one warm-up step).
    pub timed_steps: usize,
    /// Run lengths (tokens) the cost is extrapolated to.
    pub run_tokens: Vec<u64>,
    /// Seed of the weights and tokens.
    pub seed: u64,
}

impl ScaleConfig {
    /// The study's defaults in `work_dir`.
    pub fn new(work_dir: PathBuf) -> ScaleConfig {
        ScaleConfig {
            teacher: llama_3_2_3b(),
            student: student_0_5b(),
            work_dir,
            seq_len: 128,
            teacher_seqs: 2,
            teacher_batches: 2,
            top_k: 64,
            student_seqs: 2,
            slices: [2, 8],
            timed_steps: 2,
            run_tokens: vec![250_000, 100_000_000, 1_000_000_000],
            seed: 0,
        }
    }
}

/// One timed slice of the student.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceTiming {
    /// Blocks in the slice.
    pub layers: usize,
    /// Its parameters.
    pub params: usize,
    /// Median seconds of its timed steps.
    pub step_s: f64,
    /// Every timed step, s.
    pub steps_s: Vec<f64>,
    /// Resident memory after its steps, bytes.
    pub rss_bytes: Option<u64>,
}

/// A run of `tokens` on this machine, extrapolated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEstimate {
    /// Training tokens.
    pub tokens: u64,
    /// The teacher's pass (top-k cache), hours.
    pub teacher_hours: f64,
    /// The student's pass, hours.
    pub student_hours: f64,
    /// Both, days.
    pub total_days: f64,
    /// Disk for the top-k cache, bytes.
    pub cache_bytes: u64,
}

/// What the scale study measured and extrapolated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleReport {
    /// Teacher and student parameters (tied embedding once), and their ratio.
    pub teacher_params: usize,
    /// See `teacher_params`.
    pub student_params: usize,
    /// See `teacher_params`.
    pub size_ratio: f64,
    /// The teacher's bf16 file and its size.
    pub teacher_file: PathBuf,
    /// See `teacher_file`.
    pub teacher_file_bytes: u64,
    /// Seconds writing it (None when it was reused).
    pub teacher_write_s: Option<f64>,
    /// Seconds of each teacher batch, and the tokens each holds.
    pub teacher_batch_s: Vec<f64>,
    /// See `teacher_batch_s`.
    pub teacher_batch_tokens: usize,
    /// Teacher tokens per second over all batches.
    pub teacher_tokens_per_s: f64,
    /// Peak resident memory once the teacher has run (mapped pages included), bytes.
    pub teacher_peak_rss_bytes: Option<u64>,
    /// The top-k file and its bytes per token.
    pub topk_file: PathBuf,
    /// See `topk_file`.
    pub topk_bytes_per_token: u64,
    /// The timed student slices.
    pub slices: Vec<SliceTiming>,
    /// Extrapolated seconds per block, outside the blocks, and of a full-depth step.
    pub per_layer_step_s: f64,
    /// See `per_layer_step_s`.
    pub fixed_step_s: f64,
    /// See `per_layer_step_s`.
    pub student_step_s: f64,
    /// Tokens per student step, and the full student's tokens per second.
    pub student_step_tokens: usize,
    /// See `student_step_tokens`.
    pub student_tokens_per_s: f64,
    /// Resident memory of full-depth training, extrapolated from the slices, bytes; and the
    /// floor of weights, gradients and two AdamW moments in f32 (16 bytes a parameter).
    pub student_train_rss_estimate_bytes: Option<u64>,
    /// See `student_train_rss_estimate_bytes`.
    pub student_state_floor_bytes: u64,
    /// Runs of the configured lengths on this machine.
    pub runs: Vec<RunEstimate>,
    /// What the figures cannot be trusted for, when anything.
    pub notes: Vec<String>,
    /// Peak resident memory of the whole study, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Seconds in all.
    pub total_s: f64,
    /// The CPU.
    pub cpu: String,
    /// The settings.
    pub config: ScaleConfig,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Runs the study (see the [module](self) documentation).
pub fn scale_study(cfg: &ScaleConfig, progress: &dyn Fn(&str)) -> anyhow::Result<ScaleReport> {
    let started = Instant::now();
    let [a, b] = cfg.slices;
    anyhow::ensure!(
        a >= 1 && b > a && b <= cfg.student.layers,
        "the slices must be two depths 1 ≤ a < b ≤ {}, got {a} and {b}",
        cfg.student.layers
    );
    anyhow::ensure!(
        cfg.teacher.vocab == cfg.student.vocab,
        "teacher and student share the vocabulary"
    );
    anyhow::ensure!(
        cfg.seq_len > 0
            && cfg.teacher_seqs > 0
            && cfg.teacher_batches > 0
            && cfg.timed_steps > 0
            && cfg.student_seqs > 0
            && cfg.student_seqs <= cfg.teacher_seqs,
        "the study needs a sequence length, teacher batches, timed steps and at most as many \
         student sequences as teacher ones"
    );
    std::fs::create_dir_all(&cfg.work_dir)
        .with_context(|| format!("creating {}", cfg.work_dir.display()))?;
    let tc = &cfg.teacher;
    let teacher_file = cfg.work_dir.join(format!(
        "teacher-{}x{}-{}-seed{}.bf16.safetensors",
        tc.layers, tc.hidden, tc.vocab, cfg.seed
    ));
    let teacher_write_s = if Bf16Llama::open(&teacher_file, tc).is_ok() {
        progress(&format!("reusing {}", teacher_file.display()));
        None
    } else {
        progress(&format!(
            "writing the teacher ({} parameters, random bf16) to {}",
            tc.params(),
            teacher_file.display()
        ));
        let t = Instant::now();
        write_random_bf16(&teacher_file, tc, cfg.seed)?;
        Some(t.elapsed().as_secs_f64())
    };
    let teacher_file_bytes = std::fs::metadata(&teacher_file)?.len();

    let mut rng = SplitMix64::new(cfg.seed ^ 0x5eed);
    let topk_file = cfg.work_dir.join("teacher-topk.bin");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&topk_file)
            .with_context(|| format!("creating {}", topk_file.display()))?,
    );
    out.write_all(&cache_header(cfg.top_k, cfg.seq_len))?;
    let (mut teacher_batch_s, mut first) = (Vec::new(), None);
    {
        let teacher = Bf16Llama::open(&teacher_file, tc)?;
        for i in 0..cfg.teacher_batches {
            let seqs: Vec<Vec<u32>> = (0..cfg.teacher_seqs)
                .map(|_| (0..cfg.seq_len).map(|_| rng.below(tc.vocab as u64) as u32).collect())
                .collect();
            let t = Instant::now();
            let top = teacher.top_k(&seqs, cfg.top_k)?;
            let s = t.elapsed().as_secs_f64();
            teacher_batch_s.push(s);
            progress(&format!(
                "teacher batch {}/{}: {} tokens in {s:.1} s ({:.2} tokens/s)",
                i + 1,
                cfg.teacher_batches,
                cfg.teacher_seqs * cfg.seq_len,
                (cfg.teacher_seqs * cfg.seq_len) as f64 / s
            ));
            let per = cfg.seq_len * cfg.top_k;
            for j in 0..cfg.teacher_seqs {
                let one = TopK {
                    k: cfg.top_k,
                    indices: top.indices[j * per..(j + 1) * per].to_vec(),
                    logprobs: top.logprobs[j * per..(j + 1) * per].to_vec(),
                };
                out.write_all(&cache_record(&one))?;
            }
            if first.is_none() {
                first = Some((seqs, top));
            }
        }
    }
    out.flush()?;
    let teacher_peak_rss_bytes = hone_learn::train::fit::peak_rss_bytes();
    let teacher_batch_tokens = cfg.teacher_seqs * cfg.seq_len;
    let teacher_tokens_per_s =
        (teacher_batch_tokens * cfg.teacher_batches) as f64 / teacher_batch_s.iter().sum::<f64>();
    let (seqs, top) = first.context("no teacher batch ran")?;

    // The student's step on the teacher's first batch, on two slices of its depth.
    let n = cfg.student_seqs;
    let ids: Vec<i64> = seqs[..n].iter().flatten().map(|&t| i64::from(t)).collect();
    let rows = n * cfg.seq_len * cfg.top_k;
    let teacher_rows = TopK {
        k: cfg.top_k,
        indices: top.indices[..rows].to_vec(),
        logprobs: top.logprobs[..rows].to_vec(),
    }
    .teacher(&Device::Cpu)?;
    let loss_cfg = KdLoss::new(Divergence::Rkl);
    let mut slices = Vec::new();
    for layers in [a, b] {
        let c = LlamaConfig { layers, ..cfg.student.clone() };
        progress(&format!("student slice of {layers} blocks: building"));
        let (exec, params) = {
            let w = LlamaWeights::fresh(&c, cfg.seed)?;
            let params = w.params();
            let graph = build_graph(&c, &w, GraphForm::Train)?;
            drop(w);
            (Executor::new(&graph)?, params)
        };
        let vars: Vec<(String, candle_core::Var)> =
            exec.parameters().map(|(n, v)| (n.to_owned(), v.clone())).collect();
        let mut opt = AdamW::new(vars, 0.9, 0.95, 1e-8, 0.01);
        let mut steps_s = Vec::new();
        for step in 0..=cfg.timed_steps {
            let t = Instant::now();
            let x = Tensor::from_vec(ids.clone(), (n, cfg.seq_len), &Device::Cpu)?;
            let logits = exec.run([("input_ids", x)], &["logits"])?;
            let loss = kd_loss(&logits["logits"].flatten_to(1)?, &teacher_rows, &loss_cfg, None)?;
            let grads = exec.backward(&loss)?;
            opt.step(&grads, 1e-4)?;
            let s = t.elapsed().as_secs_f64();
            if step > 0 {
                steps_s.push(s);
            }
            progress(&format!(
                "student slice of {layers} blocks: step {step} {s:.2} s{}",
                if step == 0 { " (warm-up)" } else { "" }
            ));
        }
        slices.push(SliceTiming {
            layers,
            params,
            step_s: median(&steps_s),
            steps_s,
            rss_bytes: hone_learn::train::fit::rss_bytes(),
        });
    }
    let mut notes = Vec::new();
    let mut per_layer_step_s = (slices[1].step_s - slices[0].step_s) / (b - a) as f64;
    if per_layer_step_s <= 0.0 {
        notes.push(format!(
            "the {b}-block slice was not slower than the {a}-block one ({:.2} s against {:.2} s): \
             the blocks' cost is lost in noise, so the full student's step is given as the \
             {b}-block slice's, a lower bound; time slices further apart on a quieter host",
            slices[1].step_s, slices[0].step_s
        ));
        per_layer_step_s = 0.0;
    }
    let fixed_step_s = if per_layer_step_s > 0.0 {
        slices[0].step_s - a as f64 * per_layer_step_s
    } else {
        slices[1].step_s
    };
    let full = cfg.student.layers as f64;
    let student_step_s = fixed_step_s + full * per_layer_step_s;
    let student_step_tokens = n * cfg.seq_len;
    let student_tokens_per_s = student_step_tokens as f64 / student_step_s;
    let student_train_rss_estimate_bytes = match (slices[0].rss_bytes, slices[1].rss_bytes) {
        (Some(ra), Some(rb)) => {
            let per = (rb as f64 - ra as f64).max(0.0) / (b - a) as f64;
            Some((ra as f64 + (full - a as f64) * per) as u64)
        }
        _ => None,
    };
    let student_params = cfg.student.params();
    let topk_bytes_per_token = (cfg.top_k * 8) as u64;
    let runs = cfg
        .run_tokens
        .iter()
        .map(|&tokens| {
            let teacher_hours = tokens as f64 / teacher_tokens_per_s / 3600.0;
            let student_hours = tokens as f64 / student_tokens_per_s / 3600.0;
            RunEstimate {
                tokens,
                teacher_hours,
                student_hours,
                total_days: (teacher_hours + student_hours) / 24.0,
                cache_bytes: tokens * topk_bytes_per_token,
            }
        })
        .collect();
    Ok(ScaleReport {
        teacher_params: tc.params(),
        student_params,
        size_ratio: tc.params() as f64 / student_params as f64,
        teacher_file,
        teacher_file_bytes,
        teacher_write_s,
        teacher_batch_s,
        teacher_batch_tokens,
        teacher_tokens_per_s,
        teacher_peak_rss_bytes,
        topk_file,
        topk_bytes_per_token,
        slices,
        per_layer_step_s,
        fixed_step_s,
        student_step_s,
        student_step_tokens,
        student_tokens_per_s,
        student_train_rss_estimate_bytes,
        student_state_floor_bytes: student_params as u64 * 16,
        runs,
        notes,
        peak_rss_bytes: hone_learn::train::fit::peak_rss_bytes(),
        total_s: started.elapsed().as_secs_f64(),
        cpu: crate::cpu_name(),
        config: cfg.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default shapes are the ones the issue names: Llama-3.2-3B's 3.21 B parameters and a
    /// student about 6× smaller with the same vocabulary.
    #[test]
    fn the_default_shapes_are_llama_3_2_3b_and_a_half_billion_student() {
        let (t, s) = (llama_3_2_3b(), student_0_5b());
        assert_eq!(t.params() / 10_000_000, 321, "{}", t.params());
        assert!((480_000_000..520_000_000).contains(&s.params()), "{}", s.params());
        assert_eq!(t.vocab, s.vocab);
        t.validate().unwrap();
        s.validate().unwrap();
    }

    /// The whole study on small shapes: the teacher file is written once and reused, the top-k
    /// file holds every teacher position, both slices train, and the extrapolation is built
    /// from them.
    #[test]
    fn a_small_study_measures_streams_and_extrapolates() {
        let dir = tempfile::tempdir().unwrap();
        let teacher = LlamaConfig {
            vocab: 500,
            hidden: 32,
            layers: 3,
            heads: 4,
            kv_heads: 2,
            ffn: 64,
            rope_base: 1e4,
            rms_eps: 1e-5,
            context: 64,
        };
        let mut cfg = ScaleConfig::new(dir.path().to_owned());
        cfg.student = LlamaConfig {
            hidden: 16,
            layers: 4,
            heads: 2,
            kv_heads: 1,
            ffn: 32,
            ..teacher.clone()
        };
        cfg.teacher = teacher;
        cfg.seq_len = 8;
        cfg.top_k = 4;
        cfg.slices = [1, 3];
        let r = scale_study(&cfg, &|_| {}).unwrap();
        assert!(r.teacher_write_s.is_some());
        assert_eq!(r.teacher_batch_s.len(), 2);
        assert!(r.teacher_tokens_per_s > 0.0);
        let cached = std::fs::metadata(&r.topk_file).unwrap().len();
        assert_eq!(cached, 16 + (2 * 2 * 8 * 4 * 8) as u64);
        assert_eq!(r.slices.iter().map(|s| s.layers).collect::<Vec<_>>(), vec![1, 3]);
        assert!(r.slices[0].params < r.slices[1].params);
        assert!(r.student_step_s.is_finite() && r.runs.len() == 3);
        assert!(r.runs[2].total_days > r.runs[0].total_days);
        let again = scale_study(&cfg, &|_| {}).unwrap();
        assert!(again.teacher_write_s.is_none(), "the teacher file is reused");
        cfg.slices = [3, 2];
        assert!(scale_study(&cfg, &|_| {}).unwrap_err().to_string().contains("slices"));
    }
}

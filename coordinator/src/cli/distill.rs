//! `coordinator distill`: the arguments, a blocking thread for the run
//! ([`hone_compress::distill::distill`]), and the printing.

use std::path::PathBuf;

use anyhow::bail;
use hone_common::shapes::InputShapes;
use hone_compress::distill::attribution::AttributionGradient;
use hone_compress::distill::lm::{LmConfig, LmReport, LmStudent, distill_lm};
use hone_compress::distill::scale::{ScaleConfig, scale_study};
use hone_compress::distill::{
    Assistants, AttributionConfig, DistillConfig, DistillReport, Layers, StudentSpec, distill,
};
use hone_learn::train::kd::{Divergence, KdLoss};

use super::learn::blocking;

/// Arguments of `coordinator distill`.
#[derive(Debug, Clone, clap::Args)]
pub struct DistillArgs {
    /// The teacher: an ONNX model, or a language model (the folder of `coordinator llm import`
    /// or its `model.onnx`).
    #[arg(long)]
    pub teacher: PathBuf,
    /// Your own student (ONNX, same inputs and outputs as the teacher).
    #[arg(long, conflicts_with_all = ["student_layers", "student_width"])]
    pub student: Option<PathBuf>,
    /// A student made from the teacher with K of its layers (spread: first, last, evenly
    /// between), or the listed teacher layers `I,J,…`.
    #[arg(long)]
    pub student_layers: Option<Layers>,
    /// A student keeping this fraction of the teacher's prunable width (heads, FFN neurons),
    /// through Hone's structured pruning.
    #[arg(long)]
    pub student_width: Option<f64>,
    /// Data: a built-in set (vader, fashion-mnist, mnist) or your own (docs/data.md).
    #[arg(long)]
    pub data: String,
    /// Output divergence: fkl (forward KL), rkl (reverse KL), skl (skew KL), srkl (skew
    /// reverse KL).
    #[arg(long, default_value = "fkl")]
    pub loss: Divergence,
    /// Skew of skl and srkl (DistiLLM's α).
    #[arg(long, default_value_t = 0.1)]
    pub alpha: f64,
    /// Softening temperature of the output divergence.
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f64,
    /// Weight of hard-label cross-entropy (labelled data); the divergence gets 1 − this.
    #[arg(long, default_value_t = 0.5)]
    pub ce_weight: f64,
    /// Weight of the hidden-state loss (student layers through a learned projection against
    /// their mapped teacher layers).
    #[arg(long, default_value_t = 0.0)]
    pub hidden_weight: f64,
    /// Weight of the attention-map loss (head-averaged maps, KL per row).
    #[arg(long, default_value_t = 0.0)]
    pub attention_weight: f64,
    /// Attribution-based distillation (AD-KD): match the teacher's integrated-gradients
    /// attribution over input tokens.
    #[arg(long)]
    pub attribution: bool,
    /// Weight of the attribution loss.
    #[arg(long, default_value_t = 1.0)]
    pub attribution_weight: f64,
    /// Integration steps of the teacher's attribution (computed once per example, cached).
    #[arg(long, default_value_t = 16)]
    pub attribution_steps: usize,
    /// Integration steps of the student's attribution (every step).
    #[arg(long, default_value_t = 1)]
    pub attribution_student_steps: usize,
    /// Top classes attributed per example.
    #[arg(long, default_value_t = 1)]
    pub attribution_classes: usize,
    /// How the attribution loss's gradient is taken: first-order (a directional finite
    /// difference, two more forward passes) or exact (second-order gradients, about 100x
    /// slower a step).
    #[arg(long, default_value = "first-order")]
    pub attribution_gradient: AttributionGradient,
    /// Teacher assistants between teacher and student: auto, or a number (0: direct).
    #[arg(long, default_value = "0")]
    pub assistants: Assistants,
    /// Optimizer steps in all (split evenly over the stages).
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (10 % warm-up, then linear decay).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Seed of the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on at most this many training examples.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Evaluate on at most this many test examples (default: all).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Sequence length of text models for the latency figure (batch 1).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Seconds of side-by-side latency measurement.
    #[arg(long, default_value_t = 6.0)]
    pub latency_seconds: f64,
    /// Kept widths are multiples of this (the target's f32 SIMD width).
    #[arg(long, default_value_t = 8)]
    pub round_to: usize,
    /// Shape of an input whose declared shape is not fixed, NAME=DIMS (repeatable).
    #[arg(long = "input", value_name = "NAME=DIMS")]
    pub inputs: Vec<String>,
    /// Checkpoints and caches (default: OUT with extension `.distill`); a run started again
    /// over it resumes.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Generative teachers (a folder from `coordinator llm import`): the student's residual
    /// width, for a fresh student with the teacher's tokenizer (with --student-layers K as its
    /// depth; without it, --student-layers I,J keeps teacher layers).
    #[arg(long)]
    pub student_hidden: Option<usize>,
    /// Generative: make the student by pruning the teacher Minitron-style (its blocks evenly
    /// spread, residual channels, query heads and MLP neurons by activation importance on
    /// calibration text) to --student-hidden, --student-layers K, --student-heads and
    /// --student-ffn, instead of a fresh one.
    #[arg(long)]
    pub student_pruned: bool,
    /// Generative: the fresh student's query heads.
    #[arg(long, default_value_t = 4)]
    pub student_heads: usize,
    /// Generative: the fresh student's key/value heads.
    #[arg(long, default_value_t = 2)]
    pub student_kv_heads: usize,
    /// Generative: the fresh student's MLP width.
    #[arg(long, default_value_t = 768)]
    pub student_ffn: usize,
    /// Generative: training tokens of the corpus.
    #[arg(long, default_value_t = 250_000)]
    pub tokens: usize,
    /// Generative: held-out tokens evaluated.
    #[arg(long, default_value_t = 16_384)]
    pub eval_tokens: usize,
    /// Generative: tokens per training sequence.
    #[arg(long, default_value_t = 128)]
    pub train_seq_len: usize,
    /// Generative: teacher tokens cached per position (the rest is one tail bucket).
    #[arg(long, default_value_t = 32)]
    pub top_k: usize,
    /// Generative: prompts of the text samples (repeatable).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// Generative: tokens generated per sample.
    #[arg(long, default_value_t = 24)]
    pub sample_tokens: usize,
    /// Generative: share of steps trained on student-generated sequences (at most 0.15; they
    /// fall in the second half of training). Default: 0.1 with rkl, skl and srkl (MiniLLM and
    /// DistiLLM train on the student's own text), 0 with fkl and cross-entropy alone.
    #[arg(long)]
    pub on_policy: Option<f64>,
    /// Where to write the student (ONNX; a model folder for generative teachers).
    #[arg(long)]
    pub out: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl DistillArgs {
    /// The engine's settings.
    pub fn config(self) -> anyhow::Result<DistillConfig> {
        let mut c = DistillConfig::new(self.teacher, self.data, self.out);
        c.student = match self.student {
            Some(p) => StudentSpec::Model(p),
            None => {
                if self.student_layers.is_none() && self.student_width.is_none() {
                    bail!(
                        "choose a student: --student S.onnx, --student-layers K or --student-width F"
                    );
                }
                StudentSpec::Derived { layers: self.student_layers, width: self.student_width }
            }
        };
        c.loss = KdLoss { divergence: self.loss, temperature: self.temperature, alpha: self.alpha };
        c.loss.check()?;
        if !(0.0..=1.0).contains(&self.ce_weight) {
            bail!("--ce-weight must be in [0, 1], got {}", self.ce_weight);
        }
        c.ce_weight = self.ce_weight;
        c.hidden_weight = self.hidden_weight;
        c.attention_weight = self.attention_weight;
        c.attribution = self.attribution.then_some(AttributionConfig {
            weight: self.attribution_weight,
            steps: self.attribution_steps,
            student_steps: self.attribution_student_steps,
            classes: self.attribution_classes,
            gradient: self.attribution_gradient,
        });
        c.assistants = self.assistants;
        c.steps = self.steps;
        c.batch_size = self.batch_size;
        c.lr = self.lr;
        c.seed = self.seed;
        c.train_limit = self.train_limit;
        c.test_limit = self.test_limit;
        c.seq_len = self.seq_len;
        c.latency_seconds = self.latency_seconds;
        c.round_to = self.round_to;
        c.inputs = InputShapes::parse_all(&self.inputs)?;
        if let Some(w) = self.work_dir {
            c.work_dir = w;
        }
        c.checkpoint_every = self.checkpoint_every;
        Ok(c)
    }
}

impl DistillArgs {
    /// The settings of a generative distillation (the teacher is a model folder).
    fn lm_config(self) -> anyhow::Result<LmConfig> {
        let student = match (self.student_hidden, &self.student_layers) {
            (Some(hidden), Some(Layers::Count(layers))) if self.student_pruned => {
                LmStudent::Pruned {
                    layers: *layers,
                    hidden,
                    heads: self.student_heads,
                    ffn: self.student_ffn,
                }
            }
            _ if self.student_pruned => bail!(
                "--student-pruned takes --student-hidden H and --student-layers K (a count), with \
                 --student-heads and --student-ffn"
            ),
            (Some(hidden), layers) => LmStudent::Fresh {
                hidden,
                layers: match layers {
                    Some(Layers::Count(k)) => *k,
                    None => 4,
                    Some(Layers::Indices(_)) => {
                        bail!("a fresh student takes a layer count (--student-layers K)")
                    }
                },
                heads: self.student_heads,
                kv_heads: self.student_kv_heads,
                ffn: self.student_ffn,
            },
            (None, Some(Layers::Indices(v))) => LmStudent::Layers(v.clone()),
            (None, Some(Layers::Count(k))) => LmStudent::Layers((0..*k).collect()),
            (None, None) => {
                bail!(
                    "choose a student: --student-hidden H [--student-layers K], or --student-layers I,J"
                )
            }
        };
        if self.data != "sotu" {
            bail!("a generative teacher distils on the SOTU corpus (--data sotu)");
        }
        let work_dir = self.work_dir.unwrap_or_else(|| self.out.with_extension("distill"));
        Ok(LmConfig {
            teacher: self.teacher,
            student,
            loss: KdLoss { divergence: self.loss, temperature: 1.0, alpha: self.alpha },
            ce_weight: self.ce_weight,
            tokens: self.tokens,
            eval_tokens: self.eval_tokens,
            seq_len: self.train_seq_len,
            top_k: self.top_k,
            steps: self.steps,
            on_policy: self.on_policy.unwrap_or(
                if self.ce_weight < 1.0 && self.loss != Divergence::Fkl { 0.1 } else { 0.0 },
            ),
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            out: self.out,
            work_dir,
            prompts: if self.prompts.is_empty() {
                vec!["The State of the Union".into(), "Our economy".into()]
            } else {
                self.prompts
            },
            sample_tokens: self.sample_tokens,
        })
    }
}

/// Runs `coordinator distill`.
pub async fn run(args: DistillArgs) -> anyhow::Result<i32> {
    let json = args.json;
    let teacher = args.teacher.clone();
    let generative = teacher.is_dir()
        || blocking(move || {
            Ok(hone_graph::Graph::load(&teacher).is_ok_and(|g| hone_learn::llm::is_llm(&g)))
        })
        .await?;
    if generative {
        let config = args.lm_config()?;
        let report = blocking(move || distill_lm(&config, &|m| eprintln!("{m}"))).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_lm(&report);
        }
        return Ok(0);
    }
    let config = args.config()?;
    let report = blocking(move || distill(&config, &|m| eprintln!("{m}"))).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(0)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |a| format!("{:.2} %", a * 100.0))
}

fn print_report(r: &DistillReport) {
    println!("{} → {}", r.config.teacher.display(), r.out.display());
    println!("               teacher        student");
    println!(
        "  params   {:>11} {:>14}   ({:.2}x smaller)",
        r.teacher.params, r.student.params, r.size_ratio
    );
    println!(
        "  no emb.  {:>11} {:>14}",
        r.teacher.params_no_embeddings, r.student.params_no_embeddings
    );
    if let (Some(t), Some(s)) = (r.teacher.layers, r.student.layers) {
        println!("  layers   {t:>11} {s:>14}");
    }
    println!(
        "  accuracy {:>11} {:>14}   (before training {})",
        pct(r.teacher.accuracy),
        pct(r.student.accuracy),
        pct(r.accuracy_before)
    );
    println!(
        "  latency  {:>8.2} ms {:>11.2} ms   ({:.2}x faster; tract, batch 1, seq {}, {})",
        r.teacher.latency_ms, r.student.latency_ms, r.speedup, r.seq_len, r.cpu
    );
    println!(
        "  agreement with the teacher {:.2} % on {} test examples",
        r.agreement * 100.0,
        r.test_examples
    );
    for s in &r.stages {
        println!(
            "  stage {} → {}: {} steps ({} resumed), loss {:.4} → {:.4}, {:.0} s, accuracy {}",
            s.from,
            s.to,
            s.summary.steps,
            s.summary.resumed_from,
            s.summary.first_loss,
            s.summary.final_loss,
            s.summary.seconds,
            pct(s.accuracy)
        );
    }
    if let Some((secs, n)) = r.attribution {
        println!("  teacher attributions: {n} examples, {secs:.0} s");
    }
    println!(
        "  {:.0} s in all, peak RSS {} MB",
        r.seconds,
        r.peak_rss_bytes.map_or(0, |b| b / 1_000_000)
    );
}

fn print_lm(r: &LmReport) {
    println!("{} → {}", r.config.teacher.display(), r.out.display());
    println!(
        "  params      {:>12} → {:>12}   ({:.2}x smaller)",
        r.teacher_params, r.student_params, r.size_ratio
    );
    println!(
        "  perplexity  {:>12.2} → {:>12.2}   (held out, {} positions)",
        r.teacher_perplexity, r.student_perplexity, r.eval_positions
    );
    println!("  agreement with the teacher's next token {:.2} %", r.agreement * 100.0);
    println!(
        "  decode      {:>9.1} t/s → {:>9.1} t/s (tract, {})",
        r.teacher_decode_tokens_per_s, r.student_decode_tokens_per_s, r.cpu
    );
    println!(
        "  {} steps ({} resumed), loss {:.4} → {:.4}, {:.0} s ({:.0} tokens/s); teacher cache {:.0} s, tail mass {:.3}",
        r.steps,
        r.resumed_from,
        r.first_loss,
        r.final_loss,
        r.train_s,
        r.train_tokens_per_s,
        r.teacher_cache_s,
        r.mean_tail_mass
    );
    if r.on_policy_steps > 0 {
        println!("  on-policy steps {} ({:.0} s)", r.on_policy_steps, r.on_policy_s);
    }
    for s in &r.samples {
        println!("  {:?}\n    teacher: {:?}\n    student: {:?}", s.prompt, s.teacher, s.student);
    }
}

/// Arguments of `coordinator distill-scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Where the teacher's bf16 weights (6.4 GB, written once and reused) and its top-k go.
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Teacher sequences per batch.
    #[arg(long, default_value_t = 2)]
    pub teacher_seqs: usize,
    /// Teacher batches timed.
    #[arg(long, default_value_t = 2)]
    pub teacher_batches: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Teacher tokens kept per position.
    #[arg(long, default_value_t = 64)]
    pub top_k: usize,
    /// Sequences per student step (at most --teacher-seqs).
    #[arg(long, default_value_t = 2)]
    pub student_seqs: usize,
    /// The two student depths timed, `A,B` (extrapolated to the full 24 blocks).
    #[arg(long, default_value = "2,8")]
    pub slices: String,
    /// Steps timed per slice, after one warm-up step.
    #[arg(long, default_value_t = 2)]
    pub timed_steps: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `coordinator distill-scale`.
pub async fn run_scale(a: ScaleArgs) -> anyhow::Result<i32> {
    let mut cfg = ScaleConfig::new(a.work_dir);
    cfg.teacher_seqs = a.teacher_seqs;
    cfg.teacher_batches = a.teacher_batches;
    cfg.seq_len = a.seq_len;
    cfg.top_k = a.top_k;
    cfg.student_seqs = a.student_seqs;
    cfg.timed_steps = a.timed_steps;
    let parts: Vec<usize> = a
        .slices
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--slices takes two depths A,B: {e}"))?;
    cfg.slices = parts
        .try_into()
        .map_err(|v: Vec<usize>| anyhow::anyhow!("--slices takes two depths A,B, got {v:?}"))?;
    let r = blocking(move || scale_study(&cfg, &|m| eprintln!("{m}"))).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(0);
    }
    let gb = |b: u64| b as f64 / 1e9;
    println!(
        "teacher {} parameters (Llama-3.2-3B shapes, random bf16 streamed from the page cache, {:.1} GB) → student {} ({:.2}x fewer)",
        r.teacher_params,
        gb(r.teacher_file_bytes),
        r.student_params,
        r.size_ratio
    );
    println!(
        "  teacher: {:.2} tokens/s ({} tokens a batch, {:?} s), peak RSS {:.1} GB, top-k on disk {} B/token",
        r.teacher_tokens_per_s,
        r.teacher_batch_tokens,
        r.teacher_batch_s.iter().map(|s| (s * 10.0).round() / 10.0).collect::<Vec<_>>(),
        gb(r.teacher_peak_rss_bytes.unwrap_or(0)),
        r.topk_bytes_per_token
    );
    for s in &r.slices {
        println!(
            "  student slice of {} blocks ({} parameters): {:.2} s a step, RSS {:.1} GB",
            s.layers,
            s.params,
            s.step_s,
            gb(s.rss_bytes.unwrap_or(0))
        );
    }
    println!(
        "  full student step (extrapolated): {:.2} s for {} tokens = {:.1} tokens/s ({:.3} s a block + {:.2} s outside)",
        r.student_step_s,
        r.student_step_tokens,
        r.student_tokens_per_s,
        r.per_layer_step_s,
        r.fixed_step_s
    );
    println!(
        "  full student training memory (extrapolated): {:.1} GB (weights, gradients and AdamW alone: {:.1} GB)",
        gb(r.student_train_rss_estimate_bytes.unwrap_or(0)),
        gb(r.student_state_floor_bytes)
    );
    println!(
        "  {:>14} {:>12} {:>12} {:>10} {:>12}",
        "tokens", "teacher h", "student h", "days", "cache GB"
    );
    for run in &r.runs {
        println!(
            "  {:>14} {:>12.1} {:>12.1} {:>10.1} {:>12.1}",
            run.tokens,
            run.teacher_hours,
            run.student_hours,
            run.total_days,
            gb(run.cache_bytes)
        );
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    println!(
        "  {:.0} s in all, peak RSS {:.1} GB, {}",
        r.total_s,
        gb(r.peak_rss_bytes.unwrap_or(0)),
        r.cpu
    );
    Ok(0)
}

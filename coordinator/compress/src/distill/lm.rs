//! Distilling a generative model (a Llama imported by `coordinator llm import`) into a smaller
//! one on the SOTU corpus, with the teacher's top-k next-token distribution computed once with
//! tract and cached on disk.
//!
//! - **Data**: the State of the Union addresses of the training part, each tokenized by the
//!   teacher's tokenizer and followed by `<|endoftext|>`, concatenated and cut into sequences of
//!   `seq_len + 1` tokens (inputs, and the same shifted by one as targets). Held-out figures use
//!   the test part the same way.
//! - **Teacher cache** (`teacher-topk.bin` in the work folder): for every position of every
//!   training sequence, the teacher's `k` most likely next tokens and their log-probabilities
//!   (tract, the KV-cache graph run on the whole sequence). The rest of the distribution is one
//!   tail bucket ([`hone_learn::train::kd`]). An interrupted computation resumes where it stopped.
//! - **Student**: a fresh, narrower Llama with the teacher's tokenizer and vocabulary
//!   (`--student-hidden` and friends; seeded initialisation), or some of the teacher's layers.
//! - **Loss**: one of the four divergences at temperature 1 against the cached top-k, mixed with
//!   cross-entropy on the next token (`ce_weight`; 1 is cross-entropy alone, the baseline every
//!   divergence is compared with on the same tokens).
//! - **Figures**: held-out perplexity of student and teacher, top-1 agreement with the teacher's
//!   next token, samples of greedy text from both, decode tokens/s of both in tract.
//!
//! On-policy steps (sequences the student generates, which MiniLLM and DistiLLM use with the
//! reverse forms) are not implemented yet: every divergence here trains on the corpus.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use hone_learn::data::{Part, SplitMix64};
use hone_learn::llm::{
    CARD_FILE, GraphForm, KvCache, LlamaConfig, LlamaWeights, ModelCard, ModelDir, TOKENIZER_FILE,
    TRAIN_FILE, build_graph,
};
use hone_learn::train::exec::Executor;
use hone_learn::train::kd::{KdLoss, TopK, kd_loss};
use hone_learn::train::loss::{cross_entropy, log_softmax};
use hone_learn::train::optim::{AdamW, Optimizer};
use hone_learn::train::schedule::linear_warmup_decay;

/// The student of a language-model distillation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LmStudent {
    /// A fresh Llama with the teacher's vocabulary and these shapes.
    Fresh {
        /// Residual width.
        hidden: usize,
        /// Blocks.
        layers: usize,
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
        /// MLP width.
        ffn: usize,
    },
    /// The teacher's blocks `keep`, initialised from it.
    Layers(Vec<usize>),
}

/// Settings of a language-model distillation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmConfig {
    /// The teacher's model folder (`coordinator llm import`).
    pub teacher: PathBuf,
    /// The student.
    pub student: LmStudent,
    /// The divergence (at temperature 1).
    pub loss: KdLoss,
    /// Weight of next-token cross-entropy (1: cross-entropy alone, no teacher).
    pub ce_weight: f64,
    /// Training tokens.
    pub tokens: usize,
    /// Held-out tokens evaluated.
    pub eval_tokens: usize,
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Teacher tokens kept per position.
    pub top_k: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Peak learning rate (5 % warm-up, then linear decay).
    pub lr: f64,
    /// Seed (student initialisation, batch order).
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// The student's model folder.
    pub out: PathBuf,
    /// Caches and checkpoints.
    pub work_dir: PathBuf,
    /// Prompts of the text samples.
    pub prompts: Vec<String>,
    /// Tokens generated per sample.
    pub sample_tokens: usize,
}

/// One text sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// The prompt.
    pub prompt: String,
    /// The teacher's greedy continuation.
    pub teacher: String,
    /// The student's.
    pub student: String,
}

/// What a language-model distillation did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmReport {
    /// The student's folder.
    pub out: PathBuf,
    /// Teacher parameters (the tied embedding once).
    pub teacher_params: usize,
    /// Student parameters.
    pub student_params: usize,
    /// Teacher / student parameters.
    pub size_ratio: f64,
    /// The student's shape.
    pub student_config: LlamaConfig,
    /// Held-out perplexity of the teacher.
    pub teacher_perplexity: f64,
    /// Held-out perplexity of the student.
    pub student_perplexity: f64,
    /// Share of held-out positions where the student's top token is the teacher's.
    pub agreement: f64,
    /// Held-out positions evaluated.
    pub eval_positions: usize,
    /// Mean teacher mass outside its top k on the training positions.
    pub mean_tail_mass: f64,
    /// Seconds computing the teacher cache (this run; 0 when it was on disk).
    pub teacher_cache_s: f64,
    /// Teacher tokens per second while caching.
    pub teacher_tokens_per_s: Option<f64>,
    /// Steps run in all, and resumed from.
    pub steps: usize,
    /// See `steps`.
    pub resumed_from: usize,
    /// Mean loss of the first and last tenth of the steps.
    pub first_loss: f64,
    /// See `first_loss`.
    pub final_loss: f64,
    /// Training seconds (this run) and training tokens per second.
    pub train_s: f64,
    /// See `train_s`.
    pub train_tokens_per_s: f64,
    /// Greedy decode tokens/s of teacher and student in tract (this host, unthrottled).
    pub teacher_decode_tokens_per_s: f64,
    /// See `teacher_decode_tokens_per_s`.
    pub student_decode_tokens_per_s: f64,
    /// Text samples.
    pub samples: Vec<Sample>,
    /// Peak resident memory, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// The CPU.
    pub cpu: String,
    /// The settings.
    pub config: LmConfig,
}

/// The corpus of a part as one token stream (each address followed by the end-of-text id).
pub fn corpus_tokens(dir: &ModelDir, part: Part, limit: usize) -> anyhow::Result<Vec<u32>> {
    let sotu = hone_learn::data::sotu()?;
    let eot = dir.tokenizer.token_to_id("<|endoftext|>").unwrap_or(0);
    let mut out = Vec::new();
    for speech in sotu.part(part) {
        if out.len() >= limit {
            break;
        }
        out.extend(dir.encode(&speech.text)?);
        out.push(eot);
    }
    out.truncate(limit);
    Ok(out)
}

/// Non-overlapping sequences of `len + 1` tokens.
fn sequences(tokens: &[u32], len: usize) -> Vec<&[u32]> {
    tokens.chunks_exact(len + 1).collect()
}

const MAGIC: &[u8; 8] = b"HONEKD1\0";

/// The teacher's cached top-k, read back.
struct Cache {
    k: usize,
    rows: Vec<TopK>,
}

/// Computes (or resumes, or reads) the teacher's top-k over `seqs` into `path`.
fn teacher_cache(
    teacher: &ModelDir,
    seqs: &[&[u32]],
    k: usize,
    len: usize,
    path: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(Cache, f64, Option<f64>)> {
    let per_seq = (len * k * 8) as u64;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut size = file.metadata()?.len();
    let header = {
        let mut h = MAGIC.to_vec();
        h.extend((k as u32).to_le_bytes());
        h.extend((len as u32).to_le_bytes());
        h
    };
    let mut existing = vec![0u8; header.len()];
    let fits = size >= header.len() as u64 && {
        file.seek(SeekFrom::Start(0))?;
        file.read_exact(&mut existing)?;
        existing == header
    };
    if !fits {
        if size > 0 {
            progress("the teacher cache on disk was made with other settings: computing it again");
        }
        file.set_len(0)?;
        file.write_all(&header)?;
        size = header.len() as u64;
    }
    let done = ((size - header.len() as u64) / per_seq) as usize;
    file.set_len(header.len() as u64 + done as u64 * per_seq)?;
    let started = Instant::now();
    let mut rate = None;
    if done < seqs.len() {
        progress(&format!(
            "teacher top-{k}: {done}/{} sequences cached; computing the rest with tract",
            seqs.len()
        ));
        let tract = teacher.tract()?;
        let vocab = teacher.card.config.vocab;
        for (i, seq) in seqs.iter().enumerate().skip(done) {
            let (logits, _) = tract.forward(&seq[..len], KvCache::empty(&teacher.card.config))?;
            let t = Tensor::from_vec(logits, (len, vocab), &Device::Cpu)?;
            let top = TopK::of(&t, k)?;
            let mut bytes = Vec::with_capacity(per_seq as usize);
            for v in &top.indices {
                bytes.extend(v.to_le_bytes());
            }
            for v in &top.logprobs {
                bytes.extend(v.to_le_bytes());
            }
            file.write_all(&bytes)?;
            let n = i + 1 - done;
            if n.is_multiple_of(10) || i + 1 == seqs.len() {
                let r = (n * len) as f64 / started.elapsed().as_secs_f64().max(1e-9);
                rate = Some(r);
                progress(&format!(
                    "  teacher: {}/{} sequences ({r:.0} tokens/s)",
                    i + 1,
                    seqs.len()
                ));
            }
        }
        file.sync_all()?;
    }
    let seconds = if done < seqs.len() { started.elapsed().as_secs_f64() } else { 0.0 };
    // Read it back.
    let mut all = Vec::new();
    file.seek(SeekFrom::Start(header.len() as u64))?;
    file.read_to_end(&mut all)?;
    let mut rows = Vec::with_capacity(seqs.len());
    for chunk in all.chunks_exact(per_seq as usize).take(seqs.len()) {
        let (idx, val) = chunk.split_at(len * k * 4);
        rows.push(TopK {
            k,
            indices: idx
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
                .collect(),
            logprobs: val
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
                .collect(),
        });
    }
    if rows.len() != seqs.len() {
        bail!("the teacher cache holds {} of {} sequences", rows.len(), seqs.len());
    }
    Ok((Cache { k, rows }, seconds, rate))
}

/// The student's configuration and initial weights.
fn make_student(
    teacher: &ModelDir,
    spec: &LmStudent,
    seed: u64,
) -> anyhow::Result<(LlamaConfig, LlamaWeights)> {
    let tc = &teacher.card.config;
    match spec {
        LmStudent::Fresh { hidden, layers, heads, kv_heads, ffn } => {
            let c = LlamaConfig {
                hidden: *hidden,
                layers: *layers,
                heads: *heads,
                kv_heads: *kv_heads,
                ffn: *ffn,
                ..tc.clone()
            };
            c.validate()?;
            let w = LlamaWeights::fresh(&c, seed)?;
            Ok((c, w))
        }
        LmStudent::Layers(keep) => {
            let graph = hone_graph::Graph::load(teacher.dir.join(TRAIN_FILE))?;
            let w = LlamaWeights::from_graph(&graph, tc)?;
            Ok(w.select_layers(tc, keep)?)
        }
    }
}

/// Mean next-token negative log-likelihood and top-1 agreement with the teacher's top token.
fn evaluate(
    exec: &Executor,
    seqs: &[&[u32]],
    len: usize,
    teacher_top1: &[Vec<u32>],
) -> anyhow::Result<(f64, f64, usize)> {
    let (mut nll, mut agree, mut n) = (0f64, 0usize, 0usize);
    for (s, seq) in seqs.iter().enumerate() {
        let ids: Vec<i64> = seq[..len].iter().map(|&t| i64::from(t)).collect();
        let x = Tensor::from_vec(ids, (1, len), &Device::Cpu)?;
        let out = exec.run([("input_ids", x)], &["logits"])?;
        let rows = out["logits"].flatten_to(1)?.detach();
        let lp = log_softmax(&rows)?;
        let targets: Vec<u32> = seq[1..].to_vec();
        let t = Tensor::from_slice(&targets, (len,), &Device::Cpu)?.unsqueeze(1)?;
        let picked: Vec<f32> = lp.gather(&t, D::Minus1)?.flatten_all()?.to_vec1()?;
        nll -= picked.iter().map(|v| f64::from(*v)).sum::<f64>();
        let top: Vec<u32> = rows.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?;
        agree += top.iter().zip(&teacher_top1[s]).filter(|(a, b)| a == b).count();
        n += len;
    }
    Ok((nll / n.max(1) as f64, agree as f64 / n.max(1) as f64, n))
}

/// The teacher's held-out NLL and top-1 per position, by tract.
fn teacher_eval(
    teacher: &ModelDir,
    seqs: &[&[u32]],
    len: usize,
) -> anyhow::Result<(f64, Vec<Vec<u32>>)> {
    let tract = teacher.tract()?;
    let vocab = teacher.card.config.vocab;
    let (mut nll, mut n, mut tops) = (0f64, 0usize, Vec::new());
    for seq in seqs {
        let (logits, _) = tract.forward(&seq[..len], KvCache::empty(&teacher.card.config))?;
        let t = Tensor::from_vec(logits, (len, vocab), &Device::Cpu)?;
        let lp: Vec<Vec<f32>> = log_softmax(&t)?.to_vec2()?;
        let mut top = Vec::with_capacity(len);
        for (i, row) in lp.iter().enumerate() {
            nll -= f64::from(row[seq[i + 1] as usize]);
            top.push(hone_learn::llm::generate::argmax(row));
        }
        n += len;
        tops.push(top);
    }
    Ok((nll / n.max(1) as f64, tops))
}

/// Writes a student model folder: both graphs (gated), the teacher's tokenizer and a card.
fn write_student(
    teacher: &ModelDir,
    c: &LlamaConfig,
    w: &LlamaWeights,
    out: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    for (form, file) in
        [(GraphForm::KvCache, hone_learn::llm::MODEL_FILE), (GraphForm::Train, TRAIN_FILE)]
    {
        let g = build_graph(c, w, form)?;
        hone_learn::llm::save_model(&g, c, form, &out.join(file))?;
    }
    std::fs::copy(teacher.dir.join(TOKENIZER_FILE), out.join(TOKENIZER_FILE))?;
    let card =
        ModelCard { config: c.clone(), params: w.params(), source: None, ..teacher.card.clone() };
    std::fs::write(out.join(CARD_FILE), serde_json::to_string_pretty(&card)?)?;
    Ok(())
}

/// Where a run stands (`lm-state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LmState {
    step: usize,
    losses: Vec<f64>,
}

/// Runs a language-model distillation.
pub fn distill_lm(cfg: &LmConfig, progress: &dyn Fn(&str)) -> anyhow::Result<LmReport> {
    if cfg.steps == 0 || cfg.batch_size == 0 || cfg.seq_len == 0 {
        bail!("a distillation needs steps, sequences per step and a sequence length");
    }
    if cfg.ce_weight < 1.0 {
        cfg.loss.check()?;
        if cfg.loss.temperature != 1.0 {
            bail!(
                "a language-model distillation runs at temperature 1 (the cached top-k cannot be re-softened)"
            );
        }
    }
    let teacher = ModelDir::open(&cfg.teacher).with_context(|| {
        format!("the teacher model folder {} (coordinator llm import)", cfg.teacher.display())
    })?;
    std::fs::create_dir_all(&cfg.work_dir)?;
    let len = cfg.seq_len;
    progress("tokenizing the corpus");
    let train_tokens = corpus_tokens(&teacher, Part::Train, cfg.tokens)?;
    let eval_tokens = corpus_tokens(&teacher, Part::Test, cfg.eval_tokens)?;
    let train = sequences(&train_tokens, len);
    let eval = sequences(&eval_tokens, len);
    if train.is_empty() || eval.is_empty() {
        bail!("too few tokens for one sequence of {len}: raise --tokens / --eval-tokens");
    }
    let needs_teacher = cfg.ce_weight < 1.0;
    let (cache, cache_s, teacher_rate) = if needs_teacher {
        let (c, s, r) = teacher_cache(
            &teacher,
            &train,
            cfg.top_k,
            len,
            &cfg.work_dir.join("teacher-topk.bin"),
            progress,
        )?;
        (Some(c), s, r)
    } else {
        (None, 0.0, None)
    };
    let mean_tail_mass = cache.as_ref().map_or(0.0, |c| {
        let tails: Vec<f32> = c.rows.iter().flat_map(TopK::tail_mass).collect();
        tails.iter().map(|v| f64::from(*v)).sum::<f64>() / tails.len().max(1) as f64
    });

    let (sc, sw) = make_student(&teacher, &cfg.student, cfg.seed)?;
    let mut graph = build_graph(&sc, &sw, GraphForm::Train)?;
    let state_path = cfg.work_dir.join("lm-state.json");
    let mut state = LmState { step: 0, losses: Vec::new() };
    let mut saved = std::collections::HashMap::new();
    if state_path.exists() {
        state = serde_json::from_slice(&std::fs::read(&state_path)?)?;
        let ck = hone_graph::Graph::load(cfg.work_dir.join("student.onnx"))?;
        for name in graph.initializer_names().into_iter().map(String::from).collect::<Vec<_>>() {
            if let Ok(t) = ck.initializer(&name) {
                graph.replace_initializer(&name, &t)?;
            }
        }
        saved =
            candle_core::safetensors::load(cfg.work_dir.join("state.safetensors"), &Device::Cpu)?;
        progress(&format!("resuming at step {}/{}", state.step, cfg.steps));
    }
    let resumed_from = state.step;
    let exec = Executor::new(&graph)?;
    let params: Vec<(String, candle_core::Var)> =
        exec.parameters().map(|(n, v)| (n.to_owned(), v.clone())).collect();
    let mut opt = AdamW::new(params, 0.9, 0.95, 1e-8, 0.01);
    opt.load_state(&saved, resumed_from as u64);
    let mut order: Vec<usize> = (0..train.len()).collect();
    SplitMix64::new(cfg.seed).shuffle(&mut order);
    let warm = (cfg.steps / 20).max(1);
    let started = Instant::now();
    let mut tokens_seen = 0usize;
    while state.step < cfg.steps {
        let step = state.step;
        let picks: Vec<usize> =
            (0..cfg.batch_size).map(|i| order[(step * cfg.batch_size + i) % order.len()]).collect();
        let mut ids = Vec::with_capacity(picks.len() * len);
        let mut targets = Vec::with_capacity(picks.len() * len);
        for &p in &picks {
            ids.extend(train[p][..len].iter().map(|&t| i64::from(t)));
            targets.extend_from_slice(&train[p][1..]);
        }
        let x = Tensor::from_vec(ids, (picks.len(), len), &Device::Cpu)?;
        let out = exec.run([("input_ids", x)], &["logits"])?;
        let rows = out["logits"].flatten_to(1)?;
        let mut loss = None;
        if cfg.ce_weight > 0.0 {
            loss = Some(cross_entropy(&rows, &targets)?.affine(cfg.ce_weight, 0.0)?);
        }
        if let Some(c) = &cache {
            let top = TopK {
                k: c.k,
                indices: picks.iter().flat_map(|&p| c.rows[p].indices.iter().copied()).collect(),
                logprobs: picks.iter().flat_map(|&p| c.rows[p].logprobs.iter().copied()).collect(),
            };
            let kd = kd_loss(&rows, &top.teacher(&Device::Cpu)?, &cfg.loss, None)?
                .affine(1.0 - cfg.ce_weight, 0.0)?;
            loss = Some(match loss {
                Some(l) => (l + kd)?,
                None => kd,
            });
        }
        let loss = loss.context("no loss term")?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            bail!("the loss is {value} at step {step}: lower the learning rate");
        }
        let grads = exec.backward(&loss)?;
        let lr = linear_warmup_decay(cfg.lr, step, cfg.steps, warm);
        opt.step(&grads, lr)?;
        state.losses.push(value);
        state.step += 1;
        tokens_seen += picks.len() * len;
        if state.step.is_multiple_of((cfg.steps / 20).max(1)) || state.step == cfg.steps {
            let rate = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress(&format!(
                "step {}/{}: loss {value:.4} ({rate:.0} tokens/s)",
                state.step, cfg.steps
            ));
        }
        if cfg.checkpoint_every > 0
            && (state.step.is_multiple_of(cfg.checkpoint_every) || state.step == cfg.steps)
        {
            exec.write_back(&mut graph)?;
            let tmp = cfg.work_dir.join("student.onnx.tmp");
            graph.save(&tmp)?;
            std::fs::rename(&tmp, cfg.work_dir.join("student.onnx"))?;
            let tmp = cfg.work_dir.join("state.safetensors.tmp");
            candle_core::safetensors::save(&opt.state(), &tmp)?;
            std::fs::rename(&tmp, cfg.work_dir.join("state.safetensors"))?;
            let tmp = cfg.work_dir.join("lm-state.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(&state)?)?;
            std::fs::rename(&tmp, &state_path)?;
        }
    }
    exec.write_back(&mut graph)?;
    let train_s = started.elapsed().as_secs_f64();
    let trained = LlamaWeights::from_graph(&graph, &sc)?;
    progress("writing the student");
    write_student(&teacher, &sc, &trained, &cfg.out)?;

    progress("held-out perplexity and agreement");
    let (t_nll, t_top) = teacher_eval(&teacher, &eval, len)?;
    let (s_nll, agreement, positions) = evaluate(&exec, &eval, len, &t_top)?;

    progress("samples");
    let student_dir = ModelDir::open(&cfg.out)?;
    let (t_tract, s_tract) = (teacher.tract()?, student_dir.tract()?);
    let mut samples = Vec::new();
    let (mut t_rate, mut s_rate) = (Vec::new(), Vec::new());
    for p in &cfg.prompts {
        let ids = teacher.encode(p)?;
        let tg = t_tract.generate(&ids, cfg.sample_tokens, &[])?;
        let sg = s_tract.generate(&ids, cfg.sample_tokens, &[])?;
        t_rate.push(tg.decode_tokens_per_s());
        s_rate.push(sg.decode_tokens_per_s());
        samples.push(Sample {
            prompt: p.clone(),
            teacher: teacher.decode(&tg.tokens)?,
            student: teacher.decode(&sg.tokens)?,
        });
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let tenth = (state.losses.len() / 10).max(1);
    Ok(LmReport {
        out: cfg.out.clone(),
        teacher_params: teacher.card.params,
        student_params: trained.params(),
        size_ratio: teacher.card.params as f64 / trained.params().max(1) as f64,
        student_config: sc,
        teacher_perplexity: t_nll.exp(),
        student_perplexity: s_nll.exp(),
        agreement,
        eval_positions: positions,
        mean_tail_mass,
        teacher_cache_s: cache_s,
        teacher_tokens_per_s: teacher_rate,
        steps: state.step,
        resumed_from,
        first_loss: mean(&state.losses[..tenth.min(state.losses.len())]),
        final_loss: mean(&state.losses[state.losses.len().saturating_sub(tenth)..]),
        train_s,
        train_tokens_per_s: tokens_seen as f64 / train_s.max(1e-9),
        teacher_decode_tokens_per_s: mean(&t_rate),
        student_decode_tokens_per_s: mean(&s_rate),
        samples,
        peak_rss_bytes: hone_learn::train::fit::peak_rss_bytes(),
        cpu: crate::cpu_name(),
        config: cfg.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_learn::llm::{ChatFormat, Gguf, tokenizer};

    /// A tiny random Llama with SmolLM2's tokenizer and vocabulary, as a model folder.
    fn tiny_teacher(dir: &Path) -> ModelDir {
        let gguf = Gguf::open(
            &hone_assets::path(hone_learn::llm::SMOLLM2_ASSET).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap();
        let tok = tokenizer::tokenizer_from_gguf(&gguf).unwrap();
        let c = LlamaConfig {
            vocab: 49152,
            hidden: 32,
            layers: 2,
            heads: 2,
            kv_heads: 1,
            ffn: 64,
            rope_base: 1e5,
            rms_eps: 1e-5,
            context: 2048,
        };
        let w = LlamaWeights::fresh(&c, 3).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        for (form, file) in
            [(GraphForm::KvCache, hone_learn::llm::MODEL_FILE), (GraphForm::Train, TRAIN_FILE)]
        {
            hone_learn::llm::save_model(
                &build_graph(&c, &w, form).unwrap(),
                &c,
                form,
                &dir.join(file),
            )
            .unwrap();
        }
        std::fs::write(
            dir.join(TOKENIZER_FILE),
            serde_json::to_string(&tokenizer::tokenizer_json(&gguf).unwrap()).unwrap(),
        )
        .unwrap();
        let card = ModelCard {
            params: w.params(),
            config: c,
            chat: ChatFormat::from_gguf(&gguf).unwrap(),
            stop_ids: tokenizer::stop_ids(&gguf, &tok),
            source: None,
        };
        std::fs::write(dir.join(CARD_FILE), serde_json::to_string(&card).unwrap()).unwrap();
        ModelDir::open(dir).unwrap()
    }

    fn config(
        root: &Path,
        loss: hone_learn::train::kd::Divergence,
        ce: f64,
        steps: usize,
    ) -> LmConfig {
        LmConfig {
            teacher: root.join("teacher"),
            student: LmStudent::Fresh { hidden: 16, layers: 1, heads: 2, kv_heads: 1, ffn: 32 },
            loss: KdLoss::new(loss),
            ce_weight: ce,
            tokens: 1300,
            eval_tokens: 300,
            seq_len: 32,
            top_k: 8,
            steps,
            batch_size: 2,
            lr: 3e-3,
            seed: 1,
            checkpoint_every: 3,
            out: root.join(format!("student-{loss}-{ce}")),
            work_dir: root.join(format!("work-{loss}-{ce}")),
            prompts: vec!["The Union".into()],
            sample_tokens: 4,
        }
    }

    /// A teacher's top-k is cached once (a second run reads it), the student trains and is
    /// written as a model folder tract generates with, and a longer run resumes the shorter.
    #[test]
    fn a_tiny_generative_distillation_caches_the_teacher_learns_and_resumes() {
        let root = std::env::temp_dir().join(format!("hone-lm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        tiny_teacher(&root.join("teacher"));
        let first =
            distill_lm(&config(&root, hone_learn::train::kd::Divergence::Rkl, 0.0, 6), &|_| {})
                .unwrap();
        assert!(first.teacher_cache_s > 0.0);
        assert!(
            first.mean_tail_mass > 0.0 && first.mean_tail_mass < 1.0,
            "{}",
            first.mean_tail_mass
        );
        assert!(first.student_params < first.teacher_params);
        assert!(first.student_perplexity.is_finite() && first.teacher_perplexity.is_finite());
        assert!((0.0..=1.0).contains(&first.agreement));
        assert_eq!(first.eval_positions, (300 / 33) * 32);
        assert_eq!(first.samples.len(), 1);
        assert!(ModelDir::open(&first.out).is_ok());
        let again =
            distill_lm(&config(&root, hone_learn::train::kd::Divergence::Rkl, 0.0, 9), &|_| {})
                .unwrap();
        assert_eq!(again.resumed_from, 6);
        assert_eq!(again.steps, 9);
        assert_eq!(again.teacher_cache_s, 0.0, "the cache on disk is reused");
        // Cross-entropy alone needs no teacher cache, and its loss falls.
        let ce =
            distill_lm(&config(&root, hone_learn::train::kd::Divergence::Fkl, 1.0, 12), &|_| {})
                .unwrap();
        assert_eq!(ce.teacher_cache_s, 0.0);
        assert!(ce.final_loss < ce.first_loss, "{} → {}", ce.first_loss, ce.final_loss);
        let _ = std::fs::remove_dir_all(&root);
    }
}

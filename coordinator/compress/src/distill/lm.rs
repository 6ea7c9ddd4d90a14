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
//!   (`--student-hidden` and friends; seeded initialisation), some of the teacher's layers, or
//!   the teacher pruned Minitron-style ([`LmStudent::Pruned`]: blocks evenly spread, then the
//!   residual stream, heads and MLP narrowed together by activation importance).
//! - **Loss**: one of the four divergences at temperature 1 against the cached top-k, mixed with
//!   cross-entropy on the next token (`ce_weight`; 1 is cross-entropy alone, the baseline every
//!   divergence is compared with on the same tokens).
//! - **Figures**: held-out perplexity of student and teacher, top-1 agreement with the teacher's
//!   next token, samples of greedy text from both, decode tokens/s of both in tract.
//!
//! - **On-policy steps** (`on_policy`, at most [`MAX_ON_POLICY`] of the steps): the student
//!   continues the first half of a training sequence by sampling (temperature 1) from its
//!   current weights, planned in tract with its KV cache; the teacher scores the whole
//!   sequence with tract, and the step trains on the divergence alone (there is no true next
//!   token for generated text). MiniLLM (reverse KL) and DistiLLM (skew forms) train on such
//!   student-generated sequences; as in DistiLLM's adaptive schedule, which uses them more as
//!   the student improves, they all fall in the second half of training, evenly spaced.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use hone_learn::data::{Part, SplitMix64};
use hone_learn::llm::{
    CARD_FILE, GraphForm, KvCache, LlamaConfig, LlamaWeights, ModelCard, ModelDir, TOKENIZER_FILE,
    TRAIN_FILE, TractLlama, build_graph,
};
use hone_learn::train::exec::{Executor, Gradients};
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
    /// The teacher pruned Minitron-style: `layers` of its blocks, evenly spread, narrowed to
    /// `hidden` residual channels, `heads` query heads a block (every key/value head kept) and
    /// `ffn` MLP neurons, chosen by their activations on calibration sequences
    /// ([`width_importance`]).
    Pruned {
        /// Blocks kept.
        layers: usize,
        /// Residual channels kept (`heads ×` the teacher's head width).
        hidden: usize,
        /// Query heads kept per block (a multiple of the teacher's key/value heads).
        heads: usize,
        /// MLP neurons kept per block.
        ffn: usize,
    },
}

/// Calibration sequences for [`width_importance`].
const CALIBRATION_SEQS: usize = 8;

/// Activation importance of a Llama's widths ([`width_importance`]).
#[derive(Debug, Clone, PartialEq)]
pub struct WidthImportance {
    /// Per residual channel.
    pub hidden: Vec<f64>,
    /// Per block, per query head.
    pub heads: Vec<Vec<f64>>,
    /// Per block, per MLP neuron.
    pub ffn: Vec<Vec<f64>>,
}

/// Activation importance of a Llama's widths on `seqs` (Minitron's criteria): each residual
/// channel by the mean magnitude of both norms' outputs summed over the blocks, each query
/// head by the mean L2 norm of its attention output, each MLP neuron by the mean magnitude of
/// its gated activation.
pub fn width_importance(
    graph: &hone_graph::Graph,
    c: &LlamaConfig,
    seqs: &[&[u32]],
) -> anyhow::Result<WidthImportance> {
    let exec = Executor::with_trainable(graph, |_| false)?;
    let hd = c.head_dim();
    let mut hidden = vec![0f64; c.hidden];
    let mut heads = vec![vec![0f64; c.heads]; c.layers];
    let mut ffn = vec![vec![0f64; c.ffn]; c.layers];
    let mut names = Vec::new();
    for i in 0..c.layers {
        for v in ["attn_norm.scaled", "ffn_norm.scaled", "attend.merge", "gated"] {
            names.push(format!("layers.{i}.{v}"));
        }
    }
    let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut tokens = 0usize;
    for seq in seqs {
        let ids: Vec<i64> = seq.iter().map(|&t| i64::from(t)).collect();
        let x = Tensor::from_vec(ids, (1, seq.len()), &Device::Cpu)?;
        let out = exec.run([("input_ids", x)], &wanted)?;
        let rows = |name: &str| -> anyhow::Result<Vec<Vec<f32>>> {
            let t = out.get(name).with_context(|| format!("no value `{name}`"))?;
            Ok(t.flatten_to(1)?.to_dtype(DType::F32)?.to_vec2()?)
        };
        for i in 0..c.layers {
            for norm in ["attn_norm.scaled", "ffn_norm.scaled"] {
                for r in rows(&format!("layers.{i}.{norm}"))? {
                    for (acc, v) in hidden.iter_mut().zip(&r) {
                        *acc += f64::from(v.abs());
                    }
                }
            }
            for r in rows(&format!("layers.{i}.attend.merge"))? {
                for (h, acc) in heads[i].iter_mut().enumerate() {
                    *acc += r[h * hd..(h + 1) * hd]
                        .iter()
                        .map(|v| f64::from(v * v))
                        .sum::<f64>()
                        .sqrt();
                }
            }
            for r in rows(&format!("layers.{i}.gated"))? {
                for (acc, v) in ffn[i].iter_mut().zip(&r) {
                    *acc += f64::from(v.abs());
                }
            }
        }
        tokens += seq.len();
    }
    let n = tokens.max(1) as f64;
    let scale = |v: &mut Vec<f64>| v.iter_mut().for_each(|x| *x /= n);
    scale(&mut hidden);
    heads.iter_mut().for_each(scale);
    ffn.iter_mut().for_each(scale);
    Ok(WidthImportance { hidden, heads, ffn })
}

/// The indices of the `k` largest of `v`, ascending.
fn top(v: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = order.into_iter().take(k).collect();
    keep.sort_unstable();
    keep
}

/// The teacher pruned to a [`LmStudent::Pruned`] shape (see there), importance measured on
/// `calibration`.
fn pruned_student(
    graph: &hone_graph::Graph,
    tc: &LlamaConfig,
    (layers, hidden, heads, ffn): (usize, usize, usize, usize),
    calibration: &[&[u32]],
) -> anyhow::Result<(LlamaConfig, LlamaWeights)> {
    if layers == 0
        || layers > tc.layers
        || heads == 0
        || heads > tc.heads
        || ffn == 0
        || ffn > tc.ffn
    {
        bail!(
            "a pruned student keeps 1 to {} blocks, 1 to {} heads and 1 to {} MLP neurons",
            tc.layers,
            tc.heads,
            tc.ffn
        );
    }
    if !heads.is_multiple_of(tc.kv_heads) || hidden != heads * tc.head_dim() {
        bail!(
            "a pruned student keeps every one of the teacher's {} key/value heads, so its query \
             heads are a multiple of {} and its width is heads × {} (the teacher's head width): \
             --student-heads {} gives --student-hidden {}",
            tc.kv_heads,
            tc.kv_heads,
            tc.head_dim(),
            heads,
            heads * tc.head_dim()
        );
    }
    let imp = width_importance(graph, tc, calibration)?;
    let keep = super::blocks::spread(layers, tc.layers);
    let w = LlamaWeights::from_graph(graph, tc)?;
    let (dc, dw) = w.select_layers(tc, &keep)?;
    let group = tc.heads / tc.kv_heads;
    let per_group = heads / tc.kv_heads;
    let head_keep: Vec<Vec<usize>> = keep
        .iter()
        .map(|&l| {
            let mut v: Vec<usize> = (0..tc.kv_heads)
                .flat_map(|g| {
                    top(&imp.heads[l][g * group..(g + 1) * group], per_group)
                        .into_iter()
                        .map(move |q| g * group + q)
                })
                .collect();
            v.sort_unstable();
            v
        })
        .collect();
    let ffn_keep: Vec<Vec<usize>> = keep.iter().map(|&l| top(&imp.ffn[l], ffn)).collect();
    Ok(dw.narrow(&dc, &top(&imp.hidden, hidden), &head_keep, &ffn_keep)?)
}

/// Settings of a language-model distillation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmConfig {
    /// The teacher's model folder (`coordinator llm import`), or its `model.onnx` alone (card
    /// and tokenizer in its metadata; unpacked into `work_dir/teacher`).
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
    /// Share of the steps trained on student-generated sequences (0 to [`MAX_ON_POLICY`]).
    #[serde(default)]
    pub on_policy: f64,
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
    /// Steps (of this run) trained on student-generated sequences, and their seconds (sampling
    /// and the teacher's scoring included).
    pub on_policy_steps: usize,
    /// See `on_policy_steps`.
    pub on_policy_s: f64,
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

/// The largest share of on-policy steps: each costs several off-policy ones (the student
/// samples half a sequence token by token, the teacher scores it).
pub const MAX_ON_POLICY: f64 = 0.15;

/// Whether step `step` (0-based) of `steps` trains on student-generated sequences: about
/// `share · steps` of them, evenly spaced over the second half.
pub fn is_on_policy(step: usize, steps: usize, share: f64) -> bool {
    let half = steps / 2;
    if share <= 0.0 || step < half {
        return false;
    }
    let rate = share * steps as f64 / (steps - half).max(1) as f64;
    let i = (step - half) as f64;
    ((i + 1.0) * rate).floor() > (i * rate).floor()
}

/// Draws an index from the softmax of `logits` (temperature 1).
fn sample(logits: &[f32], rng: &mut SplitMix64) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = logits.iter().map(|&x| f64::from((x - max).exp())).sum();
    let mut u = f64::from(rng.next_f32()) * total;
    for (i, &x) in logits.iter().enumerate() {
        u -= f64::from((x - max).exp());
        if u <= 0.0 {
            return i as u32;
        }
    }
    (logits.len() - 1) as u32
}

/// The student's continuations of the first halves of `seqs` to `len` tokens each, sampled
/// from its current weights (`w`) planned in tract with the KV cache.
fn student_continuations(
    c: &LlamaConfig,
    w: &LlamaWeights,
    seqs: &[&[u32]],
    len: usize,
    rng: &mut SplitMix64,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let tract = TractLlama::new(build_graph(c, w, GraphForm::KvCache)?.proto(), c)?;
    let prefix = (len / 2).max(1);
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let mut ids = seq[..prefix].to_vec();
        let (mut logits, mut cache) = tract.forward(&ids, KvCache::empty(c))?;
        while ids.len() < len {
            let next = sample(&logits[logits.len() - c.vocab..], rng);
            ids.push(next);
            if ids.len() == len {
                break;
            }
            (logits, cache) = tract.forward(&[next], cache)?;
        }
        out.push(ids);
    }
    Ok(out)
}

/// Non-overlapping sequences of `len + 1` tokens.
fn sequences(tokens: &[u32], len: usize) -> Vec<&[u32]> {
    tokens.chunks_exact(len + 1).collect()
}

const MAGIC: &[u8; 8] = b"HONEKD1\0";

/// The header of a top-k cache file: magic, `k` and the sequence length.
pub(crate) fn cache_header(k: usize, len: usize) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend((k as u32).to_le_bytes());
    h.extend((len as u32).to_le_bytes());
    h
}

/// One sequence's record in a top-k cache file: its indices, then its log-probabilities.
pub(crate) fn cache_record(top: &TopK) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(top.indices.len() * 8);
    for v in &top.indices {
        bytes.extend(v.to_le_bytes());
    }
    for v in &top.logprobs {
        bytes.extend(v.to_le_bytes());
    }
    bytes
}

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
    let header = cache_header(k, len);
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
            file.write_all(&cache_record(&TopK::of(&t, k)?))?;
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
    calibration: &[&[u32]],
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
            let graph = teacher.train_graph()?;
            let w = LlamaWeights::from_graph(&graph, tc)?;
            Ok(w.select_layers(tc, keep)?)
        }
        LmStudent::Pruned { layers, hidden, heads, ffn } => {
            let graph = teacher.train_graph()?;
            pruned_student(&graph, tc, (*layers, *hidden, *heads, *ffn), calibration)
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

/// A language model against a reference on held-out text, both run in tract.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LmQuality {
    /// Perplexity of the model.
    pub perplexity: f64,
    /// Perplexity of the reference.
    pub reference_perplexity: f64,
    /// Share of positions where the model's top next token is the reference's.
    pub agreement: f64,
    /// Positions scored.
    pub positions: usize,
}

/// Perplexity and next-token agreement of `model` against `reference` on about `positions`
/// positions of SOTU's part `part`, in sequences of `len` tokens (the reference's tokenizer).
pub fn lm_quality(
    model: &ModelDir,
    reference: &ModelDir,
    part: Part,
    positions: usize,
    len: usize,
) -> anyhow::Result<LmQuality> {
    if model.card.config.vocab != reference.card.config.vocab {
        bail!(
            "the model's vocabulary ({}) is not the reference's ({})",
            model.card.config.vocab,
            reference.card.config.vocab
        );
    }
    let tokens = corpus_tokens(reference, part, positions.div_ceil(len) * (len + 1))?;
    let seqs = sequences(&tokens, len);
    if seqs.is_empty() {
        bail!("too few tokens for one sequence of {len}");
    }
    let (r_nll, r_top) = teacher_eval(reference, &seqs, len)?;
    let (m_nll, m_top) = if model.dir == reference.dir {
        (r_nll, r_top.clone())
    } else {
        teacher_eval(model, &seqs, len)?
    };
    let (same, n) = r_top.iter().zip(&m_top).fold((0, 0), |(s, n), (a, b)| {
        (s + a.iter().zip(b).filter(|(x, y)| x == y).count(), n + a.len())
    });
    Ok(LmQuality {
        perplexity: m_nll.exp(),
        reference_perplexity: r_nll.exp(),
        agreement: same as f64 / n.max(1) as f64,
        positions: n,
    })
}

/// Writes a student model folder: both graphs (gated), the teacher's tokenizer and a card.
fn write_student(
    teacher: &ModelDir,
    c: &LlamaConfig,
    w: &LlamaWeights,
    out: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let card =
        ModelCard { config: c.clone(), params: w.params(), source: None, ..teacher.card.clone() };
    let tokenizer = std::fs::read_to_string(teacher.dir.join(TOKENIZER_FILE))?;
    for (form, file) in
        [(GraphForm::KvCache, hone_learn::llm::MODEL_FILE), (GraphForm::Train, TRAIN_FILE)]
    {
        let mut g = build_graph(c, w, form)?;
        if form == GraphForm::KvCache {
            hone_learn::llm::embed(&mut g, &card, &tokenizer)?;
        }
        hone_learn::llm::save_model(&g, c, form, &out.join(file))?;
    }
    std::fs::write(out.join(TOKENIZER_FILE), tokenizer)?;
    std::fs::write(out.join(CARD_FILE), serde_json::to_string_pretty(&card)?)?;
    Ok(())
}

/// What an on-policy step works with.
struct OnPolicyStep<'a> {
    exec: &'a Executor,
    graph: &'a mut hone_graph::Graph,
    student: &'a LlamaConfig,
    /// The teacher planned in tract, on the first on-policy step.
    teacher: &'a mut Option<TractLlama>,
    teacher_dir: &'a ModelDir,
    k: usize,
    loss: &'a KdLoss,
    len: usize,
}

/// One on-policy step's loss and gradients: the student continues the first halves of
/// `seqs`, the teacher's top-k is computed on the results, and the divergence is taken over
/// every position.
fn on_policy_step(
    s: OnPolicyStep<'_>,
    seqs: &[&[u32]],
    rng: &mut SplitMix64,
) -> anyhow::Result<(f64, Gradients)> {
    s.exec.write_back(s.graph)?;
    let w = LlamaWeights::from_graph(s.graph, s.student)?;
    let generated = student_continuations(s.student, &w, seqs, s.len, rng)?;
    if s.teacher.is_none() {
        *s.teacher = Some(s.teacher_dir.tract()?);
    }
    let teacher = s.teacher.as_ref().expect("planned above");
    let vocab = s.teacher_dir.card.config.vocab;
    let (mut indices, mut logprobs) = (Vec::new(), Vec::new());
    for g in &generated {
        let (logits, _) = teacher.forward(g, KvCache::empty(&s.teacher_dir.card.config))?;
        let top = TopK::of(&Tensor::from_vec(logits, (s.len, vocab), &Device::Cpu)?, s.k)?;
        indices.extend(top.indices);
        logprobs.extend(top.logprobs);
    }
    let ids: Vec<i64> = generated.iter().flatten().map(|&t| i64::from(t)).collect();
    let x = Tensor::from_vec(ids, (generated.len(), s.len), &Device::Cpu)?;
    let out = s.exec.run([("input_ids", x)], &["logits"])?;
    let rows = out["logits"].flatten_to(1)?;
    let top = TopK { k: s.k, indices, logprobs };
    let loss = kd_loss(&rows, &top.teacher(&Device::Cpu)?, s.loss, None)?;
    let value = f64::from(loss.to_scalar::<f32>()?);
    if !value.is_finite() {
        bail!("the on-policy loss is {value}: lower the learning rate");
    }
    Ok((value, s.exec.backward(&loss)?))
}

/// Writes a checkpoint when one is due (every `checkpoint_every` steps and at the end).
fn checkpoint(
    cfg: &LmConfig,
    exec: &Executor,
    graph: &mut hone_graph::Graph,
    opt: &AdamW,
    state: &LmState,
    state_path: &Path,
) -> anyhow::Result<()> {
    if cfg.checkpoint_every == 0
        || !(state.step.is_multiple_of(cfg.checkpoint_every) || state.step == cfg.steps)
    {
        return Ok(());
    }
    exec.write_back(graph)?;
    let tmp = cfg.work_dir.join("student.onnx.tmp");
    graph.save(&tmp)?;
    std::fs::rename(&tmp, cfg.work_dir.join("student.onnx"))?;
    let tmp = cfg.work_dir.join("state.safetensors.tmp");
    candle_core::safetensors::save(&opt.state(), &tmp)?;
    std::fs::rename(&tmp, cfg.work_dir.join("state.safetensors"))?;
    let tmp = cfg.work_dir.join("lm-state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(state)?)?;
    std::fs::rename(&tmp, state_path)?;
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
    if !(0.0..=MAX_ON_POLICY).contains(&cfg.on_policy) {
        bail!(
            "the share of on-policy steps must be in [0, {MAX_ON_POLICY}], got {}",
            cfg.on_policy
        );
    }
    if cfg.on_policy > 0.0 && cfg.ce_weight >= 1.0 {
        bail!(
            "on-policy steps need a teacher: cross-entropy alone has no target for generated text"
        );
    }
    let teacher = if cfg.teacher.is_file() {
        ModelDir::unpack(&cfg.teacher, &cfg.work_dir.join("teacher")).with_context(|| {
            format!(
                "the teacher {} (a model.onnx of `coordinator llm import`)",
                cfg.teacher.display()
            )
        })?
    } else {
        ModelDir::open(&cfg.teacher).with_context(|| {
            format!("the teacher model folder {} (coordinator llm import)", cfg.teacher.display())
        })?
    };
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

    if matches!(cfg.student, LmStudent::Pruned { .. }) {
        progress("pruning the teacher to the student's shape (activation importance)");
    }
    let calibration: Vec<&[u32]> = train.iter().take(CALIBRATION_SEQS).map(|s| &s[..len]).collect();
    let (sc, sw) = make_student(&teacher, &cfg.student, cfg.seed, &calibration)?;
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
    let (mut on_policy_steps, mut on_policy_s, mut teacher_tract) = (0usize, 0f64, None);
    while state.step < cfg.steps {
        let step = state.step;
        let picks: Vec<usize> =
            (0..cfg.batch_size).map(|i| order[(step * cfg.batch_size + i) % order.len()]).collect();
        if let Some(c) = cache.as_ref().filter(|_| is_on_policy(step, cfg.steps, cfg.on_policy)) {
            let t0 = Instant::now();
            let value = on_policy_step(
                OnPolicyStep {
                    exec: &exec,
                    graph: &mut graph,
                    student: &sc,
                    teacher: &mut teacher_tract,
                    teacher_dir: &teacher,
                    k: c.k,
                    loss: &cfg.loss,
                    len,
                },
                &picks.iter().map(|&p| train[p]).collect::<Vec<_>>(),
                &mut SplitMix64::new(cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            )?;
            let lr = linear_warmup_decay(cfg.lr, step, cfg.steps, warm);
            opt.step(&value.1, lr)?;
            on_policy_steps += 1;
            on_policy_s += t0.elapsed().as_secs_f64();
            state.losses.push(value.0);
            state.step += 1;
            tokens_seen += picks.len() * len;
            progress(&format!(
                "step {}/{}: on-policy, loss {:.4} ({:.1} s)",
                state.step,
                cfg.steps,
                value.0,
                t0.elapsed().as_secs_f64()
            ));
            checkpoint(cfg, &exec, &mut graph, &opt, &state, &state_path)?;
            continue;
        }
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
        checkpoint(cfg, &exec, &mut graph, &opt, &state, &state_path)?;
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
        on_policy_steps,
        on_policy_s,
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
        let card = ModelCard {
            params: w.params(),
            config: c.clone(),
            chat: ChatFormat::from_gguf(&gguf).unwrap(),
            stop_ids: tokenizer::stop_ids(&gguf, &tok),
            source: None,
        };
        let tokenizer = serde_json::to_string(&tokenizer::tokenizer_json(&gguf).unwrap()).unwrap();
        for (form, file) in
            [(GraphForm::KvCache, hone_learn::llm::MODEL_FILE), (GraphForm::Train, TRAIN_FILE)]
        {
            let mut g = build_graph(&c, &w, form).unwrap();
            if form == GraphForm::KvCache {
                hone_learn::llm::embed(&mut g, &card, &tokenizer).unwrap();
            }
            hone_learn::llm::save_model(&g, &c, form, &dir.join(file)).unwrap();
        }
        std::fs::write(dir.join(TOKENIZER_FILE), tokenizer).unwrap();
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
            on_policy: 0.0,
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
        // On-policy steps: the student samples, the teacher scores, the step trains.
        let mut on = config(&root, hone_learn::train::kd::Divergence::Srkl, 0.0, 8);
        on.on_policy = 0.15;
        on.work_dir = root.join("work-on-policy");
        let on = distill_lm(&on, &|_| {}).unwrap();
        assert_eq!(on.on_policy_steps, (0..8).filter(|&s| is_on_policy(s, 8, 0.15)).count());
        assert!(on.on_policy_steps >= 1 && on.on_policy_s > 0.0);
        assert!(on.student_perplexity.is_finite());
        // Cross-entropy alone cannot train on generated text; more than the bound is refused.
        let mut bad = config(&root, hone_learn::train::kd::Divergence::Fkl, 1.0, 4);
        bad.on_policy = 0.1;
        assert!(distill_lm(&bad, &|_| {}).unwrap_err().to_string().contains("need a teacher"));
        bad.ce_weight = 0.0;
        bad.on_policy = 0.5;
        assert!(distill_lm(&bad, &|_| {}).unwrap_err().to_string().contains("on-policy"));
        // The teacher's model.onnx alone is a teacher too: unpacked into the work folder.
        let mut lone = config(&root, hone_learn::train::kd::Divergence::Fkl, 1.0, 2);
        lone.teacher = root.join("teacher").join(hone_learn::llm::MODEL_FILE);
        lone.work_dir = root.join("work-lone");
        let r = distill_lm(&lone, &|_| {}).unwrap();
        assert_eq!(r.teacher_params, first.teacher_params);
        assert_eq!(r.teacher_perplexity, first.teacher_perplexity);
        let unpacked = ModelDir::open(&root.join("work-lone").join("teacher")).unwrap();
        assert_eq!(unpacked.card, ModelDir::open(&root.join("teacher")).unwrap().card);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A Minitron-style student: neurons that never fire are never kept, the student has the
    /// asked shape, and it trains and is written like any other.
    #[test]
    fn a_pruned_student_keeps_what_fires_and_trains() {
        let root = std::env::temp_dir().join(format!("hone-lm-pruned-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let teacher = tiny_teacher(&root.join("teacher"));
        let c = teacher.card.config.clone();
        let mut graph = hone_graph::Graph::load(teacher.dir.join(TRAIN_FILE)).unwrap();
        // Silence half of block 0's MLP neurons: a zero gate column gives silu(0) = 0.
        let mut w = LlamaWeights::from_graph(&graph, &c).unwrap();
        for n in (0..c.ffn).filter(|n| n % 2 == 1) {
            for j in 0..c.hidden {
                w.layers[0].gate[j * c.ffn + n] = 0.0;
            }
        }
        graph = build_graph(&c, &w, GraphForm::Train).unwrap();
        let tokens = corpus_tokens(&teacher, Part::Train, 400).unwrap();
        let seqs = sequences(&tokens, 32);
        let ffn = width_importance(&graph, &c, &seqs[..3]).unwrap().ffn;
        assert!(ffn[0].iter().enumerate().all(|(n, v)| (n % 2 == 1) == (*v == 0.0)));
        let (sc, sw) = pruned_student(&graph, &c, (1, 16, 1, 20), &seqs[..3]).unwrap();
        assert_eq!((sc.layers, sc.hidden, sc.heads, sc.kv_heads, sc.ffn), (1, 16, 1, 1, 20));
        assert!(sw.params() < w.params());
        let e = pruned_student(&graph, &c, (1, 20, 1, 20), &seqs[..3]).unwrap_err().to_string();
        assert!(e.contains("head width"), "{e}");
        let mut cfg = config(&root, hone_learn::train::kd::Divergence::Fkl, 0.5, 4);
        cfg.student = LmStudent::Pruned { layers: 1, hidden: 16, heads: 1, ffn: 20 };
        let r = distill_lm(&cfg, &|_| {}).unwrap();
        assert_eq!(r.student_config.hidden, 16);
        assert!(r.student_perplexity.is_finite());
        assert!(ModelDir::open(&r.out).is_ok());
        let _ = std::fs::remove_dir_all(&root);
    }

    /// On-policy steps are the asked share of the steps, all in the second half.
    #[test]
    fn on_policy_steps_are_the_share_asked_in_the_second_half() {
        for (steps, share) in [(1000, 0.1), (125, 0.1), (60, 0.15), (8, 0.15)] {
            let picked: Vec<usize> =
                (0..steps).filter(|&s| is_on_policy(s, steps, share)).collect();
            let want = (share * steps as f64).floor() as usize;
            assert!(picked.len().abs_diff(want) <= 1, "{steps} {share}: {}", picked.len());
            assert!(picked.iter().all(|&s| s >= steps / 2));
        }
        assert!((0..100).all(|s| !is_on_policy(s, 100, 0.0)));
    }

    /// Sampling follows the softmax: logits (0, ln 3) give the second index three times in four.
    #[test]
    fn sampling_follows_the_softmax() {
        let mut rng = SplitMix64::new(7);
        let n = 20_000;
        let ones = (0..n).filter(|_| sample(&[0.0, 3f32.ln()], &mut rng) == 1).count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "{share}");
    }

    /// Distillation of a language model behind the pipeline's one trait: the parent is one
    /// ONNX file (as the registry holds it), each student is pruned from it to the settings'
    /// shares, and the teacher's top-k is computed once for all of them.
    #[test]
    fn the_pipeline_method_distils_a_language_model_from_its_onnx_file() {
        use crate::method::{CompressionMethod, DistillMethod, MethodContext, Target};
        let dir = tempfile::tempdir().unwrap();
        let teacher = tiny_teacher(&dir.path().join("teacher"));
        let parent = dir.path().join("registry-copy.onnx");
        std::fs::copy(teacher.dir.join(hone_learn::llm::MODEL_FILE), &parent).unwrap();
        let method = DistillMethod {
            students: vec![(0.5, 0.5), (1.0, 0.5)],
            steps: 3,
            batch_size: Some(2),
            seq_len: 16,
            top_k: 8,
            ..DistillMethod::default()
        };
        let target = Target { class: "rpi4".into(), simd_width: 4 };
        let grid = method.grid(&target);
        let sotu = hone_learn::eval::EvalData::load("sotu").unwrap();
        let inputs = Default::default();
        let pipe = dir.path().join("pipeline");
        std::fs::create_dir_all(&pipe).unwrap();
        let mut made = Vec::new();
        for (i, settings) in grid.iter().enumerate() {
            let out = pipe.join(format!("c{i}.onnx"));
            let ctx = MethodContext {
                parent: &parent,
                data: &sotu,
                inputs: &inputs,
                target: &target,
                out: &out,
            };
            let c = method.compress(&ctx, settings).unwrap();
            let g = hone_graph::Graph::load(&c.model).unwrap();
            let card = hone_learn::llm::card_of(&g).unwrap();
            made.push((c, card));
        }
        // (0.5, 0.5): 1 of 2 blocks, 1 query head of 2 (the one KV head kept), FFN 64 -> 32.
        let (first, card) = &made[0];
        assert_eq!(
            (card.config.layers, card.config.heads, card.config.hidden, card.config.ffn),
            (1, 1, 16, 32)
        );
        assert!(first.report["params_after"].as_u64() < first.report["params_before"].as_u64());
        assert!(first.report["teacher_cache_s"].as_f64().unwrap() > 0.0);
        assert_eq!(made[1].1.config.layers, 2);
        // The second student read the cache the first one computed.
        assert_eq!(made[1].0.report["teacher_cache_s"].as_f64(), Some(0.0), "{}", made[1].0.report);
        assert!(pipe.join("llm-parent").join("teacher-topk.bin").exists());
        // Judged against the parent in tract: agreement is a share, the same either way round.
        let child = ModelDir::open(&pipe.join("c0.llm")).unwrap();
        let q = lm_quality(&child, &teacher, Part::Validation, 48, 16).unwrap();
        assert!((0.0..1.0).contains(&q.agreement) && q.perplexity > 1.0, "{q:?}");
        assert_eq!(q.positions, 48);
        let swapped = lm_quality(&teacher, &child, Part::Validation, 48, 16).unwrap();
        assert_eq!(swapped.agreement, q.agreement, "agreement is symmetric");
        assert_eq!(
            (swapped.perplexity, swapped.reference_perplexity),
            (q.reference_perplexity, q.perplexity)
        );
        assert!(q.perplexity != q.reference_perplexity, "{q:?}");
        // A language model distils on a corpus: other data is refused with the reason.
        let vader = hone_learn::eval::EvalData::load("vader").unwrap();
        let out = pipe.join("bad.onnx");
        let ctx = MethodContext {
            parent: &parent,
            data: &vader,
            inputs: &inputs,
            target: &target,
            out: &out,
        };
        let err = method.compress(&ctx, &grid[0]).unwrap_err();
        assert!(format!("{err:#}").contains("`sotu`"), "{err:#}");
    }
}

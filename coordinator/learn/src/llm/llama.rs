//! Llama-architecture decoders as ONNX graphs: the configuration, the weights (from a GGUF
//! file, freshly initialised, or a subset of another model's layers) and the graph builder.
//!
//! # The graph
//! Built from ops the differentiable executor implements (`Gather`, `MatMul`, `Mul`, `Add`,
//! `Sub`, `Div`, `Sqrt`, `ReduceMean`, `Sigmoid`, `Neg`, `Sin`, `Cos`, `Relu`, `Slice`,
//! `Concat`, `Reshape`, `Transpose`, `Expand`, `Unsqueeze`, `Range`, `Shape`, `Softmax`, `Cast`),
//! opset 17, so tract runs it and candle trains it:
//! - the token embedding is a `Gather` on `model.embed_tokens.weight` `[vocab, hidden]`;
//! - RMSNorm is `x / √(mean(x²) + ε) · w`;
//! - rotary embeddings rotate halves (`x·cos + rotate_half(x)·sin`, `rotate_half(x) =
//!   [−x₂, x₁]`), as Hugging Face's Llama does. GGUF files store Q and K rows permuted for
//!   llama.cpp's interleaved rotation; [`LlamaWeights::from_gguf`] undoes the permutation;
//! - grouped-query attention repeats each KV head for the query heads sharing it
//!   (`Unsqueeze → Expand → Reshape`, the pattern Hone's pruner follows);
//! - the causal mask is added to the scores: `−10⁹ · relu(key position − query position)`;
//! - the MLP is `down(silu(gate(x)) · up(x))`;
//! - the LM head reuses the embedding (tied): `MatMul(x, Transpose(embed))`.
//!
//! Linear weights are stored `[in, out]` (the `MatMul` layout), named as in Hugging Face's
//! checkpoints (`model.layers.{i}.self_attn.q_proj.weight`, ...; see [`LlamaWeights`]).
//!
//! # Forms ([`GraphForm`])
//! - [`GraphForm::KvCache`], for generation: inputs `input_ids` `[batch, seq]` i64,
//!   `attention_mask` `[batch, total]` i64 (accepted for compatibility with Hugging Face
//!   exports; padding is not masked, so rows must not be padded), `position_ids` `[batch, seq]`
//!   i64 (the absolute positions, `past..past + seq`), and `past_key_values.{i}.key` /
//!   `.value` `[batch, kv_heads, past, head_dim]` f32 per layer; outputs `logits`
//!   `[batch, seq, vocab]` and `present.{i}.key` / `.value` `[batch, kv_heads, past + seq,
//!   head_dim]`. Query `j` sees keys `0..=position_ids[j]`.
//! - [`GraphForm::Train`], for training in the executor: input `input_ids` `[batch, seq]`,
//!   positions `0..seq`, output `logits`.

use tract_onnx::pb;

use super::LlmError;
use super::gguf::Gguf;
use crate::data::SplitMix64;
use hone_graph::{Attribute, DataType, Dim, Graph, Node, Tensor, TensorData, ValueInfo};

/// The shape of a Llama model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Number of decoder blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple of it).
    pub kv_heads: usize,
    /// Width of the gated MLP.
    pub ffn: usize,
    /// Rotary embedding base (θ).
    pub rope_base: f64,
    /// RMSNorm ε.
    pub rms_eps: f64,
    /// Context length the model was trained for.
    pub context: usize,
}

impl LlamaConfig {
    /// Reads `llama.*` metadata (`block_count`, `embedding_length`, `attention.head_count`,
    /// `attention.head_count_kv`, `feed_forward_length`, `rope.freq_base`,
    /// `attention.layer_norm_rms_epsilon`, `context_length`) and the vocabulary size (from
    /// `llama.vocab_size`, else the token list).
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig, LlmError> {
        let arch = g.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(LlmError::Config(format!(
                "the model's architecture is `{arch}`; only `llama` is imported"
            )));
        }
        let n = |k: &str| -> Result<usize, LlmError> {
            let v = g.get_u64(&format!("llama.{k}"))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v <= 1 << 24)
                .ok_or_else(|| LlmError::Config(format!("llama.{k} = {v} is out of range")))
        };
        let vocab = match g.get("llama.vocab_size") {
            Some(_) => n("vocab_size")?,
            None => g.get_strings("tokenizer.ggml.tokens")?.len(),
        };
        let heads = n("attention.head_count")?;
        let config = LlamaConfig {
            vocab,
            hidden: n("embedding_length")?,
            layers: n("block_count")?,
            heads,
            kv_heads: match g.get("llama.attention.head_count_kv") {
                Some(_) => n("attention.head_count_kv")?,
                None => heads,
            },
            ffn: n("feed_forward_length")?,
            rope_base: match g.get("llama.rope.freq_base") {
                Some(_) => g.get_f64("llama.rope.freq_base")?,
                None => 10_000.0,
            },
            rms_eps: g.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            context: n("context_length")?,
        };
        config.validate()?;
        if let Some(v) = g.get("llama.rope.dimension_count").and_then(|v| v.as_u64())
            && v as usize != config.head_dim()
        {
            return Err(LlmError::Config(format!(
                "rotary dimension {v} differs from the head width {}; partial rotary embeddings \
                 are not supported",
                config.head_dim()
            )));
        }
        Ok(config)
    }

    /// Checks that the shape is consistent: every size non-zero, `hidden` a multiple of
    /// `heads` with an even head width, `heads` a multiple of `kv_heads`.
    pub fn validate(&self) -> Result<(), LlmError> {
        let bad = |why: String| Err(LlmError::Config(format!("{why} ({self:?})")));
        if [self.vocab, self.hidden, self.layers, self.heads, self.kv_heads, self.ffn].contains(&0)
        {
            return bad("every size must be at least 1".into());
        }
        if !self.hidden.is_multiple_of(self.heads) || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "hidden {} must split into {} heads of even width",
                self.hidden, self.heads
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "{} query heads do not share {} KV heads evenly",
                self.heads, self.kv_heads
            ));
        }
        // Written so that NaN fails.
        let in_range = self.rope_base > 1.0
            && self.rope_base.is_finite()
            && self.rms_eps > 0.0
            && self.rms_eps < 1.0;
        if !in_range {
            return bad("rope_base must exceed 1 and rms_eps lie in (0, 1)".into());
        }
        Ok(())
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Number of parameters, the tied embedding counted once.
    pub fn params(&self) -> usize {
        let (h, hd) = (self.hidden, self.head_dim());
        let attn = h * self.heads * hd * 2 + h * self.kv_heads * hd * 2;
        let mlp = 3 * h * self.ffn;
        self.vocab * h + self.layers * (attn + mlp + 2 * h) + h
    }
}

/// One decoder block's weights, row-major, linear weights `[in, out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// `input_layernorm.weight` `[hidden]`.
    pub attn_norm: Vec<f32>,
    /// `self_attn.q_proj.weight` `[hidden, heads·head_dim]`.
    pub q: Vec<f32>,
    /// `self_attn.k_proj.weight` `[hidden, kv_heads·head_dim]`.
    pub k: Vec<f32>,
    /// `self_attn.v_proj.weight` `[hidden, kv_heads·head_dim]`.
    pub v: Vec<f32>,
    /// `self_attn.o_proj.weight` `[heads·head_dim, hidden]`.
    pub o: Vec<f32>,
    /// `post_attention_layernorm.weight` `[hidden]`.
    pub ffn_norm: Vec<f32>,
    /// `mlp.gate_proj.weight` `[hidden, ffn]`.
    pub gate: Vec<f32>,
    /// `mlp.up_proj.weight` `[hidden, ffn]`.
    pub up: Vec<f32>,
    /// `mlp.down_proj.weight` `[ffn, hidden]`.
    pub down: Vec<f32>,
}

/// A Llama model's weights (see [`LayerWeights`] for the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaWeights {
    /// `model.embed_tokens.weight` `[vocab, hidden]`, also the LM head (tied).
    pub embed: Vec<f32>,
    /// The decoder blocks.
    pub layers: Vec<LayerWeights>,
    /// `model.norm.weight` `[hidden]`.
    pub norm: Vec<f32>,
}

/// Which graph [`build_graph`] writes (see the [module](self) documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphForm {
    /// Past keys and values in, present ones out: for generation with tract.
    KvCache,
    /// Token ids in, logits out: for training in the executor.
    Train,
}

/// The names of a layer's initializers, in [`LayerWeights`] field order.
pub(crate) fn layer_names(i: usize) -> [String; 9] {
    let p = format!("model.layers.{i}");
    [
        format!("{p}.input_layernorm.weight"),
        format!("{p}.self_attn.q_proj.weight"),
        format!("{p}.self_attn.k_proj.weight"),
        format!("{p}.self_attn.v_proj.weight"),
        format!("{p}.self_attn.o_proj.weight"),
        format!("{p}.post_attention_layernorm.weight"),
        format!("{p}.mlp.gate_proj.weight"),
        format!("{p}.mlp.up_proj.weight"),
        format!("{p}.mlp.down_proj.weight"),
    ]
}

/// The embedding's initializer name.
pub const EMBED: &str = "model.embed_tokens.weight";
/// The LM head: in the KV-cache form an initializer `[hidden, vocab]` holding the embedding
/// transposed, in the training form a `Transpose` of the embedding (tied).
pub const LM_HEAD: &str = "lm_head.weight";
/// The final norm's initializer name.
pub const NORM: &str = "model.norm.weight";

impl LayerWeights {
    fn fields(&self) -> [&Vec<f32>; 9] {
        [
            &self.attn_norm,
            &self.q,
            &self.k,
            &self.v,
            &self.o,
            &self.ffn_norm,
            &self.gate,
            &self.up,
            &self.down,
        ]
    }

    pub(crate) fn from_fields(f: [Vec<f32>; 9]) -> LayerWeights {
        let [attn_norm, q, k, v, o, ffn_norm, gate, up, down] = f;
        LayerWeights { attn_norm, q, k, v, o, ffn_norm, gate, up, down }
    }
}

/// The `[rows, cols]` shapes of a layer's tensors, in [`LayerWeights`] field order (norms as
/// `[hidden]`, `cols` 0).
pub(crate) fn layer_shapes(c: &LlamaConfig) -> [(usize, usize); 9] {
    let (h, hd) = (c.hidden, c.head_dim());
    let (q, kv) = (c.heads * hd, c.kv_heads * hd);
    [(h, 0), (h, q), (h, kv), (h, kv), (q, h), (h, 0), (h, c.ffn), (h, c.ffn), (c.ffn, h)]
}

fn dims_of((r, c): (usize, usize)) -> Vec<usize> {
    if c == 0 { vec![r] } else { vec![r, c] }
}

impl LlamaWeights {
    /// Reads and dequantises the weights of a GGUF Llama (`token_embd`, `blk.{i}.attn_norm`,
    /// `attn_q`, `attn_k`, `attn_v`, `attn_output`, `ffn_norm`, `ffn_gate`, `ffn_up`,
    /// `ffn_down`, `output_norm`). Linear weights are transposed to `[in, out]`, and the
    /// rows of Q and K un-permuted from llama.cpp's interleaved rotary layout to the
    /// half-rotation one. A separate `output.weight` (untied head) is refused.
    pub fn from_gguf(g: &Gguf, c: &LlamaConfig) -> Result<LlamaWeights, LlmError> {
        c.validate()?;
        if g.tensor("output.weight").is_ok() {
            return Err(LlmError::Config(
                "the model has an untied output.weight; only tied embeddings are imported".into(),
            ));
        }
        let read = |name: &str, want: Vec<usize>| -> Result<Vec<f32>, LlmError> {
            let (shape, v) = g.tensor_f32(name)?;
            if shape != want {
                return Err(LlmError::Config(format!(
                    "tensor `{name}` has shape {shape:?}, the configuration needs {want:?}"
                )));
            }
            Ok(v)
        };
        let embed = read("token_embd.weight", vec![c.vocab, c.hidden])?;
        let hd = c.head_dim();
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let t = |n: &str| format!("blk.{i}.{n}.weight");
            let shapes = layer_shapes(c);
            // GGUF stores linear weights `[out, in]` row-major (ne = [in, out]).
            let linear = |n: &str, (inp, out): (usize, usize)| -> Result<Vec<f32>, LlmError> {
                Ok(transpose(&read(&t(n), vec![out, inp])?, out, inp))
            };
            let q = unpermute_rows(&read(&t("attn_q"), vec![shapes[1].1, c.hidden])?, c.heads, hd);
            let k =
                unpermute_rows(&read(&t("attn_k"), vec![shapes[2].1, c.hidden])?, c.kv_heads, hd);
            layers.push(LayerWeights {
                attn_norm: read(&t("attn_norm"), vec![c.hidden])?,
                q: transpose(&q, shapes[1].1, c.hidden),
                k: transpose(&k, shapes[2].1, c.hidden),
                v: linear("attn_v", shapes[3])?,
                o: linear("attn_output", shapes[4])?,
                ffn_norm: read(&t("ffn_norm"), vec![c.hidden])?,
                gate: linear("ffn_gate", shapes[6])?,
                up: linear("ffn_up", shapes[7])?,
                down: linear("ffn_down", shapes[8])?,
            });
        }
        let norm = read("output_norm.weight", vec![c.hidden])?;
        Ok(LlamaWeights { embed, layers, norm })
    }

    /// Fresh weights for `c`, drawn from a seeded [`SplitMix64`]: linear weights and the
    /// embedding uniform in `±0.02·√3` (standard deviation 0.02, Llama's initializer range),
    /// norms 1.
    pub fn fresh(c: &LlamaConfig, seed: u64) -> Result<LlamaWeights, LlmError> {
        c.validate()?;
        let mut rng = SplitMix64::new(seed);
        let bound = 0.02 * 3f32.sqrt();
        let mut draw = |n: usize| -> Vec<f32> {
            (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * bound).collect()
        };
        let embed = draw(c.vocab * c.hidden);
        let layers = (0..c.layers)
            .map(|_| {
                let f = layer_shapes(c)
                    .map(|(r, cols)| if cols == 0 { vec![1.0; r] } else { draw(r * cols) });
                LayerWeights::from_fields(f)
            })
            .collect();
        Ok(LlamaWeights { embed, layers, norm: vec![1.0; c.hidden] })
    }

    /// Reads the weights back from a graph [`build_graph`] wrote (either form, trained or
    /// not), checking every shape against `c`.
    pub fn from_graph(graph: &Graph, c: &LlamaConfig) -> Result<LlamaWeights, LlmError> {
        c.validate()?;
        let read = |name: &str, want: Vec<usize>| -> Result<Vec<f32>, LlmError> {
            let t = graph.initializer(name)?;
            match t.data {
                TensorData::F32(v) if t.dims == want => Ok(v),
                _ => Err(LlmError::Config(format!(
                    "initializer `{name}` is {} {:?}, the configuration needs f32 {want:?}",
                    t.data.data_type(),
                    t.dims
                ))),
            }
        };
        let embed = read(EMBED, vec![c.vocab, c.hidden])?;
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let names = layer_names(i);
            let shapes = layer_shapes(c);
            let mut f: [Vec<f32>; 9] = Default::default();
            for ((slot, name), s) in f.iter_mut().zip(&names).zip(shapes) {
                *slot = read(name, dims_of(s))?;
            }
            layers.push(LayerWeights::from_fields(f));
        }
        Ok(LlamaWeights { embed, layers, norm: read(NORM, vec![c.hidden])? })
    }

    /// A model keeping the layers `keep` (in that order, each at most once) of this one, with
    /// its embedding and final norm: a student initialised from a teacher's layers. Returns
    /// the student's configuration with it.
    pub fn select_layers(
        &self,
        c: &LlamaConfig,
        keep: &[usize],
    ) -> Result<(LlamaConfig, LlamaWeights), LlmError> {
        if keep.is_empty() {
            return Err(LlmError::Config("keep at least one layer".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for &k in keep {
            if k >= self.layers.len() || !seen.insert(k) {
                return Err(LlmError::Config(format!(
                    "layers {keep:?}: each must be below {} and appear once",
                    self.layers.len()
                )));
            }
        }
        let weights = LlamaWeights {
            embed: self.embed.clone(),
            layers: keep.iter().map(|&k| self.layers[k].clone()).collect(),
            norm: self.norm.clone(),
        };
        Ok((LlamaConfig { layers: keep.len(), ..c.clone() }, weights))
    }

    /// A narrower model (Minitron-style width pruning): the residual channels `hidden` (the
    /// embedding's columns, every norm's entries, every projection's matching rows or columns,
    /// so the tied head narrows with the embedding), the query heads `heads[i]` of block `i`
    /// (every key/value head kept, the same number of query heads from each group), and the
    /// MLP neurons `ffn[i]` of block `i`. Indices ascend; every block keeps as many heads and
    /// neurons as the others, and `hidden` keeps `heads × head_dim` channels, so the head width
    /// (and the rotary layout) is the teacher's.
    pub fn narrow(
        &self,
        c: &LlamaConfig,
        hidden: &[usize],
        heads: &[Vec<usize>],
        ffn: &[Vec<usize>],
    ) -> Result<(LlamaConfig, LlamaWeights), LlmError> {
        self.check(c)?;
        let bad = |why: String| Err(LlmError::Config(format!("narrowing: {why}")));
        let ascending = |v: &[usize], below: usize| {
            !v.is_empty() && v.windows(2).all(|w| w[0] < w[1]) && v.iter().all(|&i| i < below)
        };
        if heads.len() != c.layers || ffn.len() != c.layers {
            return bad(format!(
                "{} head and {} MLP lists for {} blocks",
                heads.len(),
                ffn.len(),
                c.layers
            ));
        }
        let (hd, group) = (c.head_dim(), c.heads / c.kv_heads);
        let nh = heads[0].len();
        if !ascending(hidden, c.hidden) || hidden.len() != nh * hd {
            return bad(format!(
                "{} residual channels for {nh} heads of width {hd} (ascending, below {})",
                hidden.len(),
                c.hidden
            ));
        }
        for (i, (h, f)) in heads.iter().zip(ffn).enumerate() {
            if h.len() != nh
                || !ascending(h, c.heads)
                || f.len() != ffn[0].len()
                || !ascending(f, c.ffn)
            {
                return bad(format!("block {i} keeps {h:?} heads and {} neurons", f.len()));
            }
            if !nh.is_multiple_of(c.kv_heads)
                || (0..c.kv_heads)
                    .any(|g| h.iter().filter(|&&q| q / group == g).count() != nh / c.kv_heads)
            {
                return bad(format!(
                    "block {i}: the heads {h:?} must take {} from each of the {} key/value groups",
                    nh / c.kv_heads.max(1),
                    c.kv_heads
                ));
            }
        }
        let nc = LlamaConfig { hidden: hidden.len(), heads: nh, ffn: ffn[0].len(), ..c.clone() };
        nc.validate()?;
        // Rows `rows` and columns `cols` of a row-major `[_, width]` matrix.
        let pick = |m: &[f32], width: usize, rows: &[usize], cols: &[usize]| -> Vec<f32> {
            let mut out = Vec::with_capacity(rows.len() * cols.len());
            for &r in rows {
                out.extend(cols.iter().map(|&k| m[r * width + k]));
            }
            out
        };
        let all = |n: usize| (0..n).collect::<Vec<_>>();
        let entries = |v: &[f32]| hidden.iter().map(|&j| v[j]).collect::<Vec<f32>>();
        let embed = pick(&self.embed, c.hidden, &all(c.vocab), hidden);
        let layers = self
            .layers
            .iter()
            .zip(heads.iter().zip(ffn))
            .map(|(l, (h, f))| {
                let q_cols: Vec<usize> = h.iter().flat_map(|&q| q * hd..(q + 1) * hd).collect();
                let kv = all(c.kv_heads * hd);
                LayerWeights {
                    attn_norm: entries(&l.attn_norm),
                    q: pick(&l.q, c.heads * hd, hidden, &q_cols),
                    k: pick(&l.k, c.kv_heads * hd, hidden, &kv),
                    v: pick(&l.v, c.kv_heads * hd, hidden, &kv),
                    o: pick(&l.o, c.hidden, &q_cols, hidden),
                    ffn_norm: entries(&l.ffn_norm),
                    gate: pick(&l.gate, c.ffn, hidden, f),
                    up: pick(&l.up, c.ffn, hidden, f),
                    down: pick(&l.down, c.hidden, f, hidden),
                }
            })
            .collect();
        let w = LlamaWeights { embed, layers, norm: entries(&self.norm) };
        w.check(&nc)?;
        Ok((nc, w))
    }

    /// Number of parameters held.
    pub fn params(&self) -> usize {
        self.embed.len()
            + self.norm.len()
            + self
                .layers
                .iter()
                .map(|l| l.fields().iter().map(|f| f.len()).sum::<usize>())
                .sum::<usize>()
    }

    fn check(&self, c: &LlamaConfig) -> Result<(), LlmError> {
        let bad = |what: String| Err(LlmError::Config(format!("weights do not fit {c:?}: {what}")));
        if self.embed.len() != c.vocab * c.hidden || self.norm.len() != c.hidden {
            return bad("embedding or final norm".into());
        }
        if self.layers.len() != c.layers {
            return bad(format!("{} layers", self.layers.len()));
        }
        for (i, l) in self.layers.iter().enumerate() {
            for (k, (f, s)) in l.fields().iter().zip(layer_shapes(c)).enumerate() {
                if f.len() != dims_of(s).iter().product::<usize>() {
                    return bad(format!("layer {i}, tensor {}", layer_names(i)[k]));
                }
            }
        }
        Ok(())
    }
}

/// `[rows, cols]` → `[cols, rows]`.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

/// Undoes llama.cpp's permutation of Q/K rows (`[out, in]`): within each head, GGUF row
/// `2i + j` is Hugging Face row `j·head_dim/2 + i`.
fn unpermute_rows(m: &[f32], heads: usize, hd: usize) -> Vec<f32> {
    let cols = m.len() / (heads * hd);
    let mut out = vec![0f32; m.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let src = (h * hd + 2 * i + j) * cols;
                let dst = (h * hd + j * hd / 2 + i) * cols;
                out[dst..dst + cols].copy_from_slice(&m[src..src + cols]);
            }
        }
    }
    out
}

/// llama.cpp's permutation (the inverse of [`unpermute_rows`]), for tests that write GGUF
/// files.
#[cfg(test)]
pub(crate) fn permute_rows(m: &[f32], heads: usize, hd: usize) -> Vec<f32> {
    let cols = m.len() / (heads * hd);
    let mut out = vec![0f32; m.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let gguf = (h * hd + 2 * i + j) * cols;
                let hf = (h * hd + j * hd / 2 + i) * cols;
                out[gguf..gguf + cols].copy_from_slice(&m[hf..hf + cols]);
            }
        }
    }
    out
}

/// Names of the cache inputs and outputs of layer `i`.
pub fn past_key(i: usize) -> String {
    format!("past_key_values.{i}.key")
}
/// See [`past_key`].
pub fn past_value(i: usize) -> String {
    format!("past_key_values.{i}.value")
}
/// See [`past_key`].
pub fn present_key(i: usize) -> String {
    format!("present.{i}.key")
}
/// See [`past_key`].
pub fn present_value(i: usize) -> String {
    format!("present.{i}.value")
}

/// Masked scores get this added per position of distance (far below any real score).
const MASK: f32 = -1e9;

/// Builds the ONNX graph of a Llama model (see the [module](self) documentation).
pub fn build_graph(c: &LlamaConfig, w: &LlamaWeights, form: GraphForm) -> Result<Graph, LlmError> {
    c.validate()?;
    w.check(c)?;
    let mut b = Builder::default();
    let (hd, nh, kvh) = (c.head_dim() as i64, c.heads as i64, c.kv_heads as i64);
    let cache = form == GraphForm::KvCache;

    b.weight(EMBED, &[c.vocab, c.hidden], &w.embed);
    for (i, l) in w.layers.iter().enumerate() {
        for ((name, s), f) in layer_names(i).iter().zip(layer_shapes(c)).zip(l.fields()) {
            b.weight(name, &dims_of(s), f);
        }
    }
    b.weight(NORM, &[c.hidden], &w.norm);
    let inv_freq: Vec<f32> = (0..c.head_dim() / 2)
        .map(|i| (1.0 / c.rope_base.powf(2.0 * i as f64 / c.head_dim() as f64)) as f32)
        .collect();
    // Float settings are `Constant` nodes, not initializers, so that the executor does not
    // count them among the trainable weights.
    b.constant(
        "rope.inv_freq",
        Tensor { dims: vec![inv_freq.len()], data: TensorData::F32(inv_freq) },
    );
    b.constant("const.eps", Tensor::scalar_f32(c.rms_eps as f32));
    b.constant("const.scale", Tensor::scalar_f32(1.0 / (hd as f32).sqrt()));
    b.constant("const.mask", Tensor::scalar_f32(MASK));
    b.init("const.0", Tensor::scalar_i64(0));
    b.init("const.1", Tensor::scalar_i64(1));
    b.init("const.2", Tensor::scalar_i64(2));
    for (name, v) in [
        ("const.axes0", vec![0]),
        ("const.axes1", vec![1]),
        ("const.axes2", vec![2]),
        ("const.axes13", vec![1, 3]),
        ("const.axes_last", vec![-1]),
        ("const.axes3", vec![3]),
        ("const.half0", vec![0]),
        ("const.half1", vec![hd / 2]),
        ("const.half2", vec![hd]),
        ("const.q_shape", vec![0, 0, nh, hd]),
        ("const.kv_shape", vec![0, 0, kvh, hd]),
        ("const.rep", vec![1, 1, nh / kvh, 1, 1]),
        ("const.rep_shape", vec![0, nh, -1, hd]),
        ("const.o_shape", vec![0, 0, nh * hd]),
    ] {
        b.init(name, Tensor::vec_i64(&v));
    }

    let float = Attribute::Int(DataType::F32.onnx_code().into());
    // Positions, as f32: [batch | 1, seq].
    let pos = if cache {
        b.op("positions", "Cast", &["position_ids"], &[("to", float.clone())])
    } else {
        let shape = b.op("ids_shape", "Shape", &["input_ids"], &[]);
        let seq = b.op("seq_len", "Gather", &[&shape, "const.1"], &[("axis", Attribute::Int(0))]);
        let r = b.op("positions_i", "Range", &["const.0", &seq, "const.1"], &[]);
        let f = b.op("positions_f", "Cast", &[&r], &[("to", float.clone())]);
        b.op("positions", "Unsqueeze", &[&f, "const.axes0"], &[])
    };
    // Rotary tables [batch | 1, 1, seq, head_dim].
    let p3 = b.op("rope.pos", "Unsqueeze", &[&pos, "const.axes_last"], &[]);
    let ang = b.op("rope.angles", "Mul", &[&p3, "rope.inv_freq"], &[]);
    let emb = b.op("rope.emb", "Concat", &[&ang, &ang], &[("axis", Attribute::Int(-1))]);
    let cos = b.op("rope.cos0", "Cos", &[&emb], &[]);
    let sin = b.op("rope.sin0", "Sin", &[&emb], &[]);
    let cos = b.op("rope.cos", "Unsqueeze", &[&cos, "const.axes1"], &[]);
    let sin = b.op("rope.sin", "Unsqueeze", &[&sin, "const.axes1"], &[]);
    // Query positions [batch | 1, 1, seq, 1]; key positions follow once the keys' length is
    // known (after layer 0's concatenation with the cache).
    let q_pos = b.op("mask.q_pos", "Unsqueeze", &[&pos, "const.axes13"], &[]);

    let mut x = b.op("embed", "Gather", &[EMBED, "input_ids"], &[("axis", Attribute::Int(0))]);
    let mut bias = String::new();
    for i in 0..c.layers {
        let p = format!("layers.{i}");
        let names = layer_names(i);
        let n1 = b.rms_norm(&format!("{p}.attn_norm"), &x, &names[0]);
        let heads = |b: &mut Builder, tag: &str, w: &str, shape: &str| {
            let y = b.op(&format!("{p}.{tag}"), "MatMul", &[&n1, w], &[]);
            let y = b.op(&format!("{p}.{tag}.split"), "Reshape", &[&y, shape], &[]);
            b.op(&format!("{p}.{tag}.heads"), "Transpose", &[&y], &[("perm", perm(&[0, 2, 1, 3]))])
        };
        let q = heads(&mut b, "q", &names[1], "const.q_shape");
        let k = heads(&mut b, "k", &names[2], "const.kv_shape");
        let v = heads(&mut b, "v", &names[3], "const.kv_shape");
        let q = b.rope(&format!("{p}.q"), &q, &cos, &sin);
        let mut k = b.rope(&format!("{p}.k"), &k, &cos, &sin);
        let mut v = v;
        if cache {
            k = b.op_named(
                &present_key(i),
                "Concat",
                &[&past_key(i), &k],
                &[("axis", Attribute::Int(2))],
            );
            v = b.op_named(
                &present_value(i),
                "Concat",
                &[&past_value(i), &v],
                &[("axis", Attribute::Int(2))],
            );
        }
        if i == 0 {
            let ks = b.op("mask.k_shape", "Shape", &[&k], &[]);
            let total =
                b.op("mask.total", "Gather", &[&ks, "const.2"], &[("axis", Attribute::Int(0))]);
            let r = b.op("mask.k_pos_i", "Range", &["const.0", &total, "const.1"], &[]);
            let k_pos = b.op("mask.k_pos", "Cast", &[&r], &[("to", float.clone())]);
            let d = b.op("mask.distance", "Sub", &[&k_pos, &q_pos], &[]);
            let d = b.op("mask.future", "Relu", &[&d], &[]);
            bias = b.op("mask.bias", "Mul", &[&d, "const.mask"], &[]);
        }
        let repeat = |b: &mut Builder, tag: &str, t: &str| {
            let u = b.op(&format!("{p}.{tag}.unsq"), "Unsqueeze", &[t, "const.axes2"], &[]);
            let e = b.op(&format!("{p}.{tag}.rep"), "Expand", &[&u, "const.rep"], &[]);
            b.op(&format!("{p}.{tag}.merge"), "Reshape", &[&e, "const.rep_shape"], &[])
        };
        let k = repeat(&mut b, "k", &k);
        let v = repeat(&mut b, "v", &v);
        let kt = b.op(&format!("{p}.kt"), "Transpose", &[&k], &[("perm", perm(&[0, 1, 3, 2]))]);
        let s = b.op(&format!("{p}.scores"), "MatMul", &[&q, &kt], &[]);
        let s = b.op(&format!("{p}.scaled"), "Mul", &[&s, "const.scale"], &[]);
        let s = b.op(&format!("{p}.masked"), "Add", &[&s, &bias], &[]);
        let pr = b.op(&format!("{p}.probs"), "Softmax", &[&s], &[("axis", Attribute::Int(-1))]);
        let a = b.op(&format!("{p}.attend"), "MatMul", &[&pr, &v], &[]);
        let a =
            b.op(&format!("{p}.attend.t"), "Transpose", &[&a], &[("perm", perm(&[0, 2, 1, 3]))]);
        let a = b.op(&format!("{p}.attend.merge"), "Reshape", &[&a, "const.o_shape"], &[]);
        let o = b.op(&format!("{p}.o"), "MatMul", &[&a, &names[4]], &[]);
        x = b.op(&format!("{p}.attn_residual"), "Add", &[&x, &o], &[]);
        let n2 = b.rms_norm(&format!("{p}.ffn_norm"), &x, &names[5]);
        let g = b.op(&format!("{p}.gate"), "MatMul", &[&n2, &names[6]], &[]);
        let u = b.op(&format!("{p}.up"), "MatMul", &[&n2, &names[7]], &[]);
        let sg = b.op(&format!("{p}.gate.sigmoid"), "Sigmoid", &[&g], &[]);
        let silu = b.op(&format!("{p}.gate.silu"), "Mul", &[&g, &sg], &[]);
        let m = b.op(&format!("{p}.gated"), "Mul", &[&silu, &u], &[]);
        let d = b.op(&format!("{p}.down"), "MatMul", &[&m, &names[8]], &[]);
        x = b.op(&format!("{p}.mlp_residual"), "Add", &[&x, &d], &[]);
    }
    let xn = b.rms_norm("final_norm", &x, NORM);
    let head = if cache {
        // tract packs a matrix for its kernels once, when planning, only if the constant has
        // no other reader; the embedding also feeds the `Gather`, so a shared head would be
        // repacked (113 MB) at every token. The inference form therefore holds the head as its
        // own copy (same values); training keeps one tied tensor.
        b.weight(LM_HEAD, &[c.hidden, c.vocab], &transpose(&w.embed, c.vocab, c.hidden));
        LM_HEAD.to_owned()
    } else {
        b.op(LM_HEAD, "Transpose", &[EMBED], &[("perm", perm(&[1, 0]))])
    };
    b.op_named("logits", "MatMul", &[&xn, &head], &[]);

    let sym = |s: &str| Dim::Symbol(s.into());
    let (batch, seq) = (sym("batch"), sym("seq"));
    let ids = |n: &str, dims: Vec<Dim>| ValueInfo::tensor(n, DataType::I64, dims).to_proto();
    let floats = |n: &str, dims: Vec<Dim>| ValueInfo::tensor(n, DataType::F32, dims).to_proto();
    let kv =
        |len: &str| vec![batch.clone(), Dim::Value(kvh), Dim::Symbol(len.into()), Dim::Value(hd)];
    let mut inputs = vec![ids("input_ids", vec![batch.clone(), seq.clone()])];
    let mut outputs =
        vec![floats("logits", vec![batch.clone(), seq.clone(), Dim::Value(c.vocab as i64)])];
    if cache {
        inputs.push(ids("attention_mask", vec![batch.clone(), sym("total")]));
        inputs.push(ids("position_ids", vec![batch.clone(), seq.clone()]));
        for i in 0..c.layers {
            inputs.push(floats(&past_key(i), kv("past")));
            inputs.push(floats(&past_value(i), kv("past")));
            outputs.push(floats(&present_key(i), kv("past + seq")));
            outputs.push(floats(&present_value(i), kv("past + seq")));
        }
    }
    let proto = pb::ModelProto {
        ir_version: 8,
        producer_name: "hone".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: match form {
                GraphForm::KvCache => "llama-kv-cache".into(),
                GraphForm::Train => "llama".into(),
            },
            node: b.nodes,
            initializer: b.inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    };
    let graph = Graph::from_proto(proto)?;
    graph.validate()?;
    Ok(graph)
}

fn perm(p: &[i64]) -> Attribute {
    Attribute::Ints(p.to_vec())
}

/// Accumulates nodes and initializers; every node's name is its (single) output's name.
#[derive(Default)]
struct Builder {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
}

impl Builder {
    /// An f32 initializer, written straight to raw bytes (one copy of the weights).
    fn weight(&mut self, name: &str, dims: &[usize], values: &[f32]) {
        let mut raw = Vec::with_capacity(values.len() * 4);
        for v in values {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::F32.onnx_code(),
            raw_data: raw,
            ..Default::default()
        });
    }

    fn constant(&mut self, name: &str, t: Tensor) {
        self.op_named(name, "Constant", &[], &[("value", Attribute::Tensor(t))]);
    }

    fn init(&mut self, name: &str, t: Tensor) {
        self.inits.push(t.to_proto(name));
    }

    /// A node whose output is `name`.
    fn op_named(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: &[(&str, Attribute)],
    ) -> String {
        let mut n = Node::new(name, op, inputs, &[name]);
        for (k, v) in attrs {
            n = n.with_attribute(k, v.clone());
        }
        self.nodes.push(n.to_proto());
        name.to_owned()
    }

    fn op(&mut self, name: &str, op: &str, inputs: &[&str], attrs: &[(&str, Attribute)]) -> String {
        self.op_named(name, op, inputs, attrs)
    }

    /// `x / √(mean(x²) + ε) · w` over the last axis.
    fn rms_norm(&mut self, p: &str, x: &str, w: &str) -> String {
        let sq = self.op(&format!("{p}.square"), "Mul", &[x, x], &[]);
        let ms = self.op(
            &format!("{p}.mean"),
            "ReduceMean",
            &[&sq],
            &[("axes", Attribute::Ints(vec![-1])), ("keepdims", Attribute::Int(1))],
        );
        let ms = self.op(&format!("{p}.eps"), "Add", &[&ms, "const.eps"], &[]);
        let r = self.op(&format!("{p}.rms"), "Sqrt", &[&ms], &[]);
        let y = self.op(&format!("{p}.normed"), "Div", &[x, &r], &[]);
        self.op(&format!("{p}.scaled"), "Mul", &[&y, w], &[])
    }

    /// `x·cos + rotate_half(x)·sin` on `[batch, heads, seq, head_dim]`.
    fn rope(&mut self, p: &str, x: &str, cos: &str, sin: &str) -> String {
        let x1 = self.op(
            &format!("{p}.rope.x1"),
            "Slice",
            &[x, "const.half0", "const.half1", "const.axes3"],
            &[],
        );
        let x2 = self.op(
            &format!("{p}.rope.x2"),
            "Slice",
            &[x, "const.half1", "const.half2", "const.axes3"],
            &[],
        );
        let n2 = self.op(&format!("{p}.rope.neg"), "Neg", &[&x2], &[]);
        let rot = self.op(
            &format!("{p}.rope.rot"),
            "Concat",
            &[&n2, &x1],
            &[("axis", Attribute::Int(-1))],
        );
        let a = self.op(&format!("{p}.rope.cos"), "Mul", &[x, cos], &[]);
        let b = self.op(&format!("{p}.rope.sin"), "Mul", &[&rot, sin], &[]);
        self.op(&format!("{p}.rope"), "Add", &[&a, &b], &[])
    }
}

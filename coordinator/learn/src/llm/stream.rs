//! A Llama held in bf16 in a safetensors file and run layer by layer: a teacher too large to
//! hold in f32 (Llama-3.2-3B is 12.9 GB in f32, 6.4 GB in bf16) streams its weights from the
//! page cache, one block at a time, converted to f32 just before use.
//!
//! The file is read with positioned reads (`pread`), not mapped: Hone forbids `unsafe` code,
//! and mapping a file is unsafe in Rust (another process may change it under the map). The
//! effect is the same as a map read in order: the kernel keeps the bf16 file in its page cache
//! (and gives it back under memory pressure), while the process holds one block at a time.
//!
//! - [`write_random_bf16`] writes such a file with seeded random weights (the scale study has
//!   the shapes of a real model, not its weights) in [`LlamaWeights`]' layout and names, one
//!   tensor at a time, so writing it needs no more memory than one tensor.
//! - [`Bf16Llama::open`] reads the file's header and checks every tensor's dtype, shape and
//!   bounds.
//! - [`Bf16Llama::top_k`] runs sequences through it with candle, block by block (each block's
//!   weights widened to f32 on entry and dropped on exit), and returns the next-token top-k
//!   and log-probabilities ([`TopK`]); the LM head is taken in slices of the vocabulary with a
//!   running log-sum-exp, so the `[tokens, vocab]` logits never exist at once.
//!
//! Resident memory is one block in bf16 and f32 and the activations, whatever the depth.
//!
//! [`LlamaWeights`]: super::LlamaWeights

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use candle_core::{D, Device, Tensor};

use super::LlmError;
use super::llama::{EMBED, LlamaConfig, LlamaWeights, NORM, layer_names, layer_shapes};
use crate::data::SplitMix64;
use crate::train::kd::TopK;

/// Vocabulary rows of the LM head widened at once.
const HEAD_SLICE: usize = 8192;

/// Every tensor of a Llama in [`LlamaWeights`]' layout: name and shape, in file order.
fn tensor_list(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![(EMBED.to_owned(), vec![c.vocab, c.hidden])];
    for i in 0..c.layers {
        for (name, (r, cols)) in layer_names(i).into_iter().zip(layer_shapes(c)) {
            out.push((name, if cols == 0 { vec![r] } else { vec![r, cols] }));
        }
    }
    out.push((NORM.to_owned(), vec![c.hidden]));
    out
}

/// f32 to bf16, rounding to nearest even.
fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let round = ((bits >> 16) & 1) + 0x7FFF;
    (bits.wrapping_add(round) >> 16) as u16
}

/// bf16 bytes (little-endian) widened to f32 (by candle's conversion: this runs over billions
/// of values, and candle is built optimised in every profile).
fn widen(bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / 2;
    Tensor::from_raw_buffer(&bytes[..n * 2], candle_core::DType::BF16, &[n], &Device::Cpu)
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1())
        .expect("a flat bf16 buffer converts")
}

/// Values of the random block [`write_random_bf16`] tiles.
const RANDOM_BLOCK: usize = 1 << 22;

/// Writes a safetensors file of `c`'s shapes with seeded random bf16 weights (norms 1; every
/// other tensor uniform with standard deviation 0.02, tiled from one seeded block of
/// [`RANDOM_BLOCK`] values, starting at a seeded offset per tensor, so that writing 3 B values
/// costs little more than the disk), one tensor at a time. Returns the file's size in bytes.
pub fn write_random_bf16(path: &Path, c: &LlamaConfig, seed: u64) -> Result<u64, LlmError> {
    c.validate()?;
    let io = |e: std::io::Error| LlmError::Io { path: path.display().to_string(), source: e };
    let list = tensor_list(c);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &list {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_vec(&header).map_err(|e| LlmError::Config(e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let tmp = path.with_extension("tmp");
    let mut file =
        std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(&tmp).map_err(io)?);
    file.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
    file.write_all(&text).map_err(io)?;
    let mut rng = SplitMix64::new(seed);
    let bound = 0.02 * 3f32.sqrt();
    // The block, twice over, so that any window of RANDOM_BLOCK values is one slice.
    let mut block = Vec::with_capacity(RANDOM_BLOCK * 4);
    for _ in 0..RANDOM_BLOCK {
        block.extend(to_bf16((rng.next_f32() * 2.0 - 1.0) * bound).to_le_bytes());
    }
    block.extend_from_within(..);
    let one = to_bf16(1.0).to_le_bytes().repeat(RANDOM_BLOCK);
    for (name, shape) in &list {
        let norm = shape.len() == 1 && name.contains("norm");
        let mut left = shape.iter().product::<usize>();
        let mut at = rng.below(RANDOM_BLOCK as u64) as usize;
        while left > 0 {
            let m = left.min(RANDOM_BLOCK);
            let bytes = if norm { &one[..m * 2] } else { &block[at * 2..(at + m) * 2] };
            file.write_all(bytes).map_err(io)?;
            left -= m;
            at = (at + m) % RANDOM_BLOCK;
        }
    }
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok((8 + text.len() + offset) as u64)
}

/// A bf16 Llama read from a safetensors file (see the [module](self) documentation).
pub struct Bf16Llama {
    path: PathBuf,
    file: std::fs::File,
    config: LlamaConfig,
    /// Byte range of each tensor in the file.
    ranges: HashMap<String, (u64, u64)>,
}

impl std::fmt::Debug for Bf16Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bf16Llama").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The largest safetensors header read (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

impl Bf16Llama {
    /// Opens `path` and checks that it holds every tensor of `c` in bf16 with its shape.
    pub fn open(path: &Path, c: &LlamaConfig) -> Result<Bf16Llama, LlmError> {
        c.validate()?;
        let bad = |why: String| LlmError::Config(format!("{}: {why}", path.display()));
        let io = |e: std::io::Error| LlmError::Io { path: path.display().to_string(), source: e };
        let file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0)
            .map_err(|_| bad("not a safetensors file (too short)".into()))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER || 8 + n > size {
            return Err(bad(format!("not a safetensors file (a header of {n} bytes)")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8).map_err(io)?;
        let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let start = 8 + n;
        let mut ranges = HashMap::new();
        for (name, shape) in tensor_list(c) {
            let info = header.get(&name).ok_or_else(|| bad(format!("no tensor `{name}`")))?;
            let dtype = info.get("dtype").and_then(|v| v.as_str()).unwrap_or("?");
            let got: Vec<usize> = info
                .get("shape")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            if dtype != "BF16" || got != shape {
                return Err(bad(format!(
                    "`{name}` is {dtype} {got:?}, the configuration needs BF16 {shape:?}"
                )));
            }
            let (a, b): (u64, u64) = info
                .get("data_offsets")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .ok_or_else(|| bad(format!("`{name}` has no data offsets")))?;
            let want = shape.iter().product::<usize>() as u64 * 2;
            if b < a || b - a != want || start + b > size {
                return Err(bad(format!("`{name}` lies outside the file")));
            }
            ranges.insert(name, (start + a, start + b));
        }
        Ok(Bf16Llama { path: path.to_owned(), file, config: c.clone(), ranges })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Bytes `[from, to)` of tensor `name`.
    fn read(&self, name: &str, from: u64, to: u64) -> Result<Vec<u8>, LlmError> {
        let (a, _) = self.ranges[name];
        let mut buf = vec![0u8; (to - from) as usize];
        self.file
            .read_exact_at(&mut buf, a + from)
            .map_err(|e| LlmError::Io { path: self.path.display().to_string(), source: e })?;
        Ok(buf)
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>, LlmError> {
        let (a, b) = self.ranges[name];
        self.read(name, 0, b - a)
    }

    /// A tensor widened to f32.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, LlmError> {
        Tensor::from_vec(widen(&self.bytes(name)?), shape, &Device::Cpu).map_err(candle)
    }

    /// Every weight widened to f32 (for checks on small models: a 3B model would take 12.9 GB).
    pub fn to_weights(&self) -> Result<LlamaWeights, LlmError> {
        let c = &self.config;
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let mut f: [Vec<f32>; 9] = Default::default();
            for (slot, n) in f.iter_mut().zip(layer_names(i)) {
                *slot = widen(&self.bytes(&n)?);
            }
            layers.push(super::llama::LayerWeights::from_fields(f));
        }
        Ok(LlamaWeights {
            embed: widen(&self.bytes(EMBED)?),
            layers,
            norm: widen(&self.bytes(NORM)?),
        })
    }

    /// The next-token top `k` (and log-probabilities) at every position of `seqs` (each of the
    /// same length), in order: one [`TopK`] over `seqs.len() × len` rows.
    pub fn top_k(&self, seqs: &[Vec<u32>], k: usize) -> Result<TopK, LlmError> {
        let c = &self.config;
        let (b, t) = (seqs.len(), seqs.first().map_or(0, Vec::len));
        if b == 0 || t == 0 || seqs.iter().any(|s| s.len() != t) {
            return Err(LlmError::Config("top_k needs sequences of one non-zero length".into()));
        }
        if let Some(&bad) = seqs.iter().flatten().find(|&&id| id as usize >= c.vocab) {
            return Err(LlmError::Config(format!("token {bad} is outside the vocabulary")));
        }
        let (h, hd) = (c.hidden, c.head_dim());
        let mut rows = Vec::with_capacity(b * t * h);
        for &id in seqs.iter().flatten() {
            let at = (id as usize * h * 2) as u64;
            rows.extend(widen(&self.read(EMBED, at, at + (h * 2) as u64)?));
        }
        let mut x = Tensor::from_vec(rows, (b * t, h), &Device::Cpu).map_err(candle)?;
        let (cos, sin) = rope_tables(c, t)?;
        let mask = causal_mask(t)?;
        let shapes = layer_shapes(c);
        for i in 0..c.layers {
            let names = layer_names(i);
            let w = |j: usize| -> Result<Tensor, LlmError> {
                let (r, cols) = shapes[j];
                if cols == 0 {
                    self.tensor(&names[j], &[r])
                } else {
                    self.tensor(&names[j], &[r, cols])
                }
            };
            let step = || -> candle_core::Result<Tensor> {
                let hn = rms_norm(&x, &w(0).map_err(to_candle)?, c.rms_eps)?;
                let q = hn.matmul(&w(1).map_err(to_candle)?)?;
                let kk = hn.matmul(&w(2).map_err(to_candle)?)?;
                let v = hn.matmul(&w(3).map_err(to_candle)?)?;
                let heads =
                    |m: Tensor, n: usize| m.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous();
                let q = rope(&heads(q, c.heads)?, &cos, &sin)?;
                let kk = repeat_kv(&rope(&heads(kk, c.kv_heads)?, &cos, &sin)?, c)?;
                let v = repeat_kv(&heads(v, c.kv_heads)?, c)?;
                let scores = (q.matmul(&kk.t()?.contiguous()?)? / (hd as f64).sqrt())?
                    .broadcast_add(&mask)?;
                let p = softmax(&scores)?;
                let a =
                    p.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b * t, c.heads * hd))?;
                let x1 = (&x + a.matmul(&w(4).map_err(to_candle)?)?)?;
                let hn = rms_norm(&x1, &w(5).map_err(to_candle)?, c.rms_eps)?;
                let g = hn.matmul(&w(6).map_err(to_candle)?)?.silu()?;
                let u = hn.matmul(&w(7).map_err(to_candle)?)?;
                &x1 + (g * u)?.matmul(&w(8).map_err(to_candle)?)?
            };
            x = step().map_err(candle)?;
        }
        let x = rms_norm(&x, &self.tensor(NORM, &[h])?, c.rms_eps).map_err(candle)?;
        self.head_top_k(&x, k)
    }

    /// The tied head over `x` `[n, hidden]` in vocabulary slices: a running log-sum-exp and
    /// top-k per row.
    fn head_top_k(&self, x: &Tensor, k: usize) -> Result<TopK, LlmError> {
        let c = &self.config;
        let n = x.dims()[0];
        let k = k.min(c.vocab);
        let mut max = vec![f32::NEG_INFINITY; n];
        let mut sum = vec![0f64; n];
        // Per row, the best (logit, id) so far, sorted by logit descending.
        let mut best: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(k + 1); n];
        let mut lo = 0;
        while lo < c.vocab {
            let hi = (lo + HEAD_SLICE).min(c.vocab);
            let slice =
                widen(&self.read(EMBED, (lo * c.hidden * 2) as u64, (hi * c.hidden * 2) as u64)?);
            let e = Tensor::from_vec(slice, (hi - lo, c.hidden), &Device::Cpu).map_err(candle)?;
            let logits: Vec<Vec<f32>> =
                x.matmul(&e.t().map_err(candle)?).and_then(|l| l.to_vec2()).map_err(candle)?;
            for (r, row) in logits.iter().enumerate() {
                let m = row.iter().copied().fold(max[r], f32::max);
                sum[r] = sum[r] * f64::from((max[r] - m).exp())
                    + row.iter().map(|&v| f64::from((v - m).exp())).sum::<f64>();
                max[r] = m;
                let list = &mut best[r];
                for (j, &v) in row.iter().enumerate() {
                    if list.len() < k || v > list[list.len() - 1].0 {
                        let at = list.partition_point(|&(b, _)| b >= v);
                        list.insert(at, (v, (lo + j) as u32));
                        list.truncate(k);
                    }
                }
            }
            lo = hi;
        }
        let mut indices = Vec::with_capacity(n * k);
        let mut logprobs = Vec::with_capacity(n * k);
        for r in 0..n {
            let lse = f64::from(max[r]) + sum[r].ln();
            for &(v, id) in &best[r] {
                indices.push(id);
                logprobs.push((f64::from(v) - lse) as f32);
            }
        }
        Ok(TopK { k, indices, logprobs })
    }
}

fn candle(e: candle_core::Error) -> LlmError {
    LlmError::Config(format!("candle: {e}"))
}

fn to_candle(e: LlmError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `[t, t]`: 0 on and below the diagonal, −∞ above.
fn causal_mask(t: usize) -> Result<Tensor, LlmError> {
    let v: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(v, (t, t), &Device::Cpu).map_err(candle)
}

/// Cosine and sine `[t, head_dim]` of the half-rotation layout (the angles repeated twice).
fn rope_tables(c: &LlamaConfig, t: usize) -> Result<(Tensor, Tensor), LlmError> {
    let hd = c.head_dim();
    let half = hd / 2;
    let (mut cos, mut sin) = (Vec::with_capacity(t * hd), Vec::with_capacity(t * hd));
    for p in 0..t {
        for j in 0..hd {
            let f = c.rope_base.powf(-2.0 * (j % half) as f64 / hd as f64);
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, hd), &Device::Cpu).map_err(candle)?,
        Tensor::from_vec(sin, (t, hd), &Device::Cpu).map_err(candle)?,
    ))
}

/// `x · cos + rotate_half(x) · sin` over `[b, heads, t, head_dim]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let (x1, x2) = (x.narrow(D::Minus1, 0, hd / 2)?, x.narrow(D::Minus1, hd / 2, hd / 2)?);
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
}

/// `[b, kv_heads, t, hd]` → `[b, heads, t, hd]`, each key/value head shared by its group.
fn repeat_kv(x: &Tensor, c: &LlamaConfig) -> candle_core::Result<Tensor> {
    let rep = c.heads / c.kv_heads;
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, hd) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, kv, rep, t, hd))?.contiguous()?.reshape((b, kv * rep, t, hd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{GraphForm, build_graph};
    use crate::train::exec::Executor;

    fn tiny() -> LlamaConfig {
        LlamaConfig {
            vocab: 300,
            hidden: 32,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 48,
            rope_base: 1e4,
            rms_eps: 1e-5,
            context: 64,
        }
    }

    /// The streamed bf16 forward gives the top-k of the Llama graph the executor runs on the
    /// same (widened) weights: block by block, rotary layout, grouped heads and the sliced
    /// head's log-sum-exp all agree.
    #[test]
    fn the_streamed_forward_matches_the_graph_on_the_same_weights() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = tiny();
        // A vocabulary over two head slices.
        c.vocab = HEAD_SLICE + 77;
        let path = dir.path().join("t.safetensors");
        let bytes = write_random_bf16(&path, &c, 5).unwrap();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        let m = Bf16Llama::open(&path, &c).unwrap();
        let seqs = vec![vec![1u32, 50, 7, 8190, 8200, 3], vec![9, 9, 9, 0, 8250, 2]];
        let got = m.top_k(&seqs, 5).unwrap();
        let w = m.to_weights().unwrap();
        let exec = Executor::new(&build_graph(&c, &w, GraphForm::Train).unwrap()).unwrap();
        let ids: Vec<i64> = seqs.iter().flatten().map(|&t| i64::from(t)).collect();
        let out = exec
            .run([("input_ids", Tensor::from_vec(ids, (2, 6), &Device::Cpu).unwrap())], &["logits"])
            .unwrap();
        let want = TopK::of(&out["logits"].flatten_to(1).unwrap(), 5).unwrap();
        assert_eq!(got.indices, want.indices);
        for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    /// A file of other shapes, another dtype or cut short is refused with the reason.
    #[test]
    fn a_wrong_or_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = tiny();
        let path = dir.path().join("t.safetensors");
        write_random_bf16(&path, &c, 1).unwrap();
        let mut other = c.clone();
        other.ffn = 64;
        let e = Bf16Llama::open(&path, &other).unwrap_err().to_string();
        assert!(e.contains("mlp.gate_proj") && e.contains("[32, 64]"), "{e}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let e = Bf16Llama::open(&path, &c).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        std::fs::write(&path, b"nonsense").unwrap();
        assert!(Bf16Llama::open(&path, &c).is_err());
        let m = {
            write_random_bf16(&path, &c, 1).unwrap();
            Bf16Llama::open(&path, &c).unwrap()
        };
        let e = m.top_k(&[vec![1, 300]], 3).unwrap_err().to_string();
        assert!(e.contains("outside the vocabulary"), "{e}");
    }

    /// bf16 rounding: exact values survive, and the rest round to the nearest.
    #[test]
    fn bf16_round_trips_to_the_nearest() {
        for x in [0.0f32, 1.0, -2.5, 0.015625, -0.75] {
            assert_eq!(widen(&to_bf16(x).to_le_bytes()), vec![x]);
        }
        let x = 1.0 + 1.0 / 256.0 + 1.0 / 512.0; // between two bf16 values, nearer the upper
        assert_eq!(widen(&to_bf16(x).to_le_bytes()), vec![1.0 + 1.0 / 128.0]);
    }
}

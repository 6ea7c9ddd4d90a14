//! Greedy decoding with tract over the KV-cache graph ([`GraphForm::KvCache`]).
//!
//! The graph is optimised once with its symbolic dimensions (`batch`, `seq`, `past`, `total`)
//! left symbolic; tract binds them from each run's input shapes. So the prompt is run once
//! (prefill, `past` = 0), then each new token is run alone with the previous run's `present`
//! tensors fed back as `past`: the model is never re-optimised and each step costs one token's
//! work plus attention over the cache.
//!
//! [`GraphForm::KvCache`]: super::llama::GraphForm::KvCache

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::pb;
use tract_onnx::prelude::{
    Framework as _, InferenceModelExt as _, IntoRunnable as _, IntoTValue as _, Symbol, TDim,
    TValue, TVec, Tensor as TractTensor, TypedSimplePlan,
};

use super::LlmError;
use super::llama::LlamaConfig;

/// A KV-cache Llama graph planned by tract once, with `batch` = 1 and `seq` and `past` left
/// symbolic, so that one plan runs the prompt and every single-token step.
///
/// Measured on SmolLM2-135M (2-core EPYC, another build running): 44 to 48 ms a token at past
/// 48 to 96. A second plan with `seq` fixed to 1 decoded at 41 ms a token but took the
/// planning time from 2.4 s to 6.1 s and held a second packed copy of the weights, so there is
/// one plan.
pub struct TractLlama {
    plan: Arc<TypedSimplePlan>,
    config: LlamaConfig,
}

/// The keys and values of every layer so far: `2 × layers` tensors `[1, kv_heads, len,
/// head_dim]`, keys then values per layer.
#[derive(Clone)]
pub struct KvCache {
    tensors: TVec<TValue>,
    len: usize,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache").field("len", &self.len).finish_non_exhaustive()
    }
}

impl KvCache {
    /// An empty cache (`past` = 0).
    pub fn empty(c: &LlamaConfig) -> KvCache {
        let t = TractTensor::zero::<f32>(&[1, c.kv_heads, 0, c.head_dim()])
            .expect("an empty tensor always allocates")
            .into_tvalue();
        KvCache { tensors: (0..2 * c.layers).map(|_| t.clone()).collect(), len: 0 }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One greedy generation and its timings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generation {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Generated ids, the stop token excluded.
    pub tokens: Vec<u32>,
    /// Whether a stop token ended it (otherwise the token limit did).
    pub stopped: bool,
    /// Time of the prompt's run (which gives the first token), ms.
    pub prefill_ms: f64,
    /// Runs of one token each after the prompt.
    pub decode_steps: usize,
    /// Their total time, ms.
    pub decode_ms: f64,
}

impl Generation {
    /// Decode throughput: one-token runs per second (0 when none ran).
    pub fn decode_tokens_per_s(&self) -> f64 {
        if self.decode_ms > 0.0 {
            self.decode_steps as f64 / (self.decode_ms / 1000.0)
        } else {
            0.0
        }
    }
}

impl TractLlama {
    /// Loads, optimises and plans a KV-cache graph (`batch` = 1, `seq` and `past` symbolic).
    pub fn new(proto: &pb::ModelProto, config: &LlamaConfig) -> Result<TractLlama, LlmError> {
        let tract = |e: tract_onnx::prelude::TractError| LlmError::Tract(format!("{e:#}"));
        let typed = tract_onnx::onnx()
            .model_for_proto_model(proto)
            .and_then(|m| m.into_typed())
            .map_err(tract)?;
        let batch: HashMap<Symbol, TDim> = [(typed.symbols.sym("batch"), TDim::Val(1))].into();
        let plan = typed
            .set_symbols(&batch)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(tract)?;
        Ok(TractLlama { plan, config: config.clone() })
    }

    /// Reads a KV-cache model file and plans it.
    pub fn load(path: &std::path::Path, config: &LlamaConfig) -> Result<TractLlama, LlmError> {
        let graph = hone_graph::Graph::load(path)?;
        TractLlama::new(graph.proto(), config)
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Runs `ids` after the cached positions: returns the logits `[ids.len(), vocab]`
    /// (row-major) and the cache extended by `ids`.
    pub fn forward(&self, ids: &[u32], cache: KvCache) -> Result<(Vec<f32>, KvCache), LlmError> {
        let n = ids.len();
        if n == 0 {
            return Err(LlmError::Config("no tokens to run".into()));
        }
        let total = cache.len + n;
        let tract = |e: tract_onnx::prelude::TractError| LlmError::Tract(format!("{e:#}"));
        let ids_t = TractTensor::from_shape(
            &[1, n],
            &ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
        )
        .map_err(tract)?;
        let mask = TractTensor::from_shape(&[1, total], &vec![1i64; total]).map_err(tract)?;
        let pos: Vec<i64> = (cache.len..total).map(|p| p as i64).collect();
        let pos = TractTensor::from_shape(&[1, n], &pos).map_err(tract)?;
        let mut inputs: TVec<TValue> =
            [ids_t, mask, pos].into_iter().map(|t| t.into_tvalue()).collect();
        inputs.extend(cache.tensors);
        let mut out = self.plan.run(inputs).map_err(tract)?;
        if out.len() != 1 + 2 * self.config.layers {
            return Err(LlmError::Tract(format!("the model gave {} outputs", out.len())));
        }
        let tensors: TVec<TValue> = out.drain(1..).collect();
        let logits = out.remove(0);
        let logits: Vec<f32> =
            logits.to_plain_array_view::<f32>().map_err(tract)?.iter().copied().collect();
        if logits.len() != n * self.config.vocab {
            return Err(LlmError::Tract(format!(
                "logits hold {} values, expected {n} × {}",
                logits.len(),
                self.config.vocab
            )));
        }
        Ok((logits, KvCache { tensors, len: total }))
    }

    /// Greedy decoding: runs the prompt, then one token at a time, until a `stop` id (not
    /// included) or `max_tokens` generated ids.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        stop: &[u32],
    ) -> Result<Generation, LlmError> {
        let vocab = self.config.vocab;
        let t0 = Instant::now();
        let (logits, mut cache) = self.forward(prompt, KvCache::empty(&self.config))?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut next = argmax(&logits[logits.len() - vocab..]);
        let mut g = Generation {
            prompt_tokens: prompt.len(),
            tokens: Vec::new(),
            stopped: false,
            prefill_ms,
            decode_steps: 0,
            decode_ms: 0.0,
        };
        let t1 = Instant::now();
        loop {
            if stop.contains(&next) {
                g.stopped = true;
                break;
            }
            g.tokens.push(next);
            if g.tokens.len() >= max_tokens {
                break;
            }
            let (logits, c) = self.forward(&[next], cache)?;
            cache = c;
            g.decode_steps += 1;
            next = argmax(&logits);
        }
        g.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        Ok(g)
    }
}

/// The index of the largest value (the first of ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

//! Tests of the import, the graph and generation: on tiny models built here (against a
//! reference forward pass written out in f64), and on the real SmolLM2-135M-Instruct.

use candle_core::{Device, Tensor as CTensor};

use super::llama::{GraphForm, LlamaConfig, LlamaWeights, build_graph, permute_rows};
use super::testing::GgufBuilder;
use super::*;
use crate::data::SplitMix64;
use crate::eval::tract::TractPlan;
use crate::train::exec::Executor;

fn tiny() -> LlamaConfig {
    LlamaConfig {
        vocab: 40,
        hidden: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        ffn: 48,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        context: 64,
    }
}

/// Fresh weights with norms that are not all ones, and larger weights, so that every part of
/// the graph shows in the logits.
fn tiny_weights(c: &LlamaConfig, seed: u64) -> LlamaWeights {
    let mut w = LlamaWeights::fresh(c, seed).unwrap();
    let mut rng = SplitMix64::new(seed ^ 0xabc);
    let mut jitter = |v: &mut Vec<f32>, scale: f32| {
        for x in v.iter_mut() {
            *x = *x * scale + (rng.next_f32() - 0.5) * 0.2;
        }
    };
    jitter(&mut w.norm, 1.0);
    for l in &mut w.layers {
        jitter(&mut l.attn_norm, 1.0);
        jitter(&mut l.ffn_norm, 1.0);
        for m in [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down] {
            jitter(m, 20.0);
        }
    }
    jitter(&mut w.embed, 20.0);
    w
}

/// The logits `[ids.len(), vocab]` of the model, computed directly in f64.
fn reference_logits(c: &LlamaConfig, w: &LlamaWeights, ids: &[u32]) -> Vec<f64> {
    let (h, hd, nh, kvh) = (c.hidden, c.head_dim(), c.heads, c.kv_heads);
    let n = ids.len();
    let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let matmul = |x: &[f64], m: &[f32], cols: usize| -> Vec<f64> {
        let rows = m.len() / cols;
        (0..x.len() / rows)
            .flat_map(|t| {
                (0..cols).map(move |j| {
                    (0..rows).map(|i| x[t * rows + i] * f64::from(m[i * cols + j])).sum()
                })
            })
            .collect()
    };
    let rms = |x: &[f64], wt: &[f32]| -> Vec<f64> {
        x.chunks(h)
            .flat_map(|row| {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / h as f64;
                let r = (ms + c.rms_eps).sqrt();
                row.iter().zip(wt).map(move |(v, &g)| v / r * f64::from(g)).collect::<Vec<_>>()
            })
            .collect()
    };
    let rope = |x: &mut [f64], heads: usize| {
        for t in 0..n {
            for hh in 0..heads {
                let u = &mut x[(t * heads + hh) * hd..(t * heads + hh + 1) * hd];
                for i in 0..hd / 2 {
                    let inv = 1.0 / c.rope_base.powf(2.0 * i as f64 / hd as f64);
                    let a = t as f64 * f64::from(inv as f32);
                    let (x1, x2) = (u[i], u[i + hd / 2]);
                    u[i] = x1 * a.cos() - x2 * a.sin();
                    u[i + hd / 2] = x2 * a.cos() + x1 * a.sin();
                }
            }
        }
    };
    let mut x: Vec<f64> =
        ids.iter().flat_map(|&id| f(&w.embed[id as usize * h..(id as usize + 1) * h])).collect();
    for l in &w.layers {
        let n1 = rms(&x, &l.attn_norm);
        let mut q = matmul(&n1, &l.q, nh * hd);
        let mut k = matmul(&n1, &l.k, kvh * hd);
        let v = matmul(&n1, &l.v, kvh * hd);
        rope(&mut q, nh);
        rope(&mut k, kvh);
        let mut ctx = vec![0f64; n * nh * hd];
        for t in 0..n {
            for hq in 0..nh {
                let kv = hq / (nh / kvh);
                let qv = &q[(t * nh + hq) * hd..(t * nh + hq + 1) * hd];
                let scores: Vec<f64> = (0..=t)
                    .map(|s| {
                        let kvec = &k[(s * kvh + kv) * hd..(s * kvh + kv + 1) * hd];
                        qv.iter().zip(kvec).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (s, p) in e.iter().enumerate() {
                    for d in 0..hd {
                        ctx[(t * nh + hq) * hd + d] += p / z * v[(s * kvh + kv) * hd + d];
                    }
                }
            }
        }
        let o = matmul(&ctx, &l.o, h);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let n2 = rms(&x, &l.ffn_norm);
        let g = matmul(&n2, &l.gate, c.ffn);
        let u = matmul(&n2, &l.up, c.ffn);
        let m: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
        let d = matmul(&m, &l.down, h);
        x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
    }
    let xn = rms(&x, &w.norm);
    (0..n)
        .flat_map(|t| {
            let row = &xn[t * h..(t + 1) * h];
            (0..c.vocab)
                .map(|v| {
                    row.iter()
                        .zip(&w.embed[v * h..(v + 1) * h])
                        .map(|(a, &b)| a * f64::from(b))
                        .sum()
                })
                .collect::<Vec<f64>>()
        })
        .collect()
}

/// Largest |a − b| over the largest |a|.
fn rel_diff(reference: &[f64], other: &[f32]) -> f64 {
    assert_eq!(reference.len(), other.len());
    let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst =
        reference.iter().zip(other).fold(0f64, |m, (a, &b)| m.max((a - f64::from(b)).abs()));
    worst / scale
}

fn train_logits_tract(graph: &Graph, ids: &[u32]) -> Vec<f32> {
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let t = CTensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let plan =
        TractPlan::new(graph.proto(), &[(candle_core::DType::I64, vec![1, ids.len()])]).unwrap();
    plan.run(&[t]).unwrap().remove(0).1
}

#[test]
fn both_forms_match_a_reference_forward_pass_and_the_cache_matches_recomputation() {
    let c = tiny();
    let w = tiny_weights(&c, 7);
    let ids = [3u32, 17, 0, 39, 5, 5, 22];
    let want = reference_logits(&c, &w, &ids);

    let train = build_graph(&c, &w, GraphForm::Train).unwrap();
    let got = train_logits_tract(&train, &ids);
    let d = rel_diff(&want, &got);
    assert!(d < 1e-5, "train form vs reference: {d:e}");

    let kv = build_graph(&c, &w, GraphForm::KvCache).unwrap();
    let model = TractLlama::new(kv.proto(), &c).unwrap();
    let (full, cache) = model.forward(&ids, KvCache::empty(&c)).unwrap();
    assert_eq!(cache.len(), ids.len());
    let d = rel_diff(&want, &full);
    assert!(d < 1e-5, "KV form, whole prompt, vs reference: {d:e}");

    // The prompt in pieces: 3 tokens, then 1, then 3, each feeding the cache back.
    let mut cache = KvCache::empty(&c);
    let mut pieces = Vec::new();
    for part in [&ids[..3], &ids[3..4], &ids[4..]] {
        let (logits, next) = model.forward(part, cache).unwrap();
        pieces.extend(logits);
        cache = next;
    }
    let d = rel_diff(&want, &pieces);
    assert!(d < 1e-5, "KV form, in pieces, vs reference: {d:e}");
}

#[test]
fn the_train_form_runs_in_the_executor_as_in_tract_and_trains_every_weight() {
    let c = tiny();
    let w = tiny_weights(&c, 11);
    let graph = build_graph(&c, &w, GraphForm::Train).unwrap();
    let exec = Executor::new(&graph).unwrap();
    let ids: Vec<i64> = vec![1, 4, 9, 16, 25, 36, 7, 2];
    let t = CTensor::from_vec(ids.clone(), (2, 4), &Device::Cpu).unwrap();
    let report =
        crate::parity::check_parity(&graph, &exec, &[("input_ids", t.clone())], 1e-5).unwrap();
    assert!(report[0].max_abs_diff <= 1e-5 * report[0].scale, "{report:?}");

    let out = exec.forward([("input_ids", t)]).unwrap();
    let loss = out["logits"].sqr().unwrap().mean_all().unwrap();
    let grads = exec.backward(&loss).unwrap();
    let params: Vec<&str> = exec.parameters().map(|(n, _)| n).collect();
    assert_eq!(params.len(), 2 + 9 * c.layers, "{params:?}");
    for p in params {
        let g = grads.get(p).unwrap_or_else(|| panic!("no gradient for {p}"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{p}: {norm}");
    }
}

/// A tiny GGUF Llama: the weights of `w` written as llama.cpp lays them out (`[out, in]`, Q and
/// K rows permuted), in F32, with a small byte-level vocabulary.
fn tiny_gguf(c: &LlamaConfig, w: &LlamaWeights) -> GgufBuilder {
    let mut b = GgufBuilder::new();
    let mut tokens: Vec<String> =
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].iter().map(|s| s.to_string()).collect();
    tokens.extend(["a", "b", "ab", "Ġ", "Ġab", "c", "1", "2", "Ċ"].iter().map(|s| s.to_string()));
    while tokens.len() < c.vocab {
        tokens.push(format!("x{}", tokens.len()));
    }
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let types: Vec<i32> = (0..c.vocab).map(|i| if i < 3 { 3 } else { 1 }).collect();
    b.kv_str("general.architecture", "llama")
        .kv_str("general.name", "tiny")
        .kv_u32("llama.block_count", c.layers as u32)
        .kv_u32("llama.context_length", c.context as u32)
        .kv_u32("llama.embedding_length", c.hidden as u32)
        .kv_u32("llama.feed_forward_length", c.ffn as u32)
        .kv_u32("llama.attention.head_count", c.heads as u32)
        .kv_u32("llama.attention.head_count_kv", c.kv_heads as u32)
        .kv_f32("llama.rope.freq_base", c.rope_base as f32)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", c.rms_eps as f32)
        .kv_u32("llama.vocab_size", c.vocab as u32)
        .kv_u32("llama.rope.dimension_count", c.head_dim() as u32)
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_strings("tokenizer.ggml.tokens", &refs)
        .kv_i32s("tokenizer.ggml.token_type", &types)
        .kv_strings("tokenizer.ggml.merges", &["a b", "Ġ ab"])
        .kv_u32("tokenizer.ggml.bos_token_id", 1)
        .kv_u32("tokenizer.ggml.eos_token_id", 2)
        .kv_u32("tokenizer.ggml.unknown_token_id", 0)
        .kv_str(
            "tokenizer.chat_template",
            "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe brief<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}",
        );
    let (h, hd) = (c.hidden, c.head_dim());
    let tr = |m: &[f32], rows: usize| -> Vec<f32> {
        // [in, out] (rows = in) → [out, in].
        let cols = m.len() / rows;
        let mut o = vec![0f32; m.len()];
        for r in 0..rows {
            for cc in 0..cols {
                o[cc * rows + r] = m[r * cols + cc];
            }
        }
        o
    };
    b.tensor_f32("token_embd.weight", &[h as u64, c.vocab as u64], &w.embed);
    for (i, l) in w.layers.iter().enumerate() {
        let name = |n: &str| format!("blk.{i}.{n}.weight");
        let lin = |b: &mut GgufBuilder, n: &str, m: &[f32], inp: usize| {
            let out = m.len() / inp;
            b.tensor_f32(&name(n), &[inp as u64, out as u64], &tr(m, inp));
        };
        b.tensor_f32(&name("attn_norm"), &[h as u64], &l.attn_norm);
        let q = permute_rows(&tr(&l.q, h), c.heads, hd);
        b.tensor_f32(&name("attn_q"), &[h as u64, (c.heads * hd) as u64], &q);
        let k = permute_rows(&tr(&l.k, h), c.kv_heads, hd);
        b.tensor_f32(&name("attn_k"), &[h as u64, (c.kv_heads * hd) as u64], &k);
        lin(&mut b, "attn_v", &l.v, h);
        lin(&mut b, "attn_output", &l.o, c.heads * hd);
        b.tensor_f32(&name("ffn_norm"), &[h as u64], &l.ffn_norm);
        lin(&mut b, "ffn_gate", &l.gate, h);
        lin(&mut b, "ffn_up", &l.up, h);
        lin(&mut b, "ffn_down", &l.down, c.ffn);
    }
    b.tensor_f32("output_norm.weight", &[h as u64], &w.norm);
    b
}

#[test]
fn a_gguf_llama_imports_to_the_same_weights_and_a_model_folder() {
    let c = tiny();
    let w = tiny_weights(&c, 5);
    let bytes = tiny_gguf(&c, &w).build();
    let g = Gguf::parse(bytes.clone()).unwrap();
    let read = LlamaConfig::from_gguf(&g).unwrap();
    assert_eq!(read, LlamaConfig { rms_eps: f64::from(1e-5f32), ..c.clone() });
    let imported = LlamaWeights::from_gguf(&g, &read).unwrap();
    assert_eq!(imported, w, "un-permuting and transposing restores the weights exactly");

    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    std::fs::write(&gguf, &bytes).unwrap();
    let out = dir.path().join("model");
    let mut steps = Vec::new();
    let report = import(&gguf, &out, |s| steps.push(s.to_owned())).unwrap();
    assert!(steps.len() >= 3, "{steps:?}");
    assert_eq!(report.files.len(), 4);
    let src = report.card.source.as_ref().unwrap();
    assert_eq!(src.sha256, hex::encode(Sha256::digest(&bytes)));
    assert!(
        src.weights.starts_with("dequantised to f32: ") && src.weights.contains("F32"),
        "{}",
        src.weights
    );
    assert_eq!(report.card.params, c.params());
    assert_eq!(report.card.stop_ids, [2]);
    assert_eq!(report.card.chat.default_system.as_deref(), Some("Be brief"));

    let m = ModelDir::open(&out).unwrap();
    assert_eq!(m.card, report.card);
    let ids = m.encode("<|im_start|>ab ab").unwrap();
    assert_eq!(ids, [1, 5, 7]);
    assert_eq!(m.decode(&ids).unwrap(), "ab ab");
    let trained = Graph::load(out.join(TRAIN_FILE)).unwrap();
    assert_eq!(LlamaWeights::from_graph(&trained, &read).unwrap(), w);
    let ids = [3u32, 7, 1];
    let (logits, _) = m.tract().unwrap().forward(&ids, KvCache::empty(&read)).unwrap();
    let d = rel_diff(&reference_logits(&read, &w, &ids), &logits);
    assert!(d < 1e-5, "{d:e}");

    // `model.onnx` alone is the whole model: moved away from its folder (as into the model
    // registry), it unpacks into a folder with the same card, tokenizer and weights.
    let lone = dir.path().join("registry").join("abc123");
    std::fs::create_dir_all(lone.parent().unwrap()).unwrap();
    std::fs::copy(out.join(MODEL_FILE), &lone).unwrap();
    let graph = Graph::load(&lone).unwrap();
    assert!(is_llm(&graph));
    assert_eq!(card_of(&graph).unwrap(), report.card);
    let unpacked = ModelDir::unpack(&lone, &dir.path().join("unpacked")).unwrap();
    assert_eq!(unpacked.card, report.card);
    assert_eq!(unpacked.encode("<|im_start|>ab ab").unwrap(), [1, 5, 7]);
    assert!(!unpacked.dir.join(TRAIN_FILE).exists(), "the training form is built when asked");
    let train = unpacked.train_graph().unwrap();
    assert_eq!(LlamaWeights::from_graph(&train, &read).unwrap(), w);
    let (again, _) = unpacked.tract().unwrap().forward(&ids, KvCache::empty(&read)).unwrap();
    assert_eq!(again, logits);
    // A second unpack of the same file reuses the folder; another file replaces it.
    let stamp = unpacked.dir.join("unpacked-from.sha256");
    let before = std::fs::metadata(&stamp).unwrap().modified().unwrap();
    ModelDir::unpack(&lone, &unpacked.dir).unwrap();
    assert_eq!(std::fs::metadata(&stamp).unwrap().modified().unwrap(), before);
    // A card that does not describe its graph is refused before anything is sized from it.
    let mut doctored = graph.clone();
    let mut card = report.card.clone();
    card.config.layers = 1_000_000_000;
    embed(&mut doctored, &card, "{}").unwrap();
    let err = card_of(&doctored).unwrap_err().to_string();
    assert!(err.contains("1000000000 blocks") && err.contains("cache inputs"), "{err}");
    // The training form carries no card: not a model on its own.
    let err = card_of(&trained).unwrap_err().to_string();
    assert!(err.contains("not a language model Hone wrote"), "{err}");
    let err = ModelDir::unpack(&out.join(TRAIN_FILE), &dir.path().join("x")).unwrap_err();
    assert!(err.to_string().contains("hone.llm.card"), "{err}");
    // One decode step after 127 cached tokens, in this model's shapes.
    let shapes = decode_shapes(&read, DECODE_PAST);
    assert_eq!(shapes.get("attention_mask"), Some(&[1u64, 128][..]));
    assert_eq!(
        shapes.get(&llama::past_key(read.layers - 1)),
        Some(&[1, read.kv_heads as u64, 127, read.head_dim() as u64][..])
    );
}

#[test]
fn students_keep_chosen_layers_or_start_fresh() {
    let c = tiny();
    let w = tiny_weights(&c, 3);
    assert_eq!(w.params(), c.params());
    let (sc, s) = w.select_layers(&c, &[1]).unwrap();
    assert_eq!(sc.layers, 1);
    assert_eq!(s.layers[0], w.layers[1]);
    assert_eq!(s.embed, w.embed);
    assert_eq!(s.params(), sc.params());
    for bad in [&[][..], &[2], &[0, 0]] {
        assert!(w.select_layers(&c, bad).is_err(), "{bad:?}");
    }
    let small = LlamaConfig { hidden: 16, heads: 2, kv_heads: 1, ffn: 24, layers: 1, ..c.clone() };
    let a = LlamaWeights::fresh(&small, 9).unwrap();
    assert_eq!(a, LlamaWeights::fresh(&small, 9).unwrap(), "seeded");
    assert_ne!(a, LlamaWeights::fresh(&small, 10).unwrap());
    assert_eq!(a.params(), small.params());
    let g = build_graph(&small, &a, GraphForm::Train).unwrap();
    assert_eq!(LlamaWeights::from_graph(&g, &small).unwrap(), a);
    assert!(build_graph(&c, &a, GraphForm::Train).is_err(), "weights of another shape");
    let bad = LlamaConfig { kv_heads: 3, ..c.clone() };
    assert!(bad.validate().unwrap_err().to_string().contains("KV heads"));
}

#[test]
fn chat_prompts_follow_chatml() {
    let f = ChatFormat::from_template(
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are nice<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}",
    )
    .unwrap();
    assert_eq!(
        f.prompt(None, "Hi?"),
        "<|im_start|>system\nYou are nice<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(f.prompt(Some("S"), "x").starts_with("<|im_start|>system\nS<|im_end|>\n"));
    assert!(ChatFormat::from_template("{{ bos_token }}{{ message }}").is_err());
}

// ---- The real model (asset `smollm2-135m-instruct-gguf`) ----

fn smollm2() -> Gguf {
    let path = hone_assets::path(SMOLLM2_ASSET).unwrap_or_else(|e| panic!("{e}"));
    Gguf::open(&path).unwrap()
}

#[test]
fn smollm2_tokenizer_round_trips_and_keeps_special_tokens_whole() {
    let g = smollm2();
    let tok = tokenizer::tokenizer_from_gguf(&g).unwrap();
    assert_eq!(tok.get_vocab_size(true), 49_152);
    for text in [
        "The capital of France is Paris.",
        "In 1987, 42 people paid $3.50 each.",
        "Café crème, naïve façade — Zürich, São Paulo.",
        "Emoji: 🦀🚀 and 日本語 text\n\twith  spaces",
    ] {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{ids:?}");
    }
    // Digits are split one by one.
    let ids = tok.encode("2024", false).unwrap().get_ids().to_vec();
    assert_eq!(ids.len(), 4, "{ids:?}");
    for (t, id) in [("<|endoftext|>", 0), ("<|im_start|>", 1), ("<|im_end|>", 2)] {
        let ids = tok.encode(format!("a{t}b"), false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), 3, "{t}: {ids:?}");
        assert_eq!(ids[1], id, "{t}");
    }
    let chat = ChatFormat::from_gguf(&g).unwrap();
    assert_eq!(
        chat.default_system.as_deref(),
        Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    );
    assert_eq!(tokenizer::stop_ids(&g, &tok), [2]);
}

#[test]
fn a_truncated_smollm2_is_a_clear_error() {
    let path = hone_assets::path(SMOLLM2_ASSET).unwrap_or_else(|e| panic!("{e}"));
    let bytes = std::fs::read(path).unwrap();
    for (len, want) in
        [(1_000_000, "truncated file"), (bytes.len() - 1000, "beyond"), (3, "not a GGUF")]
    {
        let e = Gguf::parse(bytes[..len].to_vec()).unwrap_err().to_string();
        assert!(e.contains(want), "{len}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = import(&cut, &dir.path().join("out"), |_| {}).unwrap_err().to_string();
    assert!(e.contains("tensor `") && e.contains("beyond the file"), "{e}");
    assert!(!dir.path().join("out").exists(), "nothing is written");
}

fn smollm2_model() -> (Gguf, LlamaConfig, LlamaWeights) {
    let g = smollm2();
    let c = LlamaConfig::from_gguf(&g).unwrap();
    let w = LlamaWeights::from_gguf(&g, &c).unwrap();
    (g, c, w)
}

#[test]
fn smollm2_answers_paris_and_its_cache_matches_recomputation() {
    let (g, c, w) = smollm2_model();
    assert_eq!(
        (c.layers, c.hidden, c.heads, c.kv_heads, c.ffn, c.vocab),
        (30, 576, 9, 3, 1536, 49_152)
    );
    assert_eq!(c.params(), 134_515_008);
    let tok = tokenizer::tokenizer_from_gguf(&g).unwrap();
    let graph = build_graph(&c, &w, GraphForm::KvCache).unwrap();
    drop(w);
    let model = TractLlama::new(graph.proto(), &c).unwrap();
    drop(graph);
    let prompt = ChatFormat::from_gguf(&g).unwrap().prompt(None, "What is the capital of France?");
    let ids = tok.encode(prompt, false).unwrap().get_ids().to_vec();
    let stop = tokenizer::stop_ids(&g, &tok);
    let answer = model.generate(&ids, 24, &stop).unwrap();
    let text = tok.decode(&answer.tokens, true).unwrap();
    eprintln!(
        "answer {text:?}: {} prompt tokens, prefill {:.0} ms, {} decode steps at {:.1} tokens/s",
        answer.prompt_tokens,
        answer.prefill_ms,
        answer.decode_steps,
        answer.decode_tokens_per_s()
    );
    assert!(text.contains("Paris"), "{text:?}");

    // Decoding with the cache gives the logits of recomputing the whole sequence.
    let steps = 4.min(answer.tokens.len());
    let mut seq = ids.clone();
    let (_, mut cache) = model.forward(&ids, KvCache::empty(&c)).unwrap();
    for &next in &answer.tokens[..steps] {
        let (cached, next_cache) = model.forward(&[next], cache).unwrap();
        cache = next_cache;
        seq.push(next);
        let (full, _) = model.forward(&seq, KvCache::empty(&c)).unwrap();
        let last = &full[full.len() - c.vocab..];
        let scale = last.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = last.iter().zip(&cached).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("step {}: max |cached − full| = {worst:e} (scale {scale})", seq.len());
        assert!(worst <= 1e-4 * scale, "{worst} > 1e-4 × {scale}");
        assert_eq!(generate::argmax(&cached), generate::argmax(last));
    }
}

#[test]
fn smollm2_runs_in_the_executor_as_in_tract() {
    let (g, c, w) = smollm2_model();
    let graph = build_graph(&c, &w, GraphForm::Train).unwrap();
    drop(w);
    let tok = tokenizer::tokenizer_from_gguf(&g).unwrap();
    let ids: Vec<i64> = tok
        .encode("The capital of France is", false)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&i| i64::from(i))
        .collect();
    let t = CTensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let exec = Executor::new(&graph).unwrap();
    // Measured 1.1e-4 on logits of scale 27.4 (4.0e-6 relative): 30 layers of f32 sums in
    // two orders. The bound leaves a factor 5.
    let report = crate::parity::check_parity(&graph, &exec, &[("input_ids", t)], 2e-5).unwrap();
    eprintln!("{report:?}");
}

use sha2::Digest as _;

#[test]
#[ignore = "a profile, run by hand: cargo test -p hone-learn llm::tests::smollm2_decode_profile -- --ignored --nocapture"]
fn smollm2_decode_profile() {
    let (_g, c, w) = smollm2_model();
    let graph = build_graph(&c, &w, GraphForm::KvCache).unwrap();
    drop(w);
    let t = std::time::Instant::now();
    let m = TractLlama::new(graph.proto(), &c).unwrap();
    eprintln!("planned in {:.1} s", t.elapsed().as_secs_f64());
    let prompt: Vec<u32> = (100..132).collect();
    let t = std::time::Instant::now();
    let (_, mut cache) = m.forward(&prompt, KvCache::empty(&c)).unwrap();
    eprintln!("prefill of {} tokens: {:.1} ms", prompt.len(), t.elapsed().as_secs_f64() * 1e3);
    for round in 0..4 {
        let t = std::time::Instant::now();
        for _ in 0..16 {
            let (_, next) = m.forward(&[9], cache).unwrap();
            cache = next;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / 16.0;
        eprintln!(
            "round {round}: past {}, {ms:.1} ms a token ({:.1} tokens/s)",
            cache.len(),
            1e3 / ms
        );
    }
}

/// Narrowing (Minitron-style width pruning) keeps exactly the channels, heads and neurons it is
/// given: on a model whose dropped parts are silent (residual channels never written, heads and
/// neurons whose outputs are zero), the narrowed model gives the same logits once its norms
/// make up for averaging over fewer channels.
#[test]
fn narrowing_keeps_the_chosen_channels_heads_and_neurons() {
    let c = tiny();
    let mut w = tiny_weights(&c, 11);
    let hd = c.head_dim();
    // Keep 2 heads (one of each key/value group), so 16 of the 32 channels, and 20 neurons.
    let hidden: Vec<usize> = (0..32).filter(|j| j % 2 == 0).collect();
    let heads = [vec![0, 3], vec![1, 2]];
    let ffn: Vec<Vec<usize>> =
        (0..2).map(|l| (0..48).filter(|n| (n + l) % 12 < 5).collect()).collect();
    let silent = |j: usize| !hidden.contains(&j);
    for v in 0..c.vocab {
        for j in (0..c.hidden).filter(|&j| silent(j)) {
            w.embed[v * c.hidden + j] = 0.0;
        }
    }
    for (l, layer) in w.layers.iter_mut().enumerate() {
        for r in 0..c.heads * hd {
            for j in 0..c.hidden {
                if !heads[l].contains(&(r / hd)) || silent(j) {
                    layer.o[r * c.hidden + j] = 0.0;
                }
            }
        }
        for n in 0..c.ffn {
            for j in 0..c.hidden {
                if !ffn[l].contains(&n) || silent(j) {
                    layer.down[n * c.hidden + j] = 0.0;
                }
            }
        }
    }
    let (nc, mut nw) = w.narrow(&c, &hidden, &heads, &ffn).unwrap();
    assert_eq!((nc.hidden, nc.heads, nc.kv_heads, nc.ffn), (16, 2, 2, 20));
    assert_eq!(nw.params(), nc.params());
    let scale = (32f32 / 16.0).sqrt();
    for v in nw.norm.iter_mut().chain(
        nw.layers.iter_mut().flat_map(|l| l.attn_norm.iter_mut().chain(l.ffn_norm.iter_mut())),
    ) {
        *v *= scale;
    }
    let mut quiet = c.clone();
    quiet.rms_eps = 1e-12;
    let mut nquiet = nc.clone();
    nquiet.rms_eps = 1e-12;
    let ids = [3u32, 17, 5, 39, 0, 8];
    let (a, b) = (reference_logits(&quiet, &w, &ids), reference_logits(&nquiet, &nw, &ids));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let size = a.iter().map(|x| x.abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-6 * size.max(1.0), "worst {worst} of {size}");
    // Uneven groups, a width that is not heads × head width, and unsorted lists are refused.
    let e = w.narrow(&c, &hidden, &[vec![0, 1], vec![1, 2]], &ffn).unwrap_err().to_string();
    assert!(e.contains("key/value groups"), "{e}");
    let e = w.narrow(&c, &hidden[..12], &heads, &ffn).unwrap_err().to_string();
    assert!(e.contains("residual channels"), "{e}");
    assert!(w.narrow(&c, &hidden, &[vec![3, 0], vec![1, 2]], &ffn).is_err());
}

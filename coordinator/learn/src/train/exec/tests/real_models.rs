//! Forward parity with tract, and the backward pass checked by a directional finite
//! difference, on the real models of the asset cache (MiniLM-L3 and open-nsfw).
//!
//! These fail with the asset error when the cache lacks a model (run `scripts/fetch-assets.sh`).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{DType, Tensor};
use tract_onnx::prelude::Tensor as TractTensor;

use crate::data::SplitMix64;
use crate::train::exec::Executor;
use hone_graph::Graph;

use super::testing::{Flat, candle_flat, run_tract_timed, to_f64, worst_relative};

const SEQ: usize = 12;

fn load(name: &str) -> Graph {
    match hone_assets::path(name) {
        Ok(p) => Graph::load(p).unwrap(),
        Err(e) => panic!("{e}"),
    }
}

fn op_histogram(g: &Graph) -> String {
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for n in g.node_protos() {
        *ops.entry(n.op_type.as_str()).or_default() += 1;
    }
    ops.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(" ")
}

/// Checks forward parity with tract on every graph output (plus `extra` intermediate values,
/// added as outputs for tract), and prints timings: tract's optimised plan against the
/// executor's forward, each warm.
fn parity(
    name: &str,
    g: &Graph,
    exec: &Executor,
    tract_inputs: &[TractTensor],
    inputs: &[(&str, Tensor)],
    extra: &[&str],
) -> HashMap<String, Tensor> {
    let mut with_extra = g.clone();
    for e in extra {
        with_extra.add_output(e).unwrap();
    }
    let (reference, tract_time) = run_tract_timed(with_extra.proto(), tract_inputs, 3);
    let mut wanted: Vec<&str> = exec.output_names().iter().map(String::as_str).collect();
    wanted.extend_from_slice(extra);
    let run = || exec.run(inputs.iter().map(|(n, t)| (*n, t.clone())), &wanted).unwrap();
    run();
    let t0 = Instant::now();
    let out = run();
    let candle_time = t0.elapsed();
    let ours: Vec<Flat> = wanted.iter().map(|n| candle_flat(&out[*n])).collect();
    assert_eq!(reference.len(), ours.len());
    for ((r, o), n) in reference.iter().zip(&ours).zip(&wanted) {
        let e = worst_relative(r, o);
        eprintln!("{name} `{n}` {:?}: max |candle − tract| = {e:.2e} × output scale", o.0);
        assert!(e <= 1e-5, "{name} `{n}`: {e:e}");
    }
    eprintln!(
        "{name}: forward tract {tract_time:?}, candle {candle_time:?} (×{:.1}); ops: {}",
        candle_time.as_secs_f64() / tract_time.as_secs_f64(),
        op_histogram(g)
    );
    out
}

/// Checks the gradient of `loss` along a random direction `d` over every parameter (each
/// scaled to its parameter's RMS) against the central difference (L(w + εd) − L(w − εd)) / 2ε,
/// in f64. The rounding error of the quotient is ≈ 1e-16 · |L| / ε. A smooth model (MiniLM: GELU,
/// softmax, layer norm) takes ε = 1e-6, where the O(ε²) truncation is negligible. A ReLU network
/// is piecewise linear with kinks everywhere: among the ~10⁷ ReLU inputs of open-nsfw at 224²
/// some lie within 1e-7 (relative) of zero, and a step that crosses them changes the slope
/// (measured: the quotient drifts by 1.4 % at ε = 1e-6 and agrees to 7e-8 at ε = 1e-8), so it
/// takes ε = 1e-8.
fn directional_check(name: &str, exec: &Executor, eps: f64, loss: &dyn Fn() -> Tensor) {
    let l0 = loss();
    let grads = exec.backward(&l0).unwrap();
    let mut rng = SplitMix64::new(7);
    let mut analytic = 0f64;
    let mut dirs = Vec::new();
    for (p, var) in exec.parameters() {
        let w = var.as_tensor();
        assert_eq!(w.dtype(), DType::F64, "{p}");
        let rms = w.sqr().unwrap().mean_all().unwrap().to_vec0::<f64>().unwrap().sqrt().max(1e-3);
        let d: Vec<f64> =
            (0..w.elem_count()).map(|_| if rng.next_u64() & 1 == 0 { rms } else { -rms }).collect();
        let d = Tensor::from_vec(d, w.dims(), w.device()).unwrap();
        let g = grads.get(p).unwrap_or_else(|| panic!("{name}: no gradient for {p}"));
        analytic += g.mul(&d).unwrap().sum_all().unwrap().to_vec0::<f64>().unwrap();
        dirs.push((var, w.copy().unwrap(), d));
    }
    let at = |sign: f64| {
        for (var, w, d) in &dirs {
            var.set(&(w + d.affine(sign * eps, 0.0).unwrap()).unwrap()).unwrap();
        }
        loss().to_vec0::<f64>().unwrap()
    };
    let numeric = (at(1.0) - at(-1.0)) / (2.0 * eps);
    for (var, w, _) in &dirs {
        var.set(w).unwrap();
    }
    let rel = (analytic - numeric).abs() / numeric.abs().max(1e-9);
    eprintln!(
        "{name} (f64): directional derivative over {} parameters: backward {analytic:.9e}, \
         central difference {numeric:.9e} (rel {rel:.1e})",
        dirs.len()
    );
    assert!(rel < 1e-5, "{name}: {analytic} vs {numeric}");
}

/// "[CLS] the movie was surprisingly good , i enjoyed it a lot [SEP]" in the MiniLM vocabulary.
const IDS: [i64; SEQ] = [101, 1996, 3185, 2001, 10889, 2204, 1010, 1045, 5632, 2009, 1037, 102];

#[test]
fn minilm_matches_tract_and_its_gradients_match_a_directional_difference() {
    let g = load("minilm-l3-onnx");
    let exec = Executor::new(&g).unwrap();
    let ids = Tensor::from_slice(&IDS, (1, SEQ), &candle_core::Device::Cpu).unwrap();
    let mask = ids.ones_like().unwrap();
    let tract_inputs = [
        TractTensor::from_shape(&[1, SEQ], &IDS).unwrap(),
        TractTensor::from_shape(&[1, SEQ], &[1i64; SEQ]).unwrap(),
    ];
    let inputs = [("input_ids", ids), ("attention_mask", mask)];
    // The outputs are the ids and mask passed through (i64), the token embeddings [1, S, 384]
    // and the mean-pooled sentence embedding [1, 384].
    parity("minilm-l3", &g, &exec, &tract_inputs, &inputs, &[]);
    let wide = Executor::new(&to_f64(&g)).unwrap();
    let params = wide.parameters().count();
    assert!(params > 30, "{params} parameters");
    let sentence = "461";
    let exec = wide;
    directional_check("minilm-l3", &exec, 1e-6, &|| {
        let out = exec.run(inputs.iter().map(|(n, t)| (*n, t.clone())), &[sentence]).unwrap();
        out[sentence].sqr().unwrap().mean_all().unwrap()
    });
}

#[test]
fn open_nsfw_matches_tract_and_its_gradients_match_a_directional_difference() {
    let g = load("open-nsfw-onnx");
    let exec = Executor::new(&g).unwrap();
    // A smooth BGR-mean-subtracted gradient image, NHWC.
    let v: Vec<f32> = (0..224 * 224 * 3)
        .map(|i| {
            let (y, x, c) = (i / (224 * 3), (i / 3) % 224, i % 3);
            ((x as f32 * 0.05 + y as f32 * 0.03 + c as f32).sin() * 100.0).round()
        })
        .collect();
    let tract_inputs = [TractTensor::from_shape(&[1, 224, 224, 3], &v).unwrap()];
    let input = Tensor::from_vec(v, (1, 224, 224, 3), &candle_core::Device::Cpu).unwrap();
    let name = g.inputs()[0].name.clone();
    let inputs = [(name.as_str(), input)];
    // The output is a softmax over two classes; its logits are checked too.
    let softmax = g.nodes().unwrap().into_iter().find(|n| n.op_type == "Softmax").unwrap();
    let logits = softmax.inputs[0].as_str();
    parity("open-nsfw", &g, &exec, &tract_inputs, &inputs, &[logits]);
    let exec = Executor::new(&to_f64(&g)).unwrap();
    let inputs = [(name.as_str(), inputs[0].1.to_dtype(DType::F64).unwrap())];
    directional_check("open-nsfw", &exec, 1e-8, &|| {
        let out = exec.run(inputs.iter().map(|(n, t)| (*n, t.clone())), &[logits]).unwrap();
        out[logits].narrow(1, 1, 1).unwrap().sum_all().unwrap()
    });
}

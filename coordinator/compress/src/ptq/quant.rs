//! int8 dynamic quantization of `MatMul` and `Gemm` with constant weights, in the operator form
//! ONNX Runtime fuses (`DynamicQuantizeLinear → MatMulInteger → Cast → Mul`, with the scales
//! multiplied once): weights int8 symmetric (per output column or per tensor), activations
//! uint8 asymmetric, quantized at run time from each input's own range. No calibration data.
//!
//! ONNX Runtime turns the pattern into `MatMulIntegerToFloat` / `DynamicQuantizeMatMul` kernels
//! (VNNI, AVX2, NEON dot product); tract runs it too, far slower than its f32 (see
//! `docs/optimize.md`), which is why a pass is kept only where the target runtime measures it
//! faster.

use std::collections::HashMap;

use anyhow::{Context as _, bail};
use hone_graph::{Attribute, Graph, Node, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// How weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DynamicOptions {
    /// One scale per output column (`true`) or one per weight tensor.
    pub per_channel: bool,
    /// 7-bit weights (±63): avoids the saturation of the u8×s8 pairwise add on x86 CPUs
    /// without VNNI (ONNX Runtime's `reduce_range`).
    pub reduce_range: bool,
}

impl Default for DynamicOptions {
    fn default() -> Self {
        DynamicOptions { per_channel: true, reduce_range: false }
    }
}

/// What the pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QuantReport {
    /// Nodes rewritten (`MatMul`, `Gemm`).
    pub quantized: Vec<String>,
    /// Nodes left in f32, each with why.
    pub skipped: Vec<(String, String)>,
    /// f32 weight bytes replaced by int8 ones.
    pub weight_bytes_before: u64,
    /// int8 weight bytes (plus scales) after.
    pub weight_bytes_after: u64,
}

/// Symmetric int8 of a `[k, n]` row-major weight: values, and one scale per column (or one).
pub(crate) fn quantize_weight(
    w: &[f32],
    k: usize,
    n: usize,
    opts: DynamicOptions,
) -> (Vec<i8>, Vec<f32>) {
    let qmax = if opts.reduce_range { 63.0 } else { 127.0 };
    let scales: Vec<f32> = if opts.per_channel {
        (0..n)
            .map(|j| {
                let m = (0..k).map(|i| w[i * n + j].abs()).fold(0f32, f32::max);
                if m > 0.0 { m / qmax } else { 1.0 }
            })
            .collect()
    } else {
        let m = w.iter().map(|x| x.abs()).fold(0f32, f32::max);
        vec![if m > 0.0 { m / qmax } else { 1.0 }]
    };
    let q = w
        .iter()
        .enumerate()
        .map(|(ix, x)| {
            let s = if opts.per_channel { scales[ix % n] } else { scales[0] };
            (x / s).round().clamp(-qmax, qmax) as i8
        })
        .collect();
    (q, scales)
}

/// A constant 2-D f32 weight `[k, n]` read by `node` at input `ix`, transposed when `trans`.
fn weight(graph: &Graph, name: &str, trans: bool) -> Option<(Vec<f32>, usize, usize)> {
    let t = graph.initializer(name).ok()?;
    let TensorData::F32(v) = &t.data else { return None };
    let [r, c] = t.dims[..] else { return None };
    if !trans {
        return Some((v.clone(), r, c));
    }
    let mut out = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    Some((out, c, r))
}

fn int_attr(n: &Node, name: &str, default: i64) -> i64 {
    match n.attribute(name) {
        Some(Attribute::Int(v)) => *v,
        _ => default,
    }
}

fn float_attr(n: &Node, name: &str, default: f32) -> f32 {
    match n.attribute(name) {
        Some(Attribute::Float(v)) => *v,
        _ => default,
    }
}

/// Rewrites every `MatMul` (and plain `Gemm`) whose second input is a constant f32 matrix into
/// the dynamic int8 form. Graphs below opset 11 (no `DynamicQuantizeLinear`) are refused.
pub fn quantize_dynamic(
    graph: &Graph,
    opts: DynamicOptions,
) -> anyhow::Result<(Graph, QuantReport)> {
    if graph.opset().unwrap_or(0) < 11 {
        bail!(
            "dynamic int8 needs opset 11 or later (DynamicQuantizeLinear); this model declares \
             opset {}",
            graph.opset().unwrap_or(0)
        );
    }
    let mut g = graph.clone();
    let mut report = QuantReport::default();
    // One DynamicQuantizeLinear per activation, shared by every matmul that reads it.
    let mut quantized_inputs: HashMap<String, (String, String, String)> = HashMap::new();
    let nodes = graph.nodes().context("reading the graph's nodes")?;
    let mut new_nodes: Vec<Node> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let label = if n.name.is_empty() { format!("#{i} {}", n.op_type) } else { n.name.clone() };
        let (a, b, trans_b, bias) = match n.op_type.as_str() {
            "MatMul" if n.inputs.len() == 2 => (&n.inputs[0], &n.inputs[1], false, None),
            "Gemm" => {
                let plain = int_attr(n, "transA", 0) == 0
                    && float_attr(n, "alpha", 1.0) == 1.0
                    && float_attr(n, "beta", 1.0) == 1.0;
                if !plain {
                    report.skipped.push((label, "Gemm with transA, alpha or beta".into()));
                    continue;
                }
                let bias = n.inputs.get(2).filter(|c| !c.is_empty());
                (&n.inputs[0], &n.inputs[1], int_attr(n, "transB", 0) != 0, bias)
            }
            _ => continue,
        };
        if n.name.is_empty() {
            report.skipped.push((label, "unnamed node".into()));
            continue;
        }
        let Some((w, k, cols)) = weight(graph, b, trans_b) else {
            report.skipped.push((label, "the weight is not a constant f32 matrix".into()));
            continue;
        };
        let (q, scales) = quantize_weight(&w, k, cols, opts);
        report.weight_bytes_before += (w.len() * 4) as u64;
        report.weight_bytes_after += (q.len() + scales.len() * 5) as u64;
        let p = &n.name;
        let (wq, wzp, ws) = (format!("{p}_W_q"), format!("{p}_W_zp"), format!("{p}_W_scale"));
        let sdims = if opts.per_channel { vec![cols] } else { vec![] };
        g.add_initializer(&wq, &Tensor::new(vec![k, cols], TensorData::I8(q))?)?;
        g.add_initializer(
            &wzp,
            &Tensor::new(sdims.clone(), TensorData::I8(vec![0; scales.len()]))?,
        )?;
        g.add_initializer(&ws, &Tensor::new(sdims, TensorData::F32(scales))?)?;
        let (aq, a_scale, a_zp) = quantized_inputs
            .entry(a.clone())
            .or_insert_with(|| {
                let base = format!("{p}_in");
                new_nodes.push(Node::new(
                    &format!("{base}_dql"),
                    "DynamicQuantizeLinear",
                    &[a],
                    &[&format!("{base}_q"), &format!("{base}_scale"), &format!("{base}_zp")],
                ));
                (format!("{base}_q"), format!("{base}_scale"), format!("{base}_zp"))
            })
            .clone();
        let out = &n.outputs[0];
        let product = if bias.is_some() { format!("{p}_matmul") } else { out.clone() };
        new_nodes.push(Node::new(
            &format!("{p}_mmi"),
            "MatMulInteger",
            &[&aq, &wq, &a_zp, &wzp],
            &[&format!("{p}_i32")],
        ));
        new_nodes.push(Node::new(
            &format!("{p}_scales"),
            "Mul",
            &[&a_scale, &ws],
            &[&format!("{p}_scale")],
        ));
        new_nodes.push(
            Node::new(&format!("{p}_cast"), "Cast", &[&format!("{p}_i32")], &[&format!("{p}_f32")])
                .with_attribute("to", Attribute::Int(1)),
        );
        new_nodes.push(Node::new(
            &format!("{p}_rescale"),
            "Mul",
            &[&format!("{p}_f32"), &format!("{p}_scale")],
            &[&product],
        ));
        if let Some(c) = bias {
            new_nodes.push(Node::new(&format!("{p}_bias"), "Add", &[&product, c], &[out]));
        }
        removed.push(n.name.clone());
        report.quantized.push(n.name.clone());
    }
    if removed.is_empty() {
        return Ok((g, report));
    }
    let names: Vec<&str> = removed.iter().map(String::as_str).collect();
    g.remove_nodes(&names)?;
    g.insert_nodes(new_nodes)?;
    g.prune_unused();
    g.validate().context("the quantized graph")?;
    Ok((g, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor as CTensor};
    use hone_learn::eval::ort::OrtModel;
    use hone_learn::eval::tract::TractPlan;
    use hone_learn::train::builder::{Layer, ModelSpec};

    fn mlp() -> Graph {
        ModelSpec {
            name: "mlp".into(),
            input: [1, 8, 8],
            layers: vec![
                Layer::Flatten,
                Layer::Dense { out: 48 },
                Layer::Relu,
                Layer::Dense { out: 10 },
            ],
            seed: 3,
        }
        .build()
        .unwrap()
        .graph
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    }

    /// Every Gemm becomes the int8 form; the model computes what the f32 one does, in tract
    /// and in ONNX Runtime, on inputs it never saw.
    #[test]
    fn a_quantized_mlp_computes_what_the_f32_one_does_in_both_runtimes() {
        let g = mlp();
        let (q, report) = quantize_dynamic(&g, DynamicOptions::default()).unwrap();
        assert_eq!(report.quantized.len(), 2, "{report:?}");
        let ops: Vec<String> = q.nodes().unwrap().into_iter().map(|n| n.op_type).collect();
        assert!(!ops.iter().any(|o| o == "Gemm" || o == "MatMul"), "{ops:?}");
        assert_eq!(ops.iter().filter(|o| *o == "MatMulInteger").count(), 2);
        assert_eq!(ops.iter().filter(|o| *o == "DynamicQuantizeLinear").count(), 2);
        assert!(report.weight_bytes_after * 3 < report.weight_bytes_before, "{report:?}");
        let x: Vec<f32> = (0..4 * 64).map(|i| ((i * 37 % 101) as f32 / 101.0) - 0.3).collect();
        let input = CTensor::from_vec(x, (4, 1, 8, 8), &Device::Cpu).unwrap();
        let facts = [(candle_core::DType::F32, vec![4, 1, 8, 8])];
        let f32_out =
            TractPlan::new(g.proto(), &facts).unwrap().run(std::slice::from_ref(&input)).unwrap();
        let tract_q =
            TractPlan::new(q.proto(), &facts).unwrap().run(std::slice::from_ref(&input)).unwrap();
        let name = hone_learn::eval::tract::true_inputs(&q)[0].clone();
        let ort_q = OrtModel::new(&q, 1).unwrap().run(&[(name.clone(), input.clone())]).unwrap();
        // ONNX Runtime's u8×s8 kernels saturate on x86 CPUs without VNNI (seen: cosine 0.9955
        // on an AVX2-only EPYC): there the 8-bit form gets a looser bound, and the 7-bit form,
        // made for such CPUs, must meet the tight one.
        let saturates = crate::ptq::u8s8_saturates();
        for (runtime, out) in [("tract", &tract_q), ("onnxruntime", &ort_q)] {
            assert_eq!(out[0].0, vec![4, 10]);
            let c = cosine(&f32_out[0].1, &out[0].1);
            let bound = if runtime == "onnxruntime" && saturates { 0.99 } else { 0.999 };
            assert!(c > bound, "{runtime}: cosine {c} (u8×s8 saturates here: {saturates})");
        }
        if saturates {
            let options = DynamicOptions { reduce_range: true, ..DynamicOptions::default() };
            let (q7, _) = quantize_dynamic(&g, options).unwrap();
            let ort_7 = OrtModel::new(&q7, 1).unwrap().run(&[(name, input)]).unwrap();
            let c = cosine(&f32_out[0].1, &ort_7[0].1);
            assert!(c > 0.999, "onnxruntime, 7-bit weights: cosine {c}");
        }
        // A broken weight scale would not be caught by shapes alone: perturbing it moves
        // the outputs away, so the check above can fail.
        let mut bad = q.clone();
        let scale = report.quantized[0].clone() + "_W_scale";
        let mut t = bad.initializer(&scale).unwrap();
        if let TensorData::F32(v) = &mut t.data {
            v.iter_mut().for_each(|s| *s *= 3.0);
        }
        bad.replace_initializer(&scale, &t).unwrap();
        let x: Vec<f32> = (0..64).map(|i| (i as f32 / 64.0) - 0.3).collect();
        let input = CTensor::from_vec(x, (1, 1, 8, 8), &Device::Cpu).unwrap();
        let facts = [(candle_core::DType::F32, vec![1, 1, 8, 8])];
        let a =
            TractPlan::new(g.proto(), &facts).unwrap().run(std::slice::from_ref(&input)).unwrap();
        let b = TractPlan::new(bad.proto(), &facts).unwrap().run(&[input]).unwrap();
        let max_diff = a[0].1.iter().zip(&b[0].1).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max_diff > 1e-2, "{max_diff}");
    }

    #[test]
    fn old_opsets_and_models_without_constant_weights_are_refused_or_left_alone() {
        let g = mlp();
        let mut proto = g.clone().into_proto();
        proto.opset_import[0].version = 9;
        let old = Graph::from_proto(proto).unwrap();
        let e = quantize_dynamic(&old, DynamicOptions::default()).unwrap_err().to_string();
        assert!(e.contains("opset 11") && e.contains("opset 9"), "{e}");
        // A Gemm whose weight is an input, not a constant, stays in f32 with the reason.
        let mut p = g.into_proto();
        let graph = p.graph.as_mut().unwrap();
        let w = graph.node.iter().find(|n| n.op_type == "Gemm").unwrap().input[1].clone();
        let init = graph.initializer.iter().position(|t| t.name == w).unwrap();
        let t = graph.initializer.remove(init);
        graph.input.push(
            hone_graph::ValueInfo::tensor(
                &w,
                hone_graph::DataType::F32,
                t.dims.iter().map(|d| hone_graph::Dim::Value(*d)).collect(),
            )
            .to_proto(),
        );
        let g = Graph::from_proto(p).unwrap();
        let (_, report) = quantize_dynamic(&g, DynamicOptions::default()).unwrap();
        assert_eq!(report.quantized.len(), 1);
        assert!(report.skipped.iter().any(|(_, why)| why.contains("not a constant")), "{report:?}");
    }

    #[test]
    fn weights_round_trip_within_half_a_step_per_column() {
        // Two columns of very different ranges: per-column scales keep the small one precise.
        let w = [0.5f32, 0.001, -1.0, 0.002, 0.25, -0.003];
        let (q, s) = quantize_weight(&w, 3, 2, DynamicOptions::default());
        assert_eq!(s.len(), 2);
        for (ix, x) in w.iter().enumerate() {
            let back = f32::from(q[ix]) * s[ix % 2];
            assert!((back - x).abs() <= s[ix % 2] / 2.0 + 1e-9, "{x} -> {back}");
        }
        assert_eq!(q[2], -127, "the largest magnitude maps to the end of the range");
        let (q, s) =
            quantize_weight(&w, 3, 2, DynamicOptions { per_channel: false, reduce_range: true });
        assert_eq!(s.len(), 1);
        assert!(q.iter().all(|v| v.abs() <= 63));
        // Per tensor, the small column collapses to zero: what per-channel avoids.
        assert_eq!([q[1], q[3], q[5]], [0, 0, 0]);
    }
}

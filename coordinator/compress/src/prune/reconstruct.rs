//! Reconstruction after pruning, without training (in the spirit of FLAP's bias compensation
//! and layer-wise least squares): each layer that reads pruned units (a `MatMul`, `Gemm` or
//! plain 2-D `Conv` whose weight lost inputs but kept its outputs; a convolution is fitted on
//! its image patches) gets new weights, fitted by ridge least squares
//! so that, on calibration examples, the pruned model's layer input times the new weights gives
//! what the parent's layer gave:
//!
//! `W' = argmin ‖X_child W' − Y_parent‖² + λ‖W'‖²`, with a bias column when the layer has one.
//!
//! Layers are refitted in graph order, each on the activations of the model as refitted so far,
//! so an earlier layer's correction is seen by the later ones. The solve is a Cholesky
//! factorisation in f64 of the `K × K` normal matrix (K the kept inputs).

use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{DType, Device, Tensor as CTensor};
use hone_graph::{Attribute, Graph, Node, Tensor, TensorData};
use hone_learn::eval::EvalBatch;
use hone_learn::eval::TractRunner;
use serde::Serialize;

/// What reconstruction did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconstructReport {
    /// Layers refitted, in order.
    pub refitted: Vec<String>,
    /// Calibration rows (token positions or examples) per layer.
    pub rows: usize,
    /// Relative error of the refitted layer's output against the parent's, before and after,
    /// per layer (`‖XW − Y‖ / ‖Y‖`).
    pub error_before_after: Vec<(f64, f64)>,
    /// Seconds.
    pub seconds: f64,
}

/// A layer to refit: its node and weight layout.
struct Layer {
    node: String,
    weight: String,
    /// `Gemm` with `transB = 1`: the weight is `[N, K]`.
    transposed: bool,
    /// A 2-D convolution (group 1, no dilation): kernel, strides, pads (top, left, bottom,
    /// right); its weight `[N, C, kh, kw]` is fitted as `[C·kh·kw, N]` on image patches.
    conv: Option<Conv>,
    /// A `Gemm` bias refitted with the weights.
    bias: Option<String>,
    k: usize,
    n: usize,
}

fn weight_dims(g: &Graph, name: &str) -> Option<Vec<usize>> {
    let t = g.initializer(name).ok()?;
    matches!(t.data, TensorData::F32(_)).then_some(t.dims)
}

fn int_attr(n: &Node, name: &str, default: i64) -> i64 {
    match n.attribute(name) {
        Some(Attribute::Int(v)) => *v,
        _ => default,
    }
}

#[derive(Debug, Clone, Copy)]
struct Conv {
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
}

fn ints(n: &Node, name: &str) -> Option<Vec<i64>> {
    match n.attribute(name) {
        Some(Attribute::Ints(v)) => Some(v.clone()),
        _ => None,
    }
}

/// The geometry of a plain 2-D convolution (group 1, dilation 1, explicit pads).
fn conv_of(n: &Node, w: &[usize]) -> Option<Conv> {
    if w.len() != 4 || int_attr(n, "group", 1) != 1 {
        return None;
    }
    if ints(n, "dilations").is_some_and(|d| d.iter().any(|x| *x != 1)) {
        return None;
    }
    if matches!(n.attribute("auto_pad"), Some(Attribute::String(s)) if s != b"NOTSET") {
        return None;
    }
    let s = ints(n, "strides").unwrap_or(vec![1, 1]);
    let p = ints(n, "pads").unwrap_or(vec![0, 0, 0, 0]);
    (s.len() == 2 && p.len() == 4).then(|| Conv {
        kernel: [w[2], w[3]],
        strides: [s[0] as usize, s[1] as usize],
        pads: [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize],
    })
}

/// The child's layers that read pruned units and kept their outputs.
fn layers(parent: &Graph, child: &Graph) -> anyhow::Result<Vec<Layer>> {
    let parents: std::collections::HashMap<String, Node> =
        parent.nodes()?.into_iter().map(|n| (n.name.clone(), n)).collect();
    let mut out = Vec::new();
    for n in child.nodes()? {
        let Some(p) = parents.get(&n.name) else { continue };
        let transposed = match n.op_type.as_str() {
            "MatMul" | "Conv" => false,
            "Gemm" if int_attr(&n, "transA", 0) == 0 => int_attr(&n, "transB", 0) != 0,
            _ => continue,
        };
        let (Some(w), Some(pw)) = (
            n.inputs.get(1).and_then(|w| weight_dims(child, w)),
            p.inputs.get(1).and_then(|w| weight_dims(parent, w)),
        ) else {
            continue;
        };
        let conv = if n.op_type == "Conv" {
            match conv_of(&n, &w) {
                Some(c) => Some(c),
                None => continue,
            }
        } else {
            None
        };
        let (k, nn, pk, pn) = match (&conv, transposed) {
            (Some(c), _) => {
                (w[1] * c.kernel[0] * c.kernel[1], w[0], pw[1] * c.kernel[0] * c.kernel[1], pw[0])
            }
            (None, _) if w.len() != 2 || pw.len() != 2 => continue,
            (None, true) => (w[1], w[0], pw[1], pw[0]),
            (None, false) => (w[0], w[1], pw[0], pw[1]),
        };
        if k < pk && nn == pn {
            let bias = matches!(n.op_type.as_str(), "Gemm" | "Conv")
                .then(|| n.inputs.get(2).filter(|b| !b.is_empty()).cloned())
                .flatten()
                .filter(|b| weight_dims(child, b).is_some());
            out.push(Layer {
                node: n.name.clone(),
                weight: n.inputs[1].clone(),
                transposed,
                conv,
                bias,
                k,
                n: nn,
            });
        }
    }
    Ok(out)
}

/// How activations become rows.
#[derive(Clone, Copy)]
enum Rows {
    /// The last axis is the width: `[positions, width]`.
    LastAxis,
    /// NCHW channels: `[N·H·W, C]`.
    Channels,
    /// NCHW image patches of a convolution: `[N·Ho·Wo, C·kh·kw]`.
    Patches(Conv),
}

/// `[N, C, H, W]` values as convolution patches `[N·Ho·Wo, C·kh·kw]` (zero padding).
fn patches(values: &[f32], shape: &[usize], c: Conv) -> anyhow::Result<(Vec<f32>, usize, usize)> {
    let [n, ch, h, w] = shape[..] else { bail!("a convolution input of rank {}", shape.len()) };
    let [kh, kw] = c.kernel;
    let [sh, sw] = c.strides;
    let ho = (h + c.pads[0] + c.pads[2]).saturating_sub(kh) / sh + 1;
    let wo = (w + c.pads[1] + c.pads[3]).saturating_sub(kw) / sw + 1;
    let cols = ch * kh * kw;
    let mut out = vec![0f32; n * ho * wo * cols];
    for b in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                let row = (b * ho + oy) * wo + ox;
                for ci in 0..ch {
                    for ky in 0..kh {
                        let y = (oy * sh + ky) as isize - c.pads[0] as isize;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let x = (ox * sw + kx) as isize - c.pads[1] as isize;
                            if x < 0 || x >= w as isize {
                                continue;
                            }
                            out[row * cols + (ci * kh + ky) * kw + kx] =
                                values[((b * ch + ci) * h + y as usize) * w + x as usize];
                        }
                    }
                }
            }
        }
    }
    Ok((out, n * ho * wo, cols))
}

/// Runs `graph` with `value` added as an output on every batch; rows as `rows` says.
fn activations(
    graph: &Graph,
    value: &str,
    batches: &[EvalBatch],
    rows_of: Rows,
) -> anyhow::Result<CTensor> {
    let mut g = graph.clone();
    let outputs = g.outputs().len();
    let at = match g.outputs().iter().position(|o| o.name == value) {
        Some(i) => i,
        None => {
            g.add_output(value)?;
            outputs
        }
    };
    let mut parts = Vec::new();
    let mut runner = TractRunner::new(g);
    for b in batches {
        let outs = runner.run(b)?;
        let (shape, values) = &outs[at];
        let part = match rows_of {
            Rows::LastAxis => {
                let width = *shape.last().context("a scalar activation")?;
                let rows = values.len() / width.max(1);
                CTensor::from_vec(values.clone(), (rows, width), &Device::Cpu)?
            }
            Rows::Channels => {
                let [n, ch, h, w] = shape[..] else {
                    bail!("a convolution output of rank {}", shape.len())
                };
                CTensor::from_vec(values.clone(), (n, ch, h * w), &Device::Cpu)?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((n * h * w, ch))?
            }
            Rows::Patches(c) => {
                let (v, rows, cols) = patches(values, shape, c)?;
                CTensor::from_vec(v, (rows, cols), &Device::Cpu)?
            }
        };
        parts.push(part);
    }
    Ok(CTensor::cat(&parts, 0)?)
}

/// Cholesky solve of `a x = b` (`a` symmetric positive definite, `k × k`; `b` `k × n`), in f64.
pub(crate) fn solve_spd(a: &[f64], b: &[f64], k: usize, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut l = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            let mut s = a[i * k + j];
            for p in 0..j {
                s -= l[i * k + p] * l[j * k + p];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    bail!("the normal matrix is not positive definite (pivot {i})");
                }
                l[i * k + i] = s.sqrt();
            } else {
                l[i * k + j] = s / l[j * k + j];
            }
        }
    }
    let mut x = b.to_vec();
    for c in 0..n {
        for i in 0..k {
            let mut s = x[i * n + c];
            for p in 0..i {
                s -= l[i * k + p] * x[p * n + c];
            }
            x[i * n + c] = s / l[i * k + i];
        }
        for i in (0..k).rev() {
            let mut s = x[i * n + c];
            for p in i + 1..k {
                s -= l[p * k + i] * x[p * n + c];
            }
            x[i * n + c] = s / l[i * k + i];
        }
    }
    Ok(x)
}

fn to_f64(t: &CTensor) -> anyhow::Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Refits every layer of `child` that reads pruned units, on `batches` (inputs named for the
/// parent and the child alike), against `parent`. `ridge` scales the regulariser by the mean
/// diagonal of the normal matrix.
pub fn reconstruct(
    parent: &Graph,
    child: &mut Graph,
    batches: &[EvalBatch],
    ridge: f64,
) -> anyhow::Result<ReconstructReport> {
    let started = Instant::now();
    let mut report = ReconstructReport::default();
    for layer in layers(parent, child)? {
        let node = child.node(&layer.node)?;
        let pnode = parent.node(&layer.node)?;
        let (x_rows, y_rows) = match layer.conv {
            Some(c) => (Rows::Patches(c), Rows::Channels),
            None => (Rows::LastAxis, Rows::LastAxis),
        };
        let x = activations(child, &node.inputs[0], batches, x_rows)?;
        let y = activations(parent, &pnode.outputs[0], batches, y_rows)?;
        let rows = x.dims()[0];
        if rows != y.dims()[0] || rows == 0 {
            bail!("layer {}: {rows} input rows against {} outputs", layer.node, y.dims()[0]);
        }
        report.rows = rows;
        // The bias as one more input column of ones.
        let x = if layer.bias.is_some() {
            CTensor::cat(&[x, CTensor::ones((rows, 1), DType::F32, &Device::Cpu)?], 1)?
        } else {
            x
        };
        let kk = x.dims()[1];
        let x64 = x.to_dtype(DType::F64)?;
        let y64 = y.to_dtype(DType::F64)?;
        let xt = x64.t()?;
        let mut a = to_f64(&xt.matmul(&x64)?)?;
        let b = to_f64(&xt.matmul(&y64)?)?;
        let mean_diag = (0..kk).map(|i| a[i * kk + i]).sum::<f64>() / kk as f64;
        let lambda = ridge * mean_diag.max(1e-12);
        for i in 0..kk {
            a[i * kk + i] += lambda;
        }
        let w = solve_spd(&a, &b, kk, layer.n)
            .with_context(|| format!("refitting layer {}", layer.node))?;
        // Errors before and after, on the calibration rows.
        let old = current(child, &layer)?;
        let err = |w: &[f64]| -> anyhow::Result<f64> {
            let wt = CTensor::from_vec(w.to_vec(), (kk, layer.n), &Device::Cpu)?;
            let d = (x64.matmul(&wt)? - &y64)?;
            let num = d.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
            let den = y64.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt().max(1e-12);
            Ok(num / den)
        };
        let (before, after) = (err(&old)?, err(&w)?);
        report.error_before_after.push((before, after));
        if after >= before {
            continue; // Never make a layer worse than plain pruning left it.
        }
        write(child, &layer, &w)?;
        report.refitted.push(layer.node.clone());
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The layer's current weights (and bias row) as `[K (+1), N]` f64.
fn current(g: &Graph, layer: &Layer) -> anyhow::Result<Vec<f64>> {
    let t = g.initializer(&layer.weight)?;
    let TensorData::F32(v) = &t.data else { bail!("not f32") };
    let (k, n) = (layer.k, layer.n);
    let mut w = vec![0f64; (k + usize::from(layer.bias.is_some())) * n];
    for i in 0..k {
        for j in 0..n {
            let flat =
                if layer.transposed || layer.conv.is_some() { v[j * k + i] } else { v[i * n + j] };
            w[i * n + j] = f64::from(flat);
        }
    }
    if let Some(b) = &layer.bias {
        let bt = g.initializer(b)?;
        let TensorData::F32(bv) = &bt.data else { bail!("bias not f32") };
        for j in 0..n {
            w[k * n + j] = f64::from(bv[j % bv.len().max(1)]);
        }
    }
    Ok(w)
}

fn write(g: &mut Graph, layer: &Layer, w: &[f64]) -> anyhow::Result<()> {
    let (k, n) = (layer.k, layer.n);
    let mut v = vec![0f32; k * n];
    for i in 0..k {
        for j in 0..n {
            let x = w[i * n + j] as f32;
            if layer.transposed || layer.conv.is_some() {
                v[j * k + i] = x;
            } else {
                v[i * n + j] = x;
            }
        }
    }
    let dims = match layer.conv {
        Some(_) => g.initializer(&layer.weight)?.dims,
        None if layer.transposed => vec![n, k],
        None => vec![k, n],
    };
    g.replace_initializer(&layer.weight, &Tensor::new(dims, TensorData::F32(v))?)?;
    if let Some(b) = &layer.bias {
        let bias: Vec<f32> = (0..n).map(|j| w[k * n + j] as f32).collect();
        g.replace_initializer(b, &Tensor::new(vec![n], TensorData::F32(bias))?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_learn::data::Part;
    use hone_learn::eval::EvalData;
    use hone_learn::train::builder::{Layer as L, ModelSpec};

    /// Half the hidden units of an MLP removed by hand (the rows of the first `Gemm`, the
    /// columns of the second): reconstruction refits the second layer so that the pruned model
    /// comes closer to the parent, on digits it was not fitted on.
    #[test]
    fn reconstruction_brings_a_pruned_mlp_closer_to_its_parent() {
        let parent = ModelSpec {
            name: "mlp".into(),
            input: [1, 28, 28],
            layers: vec![L::Flatten, L::Dense { out: 32 }, L::Relu, L::Dense { out: 10 }],
            seed: 9,
        }
        .build()
        .unwrap()
        .graph;
        let gemms: Vec<Node> =
            parent.nodes().unwrap().into_iter().filter(|n| n.op_type == "Gemm").collect();
        let (w1, b1, w2) = (&gemms[0].inputs[1], &gemms[0].inputs[2], &gemms[1].inputs[1]);
        let keep: Vec<usize> = (0..32).filter(|i| i % 2 == 0).collect();
        let mut child = parent.clone();
        let t = parent.initializer(w1).unwrap();
        let TensorData::F32(v) = &t.data else { panic!() };
        let rows: Vec<f32> =
            keep.iter().flat_map(|&r| v[r * 784..(r + 1) * 784].to_vec()).collect();
        child
            .replace_initializer(w1, &Tensor::new(vec![16, 784], TensorData::F32(rows)).unwrap())
            .unwrap();
        let t = parent.initializer(b1).unwrap();
        let TensorData::F32(v) = &t.data else { panic!() };
        let b: Vec<f32> = keep.iter().map(|&r| v[r]).collect();
        child.replace_initializer(b1, &Tensor::new(vec![16], TensorData::F32(b)).unwrap()).unwrap();
        let t = parent.initializer(w2).unwrap();
        let TensorData::F32(v) = &t.data else { panic!() };
        let cols: Vec<f32> = (0..10)
            .flat_map(|o| keep.iter().map(move |&c| (o, c)))
            .map(|(o, c)| v[o * 32 + c])
            .collect();
        child
            .replace_initializer(w2, &Tensor::new(vec![10, 16], TensorData::F32(cols)).unwrap())
            .unwrap();

        let data = EvalData::open(&hone_learn::eval::DataSpec::parse("mnist").unwrap()).unwrap();
        let calib = data.batches(&parent, Part::Train, 32, Some(128), Some(0)).unwrap();
        refits_closer(&parent, &child, &data, &calib, &gemms[1].name, 0.7);
    }

    /// Reconstructs `child` on `calib`: exactly `layer` is refitted, its calibration error
    /// falls below `ratio` of plain pruning's, and on held-out validation digits the model's
    /// outputs come closer to the parent's.
    fn refits_closer(
        parent: &Graph,
        child: &Graph,
        data: &EvalData,
        calib: &[EvalBatch],
        layer: &str,
        ratio: f64,
    ) {
        let mut rebuilt = child.clone();
        let report = reconstruct(parent, &mut rebuilt, calib, 1e-3).unwrap();
        assert_eq!(report.refitted, vec![layer.to_owned()], "{report:?}");
        let (before, after) = report.error_before_after[0];
        assert!(after < ratio * before, "{before} -> {after}");
        let f = |m: &Graph| {
            hone_learn::eval::fidelity(m, parent, data, Part::Validation, 64, Some(200), None)
                .unwrap()
                .mean_cosine
        };
        let (plain, fitted) = (f(child), f(&rebuilt));
        assert!(fitted > plain, "cosine to the parent: plain {plain}, reconstructed {fitted}");
    }

    /// Half the channels of a CNN's first convolution removed by hand: the second convolution
    /// is refitted on its image patches and brings the model closer to its parent.
    #[test]
    fn reconstruction_refits_a_convolution_on_its_patches() {
        let parent = ModelSpec {
            name: "cnn".into(),
            input: [1, 28, 28],
            layers: vec![
                L::Conv { out: 8, kernel: 3, pad: 1, stride: 2 },
                L::Relu,
                L::Conv { out: 6, kernel: 3, pad: 1, stride: 2 },
                L::Relu,
                L::Flatten,
                L::Dense { out: 10 },
            ],
            seed: 4,
        }
        .build()
        .unwrap()
        .graph;
        let convs: Vec<Node> =
            parent.nodes().unwrap().into_iter().filter(|n| n.op_type == "Conv").collect();
        let keep: Vec<usize> = vec![0, 2, 4, 6];
        let mut child = parent.clone();
        let f32s = |g: &Graph, n: &str| match g.initializer(n).unwrap().data {
            TensorData::F32(v) => v,
            _ => panic!(),
        };
        let w1 = f32s(&parent, &convs[0].inputs[1]);
        let rows: Vec<f32> = keep.iter().flat_map(|&o| w1[o * 9..(o + 1) * 9].to_vec()).collect();
        child
            .replace_initializer(
                &convs[0].inputs[1],
                &Tensor::new(vec![4, 1, 3, 3], TensorData::F32(rows)).unwrap(),
            )
            .unwrap();
        let b1 = f32s(&parent, &convs[0].inputs[2]);
        let b: Vec<f32> = keep.iter().map(|&o| b1[o]).collect();
        child
            .replace_initializer(
                &convs[0].inputs[2],
                &Tensor::new(vec![4], TensorData::F32(b)).unwrap(),
            )
            .unwrap();
        let w2 = f32s(&parent, &convs[1].inputs[1]);
        let mut cut = Vec::new();
        for o in 0..6 {
            for &c in &keep {
                cut.extend_from_slice(&w2[(o * 8 + c) * 9..(o * 8 + c + 1) * 9]);
            }
        }
        child
            .replace_initializer(
                &convs[1].inputs[1],
                &Tensor::new(vec![6, 4, 3, 3], TensorData::F32(cut)).unwrap(),
            )
            .unwrap();
        let data = EvalData::open(&hone_learn::eval::DataSpec::parse("mnist").unwrap()).unwrap();
        let calib = data.batches(&parent, Part::Train, 16, Some(64), Some(0)).unwrap();
        refits_closer(&parent, &child, &data, &calib, &convs[1].name, 1.0);
    }

    #[test]
    fn the_cholesky_solve_recovers_a_known_solution() {
        // a = m mᵀ + I (positive definite), x known, b = a x.
        let k = 5;
        let m: Vec<f64> = (0..k * k).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
        let mut a = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                a[i * k + j] = (0..k).map(|p| m[i * k + p] * m[j * k + p]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let x: Vec<f64> = (0..k * 2).map(|i| i as f64 - 3.5).collect();
        let mut b = vec![0f64; k * 2];
        for i in 0..k {
            for c in 0..2 {
                b[i * 2 + c] = (0..k).map(|p| a[i * k + p] * x[p * 2 + c]).sum();
            }
        }
        let got = solve_spd(&a, &b, k, 2).unwrap();
        for (g, e) in got.iter().zip(&x) {
            assert!((g - e).abs() < 1e-9, "{g} vs {e}");
        }
        let mut bad = a.clone();
        bad[0] = -1.0;
        assert!(solve_spd(&bad, &b, k, 2).is_err());
    }
}

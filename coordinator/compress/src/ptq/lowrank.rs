//! Low-rank factorisation of `MatMul` weights without training: `W [K, N] ≈ W1 [K, r] · W2
//! [r, N]`, from a randomized SVD (range finder with two power iterations, candle's f64
//! matmuls, then a Jacobi eigen-solve of the small projected matrix). Each layer takes the
//! smallest rank (a multiple of 8) that keeps `energy` of its squared Frobenius norm, and only
//! if `r (K + N)` stays under 70 % of `K N` (fewer multiply-adds, so it can be faster);
//! otherwise the layer is left alone. Whether the whole model got faster, and how much quality
//! it kept, is what `optimize` then measures.

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor as CTensor};
use hone_graph::{Graph, Node, Tensor, TensorData};
use serde::Serialize;

/// What the pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LowRankReport {
    /// Layers factored: (node, K, N, rank, energy kept).
    pub factored: Vec<(String, usize, usize, usize, f64)>,
    /// Layers left alone, with why.
    pub skipped: Vec<(String, String)>,
}

/// Largest share of the dense multiply-adds a factorisation may keep.
const MAX_COST: f64 = 0.7;

/// Symmetric eigen-decomposition by cyclic Jacobi (f64, `n × n` row-major): eigenvalues and
/// eigenvectors (columns of the returned matrix), largest first.
pub(crate) fn jacobi_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..30 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-12 * norm {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| a[y * n + y].total_cmp(&a[x * n + x]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vectors = vec![0f64; n * n];
    for (col, &i) in order.iter().enumerate() {
        for k in 0..n {
            vectors[k * n + col] = v[k * n + i];
        }
    }
    (values, vectors)
}

/// Orthonormal columns spanning `y` (`[k, p]`), by Cholesky QR with a small shift.
fn orthonormal(y: &CTensor) -> anyhow::Result<CTensor> {
    let p = y.dims()[1];
    let g: Vec<f64> = y.t()?.matmul(y)?.flatten_all()?.to_vec1()?;
    let scale = (0..p).map(|i| g[i * p + i]).sum::<f64>() / p as f64;
    // Eigen-decomposition of the small Gram matrix instead of Cholesky: robust when columns
    // are nearly dependent. Q = Y V Λ^{-1/2} over the eigenvalues that are not ~0.
    let (vals, vecs) = jacobi_eigen(&g, p);
    let keep: Vec<usize> = (0..p).filter(|&i| vals[i] > 1e-10 * scale.max(1e-300)).collect();
    let mut m = vec![0f64; p * keep.len()];
    for (c, &i) in keep.iter().enumerate() {
        let s = 1.0 / vals[i].sqrt();
        for r in 0..p {
            m[r * keep.len() + c] = vecs[r * p + i] * s;
        }
    }
    let m = CTensor::from_vec(m, (p, keep.len()), &Device::Cpu)?;
    Ok(y.matmul(&m)?)
}

/// `W1 [k, r]`, `W2 [r, n]`, the rank `r` and the energy kept.
type Factors = (Vec<f32>, Vec<f32>, usize, f64);

/// A rank-`r` factorisation of `w` (`[k, n]`, f32) keeping `energy`, or why not.
fn factor(w: &[f32], k: usize, n: usize, energy: f64) -> anyhow::Result<Result<Factors, String>> {
    let r_max = ((MAX_COST * (k * n) as f64 / (k + n) as f64) as usize) / 8 * 8;
    if r_max < 8 {
        return Ok(Err("too small to gain from a factorisation".into()));
    }
    let cpu = &Device::Cpu;
    let wt = CTensor::from_vec(w.iter().map(|x| f64::from(*x)).collect::<Vec<_>>(), (k, n), cpu)?;
    let total: f64 = w.iter().map(|x| f64::from(*x).powi(2)).sum();
    let p = (r_max + 8).min(k.min(n));
    // A fixed pseudo-random test matrix: the same factors every run.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let omega: Vec<f64> = (0..n * p)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        })
        .collect();
    let omega = CTensor::from_vec(omega, (n, p), cpu)?;
    let mut q = orthonormal(&wt.matmul(&omega)?)?;
    for _ in 0..2 {
        let z = orthonormal(&wt.t()?.matmul(&q)?)?;
        q = orthonormal(&wt.matmul(&z)?)?;
    }
    let b = q.t()?.matmul(&wt)?; // [p', n]
    let pp = b.dims()[0];
    let bbt: Vec<f64> = b.matmul(&b.t()?)?.flatten_all()?.to_vec1()?;
    let (vals, vecs) = jacobi_eigen(&bbt, pp);
    let mut kept = 0.0;
    let mut rank = None;
    for (i, v) in vals.iter().enumerate() {
        kept += v.max(0.0);
        if (i + 1) % 8 == 0 && kept / total.max(1e-300) >= energy {
            rank = Some(i + 1);
            break;
        }
    }
    let Some(r) = rank.filter(|r| *r <= r_max) else {
        return Ok(Err(format!(
            "keeping {:.0} % of its energy needs a rank above {r_max}, too costly to be faster",
            energy * 100.0
        )));
    };
    let kept: f64 = vals[..r].iter().map(|v| v.max(0.0)).sum::<f64>() / total.max(1e-300);
    // W ≈ (Q U_r Σ_r^{1/2}) (Σ_r^{-1/2} U_rᵀ B).
    let mut u = vec![0f64; pp * r];
    let mut u_scaled = vec![0f64; pp * r];
    for c in 0..r {
        let s = vals[c].max(1e-300).sqrt();
        for row in 0..pp {
            u[row * r + c] = vecs[row * pp + c] * s.sqrt();
            u_scaled[row * r + c] = vecs[row * pp + c] / s.sqrt();
        }
    }
    let u = CTensor::from_vec(u, (pp, r), cpu)?;
    let u_scaled = CTensor::from_vec(u_scaled, (pp, r), cpu)?;
    let w1 = q.matmul(&u)?; // [k, r]
    let w2 = u_scaled.t()?.matmul(&b)?; // [r, n]
    let w1: Vec<f32> = w1.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let w2: Vec<f32> = w2.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(Ok((w1, w2, r, kept)))
}

/// Factors every `MatMul` whose second input is a constant f32 matrix, keeping `energy` of each.
pub fn factorise(graph: &Graph, energy: f64) -> anyhow::Result<(Graph, LowRankReport)> {
    let mut g = graph.clone();
    let mut report = LowRankReport::default();
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for n in graph.nodes()? {
        if n.op_type != "MatMul" || n.inputs.len() != 2 || n.name.is_empty() {
            continue;
        }
        let Ok(t) = graph.initializer(&n.inputs[1]) else { continue };
        let TensorData::F32(w) = &t.data else { continue };
        let [k, cols] = t.dims[..] else { continue };
        match factor(w, k, cols, energy).with_context(|| format!("factoring {}", n.name))? {
            Err(why) => report.skipped.push((n.name.clone(), why)),
            Ok((w1, w2, r, kept)) => {
                let (a, b, mid) = (
                    format!("{}_lr_a", n.name),
                    format!("{}_lr_b", n.name),
                    format!("{}_lr_mid", n.name),
                );
                g.add_initializer(&a, &Tensor::new(vec![k, r], TensorData::F32(w1))?)?;
                g.add_initializer(&b, &Tensor::new(vec![r, cols], TensorData::F32(w2))?)?;
                added.push(Node::new(
                    &format!("{}_lr1", n.name),
                    "MatMul",
                    &[&n.inputs[0], &a],
                    &[&mid],
                ));
                added.push(Node::new(
                    &format!("{}_lr2", n.name),
                    "MatMul",
                    &[&mid, &b],
                    &[&n.outputs[0]],
                ));
                removed.push(n.name.clone());
                report.factored.push((n.name.clone(), k, cols, r, kept));
            }
        }
    }
    if !removed.is_empty() {
        let names: Vec<&str> = removed.iter().map(String::as_str).collect();
        g.remove_nodes(&names)?;
        g.insert_nodes(added)?;
        g.prune_unused();
        g.validate().context("the factored graph")?;
    }
    Ok((g, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_finds_the_eigenvalues_of_a_known_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 3 and 1.
        let (vals, vecs) = jacobi_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((vals[0] - 3.0).abs() < 1e-12 && (vals[1] - 1.0).abs() < 1e-12, "{vals:?}");
        let (x, y) = (vecs[0], vecs[2]);
        assert!((x.abs() - y.abs()).abs() < 1e-12, "the first eigenvector is (1, 1)/√2");
    }

    /// A matrix of exact rank 16 plus a little noise: the factorisation finds rank 16, keeps
    /// almost all its energy and reproduces it; a full-rank random one is left alone.
    #[test]
    fn a_low_rank_weight_is_factored_and_a_full_rank_one_left_alone() {
        let (k, n, r) = (96usize, 128usize, 16usize);
        let mut state = 7u64;
        let mut rnd = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let a: Vec<f32> = (0..k * r).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..r * n).map(|_| rnd()).collect();
        let mut w = vec![0f32; k * n];
        for i in 0..k {
            for j in 0..n {
                w[i * n + j] =
                    (0..r).map(|p| a[i * r + p] * b[p * n + j]).sum::<f32>() + 1e-4 * rnd();
            }
        }
        let (w1, w2, rank, kept) = factor(&w, k, n, 0.99).unwrap().unwrap();
        assert_eq!(rank, 16);
        assert!(kept > 0.999, "{kept}");
        let mut err = 0f64;
        let mut norm = 0f64;
        for i in 0..k {
            for j in 0..n {
                let x: f32 = (0..rank).map(|p| w1[i * rank + p] * w2[p * n + j]).sum();
                err += f64::from(x - w[i * n + j]).powi(2);
                norm += f64::from(w[i * n + j]).powi(2);
            }
        }
        assert!((err / norm).sqrt() < 0.01, "relative error {}", (err / norm).sqrt());
        let full: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
        assert!(factor(&full, k, n, 0.99).unwrap().is_err(), "full rank: not worth it");

        // In a graph: one MatMul becomes two, and tract computes the same outputs.
        use hone_graph::{DataType, Dim, ValueInfo, pb};
        let info = |name: &str, d: usize| {
            ValueInfo::tensor(name, DataType::F32, vec![Dim::Value(2), Dim::Value(d as i64)])
                .to_proto()
        };
        let mut proto = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(pb::GraphProto {
                name: "g".into(),
                node: vec![Node::new("mm", "MatMul", &["x", "w"], &["y"]).to_proto()],
                input: vec![info("x", k)],
                output: vec![info("y", n)],
                ..Default::default()
            }),
            ..Default::default()
        };
        proto
            .graph
            .as_mut()
            .unwrap()
            .initializer
            .push(Tensor::new(vec![k, n], TensorData::F32(w)).unwrap().to_proto("w"));
        let g = Graph::from_proto(proto).unwrap();
        let (f, report) = factorise(&g, 0.99).unwrap();
        assert_eq!(report.factored.len(), 1, "{report:?}");
        let ops: Vec<String> = f.nodes().unwrap().into_iter().map(|n| n.op_type).collect();
        assert_eq!(ops, ["MatMul", "MatMul"]);
        let x = CTensor::from_vec(
            (0..2 * k).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
            (2, k),
            &Device::Cpu,
        )
        .unwrap();
        let facts = [(DType::F32, vec![2, k])];
        let run = |g: &Graph| {
            hone_learn::eval::tract::TractPlan::new(g.proto(), &facts)
                .unwrap()
                .run(std::slice::from_ref(&x))
                .unwrap()[0]
                .1
                .clone()
        };
        let (a, b) = (run(&g), run(&f));
        let scale = a.iter().map(|v| v.abs()).fold(1e-6f32, f32::max);
        let diff = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) / scale;
        assert!(diff < 0.01, "{diff}");
    }
}

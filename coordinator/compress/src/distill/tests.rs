//! Distillation on the real MiniLM-L3: layer blocks, students made from the teacher, a short
//! resumable run, and the attribution loss's second-order gradient.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use hone_graph::Graph;
use hone_learn::data::Part;
use hone_learn::eval::EvalData;
use hone_learn::train::exec::Executor;
use hone_learn::train::kd::{Divergence, KdLoss};

use super::attribution::{Attributions, attribution_loss, embedding_value};
use super::blocks::{Blocks, keep_blocks};
use super::*;

fn minilm_path() -> PathBuf {
    hone_assets::path("minilm-l3-onnx").unwrap_or_else(|e| panic!("{e}"))
}

fn minilm() -> Graph {
    Graph::load(minilm_path()).unwrap()
}

/// A small sentiment teacher: MiniLM-L3 with a linear head trained on 300 movie-review
/// sentences (frozen encoder), built once per test binary.
fn teacher() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hone-distill-teacher-{}", std::process::id()));
        let mut o = hone_learn::baseline::MinilmOptions::new(dir);
        o.limit = Some(300);
        o.epochs = 8;
        o.finetune_epochs = 0;
        o.progress = false;
        hone_learn::baseline::minilm_sentiment(&o).unwrap().model
    })
}

fn vader() -> EvalData {
    EvalData::load("vader").unwrap()
}

#[test]
fn minilm_has_three_stacked_blocks_with_one_attention_map_each() {
    let b = Blocks::find(&minilm()).unwrap();
    assert_eq!(b.len(), 3);
    for (i, blk) in b.blocks.iter().enumerate() {
        assert_eq!(blk.index, i);
        assert_eq!(blk.attention.len(), 1, "{blk:?}");
        if i > 0 {
            assert_eq!(blk.entry, b.blocks[i - 1].exit);
        }
    }
}

/// Dropping blocks 1 and 2 must give exactly what the teacher gives when block 2's output is
/// replaced by block 0's: the rewiring is the only change.
#[test]
fn a_student_keeping_block_0_computes_the_teacher_with_blocks_1_and_2_bypassed() {
    let g = minilm();
    let b = Blocks::find(&g).unwrap();
    let student = keep_blocks(&g, &[0]).unwrap();
    assert!(crate::prune::param_count(&student) < crate::prune::param_count(&g));
    assert_eq!(Blocks::find(&student).unwrap().len(), 1);
    let data = vader();
    let batch = data.batch(&g, &[0, 1, 2, 3]).unwrap();
    let te = Executor::with_trainable(&g, |_| false).unwrap();
    let se = Executor::with_trainable(&student, |_| false).unwrap();
    // The token embeddings (block 2's output, a graph output); MiniLM's first output is
    // mask-derived and does not depend on the layers.
    let out = b.blocks[2].exit.clone();
    let exit0 = te.run(batch.inputs.iter().cloned(), &[b.blocks[0].exit.as_str()]).unwrap();
    let bypassed = te
        .run_overriding(
            batch.inputs.iter().cloned(),
            vec![(b.blocks[2].exit.clone(), exit0[&b.blocks[0].exit].clone())],
            &[out.as_str()],
        )
        .unwrap();
    let got = se.run(batch.inputs.iter().cloned(), &[out.as_str()]).unwrap();
    let full = te.run(batch.inputs.iter().cloned(), &[out.as_str()]).unwrap();
    let diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec0()
            .unwrap()
    };
    assert!(diff(&got[&out], &bypassed[&out]) < 1e-5);
    let changed = diff(&got[&out], &full[&out]);
    assert!(changed > 1e-2, "dropping two layers must change `{out}`: {changed}");
    // tract runs the student too.
    let dir = tempdir("keep");
    student.save_gated(dir.join("s.onnx"), &Default::default()).unwrap();
}

#[test]
fn keeping_blocks_refuses_what_does_not_exist() {
    let g = minilm();
    assert!(keep_blocks(&g, &[]).is_err());
    let err = keep_blocks(&g, &[3]).unwrap_err();
    assert!(err.to_string().contains("3 blocks"), "{err}");
    // A model without named blocks.
    let cnn = hone_learn::baseline::fashion_cnn_spec(7).build().unwrap().graph;
    assert!(Blocks::find(&cnn).is_err());
}

#[test]
fn assistants_are_spaced_geometrically_and_only_for_large_gaps() {
    assert!(plan_assistants(Assistants::Auto, 3, 1, 0.5, 2.0).is_empty());
    assert_eq!(plan_assistants(Assistants::Auto, 3, 1, 0.5, 6.0), vec![(2, 0.5f64.sqrt())]);
    let three = plan_assistants(Assistants::Auto, 30, 4, 0.25, 30.0);
    assert_eq!(three.len(), 3, "{three:?}");
    assert!(three.windows(2).all(|w| w[0].0 >= w[1].0 && w[0].1 > w[1].1), "{three:?}");
    assert_eq!(plan_assistants(Assistants::Count(0), 30, 4, 0.25, 40.0), vec![]);
    assert_eq!(plan_assistants(Assistants::Count(1), 3, 1, 1.0, 1.5), vec![(2, 1.0)]);
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hone-distill-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small_config(out: PathBuf, steps: usize) -> DistillConfig {
    let mut c = DistillConfig::new(teacher().to_path_buf(), "vader".into(), out);
    c.student = StudentSpec::Derived { layers: Some(Layers::Count(1)), width: Some(0.5) };
    c.loss = KdLoss { temperature: 2.0, ..KdLoss::new(Divergence::Fkl) };
    c.steps = steps;
    c.batch_size = 8;
    c.lr = 3e-4;
    c.train_limit = Some(96);
    c.test_limit = Some(64);
    c.latency_seconds = 0.5;
    c.seq_len = 32;
    c.checkpoint_every = 4;
    c.hidden_weight = 1.0;
    c.attention_weight = 1.0;
    c
}

/// A short run writes a smaller, faster student that tract runs, learns (its loss falls), and
/// resumes from its checkpoint when run again with more steps.
#[test]
fn a_short_distillation_learns_writes_a_faster_student_and_resumes() {
    let dir = tempdir("run");
    let out = dir.join("student.onnx");
    let first = distill(&small_config(out.clone(), 8), &|_| {}).unwrap();
    assert!(out.exists());
    assert!(first.student.params < first.teacher.params);
    assert!(first.student.params_no_embeddings * 2 < first.teacher.params_no_embeddings);
    assert_eq!(first.student.layers, Some(1));
    assert_eq!(first.teacher.layers, Some(3));
    assert!(first.speedup > 1.0, "a 1-layer half-width student must be faster: {}", first.speedup);
    let stage = &first.stages[0];
    assert_eq!(stage.summary.steps, 8);
    assert_eq!(stage.summary.resumed_from, 0);
    let names: Vec<&str> = stage.summary.final_terms.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fkl", "ce", "hidden", "attention"]);
    // Run again asking for 12 steps: the stage resumes at its last checkpoint (8).
    let again = distill(&small_config(out.clone(), 12), &|_| {}).unwrap();
    assert_eq!(again.stages[0].summary.resumed_from, 8);
    assert_eq!(again.stages[0].summary.steps, 12);
    assert!(again.agreement > 0.5, "{}", again.agreement);
    // The distillation loss falls over a longer run.
    let dir2 = tempdir("learn");
    let mut c = small_config(dir2.join("s.onnx"), 24);
    c.hidden_weight = 0.0;
    c.attention_weight = 0.0;
    c.ce_weight = 0.0;
    let r = distill(&c, &|_| {}).unwrap();
    let s = &r.stages[0].summary;
    assert!(s.final_loss < s.first_loss, "loss {} → {}", s.first_loss, s.final_loss);
}

/// The attribution loss's gradient, first-order by default (no second-order graph), reaches the
/// student's weights, and a step against it lowers the loss. The exact gradient refuses to run
/// without second-order gradients; in a child process with them (`CANDLE_GRAD_DO_NOT_DETACH=1`),
/// the first-order gradient agrees with the exact one.
#[test]
fn the_first_order_attribution_gradient_lowers_the_loss_and_matches_the_exact_one() {
    use attribution::AttributionGradient::{Exact, FirstOrder};
    let child = std::env::var_os("HONE_SECOND_ORDER_CHILD").is_some();
    let t = Graph::load(teacher()).unwrap();
    let s = keep_blocks(&t, &[0]).unwrap();
    assert!(embedding_value(&t).is_some());
    let data = vader();
    let idx: Vec<usize> = data.examples(Part::Train, Some(4), None);
    let te = Executor::with_trainable(&t, |_| false).unwrap();
    let mut cache = Attributions::open(None, 4, 1).unwrap();
    let targets = cache.get_or_compute(&te, &t, &data, &idx).unwrap();
    assert_eq!(cache.len(), 4);
    assert!(targets.iter().all(|ex| ex.len() == 1 && ex[0].1.iter().any(|v| *v != 0.0)));
    let batch = data.batch(&s, &idx).unwrap();
    let exec = Executor::new(&s).unwrap();
    let loss = |exec: &Executor, mode| attribution_loss(exec, &s, &batch, &targets, 1, mode);
    let flat = |g: &hone_learn::train::exec::Gradients| -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<(String, Vec<f32>)> = g
            .iter()
            .map(|(n, t)| {
                (
                    n.to_owned(),
                    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    if !child {
        let err = loss(&exec, Exact).unwrap_err();
        assert!(err.to_string().contains("CANDLE_GRAD_DO_NOT_DETACH"), "{err}");
        let before = loss(&exec, FirstOrder).unwrap();
        let grads = exec.backward(&before).unwrap();
        let moved = flat(&grads).iter().filter(|(_, g)| g.iter().any(|v| *v != 0.0)).count();
        assert!(moved > 0, "no weight received a gradient from the attribution loss");
        for (name, var) in exec.parameters() {
            if let Some(g) = grads.get(name) {
                var.set(&(var.as_tensor() - g.affine(1e-3, 0.0).unwrap()).unwrap()).unwrap();
            }
        }
        let after = loss(&exec, FirstOrder).unwrap();
        let (b, a) = (before.to_vec0::<f32>().unwrap(), after.to_vec0::<f32>().unwrap());
        assert!(a < b, "a step against the gradient must lower the attribution loss: {b} → {a}");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "distill::tests::the_first_order_attribution_gradient_lowers_the_loss_and_matches_the_exact_one",
                "--nocapture",
            ])
            .env("HONE_SECOND_ORDER_CHILD", "1")
            .env("CANDLE_GRAD_DO_NOT_DETACH", "1")
            .status()
            .unwrap();
        assert!(status.success(), "the second-order child failed");
        return;
    }
    let exact = loss(&exec, Exact).unwrap();
    let first = loss(&exec, FirstOrder).unwrap();
    let (ve, vf) = (exact.to_vec0::<f32>().unwrap(), first.to_vec0::<f32>().unwrap());
    assert!((ve - vf).abs() <= 1e-5 * ve.abs().max(1.0), "the same loss value: {ve} vs {vf}");
    let (ge, gf) = (flat(&exec.backward(&exact).unwrap()), flat(&exec.backward(&first).unwrap()));
    // A weight missing from one side has a zero gradient there.
    let gf: std::collections::HashMap<String, Vec<f32>> = gf.into_iter().collect();
    let (mut dot, mut ne, mut nf) = (0f64, 0f64, 0f64);
    for (name, a) in &ge {
        ne += a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
        if let Some(b) = gf.get(name) {
            dot += a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>();
        }
    }
    nf += gf.values().flatten().map(|y| f64::from(*y).powi(2)).sum::<f64>();
    let cosine = dot / (ne.sqrt() * nf.sqrt());
    eprintln!(
        "exact vs first-order attribution gradient: cosine {cosine:.5}, norms {:.4e} {:.4e}",
        ne.sqrt(),
        nf.sqrt()
    );
    assert!(ne > 0.0 && cosine > 0.99, "cosine {cosine}");
    assert!((nf.sqrt() / ne.sqrt() - 1.0).abs() < 0.05, "norms {} vs {}", ne.sqrt(), nf.sqrt());
}

/// Distillation behind the pipeline's one trait: a student per grid setting, written where the
/// pipeline asked; a model without named layers fails the layer settings with the reason.
#[test]
fn the_pipeline_method_makes_a_distilled_candidate() {
    use crate::method::{CompressionMethod, DistillMethod, MethodContext, Target};
    let method = DistillMethod { steps: 4, batch_size: Some(8), ..DistillMethod::default() };
    let target = Target { class: "x86-vm-2core".into(), simd_width: 8 };
    let grid = method.grid(&target);
    assert_eq!(grid.len(), 4);
    let data = vader().with_seq_len(None);
    let dir = tempdir("method");
    let out = dir.join("c.onnx");
    let inputs = Default::default();
    let ctx = MethodContext {
        parent: teacher(),
        data: &data,
        inputs: &inputs,
        target: &target,
        out: &out,
    };
    let c = method.compress(&ctx, &grid[2]).unwrap();
    assert_eq!(c.method, "distill");
    assert!(out.exists());
    assert_eq!(c.report["layers"], 1);
    assert!(c.report["params_after"].as_u64() < c.report["params_before"].as_u64());
    // A CNN has no named layers: the layer settings fail with the reason.
    let cnn = hone_learn::baseline::fashion_cnn_spec(7).build().unwrap().graph;
    let cnn_path = dir.join("cnn.onnx");
    cnn.save(&cnn_path).unwrap();
    let fm = EvalData::load("fashion-mnist").unwrap();
    let ctx = MethodContext {
        parent: &cnn_path,
        data: &fm,
        inputs: &inputs,
        target: &target,
        out: &dir.join("d.onnx"),
    };
    let err = method.compress(&ctx, &grid[0]).unwrap_err();
    assert!(format!("{err:#}").contains("no repeated blocks"), "{err:#}");
}

//! Pruning correctness on Hone's CNN (builder), paraphrase-MiniLM-L3 and open_nsfw ResNet-50-thin.
//!
//! The central check: zeroing a unit's producing weights (and per-channel operands) silences it,
//! so removing the unit must give the same outputs as the zeroed full model. It exercises every
//! recorded slice, reshape rewrite and coupling; a missed coupling or a wrong offset breaks it.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::DType;
use proptest::prelude::*;

use super::apply::{Selection, apply, removed_channels};
use super::groups::Role;
use super::{Prepared, alloc, analysis_dims, prepare};
use hone_graph::{Graph, Tensor, TensorData};
use hone_learn::data::{Part, SplitMix64};
use hone_learn::eval::tract::TractPlan;
use hone_learn::eval::{EvalBatch, EvalData};

fn models_dir() -> std::path::PathBuf {
    hone_assets::cache_dir().join("models")
}

fn cnn() -> Graph {
    hone_learn::baseline::fashion_cnn_spec(7).build().unwrap_or_else(|e| panic!("{e}")).graph
}

fn outputs(g: &Graph, b: &EvalBatch) -> Vec<Vec<f32>> {
    let facts: Vec<(DType, Vec<usize>)> =
        b.inputs.iter().map(|(_, t)| (t.dtype(), t.dims().to_vec())).collect();
    let plan = TractPlan::new(g.proto(), &facts).unwrap_or_else(|e| panic!("tract: {e}"));
    let xs: Vec<candle_core::Tensor> = b.inputs.iter().map(|(_, t)| t.clone()).collect();
    plan.run(&xs).unwrap_or_else(|e| panic!("{e}")).into_iter().map(|(_, v)| v).collect()
}

/// The full model with the removed units' producing weights set to zero.
fn zeroed(prep: &Prepared, sel: &Selection) -> Graph {
    let mut g = prep.graph.clone();
    let mut cut: BTreeMap<(String, usize), BTreeSet<usize>> = BTreeMap::new();
    for (gid, keep) in sel {
        let group = &prep.analysis.groups[*gid];
        for p in group.params.iter().filter(|p| p.role != Role::In) {
            let gone = removed_channels(group, p.track.member, keep);
            cut.entry((p.init.clone(), p.axis))
                .or_default()
                .extend(p.track.removed_positions(&gone));
        }
    }
    for ((init, axis), pos) in cut {
        let t = g.initializer(&init).unwrap();
        let mut v = t.as_f32().unwrap().to_vec();
        let inner: usize = t.dims[axis + 1..].iter().product();
        let d = t.dims[axis];
        for (i, x) in v.iter_mut().enumerate() {
            if pos.contains(&((i / inner) % d)) {
                *x = 0.0;
            }
        }
        g.replace_initializer(&init, &Tensor::new(t.dims.clone(), TensorData::F32(v)).unwrap())
            .unwrap();
    }
    g
}

/// Removes `count` random units of every prunable group.
fn random_selection(prep: &Prepared, seed: u64, count: usize) -> Selection {
    let mut rng = SplitMix64::new(seed);
    prep.analysis
        .prunable()
        .map(|g| {
            let mut keep: Vec<usize> = (0..g.units()).collect();
            for _ in 0..count.min(g.units() - 1) {
                let i = (rng.next_u64() % keep.len() as u64) as usize;
                keep.remove(i);
            }
            (g.id, keep)
        })
        .collect()
}

fn assert_same(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: output count");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "{what}: output size");
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-4 * scale, "{what}: max |diff| {diff} of scale {scale}");
    }
}

fn check_zero_equivalence(g: &Graph, data: &str, count: usize, seed: u64) {
    let prep =
        prepare(g, &analysis_dims(g, 16, &Default::default())).unwrap_or_else(|e| panic!("{e}"));
    let data = EvalData::load(data).unwrap_or_else(|e| panic!("{e}"));
    let batch = data
        .batches(&prep.graph, Part::Test, 2, Some(2), None)
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    let sel = random_selection(&prep, seed, count);
    assert!(!sel.is_empty());
    let child = apply(&prep.graph, &prep.analysis, &sel).unwrap_or_else(|e| panic!("{e}"));
    assert!(super::param_count(&child) < super::param_count(&prep.graph));
    assert_same(&outputs(&zeroed(&prep, &sel), &batch), &outputs(&child, &batch), data.name());
}

#[test]
fn cnn_groups_follow_flatten_into_the_dense_layer() {
    let g = cnn();
    let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
    let groups: Vec<_> =
        prep.analysis.groups.iter().map(|g| (g.kind, g.channels(), g.prunable())).collect();
    assert_eq!(
        groups,
        [
            ("channels", 32, true),
            ("channels", 64, true),
            ("channels", 256, true),
            ("neurons", 256, true),
            ("neurons", 10, false)
        ]
    );
    let conv3 = &prep.analysis.groups[2];
    let fc1_in =
        conv3.params.iter().find(|p| p.role == Role::In && p.init == "fc1.weight").unwrap();
    assert_eq!((fc1_in.axis, fc1_in.track.mul), (1, 9), "a channel is 3×3 flattened features");
    assert!(prep.analysis.groups[4].blocked.as_deref().unwrap().contains("graph output `logits`"));
}

#[test]
fn zeroed_units_prune_to_the_same_outputs_cnn() {
    check_zero_equivalence(&cnn(), "fashion-mnist", 5, 1);
}

#[test]
fn zeroed_heads_and_neurons_prune_to_the_same_outputs_minilm() {
    let g = Graph::load(models_dir().join("paraphrase-MiniLM-L3-v2.onnx")).unwrap();
    let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
    let kinds: Vec<(&str, usize, usize)> =
        prep.analysis.prunable().map(|g| (g.kind, g.units(), g.unit())).collect();
    assert_eq!(
        kinds,
        [("heads", 12, 32), ("neurons", 1536, 1)].repeat(3),
        "three layers of heads (Q, K, V coupled) and FFN neurons; the hidden stream stays"
    );
    let heads = prep.analysis.prunable().next().unwrap();
    assert_eq!(heads.producers().len(), 3);
    assert!(heads.shape_edits.len() >= 4, "three splits and one merge rewritten");
    check_zero_equivalence(&g, "vader", 3, 2);
}

#[test]
fn zeroed_channels_prune_to_the_same_outputs_resnet_with_residuals() {
    let g = Graph::load(models_dir().join("open-nsfw.onnx")).unwrap();
    let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
    let residual: Vec<usize> =
        prep.analysis.prunable().filter(|g| g.members.len() > 1).map(|g| g.members.len()).collect();
    assert_eq!(residual, [4, 5, 7, 4], "each stage's residual stream couples its blocks");
    check_zero_equivalence(&g, "photos", 7, 3);
}

#[test]
fn ratio_zero_gives_identical_outputs() {
    for (g, data) in [
        (cnn(), "fashion-mnist"),
        (Graph::load(models_dir().join("open-nsfw.onnx")).unwrap(), "photos"),
    ] {
        let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
        let data = EvalData::load(data).unwrap();
        let b = data.batches(&g, Part::Test, 2, Some(2), None).unwrap().remove(0);
        let keep = alloc::uniform(&prep.analysis, 0.0, 8);
        let sel = alloc::select(&super::importance::magnitude(&prep).unwrap(), &keep);
        let child = apply(&prep.graph, &prep.analysis, &sel).unwrap();
        assert_eq!(super::param_count(&child), super::param_count(&g));
        assert_eq!(outputs(&g, &b), outputs(&child, &b), "{}", data.name());
    }
}

#[test]
fn unknown_ops_and_grouped_convolutions_are_left_alone() {
    let mut g = cnn();
    // conv2's activation becomes an op Hone does not prune through.
    let relu = g
        .node_protos()
        .iter()
        .position(|n| n.op_type == "Relu" && n.input[0].contains("conv2"))
        .unwrap();
    g.graph_proto_mut().node[relu].op_type = "Softsign".into();
    let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
    let conv2 = &prep.analysis.groups[1];
    assert!(!conv2.prunable());
    assert!(conv2.blocked.as_deref().unwrap().contains("Softsign"), "{:?}", conv2.blocked);
    assert!(prep.analysis.groups[0].prunable() && prep.analysis.groups[2].prunable());
}

#[test]
fn a_weight_read_elsewhere_is_left_alone() {
    let mut g = cnn();
    // conv2's weight is also read raw by another node: slicing it would change that node's input.
    let stray = hone_graph::Node::new("stray", "ReduceSum", &["conv2.weight"], &["stray_out"]);
    g.graph_proto_mut().node.push(stray.to_proto());
    g.add_output("stray_out").unwrap();
    let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
    for gid in [0, 1] {
        let why = prep.analysis.groups[gid].blocked.clone().unwrap_or_default();
        assert!(why.contains("`conv2.weight` is also read by `stray`"), "group {gid}: {why}");
    }
    assert!(prep.analysis.groups[2].prunable() && prep.analysis.groups[3].prunable());
}

#[test]
fn a_channel_count_read_at_run_time_is_left_alone_and_a_cycle_is_an_error() {
    let mut g = cnn();
    // conv1's output is reshaped to its own run-time shape: the target follows no rewrite.
    let relu = g.node_protos().iter().position(|n| n.op_type == "Relu").unwrap();
    let act = g.node_protos()[relu].output[0].clone();
    let nodes = [
        hone_graph::Node::new("probe", "Shape", &[act.as_str()], &["probe_shape"]),
        hone_graph::Node::new("same", "Reshape", &[act.as_str(), "probe_shape"], &["same_out"]),
    ];
    g.insert_nodes(nodes).unwrap();
    g.replace_uses(&act, "same_out").unwrap();
    let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
    let why = prep.analysis.groups[0].blocked.clone().unwrap_or_default();
    assert!(why.contains("reads the channel count at run time"), "{why}");
    assert!(prep.analysis.groups[1].prunable());

    // The first convolution reads the last ReLU's output: a cycle, refused before any analysis.
    let mut cyclic = cnn();
    let n = cyclic.node_protos().len();
    let late = cyclic.node_protos()[n - 2].output[0].clone();
    cyclic.graph_proto_mut().node[0].input[0] = late;
    let err = prepare(&cyclic, &[]).unwrap_err().to_string();
    assert!(err.contains("cycle"), "{err}");
}

#[test]
fn widths_round_to_simd_multiples() {
    let g = cnn();
    let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
    for (gid, keep) in alloc::uniform(&prep.analysis, 0.37, 8) {
        assert_eq!(keep % 8, 0, "group {gid} keeps {keep}");
        assert!(keep < prep.analysis.groups[gid].units());
    }
    for (_, keep) in alloc::uniform(&prep.analysis, 0.37, 4) {
        assert_eq!(keep % 4, 0);
    }
    let group = |units: &[(usize, usize)]| crate::prune::groups::Group {
        id: 0,
        kind: "heads",
        members: units
            .iter()
            .enumerate()
            .map(|(id, &(channels, unit))| crate::prune::groups::Member {
                id,
                producer: format!("p{id}"),
                channels,
                unit,
            })
            .collect(),
        params: vec![],
        sinks: vec![],
        shape_edits: vec![],
        depthwise: vec![],
        values: vec![],
        blocked: None,
    };
    let heads = group(&[(384, 32)]);
    assert_eq!(alloc::rounded(&heads, 7, 8), 7, "a head is 32 channels, already a multiple of 8");
    // Grouped-query attention: a unit is 32 channels of Q but 16 of K and V; at 32 lanes K and V
    // need an even number of units.
    let gqa = group(&[(256, 32), (128, 16), (128, 16)]);
    assert_eq!(alloc::rounded(&gqa, 3, 32), 4);
    assert_eq!(alloc::rounded(&gqa, 6, 32), 6);
}

#[test]
fn selections_that_break_a_group_are_refused() {
    let g = cnn();
    let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
    let empty: Selection = BTreeMap::from([(0, vec![])]);
    assert!(apply(&prep.graph, &prep.analysis, &empty).is_err());
    let blocked: Selection = BTreeMap::from([(4, vec![0, 1])]);
    let err = apply(&prep.graph, &prep.analysis, &blocked).unwrap_err().to_string();
    assert!(err.contains("cannot be pruned"), "{err}");
    let out_of_range: Selection = BTreeMap::from([(0, vec![0, 99])]);
    assert!(apply(&prep.graph, &prep.analysis, &out_of_range).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn random_selections_give_valid_equivalent_graphs(seed in any::<u64>(), count in 1usize..40) {
        check_zero_equivalence(&cnn(), "fashion-mnist", count, seed);
    }
}

fn config(model: &std::path::Path, out: &std::path::Path) -> super::run::PruneConfig {
    super::run::PruneConfig {
        reconstruct: Default::default(),
        model: model.to_path_buf(),
        data: "fashion-mnist".into(),
        criterion: super::importance::Criterion::Auto,
        sparsity: Some(0.5),
        target_speedup: None,
        round_to: None,
        profile: Some("rpi4".into()),
        allocation: alloc::Allocation::Sensitivity,
        activation_metric: super::importance::ActivationMetric::Wanda,
        weights: [1.0, 1.0, 1.0],
        finetune_steps: 3,
        finetune_lr: 1e-3,
        finetune_batch: 16,
        distill: 0.5,
        calibration: 32,
        validation: 100,
        test_limit: Some(200),
        seq_len: 16,
        latency_seconds: 0.2,
        seed: 0,
        compare_ort: None,
        inputs: Default::default(),
        out: Some(out.to_path_buf()),
    }
}

#[test]
fn the_command_prunes_finetunes_measures_and_writes_a_tract_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cnn.onnx");
    cnn().save(&model).unwrap();
    let out = dir.path().join("small/cnn-pruned.onnx");
    let r = super::run::prune(config(&model, &out)).unwrap();
    assert_eq!(r.criteria.len(), 4, "auto compares four criteria");
    assert!(r.criteria.iter().any(|c| c.criterion == r.criterion));
    assert!(r.params_after < r.params_before && r.macs_after < r.macs_before);
    assert_eq!(r.round_to, 4, "rpi4 is NEON: 4 f32 lanes");
    assert!(r.widths.iter().all(|w| {
        let kept: usize = w.rsplit(' ').next().unwrap().split('/').next().unwrap().parse().unwrap();
        kept.is_multiple_of(4)
    }));
    assert_eq!(r.test_examples, 200);
    assert!(r.accuracy_before.is_some() && r.accuracy_after.is_some());
    let ft = r.finetune.as_ref().unwrap();
    assert_eq!(ft.steps, 3);
    assert!(ft.first_loss.is_finite() && ft.final_loss.is_finite());
    assert!(r.latency_ms_before > 0.0 && r.latency_ms_after > 0.0);
    assert!(r.ort_version.is_none() && r.speedup_vs_ort.is_none(), "no --compare-ort");
    let written = Graph::load(&out).unwrap();
    assert_eq!(super::param_count(&written), r.params_after);
    hone_graph::gate::check_with_tract(&std::fs::read(&out).unwrap(), &Default::default()).unwrap();
}

#[test]
fn the_command_refuses_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cnn.onnx");
    cnn().save(&model).unwrap();
    let out = dir.path().join("o.onnx");
    let err = |a: super::run::PruneConfig| super::run::prune(a).unwrap_err().to_string();
    let mut a = config(&model, &out);
    a.sparsity = Some(1.5);
    assert!(err(a).contains("--sparsity must be in [0, 1)"));
    let mut a = config(&model, &out);
    a.sparsity = None;
    assert!(err(a).contains("--sparsity S or --target-speedup X"));
    let mut a = config(&model, &out);
    a.data = "cifar".into();
    let e = err(a);
    assert!(e.contains("no data at `cifar`: not a built-in data set"), "{e}");
    let mut a = config(&model, &out);
    a.profile = Some("toaster".into());
    assert!(err(a).contains("no device profile `toaster`"));
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"not a protobuf at all").unwrap();
    assert!(err(config(&corrupt, &out)).contains("not a valid ONNX model"));
    // A model whose every group reaches the output: nothing to prune, and why.
    let tiny = hone_learn::train::builder::ModelSpec {
        name: "tiny".into(),
        input: [1, 28, 28],
        layers: vec![
            hone_learn::train::builder::Layer::Flatten,
            hone_learn::train::builder::Layer::Dense { out: 10 },
        ],
        seed: 1,
    };
    let tiny_path = dir.path().join("tiny.onnx");
    tiny.build().unwrap().graph.save(&tiny_path).unwrap();
    let e = err(config(&tiny_path, &out));
    assert!(e.contains("nothing in") && e.contains("graph output `logits`"), "{e}");
    assert!(!out.exists(), "no output is written on error");
}

#[test]
fn silenced_units_score_zero_by_gradient_and_activation() {
    let g = cnn();
    let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
    // Silence units 3 and 5 of conv2 (group 1): their outputs are zero on every input.
    let sel: Selection = BTreeMap::from([(1, (0..64).filter(|u| *u != 3 && *u != 5).collect())]);
    let silenced = Prepared { graph: zeroed(&prep, &sel), analysis: prep.analysis.clone() };
    let data = EvalData::load("fashion-mnist").unwrap();
    let calib = data.batches(&silenced.graph, Part::Train, 16, Some(32), Some(1)).unwrap();
    let grad = super::importance::gradient(&silenced, &calib).unwrap();
    let wanda = super::importance::activation(
        &silenced,
        &calib,
        super::importance::ActivationMetric::Wanda,
    )
    .unwrap();
    let mean = super::importance::activation(
        &silenced,
        &calib,
        super::importance::ActivationMetric::MeanAbs,
    )
    .unwrap();
    let apoz =
        super::importance::activation(&silenced, &calib, super::importance::ActivationMetric::Apoz)
            .unwrap();
    for (name, s) in [("gradient", &grad), ("wanda", &wanda), ("mean-abs", &mean), ("apoz", &apoz)]
    {
        let s = &s[&1];
        assert_eq!(s.len(), 64, "{name}");
        assert_eq!((s[3], s[5]), (0.0, 0.0), "{name}: silenced units");
        assert!(
            s.iter().enumerate().filter(|(u, _)| *u != 3 && *u != 5).all(|(_, x)| *x > 0.0),
            "{name}"
        );
    }
    let apoz1 = &apoz[&1];
    assert!(apoz1.iter().all(|x| (0.0..=1.0).contains(x)), "1 − APoZ is a fraction");
    // Magnitude still sees the consumers' weights of a silenced unit.
    assert!(super::importance::magnitude(&silenced).unwrap()[&1][3] > 0.0);
    // Combined: the silenced units are still last.
    let m = super::importance::magnitude(&silenced).unwrap();
    let c = super::importance::combine(&[(1.0, &m), (1.0, &grad), (1.0, &wanda)]);
    let keep = alloc::select(&c, &BTreeMap::from([(1usize, 62usize)]));
    assert!(!keep[&1].contains(&3) && !keep[&1].contains(&5));
}

#[test]
fn global_allocation_takes_more_from_uneven_groups() {
    let g = cnn();
    let prep = prepare(&g, &analysis_dims(&g, 16, &Default::default())).unwrap();
    let mut scores = super::importance::Scores::new();
    for grp in prep.analysis.prunable() {
        // Group 2 has a few dominant units; the others are flat.
        let s = (0..grp.units()).map(|u| if grp.id == 2 && u >= 16 { 0.01 } else { 1.0 }).collect();
        scores.insert(grp.id, s);
    }
    let keep = alloc::global(&prep.analysis, &scores, 0.3, 1);
    let uniform = alloc::uniform(&prep.analysis, 0.3, 1);
    assert!(keep[&2] < uniform[&2], "{keep:?} vs {uniform:?}");
    let total: usize = prep.analysis.prunable().map(|g| g.units()).sum();
    let kept: usize = keep.values().sum();
    assert_eq!(total - kept, (0.3 * total as f64).round() as usize);
    let m = |loss, macs_saved| alloc::Sensitivity { loss, macs_saved };
    let measured = BTreeMap::from([
        (0, m(0.5, 0.02)),
        (1, m(0.001, 0.3)),
        (2, m(0.001, 0.3)),
        (3, m(0.2, 0.02)),
    ]);
    let sens = alloc::sensitivity(&prep.analysis, &measured, 0.3, 1);
    assert!(
        sens[&0] as f64 / 32.0 > sens[&1] as f64 / 64.0,
        "sensitive groups keep more: {sens:?}"
    );
    // Equal losses: the group that saves more compute gives up more.
    let measured = BTreeMap::from([
        (0, m(0.01, 0.01)),
        (1, m(0.01, 0.01)),
        (2, m(0.01, 0.4)),
        (3, m(0.01, 0.01)),
    ]);
    let sens = alloc::sensitivity(&prep.analysis, &measured, 0.3, 1);
    assert!(
        (sens[&2] as f64 / 256.0) < sens[&1] as f64 / 64.0,
        "compute-heavy groups give more: {sens:?}"
    );
}

/// A one-input, one-output opset-17 graph of `nodes` over `inits`, with fixed dims.
fn small_graph(
    name: &str,
    nodes: &[hone_graph::Node],
    inits: &[(&str, Tensor)],
    x: &[i64],
    y: &[i64],
) -> Graph {
    use hone_graph::{DataType, Dim, ValueInfo};
    use tract_onnx::pb;
    let info = |n: &str, d: &[i64]| {
        ValueInfo::tensor(n, DataType::F32, d.iter().map(|&v| Dim::Value(v)).collect()).to_proto()
    };
    let proto = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: name.into(),
            node: nodes.iter().map(hone_graph::Node::to_proto).collect(),
            initializer: inits.iter().map(|(n, t)| t.to_proto(n)).collect(),
            input: vec![info("x", x)],
            output: vec![info("y", y)],
            ..Default::default()
        }),
        ..Default::default()
    };
    Graph::from_proto(proto).unwrap()
}

/// Seeded uniform weights in ±`scale`.
fn weights(rng: &mut SplitMix64, dims: &[usize], scale: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v = (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32 * scale).collect();
    Tensor::new(dims.to_vec(), TensorData::F32(v)).unwrap()
}

/// A small graph with batch norm, a depthwise convolution, a squeeze-and-excitation block and a
/// channel `Concat` of two branches.
fn zoo() -> Graph {
    use hone_graph::{Attribute, Node};
    let mut rng = SplitMix64::new(11);
    let mut t = |dims: &[usize]| weights(&mut rng, dims, 0.5);
    let pos = |n: usize| Tensor::new(vec![n], TensorData::F32(vec![1.5; n])).unwrap();
    let inits = vec![
        ("w1", t(&[16, 3, 3, 3])),
        ("b1", t(&[16])),
        ("bn_s", t(&[16])),
        ("bn_b", t(&[16])),
        ("bn_m", t(&[16])),
        ("bn_v", pos(16)),
        ("wd", t(&[16, 1, 3, 3])),
        ("bd", t(&[16])),
        ("ws1", t(&[4, 16, 1, 1])),
        ("bs1", t(&[4])),
        ("ws2", t(&[16, 4, 1, 1])),
        ("bs2", t(&[16])),
        ("w2", t(&[8, 16, 1, 1])),
        ("b2", t(&[8])),
        ("w3", t(&[12, 24, 1, 1])),
        ("b3", t(&[12])),
        ("w4", t(&[5, 12])),
        ("b4", t(&[5])),
    ];
    let pads = || Attribute::Ints(vec![1, 1, 1, 1]);
    let nodes = vec![
        Node::new("c1", "Conv", &["x", "w1", "b1"], &["c1"]).with_attribute("pads", pads()),
        Node::new("bn", "BatchNormalization", &["c1", "bn_s", "bn_b", "bn_m", "bn_v"], &["bn"]),
        Node::new("r1", "Relu", &["bn"], &["r1"]),
        Node::new("dw", "Conv", &["r1", "wd", "bd"], &["dw"])
            .with_attribute("pads", pads())
            .with_attribute("group", Attribute::Int(16)),
        Node::new("se_pool", "GlobalAveragePool", &["dw"], &["g"]),
        Node::new("se1", "Conv", &["g", "ws1", "bs1"], &["s1"]),
        Node::new("se_relu", "Relu", &["s1"], &["s1r"]),
        Node::new("se2", "Conv", &["s1r", "ws2", "bs2"], &["s2"]),
        Node::new("se_gate", "Sigmoid", &["s2"], &["sg"]),
        Node::new("se_mul", "Mul", &["dw", "sg"], &["m"]),
        Node::new("c2", "Conv", &["r1", "w2", "b2"], &["c2"]),
        Node::new("r2", "Relu", &["c2"], &["r2"]),
        Node::new("cat", "Concat", &["m", "r2"], &["cat"])
            .with_attribute("axis", Attribute::Int(1)),
        Node::new("c3", "Conv", &["cat", "w3", "b3"], &["c3"]),
        Node::new("r3", "Relu", &["c3"], &["r3"]),
        Node::new("pool", "GlobalAveragePool", &["r3"], &["p"]),
        Node::new("flat", "Flatten", &["p"], &["f"]),
        Node::new("fc", "Gemm", &["f", "w4", "b4"], &["y"])
            .with_attribute("transB", Attribute::Int(1)),
    ];
    small_graph("zoo", &nodes, &inits, &[1, 3, 8, 8], &[1, 5])
}

#[test]
fn batch_norm_depthwise_squeeze_excitation_and_concat_are_coupled() {
    let g = zoo();
    let prep = prepare(&g, &[]).unwrap();
    let summary: Vec<(Vec<String>, usize, bool)> = prep
        .analysis
        .groups
        .iter()
        .map(|g| {
            (g.producers().iter().map(|p| p.to_string()).collect(), g.channels(), g.prunable())
        })
        .collect();
    assert_eq!(
        summary,
        [
            (vec!["c1".to_string(), "se2".to_string()], 16, true),
            (vec!["se1".to_string()], 4, true),
            (vec!["c2".to_string()], 8, true),
            (vec!["c3".to_string()], 12, true),
            (vec!["fc".to_string()], 5, false),
        ],
        "the excitation gate couples with the channels it scales"
    );
    let c1 = &prep.analysis.groups[0];
    assert_eq!(c1.depthwise.len(), 1);
    let w3_in: Vec<usize> = prep.analysis.groups[2]
        .params
        .iter()
        .filter(|p| p.init == "w3")
        .map(|p| p.track.offset)
        .collect();
    assert_eq!(w3_in, [16], "the second branch sits after the first in the concat");
    let mut rng = SplitMix64::new(5);
    let v: Vec<f32> = (0..3 * 64).map(|_| rng.next_f32()).collect();
    let x = candle_core::Tensor::from_vec(v, (1, 3, 8, 8), &candle_core::Device::Cpu).unwrap();
    let batch = EvalBatch { inputs: vec![("x".into(), x)], labels: None, indices: vec![0] };
    for seed in 0..6 {
        let sel = random_selection(&prep, seed, 1 + seed as usize % 3);
        let child = apply(&prep.graph, &prep.analysis, &sel).unwrap();
        let depthwise = child.node_protos().iter().find(|n| n.name == "dw").unwrap();
        let group = depthwise.attribute.iter().find(|a| a.name == "group").unwrap().i as usize;
        assert_eq!(group, sel[&0].len(), "the depthwise group count follows the channels");
        assert_same(&outputs(&zeroed(&prep, &sel), &batch), &outputs(&child, &batch), "zoo");
    }
}

/// Grouped-query attention as PyTorch exports it: 4 query heads share 2 KV heads (head_dim 16),
/// K and V repeated with `Unsqueeze → Expand → Reshape`.
fn gqa() -> Graph {
    use hone_graph::{Attribute, Node};
    let mut rng = SplitMix64::new(21);
    let mut t = |dims: &[usize]| weights(&mut rng, dims, 0.3);
    let ints = |v: &[i64]| Tensor::vec_i64(v);
    let inits = vec![
        ("wq", t(&[64, 64])),
        ("bq", t(&[64])),
        ("wk", t(&[64, 32])),
        ("bk", t(&[32])),
        ("wv", t(&[64, 32])),
        ("bv", t(&[32])),
        ("wo", t(&[64, 64])),
        ("bo", t(&[64])),
        ("q_shape", ints(&[0, 0, 4, 16])),
        ("kv_shape", ints(&[0, 0, 2, 16])),
        ("axis2", ints(&[2])),
        ("rep", ints(&[1, 1, 2, 1, 1])),
        ("kt_shape", ints(&[1, 4, 16, 6])),
        ("v_shape", ints(&[1, 4, 6, 16])),
        ("o_shape", ints(&[0, 0, 64])),
        ("scale", Tensor::scalar_f32(4.0)),
    ];
    let perm = |p: &[i64]| Attribute::Ints(p.to_vec());
    let nodes = vec![
        Node::new("q", "MatMul", &["x", "wq"], &["q0"]),
        Node::new("q_bias", "Add", &["q0", "bq"], &["q1"]),
        Node::new("q_split", "Reshape", &["q1", "q_shape"], &["q2"]),
        Node::new("q_t", "Transpose", &["q2"], &["q3"]).with_attribute("perm", perm(&[0, 2, 1, 3])),
        Node::new("k", "MatMul", &["x", "wk"], &["k0"]),
        Node::new("k_bias", "Add", &["k0", "bk"], &["k1"]),
        Node::new("k_split", "Reshape", &["k1", "kv_shape"], &["k2"]),
        Node::new("k_t", "Transpose", &["k2"], &["k3"]).with_attribute("perm", perm(&[0, 2, 3, 1])),
        Node::new("k_unsq", "Unsqueeze", &["k3", "axis2"], &["k4"]),
        Node::new("k_rep", "Expand", &["k4", "rep"], &["k5"]),
        Node::new("k_merge", "Reshape", &["k5", "kt_shape"], &["k6"]),
        Node::new("scores", "MatMul", &["q3", "k6"], &["s0"]),
        Node::new("scaled", "Div", &["s0", "scale"], &["s1"]),
        Node::new("probs", "Softmax", &["s1"], &["p"]).with_attribute("axis", Attribute::Int(-1)),
        Node::new("v", "MatMul", &["x", "wv"], &["v0"]),
        Node::new("v_bias", "Add", &["v0", "bv"], &["v1"]),
        Node::new("v_split", "Reshape", &["v1", "kv_shape"], &["v2"]),
        Node::new("v_t", "Transpose", &["v2"], &["v3"]).with_attribute("perm", perm(&[0, 2, 1, 3])),
        Node::new("v_unsq", "Unsqueeze", &["v3", "axis2"], &["v4"]),
        Node::new("v_rep", "Expand", &["v4", "rep"], &["v5"]),
        Node::new("v_merge", "Reshape", &["v5", "v_shape"], &["v6"]),
        Node::new("attend", "MatMul", &["p", "v6"], &["a0"]),
        Node::new("a_t", "Transpose", &["a0"], &["a1"]).with_attribute("perm", perm(&[0, 2, 1, 3])),
        Node::new("a_merge", "Reshape", &["a1", "o_shape"], &["a2"]),
        Node::new("o", "MatMul", &["a2", "wo"], &["o0"]),
        Node::new("o_bias", "Add", &["o0", "bo"], &["y"]),
    ];
    small_graph("gqa", &nodes, &inits, &[1, 6, 64], &[1, 6, 64])
}

#[test]
fn grouped_query_attention_keeps_kv_groups_consistent() {
    let g = gqa();
    let prep = prepare(&g, &[]).unwrap();
    let heads = prep.analysis.prunable().next().expect("the attention group is prunable");
    assert_eq!(prep.analysis.prunable().count(), 1, "the output projection reaches the output");
    let members: Vec<(&str, usize, usize)> =
        heads.members.iter().map(|m| (m.producer.as_str(), m.channels, m.unit)).collect();
    assert_eq!(
        members,
        [("q", 64, 32), ("k", 32, 16), ("v", 32, 16)],
        "a unit is one KV head and the two query heads that share it"
    );
    assert_eq!(heads.units(), 2);
    let mut rng = SplitMix64::new(3);
    let v: Vec<f32> = (0..6 * 64).map(|_| rng.next_f32() - 0.5).collect();
    let x = candle_core::Tensor::from_vec(v, (1, 6, 64), &candle_core::Device::Cpu).unwrap();
    let batch = EvalBatch { inputs: vec![("x".into(), x)], labels: None, indices: vec![0] };
    for keep in [0usize, 1] {
        let sel: Selection = BTreeMap::from([(heads.id, vec![keep])]);
        let child = apply(&prep.graph, &prep.analysis, &sel).unwrap();
        let dims = |n: &str| child.initializer(n).unwrap().dims;
        assert_eq!(
            (dims("wq"), dims("wk"), dims("wv"), dims("wo")),
            (vec![64, 32], vec![64, 16], vec![64, 16], vec![32, 64])
        );
        assert_same(&outputs(&zeroed(&prep, &sel), &batch), &outputs(&child, &batch), "gqa");
    }
}

#[test]
fn a_child_that_does_more_work_is_reported_not_faster() {
    use hone_learn::train::builder::{Layer, ModelSpec};
    // The same input; the "child" does hundreds of times the arithmetic of the "parent"
    // (a 64-channel convolution before the dense layer), so no machine can time it faster.
    let small = ModelSpec {
        name: "small".into(),
        input: [1, 28, 28],
        layers: vec![Layer::Flatten, Layer::Dense { out: 2 }],
        seed: 1,
    };
    let big = ModelSpec {
        name: "big".into(),
        input: [1, 28, 28],
        layers: vec![Layer::conv3(64), Layer::Relu, Layer::Flatten, Layer::Dense { out: 2 }],
        seed: 1,
    };
    let (small, big) = (small.build().unwrap().graph, big.build().unwrap().graph);
    let timing = super::latency::timing_inputs(&small, 16, &Default::default());
    let slower = super::run::speed(&small, &big, &timing, 0.3).unwrap();
    assert!(slower.not_faster, "{slower:?}");
    assert!(slower.speedup < 1.0);
    let faster = super::run::speed(&big, &small, &timing, 0.3).unwrap();
    assert!(!faster.not_faster, "{faster:?}");
}

#[test]
fn pruning_plugs_into_the_method_trait_with_widths_for_each_class() {
    use crate::method::{CompressionMethod, MethodContext, PruneGrid, PruneMethod, Target};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cnn.onnx");
    cnn().save(&model).unwrap();
    let data = hone_learn::eval::EvalData::load("fashion-mnist").unwrap();
    let method = PruneMethod::new(PruneGrid::default());
    let rpi4 = Target::of_profile("rpi4").unwrap();
    let x86 = Target::of_profile("x86-vm-2core").unwrap();
    assert_eq!((rpi4.simd_width, x86.simd_width), (4, 8));
    let grid = method.grid(&rpi4);
    assert_eq!(grid.len(), 16, "2 criteria x 2 allocations x 4 sparsities");
    assert!(grid.iter().all(|s| s["round_to"] == 4));
    assert!(method.grid(&x86).iter().all(|s| s["round_to"] == 8));

    let inputs = Default::default();
    let mut kept = Vec::new();
    for target in [&rpi4, &x86] {
        let settings = method.grid(target)[1].clone();
        let out = dir.path().join(format!("{}.onnx", target.class));
        let ctx = MethodContext { parent: &model, data: &data, inputs: &inputs, target, out: &out };
        let cand = method.compress(&ctx, &settings).unwrap();
        assert_eq!((cand.method, cand.settings.clone()), ("prune", settings));
        let written = Graph::load(&cand.model).unwrap();
        assert!(super::param_count(&written) < super::param_count(&cnn()));
        assert_eq!(cand.report["params_after"].as_u64(), Some(super::param_count(&written) as u64));
        let widths: Vec<String> = serde_json::from_value(cand.report["widths"].clone()).unwrap();
        for w in &widths {
            let kept_units: usize =
                w.rsplit(' ').next().unwrap().split('/').next().unwrap().parse().unwrap();
            assert_eq!(kept_units % target.simd_width, 0, "{w} for {}", target.class);
        }
        kept.push(widths);
    }
    assert_ne!(kept[0], kept[1], "rpi4 (NEON, 4) and x86 (AVX2, 8) round differently");
    let bad = serde_json::json!({"criterion": "magnitude"});
    let out = dir.path().join("bad.onnx");
    let ctx =
        MethodContext { parent: &model, data: &data, inputs: &inputs, target: &rpi4, out: &out };
    let err = method.compress(&ctx, &bad).unwrap_err().to_string();
    assert!(err.contains("pruning settings"), "{err}");

    // With reconstruction in the grid, each point comes plain and reconstructed; the
    // reconstructed candidate says what it refitted.
    let method =
        PruneMethod::new(PruneGrid { reconstruct: vec![false, true], ..PruneGrid::default() });
    let grid = method.grid(&rpi4);
    assert_eq!(grid.len(), 32);
    assert_eq!(grid.iter().filter(|s| s["reconstruct"] == true).count(), 16);
    let settings = grid.iter().find(|s| s["reconstruct"] == true).unwrap().clone();
    let out = dir.path().join("rebuilt.onnx");
    let ctx =
        MethodContext { parent: &model, data: &data, inputs: &inputs, target: &rpi4, out: &out };
    let cand = method.compress(&ctx, &settings).unwrap();
    assert!(cand.report["reconstruct"]["refitted"].as_array().is_some(), "{}", cand.report);
}

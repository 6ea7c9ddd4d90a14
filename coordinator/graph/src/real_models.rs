//! Round trips on the real models of the asset cache (MiniLM-L3 and open-nsfw).
//!
//! These fail with the asset error when the cache lacks a model (run `scripts/fetch-assets.sh`).

use std::sync::OnceLock;

use tract_onnx::prelude::Tensor as TractTensor;

use super::testing::{assert_bitwise_equal, assert_close, run_path, run_proto};
use super::{DataType, Dim, Graph};

const SEQ: usize = 12;

fn asset(name: &str) -> std::path::PathBuf {
    match hone_assets::path(name) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn minilm_inputs() -> Vec<TractTensor> {
    // "[CLS] the movie was surprisingly good , i enjoyed it a lot [SEP]" in the MiniLM vocabulary.
    let ids: [i64; SEQ] = [101, 1996, 3185, 2001, 10889, 2204, 1010, 1045, 5632, 2009, 1037, 102];
    vec![
        TractTensor::from_shape(&[1, SEQ], &ids).unwrap(),
        TractTensor::from_shape(&[1, SEQ], &[1i64; SEQ]).unwrap(),
    ]
}

fn nsfw_inputs() -> Vec<TractTensor> {
    // A smooth BGR-mean-subtracted gradient image, NHWC.
    let v: Vec<f32> = (0..224 * 224 * 3)
        .map(|i| {
            let (y, x, c) = (i / (224 * 3), (i / 3) % 224, i % 3);
            ((x as f32 * 0.05 + y as f32 * 0.03 + c as f32).sin() * 100.0).round()
        })
        .collect();
    vec![TractTensor::from_shape(&[1, 224, 224, 3], &v).unwrap()]
}

/// tract's outputs on the original file, computed once per test binary.
fn reference(name: &str) -> &'static Vec<TractTensor> {
    static MINILM: OnceLock<Vec<TractTensor>> = OnceLock::new();
    static NSFW: OnceLock<Vec<TractTensor>> = OnceLock::new();
    match name {
        "minilm-l3-onnx" => MINILM.get_or_init(|| run_path(&asset(name), &minilm_inputs())),
        _ => NSFW.get_or_init(|| run_path(&asset(name), &nsfw_inputs())),
    }
}

fn inputs(name: &str) -> Vec<TractTensor> {
    if name == "minilm-l3-onnx" { minilm_inputs() } else { nsfw_inputs() }
}

fn round_trip_is_bitwise_identical(name: &str) {
    let g = Graph::load(asset(name)).unwrap();
    let encoded = g.to_bytes();
    let again = Graph::from_bytes(&encoded).unwrap();
    assert!(again == g, "decode→encode→decode is a fixed point");
    assert_bitwise_equal(reference(name), &run_proto(again.proto(), &inputs(name)));
}

fn folding_and_pruning_keep_outputs(name: &str) -> super::FoldReport {
    let mut g = Graph::load(asset(name)).unwrap();
    let nodes_before = g.node_protos().len();
    let report = g.constant_fold_shapes().unwrap();
    g.prune_unused();
    g.validate().unwrap();
    assert_eq!(g.node_protos().len() + report.folded_nodes.len(), nodes_before);
    let reparsed = Graph::from_bytes(&g.to_bytes()).unwrap();
    assert_close(reference(name), &run_proto(reparsed.proto(), &inputs(name)), 1e-5);
    report
}

#[test]
fn minilm_decode_encode_leaves_tract_outputs_bitwise_identical() {
    round_trip_is_bitwise_identical("minilm-l3-onnx");
}

#[test]
fn open_nsfw_decode_encode_leaves_tract_outputs_bitwise_identical() {
    round_trip_is_bitwise_identical("open-nsfw-onnx");
}

#[test]
fn minilm_outputs_survive_constant_folding_and_pruning() {
    let report = folding_and_pruning_keep_outputs("minilm-l3-onnx");
    // The export holds 112 Constant nodes; its Shape chains read the symbolic input dims and
    // must stay.
    assert!(report.folded_nodes.len() >= 100, "{report:?}");
    assert_eq!(report.folded_nodes.len(), report.new_initializers.len());
}

#[test]
fn open_nsfw_outputs_survive_constant_folding_and_pruning() {
    folding_and_pruning_keep_outputs("open-nsfw-onnx");
}

#[test]
fn open_nsfw_external_data_round_trip_matches_the_inline_model() {
    let g = Graph::load(asset("open-nsfw-onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nsfw.onnx");
    g.save_with_external_data(&path, 1024).unwrap();
    let model_size = std::fs::metadata(&path).unwrap().len();
    assert!(model_size < 1_000_000, "weights moved out: {model_size} bytes left");
    assert!(Graph::load(&path).unwrap() == g);
    assert_bitwise_equal(reference("open-nsfw-onnx"), &run_path(&path, &nsfw_inputs()));
}

#[test]
fn minilm_inspection_reports_io_opset_and_inferred_shapes() {
    let g = Graph::load(asset("minilm-l3-onnx")).unwrap();
    let inputs = g.inputs();
    let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(&names[..2], ["input_ids", "attention_mask"]);
    assert_eq!(inputs[0].data_type, Some(DataType::I64));
    assert!(matches!(inputs[0].dims.as_deref(), Some([_, Dim::Symbol(_)])), "{inputs:?}");
    assert!(g.opset().is_some_and(|v| v >= 11));
    assert!(!g.producer_name().is_empty());
    let nodes = g.nodes().unwrap();
    assert!(nodes.iter().any(|n| n.op_type == "MatMul"));
    let dims: Vec<(&str, [usize; 2])> =
        inputs.iter().map(|i| (i.name.as_str(), [1, SEQ])).collect();
    let shapes = g.infer_shapes(dims).unwrap();
    // The export's outputs: token ids, the hidden states (…, 384) and two derived values.
    let outputs = g.outputs();
    assert!(outputs.iter().all(|o| shapes.contains_key(&o.name)), "every output is known");
    let hidden = outputs
        .iter()
        .find(|o| matches!(o.dims.as_deref(), Some([_, _, Dim::Value(384)])))
        .expect("a hidden-state output");
    assert_eq!(shapes[&hidden.name].dims, vec![1, SEQ, 384]);
    assert_eq!(shapes[&hidden.name].data_type, DataType::F32);
    assert_eq!(shapes["input_ids"].dims, vec![1, SEQ]);
    // Every MatMul output tract keeps is known, with the hidden width last.
    let matmuls: Vec<&str> =
        nodes.iter().filter(|n| n.op_type == "MatMul").map(|n| n.outputs[0].as_str()).collect();
    let known = matmuls.iter().filter(|m| shapes.contains_key(**m)).count();
    assert!(known * 2 >= matmuls.len(), "{known} of {} MatMul outputs", matmuls.len());
}

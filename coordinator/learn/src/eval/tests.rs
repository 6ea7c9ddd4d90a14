//! Tests of the evaluation module, on the real data sets and models of the asset cache (they fail
//! with the asset error, naming the package, when the cache lacks one).

use std::sync::OnceLock;

use candle_core::DType;
use tract_onnx::pb;

use super::*;
use crate::data::{Part, SplitMix64};
use crate::exec_bench::{ExecBenchOptions, exec_bench};
use crate::train::builder::{Layer, ModelSpec};
use hone_graph::{Attribute, DataType, Dim, Node, Tensor, TensorData, ValueInfo};

fn loaded(name: &str) -> EvalData {
    EvalData::load(name).unwrap_or_else(|e| panic!("{e:#}"))
}

fn fashion() -> &'static EvalData {
    static DATA: OnceLock<EvalData> = OnceLock::new();
    DATA.get_or_init(|| loaded("fashion-mnist"))
}

fn vader() -> &'static EvalData {
    static DATA: OnceLock<EvalData> = OnceLock::new();
    DATA.get_or_init(|| loaded("vader"))
}

fn photo_set() -> &'static EvalData {
    static DATA: OnceLock<EvalData> = OnceLock::new();
    DATA.get_or_init(|| loaded("photos"))
}

fn asset_model(name: &str) -> Graph {
    let path = hone_assets::path(name).unwrap_or_else(|e| panic!("{e}"));
    load_model(&path).unwrap()
}

/// A small untrained CNN for 28×28 grey images: `image` f32 [N, 1, 28, 28] → `logits` [N, 10].
fn tiny_cnn() -> Graph {
    ModelSpec {
        name: "tiny".into(),
        input: [1, 28, 28],
        layers: vec![
            Layer::conv3(4),
            Layer::Relu,
            Layer::pool2(),
            Layer::Flatten,
            Layer::Dense { out: 10 },
        ],
        seed: 5,
    }
    .build()
    .unwrap()
    .graph
}

/// A graph of opset 17 from its parts.
fn model(
    nodes: Vec<Node>,
    initializers: Vec<(&str, Tensor)>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
) -> Graph {
    let proto = pb::ModelProto {
        ir_version: 8,
        producer_name: "hone-eval-tests".into(),
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: nodes.iter().map(Node::to_proto).collect(),
            initializer: initializers.iter().map(|(n, t)| t.to_proto(n)).collect(),
            input: inputs.iter().map(ValueInfo::to_proto).collect(),
            output: outputs.iter().map(ValueInfo::to_proto).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Graph::from_proto(proto).unwrap()
}

fn dims(d: &[&str]) -> Vec<Dim> {
    d.iter().map(|s| s.parse().map_or_else(|_| Dim::Symbol((*s).into()), Dim::Value)).collect()
}

/// `y = Identity(x)` with `x` declared f32 of the given dimensions.
fn identity(input_dims: &[&str]) -> Graph {
    model(
        vec![Node::new("id", "Identity", &["x"], &["y"])],
        vec![],
        vec![ValueInfo::tensor("x", DataType::F32, dims(input_dims))],
        vec![ValueInfo { name: "y".into(), data_type: Some(DataType::F32), dims: None }],
    )
}

fn random(rng: &mut SplitMix64, dims: Vec<usize>, scale: f32) -> Tensor {
    let n = dims.iter().product();
    let v = (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
    Tensor::new(dims, TensorData::F32(v)).unwrap()
}

/// A small text classifier over the MiniLM vocabulary: mean of masked 16-wide token embeddings,
/// then a linear layer. Inputs `input_ids`, `attention_mask` int64 [batch, seq]; output
/// `logits` f32 [batch, 2].
pub(crate) fn tiny_text_model() -> Graph {
    let mut rng = SplitMix64::new(11);
    let tok = [Dim::Symbol("batch".into()), Dim::Symbol("seq".into())];
    model(
        vec![
            Node::new("embed", "Gather", &["emb", "input_ids"], &["tokens"]),
            Node::new("cast", "Cast", &["attention_mask"], &["maskf"])
                .with_attribute("to", Attribute::Int(1)),
            Node::new("unsq", "Unsqueeze", &["maskf", "axis2"], &["mask3"]),
            Node::new("masked", "Mul", &["tokens", "mask3"], &["kept"]),
            Node::new("sum", "ReduceSum", &["kept", "axis1"], &["total"])
                .with_attribute("keepdims", Attribute::Int(0)),
            Node::new("count", "ReduceSum", &["mask3", "axis1"], &["n"])
                .with_attribute("keepdims", Attribute::Int(0)),
            Node::new("mean", "Div", &["total", "n"], &["pooled"]),
            Node::new("head", "Gemm", &["pooled", "w", "b"], &["logits"])
                .with_attribute("transB", Attribute::Int(1)),
        ],
        vec![
            ("emb", random(&mut rng, vec![30522, 16], 1.0)),
            ("w", random(&mut rng, vec![2, 16], 0.5)),
            ("b", Tensor::new(vec![2], TensorData::F32(vec![0.0, 0.0])).unwrap()),
            ("axis1", Tensor::vec_i64(&[1])),
            ("axis2", Tensor::vec_i64(&[2])),
        ],
        vec![
            ValueInfo::tensor("input_ids", DataType::I64, tok.to_vec()),
            ValueInfo::tensor("attention_mask", DataType::I64, tok.to_vec()),
        ],
        vec![ValueInfo::tensor(
            "logits",
            DataType::F32,
            vec![Dim::Symbol("batch".into()), Dim::Value(2)],
        )],
    )
}

/// `g` with initializer `name` multiplied by `factor` (only its first `count` values).
fn scaled(g: &Graph, name: &str, count: usize, factor: f32) -> Graph {
    let mut g = g.clone();
    let t = g.initializer(name).unwrap();
    let mut v = t.as_f32().unwrap().to_vec();
    for x in v.iter_mut().take(count) {
        *x *= factor;
    }
    let dims = t.dims.clone();
    g.replace_initializer(name, &Tensor::new(dims, TensorData::F32(v)).unwrap()).unwrap();
    g
}

#[test]
fn photos_decode_to_their_size_and_the_crop_set_is_fixed() {
    let EvalData::Photos(p) = photo_set() else { unreachable!() };
    let sizes: Vec<(usize, usize)> = p.photos.iter().map(|p| (p.width, p.height)).collect();
    assert_eq!(sizes, [(640, 427), (640, 427)]);
    assert_eq!((p.len(), p.split.test.len(), p.split.validation.len()), (96, 32, 32));
    assert_eq!(p.split.train.len(), 32);
    let again = PhotoSet::new(p.photos.clone());
    assert_eq!(again.crops, p.crops);
    assert_eq!(again.split, p.split);
    // Every crop lies inside its photo; sides are 427, 320 and 214 for test and validation.
    for c in &p.crops {
        let ph = &p.photos[c.photo];
        assert!(c.x + c.side <= ph.width && c.y + c.side <= ph.height, "{c:?}");
    }
    let mut sides: Vec<usize> = p.split.test.iter().map(|&i| p.crops[i].side).collect();
    sides.dedup();
    assert_eq!(sides, [427, 320, 214, 427, 320, 214]);
    // Crop 1 is crop 0 flipped left-right; the pixels are mean-subtracted BGR.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    p.push_crop(0, &mut a);
    p.push_crop(1, &mut b);
    assert_eq!(a.len(), photos::PHOTO_SIDE * photos::PHOTO_SIDE * 3);
    let at = |v: &[f32], y: usize, x: usize, c: usize| v[(y * 224 + x) * 3 + c];
    for (y, x, c) in [(0, 0, 0), (17, 5, 2), (223, 100, 1)] {
        assert_eq!(at(&a, y, x, c), at(&b, y, 223 - x, c));
    }
    assert!(a.iter().all(|v| (-123.0..=151.0).contains(v)));
    let mut again_pixels = Vec::new();
    again.push_crop(0, &mut again_pixels);
    assert!(a == again_pixels);
    // The first pixel of china.jpg's first crop is its own top-left pixel, BGR minus the means
    // (the crop is 427 wide: the bilinear source of the first output pixel clamps to 0).
    let rgb = &p.photos[0].rgb;
    let want = [rgb[2], rgb[1], rgb[0]].map(f32::from);
    let first: Vec<f32> = (0..3).map(|c| at(&a, 0, 0, c) + photos::CAFFE_BGR_MEAN[c]).collect();
    for (got, want) in first.iter().zip(want) {
        assert!((got - want).abs() < 2.0, "{got} vs {want}");
    }
}

#[test]
fn a_broken_jpeg_names_its_file() {
    let err = photos::decode_jpeg(b"\xff\xd8\xff\xe0 not really", "photo-x").unwrap_err();
    assert!(err.to_string().starts_with("photo-x:"), "{err}");
}

#[test]
fn unknown_data_sets_list_the_valid_names() {
    let err = EvalData::load("cifar").unwrap_err().to_string();
    assert!(
        err.contains("`cifar`") && err.contains("fashion-mnist, mnist, vader, photos, sotu"),
        "{err}"
    );
}

#[test]
fn the_sotu_corpus_is_for_language_models_and_refuses_a_classifier_saying_so() {
    let sotu = loaded("sotu");
    assert_eq!(sotu.name(), "sotu");
    assert!(!sotu.labelled());
    assert!(sotu.part_len(Part::Validation) > 0 && sotu.part_len(Part::Train) > 0);
    assert!(sotu.describe().contains("addresses"), "{}", sotu.describe());
    let err = sotu.check(&tiny_cnn()).unwrap_err().to_string();
    assert!(err.contains("a text corpus") && err.contains("language models"), "{err}");
}

#[test]
fn inputs_that_do_not_fit_say_what_the_model_declares_and_what_the_data_gives() {
    let cnn = tiny_cnn();
    let err = vader().check(&cnn).unwrap_err().to_string();
    assert!(err.contains("`image` f32 [") && err.contains("1, 28, 28]"), "{err}");
    assert!(err.contains("`input_ids`") && err.contains("`vader` gives"), "{err}");
    let err = photo_set().check(&cnn).unwrap_err().to_string();
    assert!(err.contains("[N, 224, 224, 3]") && err.contains("28, 28]"), "{err}");
    let err = fashion().check(&tiny_text_model()).unwrap_err().to_string();
    assert!(err.contains("`input_ids` i64 [batch, seq]"), "{err}");
    assert!(err.contains("[N, 1, 28, 28]"), "{err}");
    let err = fashion().batches(&identity(&["N", "3", "28", "28"]), Part::Test, 4, Some(4), None);
    assert!(err.unwrap_err().to_string().contains("(image size or layout)"));
    // Accuracy needs labels.
    let err = accuracy(&cnn, photo_set(), Part::Test, 4, Some(4)).unwrap_err().to_string();
    assert!(err.contains("no labels"), "{err}");
}

#[test]
fn images_and_photos_follow_the_layout_the_model_declares() {
    let nchw = fashion().batches(&tiny_cnn(), Part::Test, 3, Some(5), None).unwrap();
    assert_eq!(nchw.len(), 2);
    assert_eq!(nchw[0].inputs[0].0, "image");
    assert_eq!(nchw[0].inputs[0].1.dims(), [3, 1, 28, 28]);
    assert_eq!(nchw[1].labels.as_ref().map(Vec::len), Some(2));
    let nhwc = fashion().batches(&identity(&["N", "28", "28", "1"]), Part::Test, 3, Some(5), None);
    let nhwc = nhwc.unwrap();
    assert_eq!(nhwc[0].inputs[0].1.dims(), [3, 28, 28, 1]);
    assert_eq!(nhwc[0].indices, nchw[0].indices);
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&nhwc[0].inputs[0].1), flat(&nchw[0].inputs[0].1));

    let hwc =
        photo_set().batches(&identity(&["N", "224", "224", "3"]), Part::Test, 2, Some(2), None);
    let hwc = hwc.unwrap().remove(0);
    assert_eq!(hwc.inputs[0].1.dims(), [2, 224, 224, 3]);
    assert!(hwc.labels.is_none());
    let chw =
        photo_set().batches(&identity(&["N", "3", "224", "224"]), Part::Test, 2, Some(2), None);
    let chw = chw.unwrap().remove(0);
    assert_eq!(chw.inputs[0].1.dims(), [2, 3, 224, 224]);
    let back = chw.inputs[0].1.permute((0, 2, 3, 1)).unwrap();
    assert_eq!(flat(&back), flat(&hwc.inputs[0].1));
}

#[test]
fn limits_take_the_same_subset_every_time() {
    let d = vader();
    let a = d.examples(Part::Test, Some(50), None);
    assert_eq!(a, d.examples(Part::Test, Some(50), None));
    assert!(a.is_sorted() && a.len() == 50);
    let EvalData::Vader(t) = d else { unreachable!() };
    assert!(a.iter().all(|i| t.sentences.split.test.contains(i)));
    let labels: Vec<u32> = a.iter().map(|&i| t.sentences.labels[i]).collect();
    assert!(labels.contains(&0) && labels.contains(&1), "a limit is not a prefix of sorted data");
    let mut shuffled = d.examples(Part::Test, Some(50), Some(3));
    assert_ne!(shuffled, a);
    shuffled.sort_unstable();
    assert_eq!(shuffled, a);
    assert_eq!(d.part_len(Part::Test), 1057);
    assert_eq!(photo_set().part_len(Part::Validation), 32);
}

#[test]
fn vader_batches_feed_minilm_and_accuracy_runs_on_a_small_limit() {
    let minilm = asset_model("minilm-l3-onnx");
    let batches = vader().batches(&minilm, Part::Test, 4, Some(8), None).unwrap();
    assert_eq!(batches.len(), 2);
    let names: Vec<&str> = batches[0].inputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["input_ids", "attention_mask"]);
    let ids = &batches[0].inputs[0].1;
    assert_eq!(ids.dtype(), DType::I64);
    assert_eq!(ids.dim(0).unwrap(), 4);
    let fixed = vader().clone().with_seq_len(Some(40));
    let b = fixed.batches(&minilm, Part::Test, 4, Some(8), None).unwrap();
    assert_eq!(b[1].inputs[1].1.dims(), [4, 40]);
    assert_eq!(b[1].labels.as_ref().map(Vec::len), Some(4));

    // MiniLM's pooled embedding is not a class score: accuracy says so.
    let err = accuracy_of(&minilm, vader(), Part::Test, 8, Some(8), Some("461"));
    assert!(err.unwrap_err().to_string().contains("384 values per example"));
    // MiniLM plus a head (as the minilm-sentiment baseline builds it) gives an accuracy.
    let mut head = minilm.clone();
    let mut rng = SplitMix64::new(2);
    head.add_initializer("head.weight", &random(&mut rng, vec![2, 384], 0.1)).unwrap();
    head.add_initializer(
        "head.bias",
        &Tensor::new(vec![2], TensorData::F32(vec![0.0; 2])).unwrap(),
    )
    .unwrap();
    head.insert_nodes([Node::new(
        "head",
        "Gemm",
        &["461", "head.weight", "head.bias"],
        &["logits"],
    )
    .with_attribute("transB", Attribute::Int(1))])
        .unwrap();
    head.graph_proto_mut().output.clear();
    head.add_output("logits").unwrap();
    let acc = accuracy(&head, vader(), Part::Test, 8, Some(12)).unwrap();
    assert_eq!(acc.total, 12);
    assert!(acc.value() <= 1.0);
    // Sentence embeddings of MiniLM against itself, and against a copy with one weight changed.
    let same = fidelity(&minilm, &minilm, vader(), Part::Test, 8, Some(8), None).unwrap();
    assert_eq!((same.output.as_str(), same.examples, same.agreements), ("461", 8, 8));
    assert!(same.min_cosine > 1.0 - 1e-9, "{same:?}");
    let bias = minilm
        .initializers()
        .unwrap()
        .into_iter()
        .find(|(_, t)| {
            t.dims == [384] && t.as_f32().is_some_and(|v| v.iter().any(|x| x.abs() > 0.05))
        })
        .map(|(n, _)| n)
        .unwrap();
    let changed = scaled(&minilm, &bias, 384, 3.0);
    let f = fidelity(&changed, &minilm, vader(), Part::Test, 8, Some(8), Some("461")).unwrap();
    assert!(f.mean_cosine < 1.0 - 1e-4 && f.min_cosine <= f.mean_cosine, "{f:?}");
}

#[test]
fn fidelity_of_a_model_against_itself_is_exact() {
    let cnn = tiny_cnn();
    let f = fidelity(&cnn, &cnn, fashion(), Part::Test, 64, Some(200), None).unwrap();
    assert_eq!((f.examples, f.agreements, f.top1_agreement), (200, 200, 1.0));
    assert!((f.mean_cosine - 1.0).abs() < 1e-9 && f.min_cosine > 1.0 - 1e-9, "{f:?}");
    assert_eq!((f.output.as_str(), f.reference_output.as_str()), ("logits", "logits"));
    let (m, r) = (f.model_accuracy.unwrap(), f.reference_accuracy.unwrap());
    assert_eq!(m, r);
    assert_eq!(m, accuracy(&cnn, fashion(), Part::Test, 64, Some(200)).unwrap());
}

#[test]
fn fidelity_against_a_perturbed_copy_is_below_one() {
    let cnn = tiny_cnn();
    // Class 0's weights of the last layer, turned around and amplified.
    let perturbed = scaled(&cnn, "fc1.weight", 784, -8.0);
    let f = fidelity(&perturbed, &cnn, fashion(), Part::Test, 64, Some(200), None).unwrap();
    assert!(f.top1_agreement < 1.0 && f.agreements < 200, "{f:?}");
    assert!(f.mean_cosine < 0.999 && f.min_cosine < f.mean_cosine, "{f:?}");
    // A named intermediate value is compared too (the convolution output, flattened per image).
    let f = fidelity(&perturbed, &cnn, fashion(), Part::Test, 64, Some(50), Some("conv1")).unwrap();
    assert_eq!((f.top1_agreement, f.output.as_str()), (1.0, "conv1"));
    let err = fidelity(&cnn, &cnn, fashion(), Part::Test, 64, Some(5), Some("nope")).unwrap_err();
    assert!(err.to_string().contains("no value `nope`"), "{err}");
}

#[test]
fn open_nsfw_agrees_with_itself_on_photos_and_not_with_a_perturbed_copy() {
    let nsfw = asset_model("open-nsfw-onnx");
    let f = fidelity(&nsfw, &nsfw, photo_set(), Part::Test, 4, Some(4), None).unwrap();
    assert_eq!((f.examples, f.agreements), (4, 4));
    assert!(f.model_accuracy.is_none());
    assert_eq!(f.output, nsfw.graph_proto().output[0].name);
    // The classifier's weights ([1024, 2] or [2, 1024]) turned around: the decisions flip.
    let (fc, len) = nsfw
        .initializers()
        .unwrap()
        .into_iter()
        .find(|(_, t)| t.dims.len() == 2 && t.dims.contains(&2) && t.len() > 100)
        .map(|(n, t)| (n, t.len()))
        .unwrap();
    let flipped = scaled(&nsfw, &fc, len, -1.0);
    let f = fidelity(&flipped, &nsfw, photo_set(), Part::Test, 4, Some(4), None).unwrap();
    assert!(f.agreements < 4 && f.mean_cosine < 0.999, "{f:?}");
}

#[test]
fn corrupt_or_truncated_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"this is not a protobuf at all \xff\xff\xff").unwrap();
    let err = format!("{:#}", load_model(&junk).unwrap_err());
    assert!(err.contains("junk.onnx"), "{err}");
    let bytes = tiny_cnn().to_bytes();
    let cut = dir.path().join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", load_model(&cut).unwrap_err());
    assert!(err.contains("cut.onnx"), "{err}");
    let missing = dir.path().join("missing.onnx");
    assert!(format!("{:#}", load_model(&missing).unwrap_err()).contains("missing.onnx"));
}

#[test]
fn exec_bench_measures_both_runtimes_on_the_same_inputs() {
    let options = ExecBenchOptions { batch_size: 8, iterations: 3, warmup: 1 };
    let r = exec_bench(&tiny_cnn(), fashion(), options).unwrap();
    assert_eq!(r.inputs, [("image".to_string(), vec![8, 1, 28, 28])]);
    assert!(r.ratio_p50.is_finite() && r.ratio_p50 > 0.0);
    assert!(r.max_rel_diff < 1e-4, "{}", r.max_rel_diff);
    let r = exec_bench(&tiny_text_model(), vader(), options).unwrap();
    assert_eq!(r.inputs.len(), 2);
    assert!(r.max_rel_diff < 1e-4, "{}", r.max_rel_diff);
}

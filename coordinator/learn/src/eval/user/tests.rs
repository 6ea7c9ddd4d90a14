//! The user's data on real models: crops of the real photos fed to PP-OCR's direction
//! classifier (`corpus-ppocr-cls`, input `x` f32 [-1, 3, ?, ?]), texts tokenized by the MiniLM
//! tokenizer for `minilm-l3-onnx`, and the same pixels again as `.npz`, `.npy` and
//! `.safetensors` tensors.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tract_onnx::pb;

use super::*;
use crate::data::Part;
use crate::eval::photos::decode_jpeg;
use crate::eval::{EvalData, accuracy, fidelity, load_model};
use hone_graph::{DataType, Dim, Graph, Node, ValueInfo};

fn asset(name: &str) -> PathBuf {
    hone_assets::path(name).unwrap_or_else(|e| panic!("{e}"))
}

fn ppocr() -> &'static Graph {
    static M: OnceLock<Graph> = OnceLock::new();
    M.get_or_init(|| load_model(&asset("corpus-ppocr-cls")).unwrap())
}

fn open(spec: &DataSpec) -> EvalData {
    EvalData::open(spec).unwrap_or_else(|e| panic!("{e:#}"))
}

fn err(r: anyhow::Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

/// `y = Identity(x)`, `x` f32 of the given dimensions (`N` symbolic).
fn identity(dims: &[i64]) -> Graph {
    let d: Vec<Dim> =
        dims.iter().map(|&v| if v < 0 { Dim::Symbol("N".into()) } else { Dim::Value(v) }).collect();
    let proto = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: vec![Node::new("id", "Identity", &["x"], &["y"]).to_proto()],
            input: vec![ValueInfo::tensor("x", DataType::F32, d).to_proto()],
            output: vec![
                ValueInfo { name: "y".into(), data_type: Some(DataType::F32), dims: None }
                    .to_proto(),
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    Graph::from_proto(proto).unwrap()
}

fn write_png(path: &Path, w: usize, h: usize, color: png::ColorType, data: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut e = png::Encoder::new(std::io::BufWriter::new(f), w as u32, h as u32);
    e.set_color(color);
    e.set_depth(png::BitDepth::Eight);
    e.write_header().unwrap().write_image_data(data).unwrap();
}

/// `n` square crops of a real photo, written as PNGs into `dir`, and the photo itself as JPEG.
fn photo_class(dir: &Path, asset_name: &str, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes = std::fs::read(asset(asset_name)).unwrap();
    std::fs::write(dir.join("whole.jpg"), &bytes).unwrap();
    let p = decode_jpeg(&bytes, asset_name).unwrap();
    let side = 120;
    for k in 0..n {
        let (x0, y0) = (k * 97 % (p.width - side), k * 61 % (p.height - side));
        let mut crop = Vec::with_capacity(side * side * 3);
        for y in y0..y0 + side {
            crop.extend(&p.rgb[(y * p.width + x0) * 3..(y * p.width + x0 + side) * 3]);
        }
        write_png(&dir.join(format!("crop{k}.png")), side, side, png::ColorType::Rgb, &crop);
    }
}

/// A labelled folder: `china/` and `flower/`, 5 images each (the photo and 4 crops).
fn photo_folder() -> &'static (tempfile::TempDir, EvalData) {
    static D: OnceLock<(tempfile::TempDir, EvalData)> = OnceLock::new();
    D.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        photo_class(&dir.path().join("china"), "photo-china", 4);
        photo_class(&dir.path().join("flower"), "photo-flower", 4);
        std::fs::write(dir.path().join("flower/notes.txt"), "not an image").unwrap();
        let spec = DataSpec::path(dir.path())
            .with_image_size([48, 192])
            .with_mean([0.5; 3])
            .with_std([0.5; 3]);
        let data = open(&spec);
        (dir, data)
    })
}

#[test]
fn a_labelled_image_folder_feeds_ppocr_and_accuracy_and_fidelity_run() {
    let data = &photo_folder().1;
    let EvalData::Images(d) = data else { panic!("not images") };
    assert_eq!(d.classes(), ["china", "flower"]);
    assert_eq!(d.labels().unwrap(), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
    assert!(data.labelled());
    assert_eq!(data.num_classes(), Some(2));
    let parts = [Part::Train, Part::Validation, Part::Test].map(|p| data.part_len(p));
    assert_eq!(parts, [8, 1, 1]);
    let model = ppocr();
    data.check(model).unwrap();
    let b = data.batches(model, Part::Train, 4, None, None).unwrap();
    assert_eq!(b.len(), 2);
    let (name, x) = &b[0].inputs[0];
    assert_eq!((name.as_str(), x.dims()), ("x", &[4, 3, 48, 192][..]));
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|p| (-1.0..=1.0).contains(p)), "mean/std 0.5 map 0..=255 to -1..=1");
    assert!(v.iter().any(|&p| p < -0.5) && v.iter().any(|&p| p > 0.5), "real pixels vary");
    let acc = accuracy(model, data, Part::Train, 4, None).unwrap();
    assert_eq!(acc.total, 8);
    let f = fidelity(model, model, data, Part::Train, 4, None, None).unwrap();
    assert_eq!((f.examples, f.top1_agreement), (8, 1.0));
    assert!(f.model_accuracy.is_some());
    assert!(data.describe().contains("classes china, flower"), "{}", data.describe());
}

#[test]
fn an_unlabelled_folder_is_normalised_as_the_spec_says() {
    let dir = tempfile::tempdir().unwrap();
    // A uniform colour, a grey image and a real crop.
    let colour: Vec<u8> = [255u8, 0, 128].repeat(10 * 20);
    write_png(&dir.path().join("a.png"), 20, 10, png::ColorType::Rgb, &colour);
    write_png(&dir.path().join("b.png"), 4, 4, png::ColorType::Grayscale, &[51; 16]);
    std::fs::copy(asset("photo-flower"), dir.path().join("c.jpeg")).unwrap();
    let spec =
        DataSpec::parse(&format!("{},channels=bgr,size=48x192", dir.path().display())).unwrap();
    assert_eq!(spec.channels, Some(Channels::Bgr));
    let data = open(&spec);
    assert!(!data.labelled() && data.num_classes().is_none());
    assert_eq!([Part::Train, Part::Validation, Part::Test].map(|p| data.part_len(p)), [1, 1, 1]);
    let model = ppocr();
    let b = data.batch(model, &[0, 1]).unwrap();
    assert!(b.labels.is_none());
    let x: Vec<f32> = b.inputs[0].1.flatten_all().unwrap().to_vec1().unwrap();
    let plane = 48 * 192;
    // NCHW, BGR, /255: image 0 is blue 128, green 0, red 255 everywhere.
    for (ch, want) in [128.0 / 255.0, 0.0, 1.0].into_iter().enumerate() {
        assert!(x[ch * plane..(ch + 1) * plane].iter().all(|&p| (p - want).abs() < 1e-6));
    }
    assert!(x[3 * plane..].iter().all(|&p| (p - 0.2).abs() < 1e-6), "grey 51 → 0.2 everywhere");
    let e = err(accuracy(model, &data, Part::Test, 4, None));
    assert!(e.contains("no labels"), "{e}");
    let f = fidelity(model, model, &data, Part::Test, 4, None, None).unwrap();
    assert_eq!(f.top1_agreement, 1.0);
}

#[test]
fn images_that_do_not_fit_name_the_input_and_the_mismatch() {
    let dir = &photo_folder().0;
    // ppocr's H and W are symbolic: a size is needed.
    let no_size = open(&DataSpec::path(dir.path()));
    let e = err(no_size.check(ppocr()));
    assert!(e.contains("input `x`") && e.contains("give an image size"), "{e}");
    // A fixed-size model and another size.
    let fixed = identity(&[-1, 3, 48, 192]);
    let small = open(&DataSpec::path(dir.path()).with_image_size([32, 32]));
    let e = err(small.check(&fixed));
    assert!(
        e.contains("input `x` expects f32 [N, 3, 48, 192]; the images give f32 [N, 3, 32, 32]"),
        "{e}"
    );
    // Without a size the model's fixed one is used.
    no_size.check(&fixed).unwrap();
    let b = no_size.batch(&fixed, &[0]).unwrap();
    assert_eq!(b.inputs[0].1.dims(), [1, 3, 48, 192]);
    // NHWC where the model declares NCHW.
    let nhwc = open(&DataSpec::path(dir.path()).with_layout(Layout::Nhwc));
    let e = err(nhwc.check(&fixed));
    assert!(e.contains("input `x` expects f32 [N, 3, 48, 192]") && e.contains("NHWC"), "{e}");
    // Grey images for a 3-channel input.
    let grey = open(&DataSpec::path(dir.path()).with_channels(Channels::Gray));
    assert!(err(grey.check(&fixed)).contains("1 channel"));
    // A mixed folder, an empty one, a broken image.
    let mixed = tempfile::tempdir().unwrap();
    std::fs::create_dir(mixed.path().join("cls")).unwrap();
    std::fs::write(mixed.path().join("x.png"), b"\x89PNG broken").unwrap();
    assert!(err(EvalData::open(&DataSpec::path(mixed.path()))).contains("both images"));
    std::fs::copy(mixed.path().join("x.png"), mixed.path().join("cls/x.png")).unwrap();
    std::fs::remove_file(mixed.path().join("x.png")).unwrap();
    let e = err(EvalData::open(&DataSpec::path(mixed.path())));
    assert!(e.contains("x.png") && e.contains("PNG"), "{e}");
}

fn tokenizer_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(asset("minilm-l6-tokenizer"), d.path().join("tokenizer.json")).unwrap();
    d
}

#[test]
fn jsonl_and_csv_texts_feed_minilm() {
    let minilm = load_model(&asset("minilm-l3-onnx")).unwrap();
    let model_dir = tokenizer_dir();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("t.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"A wonderful, moving film.\", \"label\": \"pos\"}\n\
         {\"text\": \"Dull.\", \"label\": \"neg\"}\n\n\
         {\"text\": \"I would watch it again and again and again.\", \"label\": \"pos\"}\n\
         {\"text\": \"Not for me.\", \"label\": \"neg\"}\n",
    )
    .unwrap();
    let data = open(&DataSpec::path(&jsonl).with_model_dir(model_dir.path()));
    let EvalData::Texts(t) = &data else { panic!("not texts") };
    assert_eq!(t.classes(), ["neg", "pos"]);
    assert_eq!(t.labels().unwrap(), [1, 0, 1, 0]);
    assert_eq!(data.num_classes(), Some(2));
    data.check(&minilm).unwrap();
    let b = data.batch(&minilm, &[0, 1, 2]).unwrap();
    let names: Vec<&str> = b.inputs.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"input_ids") && names.contains(&"attention_mask"), "{names:?}");
    let longest = data.longest(&[0, 1, 2]).unwrap();
    assert!(longest > 5);
    for (_, x) in &b.inputs {
        assert_eq!(x.dims(), [3, longest]);
        assert_eq!(x.dtype(), candle_core::DType::I64);
    }
    assert_eq!(b.labels.as_deref(), Some(&[1, 0, 1][..]));
    let fixed = data.clone().with_seq_len(Some(16));
    assert_eq!(fixed.batch(&minilm, &[1]).unwrap().inputs[0].1.dims(), [1, 16]);

    // CSV, integer labels, quotes, commas and a line break in a field; the tokenizer by path.
    let csv = dir.path().join("t.csv");
    std::fs::write(
        &csv,
        "id,text,label\n1,\"Great, truly \"\"great\"\".\",2\n2,\"two\nlines\",0\n3,fine,1\n",
    )
    .unwrap();
    let spec = DataSpec::parse(&format!(
        "{},tokenizer={}",
        csv.display(),
        model_dir.path().join("tokenizer.json").display()
    ))
    .unwrap();
    let data = open(&spec);
    let EvalData::Texts(t) = &data else { panic!("not texts") };
    assert_eq!(t.texts()[0], "Great, truly \"great\".");
    assert_eq!(t.texts()[1], "two\nlines");
    assert_eq!((t.labels().unwrap(), data.num_classes()), (&[2, 0, 1][..], Some(3)));
    let b = data.batches(&minilm, Part::Train, 8, None, None).unwrap();
    assert_eq!(b[0].inputs[0].1.dims()[0], data.part_len(Part::Train));

    // Unlabelled JSONL; and the errors.
    let bare = dir.path().join("bare.jsonl");
    std::fs::write(&bare, "{\"text\": \"one\"}\n{\"text\": \"two\"}\n").unwrap();
    let data = open(&DataSpec::path(&bare).with_model_dir(model_dir.path()));
    assert!(!data.labelled());
    assert!(data.batch(&minilm, &[0, 1]).unwrap().labels.is_none());
    let e = err(EvalData::open(&DataSpec::path(&bare)));
    assert!(e.contains("no tokenizer"), "{e}");
    std::fs::write(&bare, "{\"text\": \"one\", \"label\": 1}\n{\"text\": \"two\"}\n").unwrap();
    let e = err(EvalData::open(&DataSpec::path(&bare).with_model_dir(model_dir.path())));
    assert!(e.contains("label every text or none") && e.contains("line 2"), "{e}");
    std::fs::write(&bare, "{\"txt\": \"one\"}\n").unwrap();
    let e = err(EvalData::open(&DataSpec::path(&bare).with_model_dir(model_dir.path())));
    assert!(e.contains("bare.jsonl: line 1: no string field `text`"), "{e}");
    // Texts for an image model.
    let e = err(data.check(ppocr()));
    assert!(e.contains("no `input_ids`") && e.contains("`x`"), "{e}");
}

/// A `.npy` file of `shape` from raw little-endian `data` of numpy type `descr`.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let tuple =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_npz(path: &Path, entries: &[(&str, Vec<u8>)], deflate: bool) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method =
        if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in entries {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn write_safetensors(path: &Path, entries: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        let start = data.len();
        data.extend(bytes);
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

#[test]
fn tensors_from_npz_npy_and_safetensors_feed_ppocr_like_the_images_do() {
    let images = &photo_folder().1;
    let model = ppocr();
    let all: Vec<usize> = (0..10).collect();
    let x = images.batch(model, &all).unwrap().inputs[0].1.clone();
    let pixels: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let shape = [10, 3, 48, 192];
    let labels: Vec<u8> =
        [0i64, 0, 0, 0, 0, 1, 1, 1, 1, 1].iter().flat_map(|l| l.to_le_bytes()).collect();
    let dir = tempfile::tempdir().unwrap();

    let npz = dir.path().join("d.npz");
    write_npz(
        &npz,
        &[("x", npy("<f4", &shape, &f32_bytes(&pixels))), ("labels", npy("<i8", &[10], &labels))],
        true,
    );
    // f64 pixels and i32 labels in a folder of .npy files.
    let folder = dir.path().join("npys");
    std::fs::create_dir(&folder).unwrap();
    let f64s: Vec<u8> = pixels.iter().flat_map(|&p| f64::from(p).to_le_bytes()).collect();
    std::fs::write(folder.join("x.npy"), npy("<f8", &shape, &f64s)).unwrap();
    let i32s: Vec<u8> =
        [0i32, 0, 0, 0, 0, 1, 1, 1, 1, 1].iter().flat_map(|l| l.to_le_bytes()).collect();
    std::fs::write(folder.join("labels.npy"), npy("<i4", &[10], &i32s)).unwrap();
    let st = dir.path().join("d.safetensors");
    write_safetensors(
        &st,
        &[
            ("x", "F32", shape.to_vec(), f32_bytes(&pixels)),
            ("labels", "I64", vec![10], labels.clone()),
        ],
    );

    let want = images.batches(model, Part::Train, 4, None, None).unwrap();
    let want_acc = accuracy(model, images, Part::Train, 4, None).unwrap();
    for path in [&npz, &folder, &st] {
        let data = open(&DataSpec::path(path));
        assert_eq!(data.num_classes(), Some(2), "{}", path.display());
        let got = data.batches(model, Part::Train, 4, None, None).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((&g.indices, &g.labels), (&w.indices, &w.labels));
            let (g, w) = (&g.inputs[0].1, &w.inputs[0].1);
            assert_eq!(g.dims(), w.dims());
            let diff =
                (g - w).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{}", path.display());
        }
        assert_eq!(accuracy(model, &data, Part::Train, 4, None).unwrap(), want_acc);
    }
    // Without labels: unlabelled.
    let bare = dir.path().join("bare.npz");
    write_npz(&bare, &[("x", npy("<f4", &shape, &f32_bytes(&pixels)))], false);
    let data = open(&DataSpec::path(&bare));
    assert!(!data.labelled());
    fidelity(model, model, &data, Part::Test, 4, None, None).unwrap();
}

#[test]
fn tensors_that_do_not_fit_or_are_corrupt_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity(&[-1, 3, 48, 192]);
    let small = vec![0f32; 2 * 3 * 32 * 32];
    let p = dir.path().join("small.npz");
    write_npz(&p, &[("x", npy("<f4", &[2, 3, 32, 32], &f32_bytes(&small)))], false);
    let e = err(open(&DataSpec::path(&p)).check(&model));
    assert!(
        e.contains(
            "input `x` expects f32 [N, 3, 48, 192]; the tensors file gives `x` f32 [N, 3, 32, 32]"
        ),
        "{e}"
    );
    // Wrong element type.
    let ints: Vec<u8> = vec![0; 2 * 3 * 48 * 192 * 8];
    let p = dir.path().join("ints.npz");
    write_npz(&p, &[("x", npy("<i8", &[2, 3, 48, 192], &ints))], false);
    let e = err(open(&DataSpec::path(&p)).check(&model));
    assert!(
        e.contains("input `x` expects f32 [N, 3, 48, 192]; the tensors file gives `x` i64"),
        "{e}"
    );
    // Missing key.
    let p = dir.path().join("key.npz");
    write_npz(&p, &[("image", npy("<f4", &[1, 2], &f32_bytes(&[1.0, 2.0])))], false);
    let e = err(open(&DataSpec::path(&p)).check(&model));
    assert!(e.contains("input `x`") && e.contains("it has `image`"), "{e}");
    // Corrupt header, unsupported type, truncated data, huge shape, examples that disagree.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", b"\x93NUMPX\x01\x00\x10\x00{}".to_vec(), "not a .npy file"),
        ("u8", npy("|u1", &[4], &[1, 2, 3, 4]), "`|u1` is not supported"),
        ("trunc", npy("<f4", &[4], &f32_bytes(&[1.0, 2.0])), "holds 8"),
        ("huge", npy("<f4", &[1 << 40, 1 << 20], &[]), "needs more than"),
        (
            "noshape",
            b"\x93NUMPY\x01\x00\x19\x00{'descr': '<f4', 'fo': 1}".to_vec(),
            "bad .npy header",
        ),
    ];
    for (name, bytes, want) in cases {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("x.npy"), bytes).unwrap();
        let e = err(EvalData::open(&DataSpec::path(&d)));
        assert!(e.contains("x.npy") && e.contains(want), "{name}: {e}");
    }
    // A truncated array inside an archive.
    let p = dir.path().join("trunc.npz");
    let mut bytes = npy("<f4", &[4, 2], &f32_bytes(&[1.0; 8]));
    bytes.truncate(bytes.len() - 5);
    write_npz(&p, &[("x", bytes)], true);
    let e = err(EvalData::open(&DataSpec::path(&p)));
    assert!(e.contains("`x`") && e.contains("truncated"), "{e}");
    let p = dir.path().join("count.npz");
    write_npz(
        &p,
        &[
            ("x", npy("<f4", &[2, 1], &f32_bytes(&[1.0, 2.0]))),
            ("labels", npy("<i8", &[3], &[0; 24])),
        ],
        false,
    );
    let e = err(EvalData::open(&DataSpec::path(&p)));
    assert!(e.contains("same first axis"), "{e}");
    // Safetensors with a bad header.
    let p = dir.path().join("bad.safetensors");
    std::fs::write(&p, [255, 255, 255, 255, 0, 0, 0, 0, b'{']).unwrap();
    let e = err(EvalData::open(&DataSpec::path(&p)));
    assert!(e.contains("bad.safetensors"), "{e}");
}

#[test]
fn specs_parse_describe_and_round_trip() {
    assert_eq!(DataSpec::parse("mnist").unwrap(), DataSpec::builtin("mnist"));
    let s = DataSpec::parse(
        "imgs,size=48x192,layout=nhwc,channels=bgr,mean=0.5,std=0.1:0.2:0.3,scale=1",
    )
    .unwrap();
    assert_eq!(s.source, DataSource::Path("imgs".into()));
    assert_eq!(
        (s.image_size, s.layout, s.mean, s.std),
        (Some([48, 192]), Some(Layout::Nhwc), Some([0.5; 3]), Some([0.1, 0.2, 0.3]))
    );
    assert_eq!(DataSpec::parse(&s.to_string()).unwrap(), s);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<DataSpec>(&json).unwrap(), s);
    let d = s.clone().with_format(DataFormat::Images).describe();
    assert!(d.contains("48×192") && d.contains("NHWC") && d.contains("BGR"), "{d}");
    for (bad, want) in
        [("x,size=0x3", "size"), ("x,colour=red", "unknown option"), ("x,mean=1:2", "three")]
    {
        let e = err(DataSpec::parse(bad));
        assert!(e.contains(want), "{bad}: {e}");
    }
    let e = err(EvalData::open(&DataSpec::path("/nonexistent/data.bin")));
    assert!(e.contains("/nonexistent/data.bin"), "{e}");
    let e = err(EvalData::open(&DataSpec::builtin("nope")));
    assert!(e.contains("unknown data set"), "{e}");
    // Small sets still get a validation example.
    for n in 3..30 {
        let s = user_split(n);
        assert!(!s.validation.is_empty() && !s.test.is_empty() && s.len() == n, "{n}");
    }
    assert_eq!(user_split(2).validation.len(), 1);
}

/// A DVC repository (hand-made DVC 3 layout) tracking a folder `imgs` of three PNG images in two
/// class folders: parsed as a `dvc://` spec, resolved into a verified copy, opened, described;
/// an altered copy is refused when opened.
#[test]
fn dvc_specs_resolve_into_a_verified_copy_that_opens_like_a_path() {
    use crate::data::dvc::{md5_hex, object_path};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let cache = root.join(".dvc/cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    let put = |bytes: &[u8], md5: &str| {
        let p = object_path(&cache, md5);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    let scratch = dir.path().join("scratch.png");
    let mut entries = Vec::new();
    let mut size = 0;
    for (i, rel) in ["a/1.png", "a/2.png", "b/1.png"].iter().enumerate() {
        write_png(&scratch, 4, 4, png::ColorType::Rgb, &[40 * i as u8; 48]);
        let bytes = std::fs::read(&scratch).unwrap();
        let md5 = md5_hex(&bytes);
        put(&bytes, &md5);
        size += bytes.len();
        entries.push(format!(r#"{{"md5": "{md5}", "relpath": "{rel}"}}"#));
    }
    let manifest = format!("[{}]", entries.join(", "));
    let md5 = format!("{}.dir", md5_hex(manifest.as_bytes()));
    put(manifest.as_bytes(), &md5);
    std::fs::write(
        root.join("data/imgs.dvc"),
        format!("outs:\n- md5: {md5}\n  size: {size}\n  nfiles: 3\n  hash: md5\n  path: imgs\n"),
    )
    .unwrap();

    let text = format!("dvc://{}/data/imgs,size=8x8", root.display());
    let spec = DataSpec::parse(&text).unwrap();
    assert_eq!(spec.source, DataSource::Dvc(format!("dvc://{}/data/imgs", root.display())));
    assert_eq!(spec.image_size, Some([8, 8]));
    assert_eq!(DataSpec::parse(&spec.to_string()).unwrap(), spec);
    let json = serde_json::to_value(&spec).unwrap();
    assert!(json["source"]["dvc"].is_string() && json.get("dataset").is_none(), "{json}");
    assert!(spec.describe().contains("dvc://"), "{}", spec.describe());
    // The `.dvc` file names it too.
    let by_record = DataSpec::parse(&format!("{}/data/imgs.dvc", root.display())).unwrap();
    assert!(matches!(by_record.source, DataSource::Dvc(_)));

    let out = dir.path().join("out");
    let resolved = spec.resolve_dvc(&out).unwrap();
    let copy = out.join(&md5).join("imgs");
    assert_eq!(resolved.source, DataSource::Path(copy.clone()));
    let id = resolved.dataset.clone().unwrap();
    assert_eq!(
        (id.path.as_str(), id.md5.as_str(), id.rev.as_str()),
        ("data/imgs", md5.as_str(), "workspace")
    );
    let json = serde_json::to_value(&resolved).unwrap();
    assert_eq!(serde_json::from_value::<DataSpec>(json).unwrap(), resolved);
    let data = open(&resolved);
    let n: usize =
        [Part::Train, Part::Validation, Part::Test].map(|p| data.part_len(p)).iter().sum();
    assert_eq!(n, 3);
    assert!(data.labelled());
    let d = resolved.describe();
    assert!(d.contains(&format!("from dvc://{}/data/imgs@workspace (md5 {md5})", id.repo)), "{d}");
    // The copy altered after resolution: opening it is refused.
    std::fs::write(copy.join("b/1.png"), b"not the recorded image").unwrap();
    let e = err(EvalData::open(&resolved));
    assert!(e.contains("was altered") && e.contains("b/1.png"), "{e}");
}

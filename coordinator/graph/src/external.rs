//! ONNX external data: reading it into memory when a model is loaded, writing it back on save.
//!
//! A tensor with `data_location = EXTERNAL` names its bytes with `external_data` entries:
//! `location` (a file relative to the model's folder), `offset` (default 0) and `length`
//! (default: to the end of the file). Reading refuses any location that is absolute, contains
//! `..`, or resolves (through symbolic links) outside the model's folder, and checks that the
//! range lies within the file and matches the tensor's declared size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use prost::Message as _;
use tract_onnx::pb;

use super::GraphError;
use super::tensor::{DataType, Tensor, element_count};

const EXTERNAL: i32 = pb::tensor_proto::DataLocation::External as i32;

/// Offsets in a written data file are multiples of this (cache-line alignment for readers that
/// map the file).
const ALIGN: u64 = 64;

/// Reads the external data of every tensor in `graph` (initializers, attribute tensors and
/// subgraphs) into `raw_data`, resolving locations in `dir`.
pub(super) fn resolve(graph: &mut pb::GraphProto, dir: Option<&Path>) -> Result<(), GraphError> {
    let mut reader = Reader { dir, canonical_dir: None, files: HashMap::new() };
    visit_graph(graph, &mut |t| reader.load(t))
}

fn visit_graph(
    g: &mut pb::GraphProto,
    f: &mut dyn FnMut(&mut pb::TensorProto) -> Result<(), GraphError>,
) -> Result<(), GraphError> {
    for t in &mut g.initializer {
        f(t)?;
    }
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(t) = a.t.as_mut() {
                f(t)?;
            }
            for t in &mut a.tensors {
                f(t)?;
            }
            if let Some(sub) = a.g.as_mut() {
                visit_graph(sub, f)?;
            }
            for sub in &mut a.graphs {
                visit_graph(sub, f)?;
            }
        }
    }
    Ok(())
}

struct Reader<'a> {
    dir: Option<&'a Path>,
    canonical_dir: Option<PathBuf>,
    files: HashMap<PathBuf, (File, u64)>,
}

impl Reader<'_> {
    fn load(&mut self, t: &mut pb::TensorProto) -> Result<(), GraphError> {
        if t.data_location != Some(EXTERNAL) {
            return Ok(());
        }
        let name = t.name.clone();
        let bad = |reason: String| GraphError::ExternalData { tensor: name.clone(), reason };
        let Some(dir) = self.dir else {
            return Err(bad("the model was decoded from memory without a folder to read it from \
                            (use Graph::load or Graph::from_bytes_in)"
                .into()));
        };
        let entry = |key: &str| t.external_data.iter().find(|e| e.key == key).map(|e| &e.value);
        let location = entry("location").filter(|l| !l.is_empty()).cloned();
        let location = location.ok_or_else(|| bad("no `location` entry".into()))?;
        let parse = |key: &str| -> Result<Option<u64>, GraphError> {
            entry(key)
                .map(|v| v.trim().parse::<u64>().map_err(|_| bad(format!("`{key}` is `{v}`"))))
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let length = parse("length")?;

        let outside =
            || GraphError::ExternalPathOutside { tensor: name.clone(), location: location.clone() };
        let rel = Path::new(&location);
        if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(outside());
        }
        if self.canonical_dir.is_none() {
            let canonical = dir.canonicalize().map_err(|source| GraphError::Io {
                action: "read",
                path: dir.to_path_buf(),
                source,
            })?;
            self.canonical_dir = Some(canonical);
        }
        let root = self.canonical_dir.clone().unwrap_or_default();
        let joined = root.join(rel);
        let path = joined.canonicalize().map_err(|e| bad(format!("{}: {e}", joined.display())))?;
        if !path.starts_with(&root) {
            return Err(outside());
        }
        if !self.files.contains_key(&path) {
            let file = File::open(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            let size = file.metadata().map_err(|e| bad(e.to_string()))?.len();
            self.files.insert(path.clone(), (file, size));
        }
        let Some((file, size)) = self.files.get_mut(&path) else {
            return Err(bad("file handle lost".into()));
        };
        let size = *size;
        if offset > size {
            return Err(bad(format!(
                "offset {offset} is past the end of `{location}` ({size} bytes)"
            )));
        }
        let length = length.unwrap_or(size - offset);
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(bad(format!(
                "bytes {offset}..{offset}+{length} lie outside `{location}` ({size} bytes)"
            )));
        }
        let dt = DataType::from_onnx(t.data_type).ok_or_else(|| {
            GraphError::UnsupportedDataType { name: t.name.clone(), data_type: t.data_type }
        })?;
        let elem = dt.size_of().ok_or_else(|| bad("string tensors cannot be external".into()))?;
        let dims: Option<Vec<usize>> = t.dims.iter().map(|&d| usize::try_from(d).ok()).collect();
        let expected = dims
            .as_deref()
            .and_then(element_count)
            .and_then(|n| n.checked_mul(elem))
            .ok_or_else(|| bad(format!("bad dims {:?}", t.dims)))?;
        if expected as u64 != length {
            return Err(bad(format!(
                "{length} bytes at `{location}` but dims {:?} of {dt} need {expected}",
                t.dims
            )));
        }
        let mut raw = vec![0u8; expected];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut raw))
            .map_err(|e| bad(format!("reading `{location}`: {e}")))?;
        t.raw_data = raw;
        t.data_location = None;
        t.external_data.clear();
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), GraphError> {
    let io = |source| GraphError::Io { action: "write", path: path.to_path_buf(), source };
    let file_name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))
    })?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes `model` to `path`, moving initializers of at least `threshold` bytes to
/// `<file name>.data`.
pub(super) fn save(
    model: &pb::ModelProto,
    path: &Path,
    threshold: usize,
) -> Result<(), GraphError> {
    let io = |source| GraphError::Io { action: "write", path: path.to_path_buf(), source };
    let file_name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))
    })?;
    let mut location = file_name.to_string_lossy().into_owned();
    location.push_str(".data");
    let data_path = path.with_file_name(&location);

    let Some(graph) = model.graph.as_ref() else {
        return write_atomically(path, &model.encode_to_vec());
    };
    // Headers (everything but the data) of every initializer; data is either kept (inline) or
    // appended to the data file.
    let mut data: Vec<u8> = Vec::new();
    let mut initializers = Vec::with_capacity(graph.initializer.len());
    for t in &graph.initializer {
        let bytes = external_bytes(t)?;
        match bytes {
            Some(bytes) if bytes.len() >= threshold => {
                let offset = data.len() as u64;
                data.extend_from_slice(&bytes);
                let padded = (data.len() as u64).div_ceil(ALIGN) * ALIGN;
                data.resize(padded as usize, 0);
                let kv =
                    |k: &str, v: String| pb::StringStringEntryProto { key: k.into(), value: v };
                initializers.push(pb::TensorProto {
                    dims: t.dims.clone(),
                    data_type: t.data_type,
                    segment: t.segment.clone(),
                    name: t.name.clone(),
                    doc_string: t.doc_string.clone(),
                    data_location: Some(EXTERNAL),
                    external_data: vec![
                        kv("location", location.clone()),
                        kv("offset", offset.to_string()),
                        kv("length", bytes.len().to_string()),
                    ],
                    ..Default::default()
                });
            }
            _ => initializers.push(t.clone()),
        }
    }
    let mut out = model_without_graph(model);
    out.graph =
        Some(pb::GraphProto { initializer: initializers, ..graph_without_initializers(graph) });
    if !data.is_empty() {
        write_atomically(&data_path, &data)?;
    }
    write_atomically(path, &out.encode_to_vec())
}

/// The little-endian bytes of a fixed-size tensor (from `raw_data` or its typed field); `None`
/// for tensors that stay inline (strings, unsupported types).
fn external_bytes(t: &pb::TensorProto) -> Result<Option<Vec<u8>>, GraphError> {
    match DataType::from_onnx(t.data_type) {
        None | Some(DataType::String) => Ok(None),
        Some(_) if !t.raw_data.is_empty() => Ok(Some(t.raw_data.clone())),
        Some(_) => Ok(Tensor::from_proto(t)?.to_le_bytes()),
    }
}

fn model_without_graph(m: &pb::ModelProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: m.ir_version,
        opset_import: m.opset_import.clone(),
        producer_name: m.producer_name.clone(),
        producer_version: m.producer_version.clone(),
        domain: m.domain.clone(),
        model_version: m.model_version,
        doc_string: m.doc_string.clone(),
        graph: None,
        metadata_props: m.metadata_props.clone(),
        training_info: m.training_info.clone(),
        functions: m.functions.clone(),
    }
}

fn graph_without_initializers(g: &pb::GraphProto) -> pb::GraphProto {
    pb::GraphProto {
        node: g.node.clone(),
        name: g.name.clone(),
        initializer: Vec::new(),
        sparse_initializer: g.sparse_initializer.clone(),
        doc_string: g.doc_string.clone(),
        input: g.input.clone(),
        output: g.output.clone(),
        value_info: g.value_info.clone(),
        quantization_annotation: g.quantization_annotation.clone(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::super::testing::{mlp, mlp_input, run_path, run_proto};
    use super::super::{Graph, GraphError, TensorData};
    use super::*;

    /// `mlp()` saved with external data in a fresh folder; returns the folder and model path.
    fn saved_external(threshold: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        mlp().save_with_external_data(&path, threshold).unwrap();
        (dir, path)
    }

    fn raw_model(path: &Path) -> pb::ModelProto {
        pb::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
    }

    fn write_raw(path: &Path, m: &pb::ModelProto) {
        std::fs::write(path, m.encode_to_vec()).unwrap();
    }

    fn set_entry(m: &mut pb::ModelProto, tensor: &str, key: &str, value: &str) {
        let t = m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.name == tensor);
        let t = t.unwrap();
        match t.external_data.iter_mut().find(|e| e.key == key) {
            Some(e) => e.value = value.into(),
            None => t
                .external_data
                .push(pb::StringStringEntryProto { key: key.into(), value: value.into() }),
        }
    }

    #[test]
    fn external_data_round_trip_restores_every_tensor_and_tract_reads_the_files() {
        let (dir, path) = saved_external(12);
        let on_disk = raw_model(&path);
        let w = on_disk.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == "W").unwrap();
        assert_eq!(w.data_location, Some(EXTERNAL));
        assert!(w.raw_data.is_empty());
        let small = &on_disk.graph.as_ref().unwrap().initializer[2];
        assert_eq!((small.name.as_str(), small.data_location), ("unused", None), "4 bytes < 12");
        assert!(dir.path().join("model.onnx.data").is_file());

        let loaded = Graph::load(&path).unwrap();
        assert_eq!(loaded, mlp());
        let reference = run_proto(mlp().proto(), &[mlp_input()]);
        assert_eq!(run_path(&path, &[mlp_input()]), reference, "tract reads our data file");
        loaded.save(dir.path().join("inline.onnx")).unwrap();
        assert_eq!(Graph::load(dir.path().join("inline.onnx")).unwrap(), mlp());
    }

    #[test]
    fn typed_field_initializers_are_externalised_as_little_endian_bytes() {
        let mut g = mlp();
        let w = &mut g.graph_proto_mut().initializer[0];
        w.float_data = Tensor::from_proto(w).unwrap().as_f32().unwrap().to_vec();
        w.raw_data.clear();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typed.onnx");
        g.save_with_external_data(&path, 0).unwrap();
        let back = Graph::load(&path).unwrap();
        assert_eq!(back.initializer("W").unwrap(), mlp().initializer("W").unwrap());
        let data = std::fs::read(dir.path().join("typed.onnx.data")).unwrap();
        assert_eq!(&data[..4], &0.5f32.to_le_bytes());
    }

    #[test]
    fn external_locations_outside_the_model_folder_are_refused() {
        let (dir, path) = saved_external(12);
        let outside = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join("model.onnx.data"), outside.path().join("x.data")).unwrap();
        let escape = format!("../{}/x.data", outside.path().file_name().unwrap().to_string_lossy());
        let absolute = outside.path().join("x.data").display().to_string();
        std::os::unix::fs::symlink(outside.path().join("x.data"), dir.path().join("link")).unwrap();
        for location in [escape.as_str(), absolute.as_str(), "link"] {
            let mut m = raw_model(&path);
            set_entry(&mut m, "W", "location", location);
            write_raw(&path, &m);
            let err = Graph::load(&path).unwrap_err();
            assert!(
                matches!(&err, GraphError::ExternalPathOutside { tensor, .. } if tensor == "W"),
                "{location}: {err}"
            );
        }
    }

    #[test]
    fn out_of_range_missing_or_mis_sized_external_data_is_refused() {
        let (_dir, path) = saved_external(12);
        let pristine = raw_model(&path);
        let cases: [(&str, &str, &str); 5] = [
            ("offset", "100000", "past the end"),
            ("length", "99999999999999999999", "`length`"),
            ("length", "20", "need 24"),
            ("offset", "18446744073709551615", "past the end"),
            ("location", "absent.bin", "absent.bin"),
        ];
        for (key, value, expect) in cases {
            let mut m = pristine.clone();
            set_entry(&mut m, "W", key, value);
            write_raw(&path, &m);
            let err = Graph::load(&path).unwrap_err();
            assert!(matches!(err, GraphError::ExternalData { .. }), "{key}={value}: {err}");
            assert!(err.to_string().contains(expect), "{key}={value}: {err}");
        }
        let mut m = pristine;
        let w = &mut m.graph.as_mut().unwrap().initializer[0];
        w.external_data.retain(|e| e.key != "location");
        write_raw(&path, &m);
        assert!(Graph::load(&path).unwrap_err().to_string().contains("no `location`"));
    }

    #[test]
    fn models_with_external_data_decoded_from_memory_need_their_folder() {
        let (dir, path) = saved_external(12);
        let bytes = std::fs::read(&path).unwrap();
        let err = Graph::from_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("Graph::load"), "{err}");
        let g = Graph::from_bytes_in(&bytes, dir.path()).unwrap();
        assert_eq!(g.initializer("W").unwrap().data, mlp().initializer("W").unwrap().data);
        assert!(matches!(g.initializer("b").unwrap().data, TensorData::F32(_)));
    }
}

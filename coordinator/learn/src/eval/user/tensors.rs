//! Tensors keyed by input name: a NumPy `.npz` archive, a folder of `INPUTNAME.npy` files, or a
//! `.safetensors` file; the first axis of every array is the examples, and an integer array
//! `labels` gives classes. The `.npy` reader is Hone's own: it checks the header, the element
//! type and the length before it allocates anything the file does not hold.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context as _, bail};
use candle_core::{Device, Tensor};

use super::{DataFormat, DataSpec, MAX_DATA_BYTES, admits, declared, user_split};
use crate::data::Split;
use hone_graph::{DataType, ValueInfo};

/// The name of the optional labels array.
const LABELS: &str = "labels";

/// Longest `.npy` header Hone reads.
const MAX_NPY_HEADER: usize = 1 << 20;

/// An element type as stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 64-bit float (cast to f32 when read).
    F64,
    /// 64-bit integer.
    I64,
    /// 32-bit integer (cast to i64 when read).
    I32,
}

impl ElementType {
    fn size(self) -> usize {
        match self {
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F64 | ElementType::I64 => 8,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ElementType::F32 => "f32",
            ElementType::F64 => "f64",
            ElementType::I64 => "i64",
            ElementType::I32 => "i32",
        }
    }

    fn is_float(self) -> bool {
        matches!(self, ElementType::F32 | ElementType::F64)
    }
}

/// The values of an array, as fed: floats as f32, integers as i64.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    /// f32 (or f64 cast to f32).
    F32(Vec<f32>),
    /// i64 (or i32 cast to i64).
    I64(Vec<i64>),
}

/// One array of a tensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Its key: the model input it feeds, or `labels`.
    pub key: String,
    /// The element type in the file.
    pub stored: ElementType,
    /// Its shape; the first axis is the examples.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: ArrayData,
}

impl Array {
    /// `f32 [N, 3, 32, 32]`.
    fn describe(&self) -> String {
        let rest: Vec<String> = self.shape[1..].iter().map(ToString::to_string).collect();
        let dims = if rest.is_empty() { "[N]".into() } else { format!("[N, {}]", rest.join(", ")) };
        format!("{} {dims}", self.stored.as_str())
    }
}

/// Tensors opened from a [`DataSpec`] (see [`crate::eval::EvalData::open`]).
#[derive(Debug, Clone)]
pub struct UserTensors {
    name: String,
    spec: DataSpec,
    arrays: Vec<Array>,
    labels: Option<Vec<u32>>,
    examples: usize,
    split: Split,
}

impl UserTensors {
    /// Reads every array of the file or folder.
    pub(crate) fn open(
        path: &Path,
        format: DataFormat,
        spec: &DataSpec,
    ) -> anyhow::Result<UserTensors> {
        let name = path.display().to_string();
        let mut budget = MAX_DATA_BYTES;
        let mut arrays = match format {
            DataFormat::Npz => read_npz(path, &mut budget)?,
            DataFormat::NpyDir => read_npy_dir(path, &mut budget)?,
            _ => read_safetensors(path)?,
        };
        arrays.sort_by(|a, b| a.key.cmp(&b.key));
        if arrays.is_empty() {
            bail!("{name}: no arrays");
        }
        if let Some(w) = arrays.windows(2).find(|w| w[0].key == w[1].key) {
            bail!("{name}: two arrays named `{}`", w[0].key);
        }
        let first = &arrays[0];
        let examples = first.shape[0];
        if let Some(a) = arrays.iter().find(|a| a.shape[0] != examples) {
            bail!(
                "{name}: `{}` has {} examples (first axis) but `{}` has {}: every array needs \
                 the same first axis",
                first.key,
                examples,
                a.key,
                a.shape[0]
            );
        }
        let labels = match arrays.iter().position(|a| a.key == LABELS) {
            None => None,
            Some(i) => {
                let a = arrays.remove(i);
                let ArrayData::I64(v) = &a.data else {
                    bail!(
                        "{name}: `labels` is {}; labels must be integers (i64 or i32)",
                        a.stored.as_str()
                    );
                };
                if a.shape.len() != 1 {
                    bail!(
                        "{name}: `labels` has shape {:?}; labels must be one class per example [N]",
                        a.shape
                    );
                }
                let labels =
                    v.iter().map(|&l| u32::try_from(l)).collect::<Result<Vec<u32>, _>>().map_err(
                        |_| anyhow::anyhow!("{name}: `labels` holds a negative or huge class"),
                    )?;
                Some(labels)
            }
        };
        if arrays.is_empty() {
            bail!("{name}: only `labels`, no input arrays");
        }
        Ok(UserTensors {
            name,
            spec: spec.clone(),
            arrays,
            labels,
            examples,
            split: user_split(examples),
        })
    }

    /// The file or folder, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spec it was opened with.
    pub fn spec(&self) -> &DataSpec {
        &self.spec
    }

    /// The input arrays (not `labels`), by key.
    pub fn arrays(&self) -> &[Array] {
        &self.arrays
    }

    /// Class of each example, when there is a `labels` array.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// The largest label plus one.
    pub fn num_classes(&self) -> Option<usize> {
        self.labels.as_ref().map(|l| l.iter().max().map_or(0, |&m| m as usize + 1))
    }

    /// Number of examples (the first axis).
    pub fn len(&self) -> usize {
        self.examples
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples == 0
    }

    /// The fixed split.
    pub fn split(&self) -> &Split {
        &self.split
    }

    /// What the file gives, for error messages.
    pub(crate) fn gives(&self) -> String {
        let list: Vec<String> =
            self.arrays.iter().map(|a| format!("`{}` {}", a.key, a.describe())).collect();
        list.join(", ")
    }

    /// Checks that every true input of the model has an array that fits it; returns the keys in
    /// input order.
    pub(crate) fn feed(&self, inputs: &[ValueInfo]) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        for v in inputs {
            let name = &v.name;
            let Some(a) = self.arrays.iter().find(|a| &a.key == name) else {
                let have: Vec<String> =
                    self.arrays.iter().map(|a| format!("`{}`", a.key)).collect();
                bail!(
                    "input `{name}` ({}) has no array in {}: it has {}; keys must be the model's \
                     input names",
                    declared(v),
                    self.name,
                    have.join(", ")
                );
            };
            let type_ok = match v.data_type {
                None => true,
                Some(DataType::F32) => a.stored.is_float(),
                Some(DataType::I64) => !a.stored.is_float(),
                Some(other) => bail!(
                    "input `{name}` is {other}: Hone feeds f32 or i64 inputs (the tensors file \
                     gives `{name}` {})",
                    a.describe()
                ),
            };
            let shape_ok = v.dims.as_ref().is_none_or(|d| {
                d.len() == a.shape.len()
                    && d.iter().zip(&a.shape).skip(1).all(|(d, &n)| admits(d, n))
            });
            if !(type_ok && shape_ok) {
                bail!(
                    "input `{name}` expects {}; the tensors file gives `{name}` {}",
                    declared(v),
                    a.describe()
                );
            }
            keys.push(name.clone());
        }
        Ok(keys)
    }

    /// The rows `idx` of each keyed array, as tensors.
    pub(crate) fn gather(
        &self,
        keys: &[String],
        idx: &[usize],
    ) -> anyhow::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let a = self
                .arrays
                .iter()
                .find(|a| &a.key == key)
                .ok_or_else(|| anyhow::anyhow!("internal: no array `{key}`"))?;
            let row: usize = a.shape[1..].iter().product();
            let mut shape = a.shape.clone();
            shape[0] = idx.len();
            if let Some(&i) = idx.iter().find(|&&i| i >= self.examples) {
                bail!("example {i} is out of range ({})", self.examples);
            }
            let t = match &a.data {
                ArrayData::F32(v) => {
                    let rows: Vec<f32> =
                        idx.iter().flat_map(|&i| &v[i * row..(i + 1) * row]).copied().collect();
                    Tensor::from_vec(rows, shape, &Device::Cpu)?
                }
                ArrayData::I64(v) => {
                    let rows: Vec<i64> =
                        idx.iter().flat_map(|&i| &v[i * row..(i + 1) * row]).copied().collect();
                    Tensor::from_vec(rows, shape, &Device::Cpu)?
                }
            };
            out.push((key.clone(), t));
        }
        Ok(out)
    }
}

/// Decodes little-endian values of `ty` into the fed representation.
fn convert(bytes: &[u8], ty: ElementType) -> ArrayData {
    match ty {
        ElementType::F32 => ArrayData::F32(
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        ),
        ElementType::F64 => ArrayData::F32(
            bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
        ),
        ElementType::I64 => ArrayData::I64(
            bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        ElementType::I32 => ArrayData::I64(
            bytes
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
        ),
    }
}

/// Bytes of `shape` elements of `ty`, refused when over `budget`.
fn data_bytes(
    shape: &[usize],
    ty: ElementType,
    budget: usize,
    what: &str,
) -> anyhow::Result<usize> {
    if shape.is_empty() {
        bail!("{what}: a scalar; every array needs a first axis of examples");
    }
    let bytes = shape
        .iter()
        .try_fold(ty.size(), |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= budget)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{what}: shape {shape:?} of {} needs more than the {} MiB of tensors Hone reads",
                ty.as_str(),
                budget >> 20
            )
        })?;
    Ok(bytes)
}

/// The fields of a `.npy` header: element type and shape.
fn parse_npy_header(header: &str, what: &str) -> anyhow::Result<(ElementType, Vec<usize>)> {
    let bad = |why: String| anyhow::anyhow!("{what}: bad .npy header ({why}): {}", header.trim());
    let value = |key: &str| -> anyhow::Result<&str> {
        let at = ["'", "\""]
            .iter()
            .find_map(|q| header.find(&format!("{q}{key}{q}")).map(|i| i + key.len() + 2))
            .ok_or_else(|| bad(format!("no `{key}`")))?;
        let rest = header[at..].trim_start();
        rest.strip_prefix(':')
            .map(str::trim_start)
            .ok_or_else(|| bad(format!("no `:` after `{key}`")))
    };
    let descr = value("descr")?;
    let quote = descr.chars().next().filter(|c| *c == '\'' || *c == '"');
    let descr = quote
        .and_then(|q| descr[1..].split(q).next())
        .ok_or_else(|| bad("`descr` is not a string".into()))?;
    let ty = match descr {
        "<f4" | "=f4" => ElementType::F32,
        "<f8" | "=f8" => ElementType::F64,
        "<i8" | "=i8" => ElementType::I64,
        "<i4" | "=i4" => ElementType::I32,
        d if d.starts_with('>') => {
            bail!("{what}: element type `{d}` is big-endian; save it little-endian")
        }
        d => bail!(
            "{what}: element type `{d}` is not supported: f32 (<f4), f64 (<f8), i64 (<i8) or i32 (<i4)"
        ),
    };
    let fortran = value("fortran_order")?;
    if fortran.starts_with("True") {
        bail!("{what}: Fortran-ordered arrays are not supported; save a C-ordered array");
    }
    if !fortran.starts_with("False") {
        return Err(bad("`fortran_order` is not True or False".into()));
    }
    let shape = value("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("`shape` is not a tuple".into()))?;
    let dims = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| bad(format!("`shape` ({inner}) is not a tuple of sizes")))?;
    Ok((ty, dims))
}

/// Reads one `.npy` stream. `len` is the stream's length when it is known (a file), checked
/// against the header before the data is read; the data is read as it comes, so a lying header
/// cannot make Hone allocate more than the stream holds.
fn read_npy(
    mut r: impl Read,
    len: Option<u64>,
    key: &str,
    what: &str,
    budget: &mut usize,
) -> anyhow::Result<Array> {
    let mut start = [0u8; 10];
    r.read_exact(&mut start).map_err(|_| anyhow::anyhow!("{what}: too short for a .npy file"))?;
    if &start[..6] != b"\x93NUMPY" {
        bail!("{what}: not a .npy file (no \\x93NUMPY magic)");
    }
    let (header_len, prefix) = match start[6] {
        1 => (usize::from(u16::from_le_bytes([start[8], start[9]])), 10),
        2 | 3 => {
            let mut more = [0u8; 2];
            r.read_exact(&mut more)
                .map_err(|_| anyhow::anyhow!("{what}: truncated .npy header"))?;
            (u32::from_le_bytes([start[8], start[9], more[0], more[1]]) as usize, 12)
        }
        v => bail!("{what}: .npy format version {v} is not supported (1, 2 or 3)"),
    };
    if header_len > MAX_NPY_HEADER {
        bail!("{what}: .npy header of {header_len} bytes is longer than {MAX_NPY_HEADER}");
    }
    let mut header = Vec::with_capacity(header_len);
    r.by_ref().take(header_len as u64).read_to_end(&mut header)?;
    if header.len() != header_len {
        bail!("{what}: truncated .npy header ({} of {header_len} bytes)", header.len());
    }
    let header = std::str::from_utf8(&header)
        .map_err(|_| anyhow::anyhow!("{what}: .npy header is not text"))?;
    let (ty, shape) = parse_npy_header(header, what)?;
    let bytes = data_bytes(&shape, ty, *budget, what)?;
    if let Some(len) = len {
        let have = len.saturating_sub((prefix + header_len) as u64);
        if have != bytes as u64 {
            bail!(
                "{what}: the header declares {} {shape:?} ({bytes} bytes of data) but the file \
                 holds {have}",
                ty.as_str()
            );
        }
    }
    let mut data = Vec::new();
    r.take(bytes as u64 + 1).read_to_end(&mut data).with_context(|| format!("reading {what}"))?;
    if data.len() != bytes {
        bail!(
            "{what}: {} data: the header declares {} {shape:?} ({bytes} bytes) but the data has {}",
            if data.len() < bytes { "truncated" } else { "trailing" },
            ty.as_str(),
            data.len()
        );
    }
    *budget -= bytes;
    Ok(Array { key: key.to_owned(), stored: ty, shape, data: convert(&data, ty) })
}

fn read_npz(path: &Path, budget: &mut usize) -> anyhow::Result<Vec<Array>> {
    let file = path.display().to_string();
    let f = File::open(path).with_context(|| format!("reading {file}"))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| anyhow::anyhow!("{file}: not a readable .npz (zip) archive: {e}"))?;
    let mut arrays = Vec::new();
    for i in 0..zip.len() {
        let entry =
            zip.by_index(i).map_err(|e| anyhow::anyhow!("{file}: cannot read entry {i}: {e}"))?;
        if entry.is_dir() {
            continue;
        }
        let entry_name = entry
            .name()
            .map_err(|e| anyhow::anyhow!("{file}: entry {i} has an unreadable name: {e}"))?
            .into_owned();
        let Some(key) = entry_name.strip_suffix(".npy") else {
            bail!("{file}: entry `{entry_name}` is not a .npy array");
        };
        let what = format!("{file}: `{key}`");
        arrays.push(read_npy(entry, None, key, &what, budget)?);
    }
    Ok(arrays)
}

fn read_npy_dir(dir: &Path, budget: &mut usize) -> anyhow::Result<Vec<Array>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && super::has_ext(p, &["npy"]))
        .collect();
    files.sort();
    let mut arrays = Vec::new();
    for p in files {
        let what = p.display().to_string();
        let key = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let f = File::open(&p).with_context(|| format!("reading {what}"))?;
        let len = f.metadata().with_context(|| format!("reading {what}"))?.len();
        arrays.push(read_npy(BufReader::new(f), Some(len), &key, &what, budget)?);
    }
    Ok(arrays)
}

fn read_safetensors(path: &Path) -> anyhow::Result<Vec<Array>> {
    let file = path.display().to_string();
    let len = std::fs::metadata(path).with_context(|| format!("reading {file}"))?.len();
    if len > MAX_DATA_BYTES as u64 {
        bail!(
            "{file}: {len} bytes, more than the {} MiB of tensors Hone reads",
            MAX_DATA_BYTES >> 20
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {file}"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{file}: not a readable .safetensors file: {e}"))?;
    let mut arrays = Vec::new();
    for (key, view) in st.iter() {
        let what = format!("{file}: `{key}`");
        let ty = match view.dtype() {
            safetensors::Dtype::F32 => ElementType::F32,
            safetensors::Dtype::F64 => ElementType::F64,
            safetensors::Dtype::I64 => ElementType::I64,
            safetensors::Dtype::I32 => ElementType::I32,
            d => bail!("{what}: element type {d:?} is not supported: F32, F64, I64 or I32"),
        };
        let shape = view.shape().to_vec();
        let bytes = data_bytes(&shape, ty, MAX_DATA_BYTES, &what)?;
        if view.data().len() != bytes {
            bail!("{what}: {} bytes of data for {} {shape:?}", view.data().len(), ty.as_str());
        }
        arrays.push(Array {
            key: key.to_owned(),
            stored: ty,
            shape,
            data: convert(view.data(), ty),
        });
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_are_parsed_and_hostile_ones_refused() {
        let (t, s) =
            parse_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", "f")
                .unwrap();
        assert_eq!((t, s), (ElementType::F32, vec![3, 4]));
        let (_, s) =
            parse_npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (5,), }", "f")
                .unwrap();
        assert_eq!(s, [5]);
        for (h, want) in [
            ("{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }", "big-endian"),
            ("{'descr': '<u1', 'fortran_order': False, 'shape': (3,), }", "not supported"),
            ("{'descr': '<f4', 'fortran_order': True, 'shape': (3,), }", "Fortran"),
            ("{'descr': '<f4', 'shape': (3,), }", "no `fortran_order`"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (a,), }", "not a tuple of sizes"),
        ] {
            let e = parse_npy_header(h, "x.npy").unwrap_err().to_string();
            assert!(e.contains("x.npy") && e.contains(want), "{e}");
        }
        let huge = [usize::MAX / 2, 4];
        let e = data_bytes(&huge, ElementType::F32, MAX_DATA_BYTES, "x.npy").unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }
}

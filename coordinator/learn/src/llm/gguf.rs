//! A GGUF reader (the file format of llama.cpp, versions 2 and 3): header, metadata, tensor
//! infos, and tensors dequantised to f32.
//!
//! # Layout
//! Little-endian throughout: the magic `GGUF`, the version (`u32`), the tensor count and the
//! metadata count (`u64` each), the metadata (key string, value type `u32`, value), the tensor
//! infos (name, number of dimensions `u32`, dimensions `u64` each with the fastest-varying
//! first, ggml type `u32`, offset `u64` relative to the data section), padding up to
//! `general.alignment` (32 when absent), then the data section. A string is a `u64` length and
//! that many UTF-8 bytes; an array is an element type, a `u64` count and the elements.
//!
//! # Hostile input
//! Every length, count and offset is checked against the bytes left before anything is
//! allocated or read, so a corrupt or truncated file gives a [`GgufError`] (never a panic),
//! and what the reader allocates stays within a small multiple of the file's size: numeric
//! arrays are kept as typed vectors, strings only once their bytes are known to be there.
//! Tensors must lie inside the data section, at aligned offsets, with dimensions whose
//! product fits the type's block size.
//!
//! # Dequantisation
//! [`Gguf::tensor_f32`] decodes `F32`, `F16`, `Q4_1` (blocks of 32: an f16 scale `d` and
//! minimum `m`, then 16 bytes of 4-bit quants, low nibbles first: `x = q·d + m`) and `Q8_0`
//! (blocks of 32: an f16 scale `d` and 32 signed bytes: `x = q·d`). Other types are refused
//! with [`GgufError::UnsupportedType`].

use std::collections::BTreeMap;
use std::path::Path;

/// The file magic, `GGUF`.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays accepted.
const MAX_ARRAY_DEPTH: u32 = 4;

/// Why a GGUF file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: it starts with {found:?}, not \"GGUF\"")]
    BadMagic {
        /// The first bytes (fewer when the file is shorter).
        found: String,
    },
    /// A version this reader does not read.
    #[error("GGUF version {version} is not supported (versions 2 and 3 are){hint}")]
    UnsupportedVersion {
        /// The version read.
        version: u32,
        /// A hint on the likely cause, or nothing.
        hint: &'static str,
    },
    /// The file ends before something it declares.
    #[error(
        "truncated file: {what} at byte {offset} needs {needed} bytes, only {available} remain"
    )]
    Truncated {
        /// What was being read.
        what: String,
        /// Where.
        offset: u64,
        /// Bytes needed.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A structural value is impossible (an unknown value type, too many dimensions, a
    /// duplicate name, a misaligned offset, non-UTF-8 text...).
    #[error("corrupt GGUF: {0}")]
    Invalid(String),
    /// A tensor's data reaches beyond the end of the file.
    #[error(
        "tensor `{name}`: its data (bytes {start}..{end} of the data section) lies beyond the \
         file's {available} bytes of data"
    )]
    DataOutOfBounds {
        /// The tensor.
        name: String,
        /// First byte, relative to the data section.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Size of the data section.
        available: u64,
    },
    /// A tensor type that is not dequantised here.
    #[error(
        "tensor `{name}` has ggml type {ty}, which Hone does not dequantise (supported: F32, F16, \
         Q4_1, Q8_0)"
    )]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// The type's name, or its number.
        ty: String,
    },
    /// No tensor of that name.
    #[error("the file has no tensor `{0}`")]
    MissingTensor(String),
    /// A metadata key is absent or has another type.
    #[error("metadata `{key}`: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

type Res<T> = Result<T, GgufError>;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `UINT8` (type 0).
    U8(u8),
    /// `INT8` (1).
    I8(i8),
    /// `UINT16` (2).
    U16(u16),
    /// `INT16` (3).
    I16(i16),
    /// `UINT32` (4).
    U32(u32),
    /// `INT32` (5).
    I32(i32),
    /// `FLOAT32` (6).
    F32(f32),
    /// `BOOL` (7).
    Bool(bool),
    /// `STRING` (8).
    String(String),
    /// `ARRAY` (9).
    Array(Array),
    /// `UINT64` (10).
    U64(u64),
    /// `INT64` (11).
    I64(i64),
    /// `FLOAT64` (12).
    F64(f64),
}

/// A metadata array, kept as a typed vector.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// `UINT8` elements.
    U8(Vec<u8>),
    /// `INT8` elements.
    I8(Vec<i8>),
    /// `UINT16` elements.
    U16(Vec<u16>),
    /// `INT16` elements.
    I16(Vec<i16>),
    /// `UINT32` elements.
    U32(Vec<u32>),
    /// `INT32` elements.
    I32(Vec<i32>),
    /// `FLOAT32` elements.
    F32(Vec<f32>),
    /// `BOOL` elements.
    Bool(Vec<bool>),
    /// `STRING` elements.
    String(Vec<String>),
    /// Nested arrays.
    Array(Vec<Array>),
    /// `UINT64` elements.
    U64(Vec<u64>),
    /// `INT64` elements.
    I64(Vec<i64>),
    /// `FLOAT64` elements.
    F64(Vec<f64>),
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Integer elements as `i64` (any integer element type; `None` for others, or a `u64`
    /// beyond `i64`).
    pub fn as_i64s(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::I64(v) => v.clone(),
            Array::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect::<Option<_>>()?,
            _ => return None,
        })
    }
}

impl Value {
    /// An integer value as `u64` (any integer type, non-negative).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float value (either width) as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A ggml tensor type, as numbered in `ggml.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float (0).
    F32,
    /// 16-bit float (1).
    F16,
    /// 4-bit blocks with scale and minimum (3).
    Q4_1,
    /// 8-bit blocks with scale (8).
    Q8_0,
    /// Any other type, by number; its size is unknown here.
    Other(u32),
}

impl GgmlType {
    fn from_u32(v: u32) -> GgmlType {
        match v {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            n => GgmlType::Other(n),
        }
    }

    /// Elements per block and bytes per block, for the types read here.
    fn block(self) -> Option<(u64, u64)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 => Some((1, 2)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Other(_) => None,
        }
    }

    /// The name used in llama.cpp (`Q4_1`), or `type N`.
    pub fn name(self) -> String {
        let known = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
            "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
            "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
            "BF16",
        ];
        let n = match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Other(n) => n,
        };
        known.get(n as usize).map_or_else(|| format!("type {n}"), |s| (*s).to_owned())
    }
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: the fastest-varying (`ne[0]`) first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
    /// Size of its data in bytes (`None` for a type whose size is unknown here).
    pub bytes: Option<u64>,
}

impl TensorInfo {
    /// The row-major shape (slowest-varying first), as in ONNX or numpy: ggml's `[576, 49152]`
    /// is `[49152, 576]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A GGUF file read into memory: its metadata, its tensors, and their bytes.
pub struct Gguf {
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_start: usize,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Gguf {
    /// Reads and parses a file.
    pub fn open(path: &Path) -> Res<Gguf> {
        let bytes = std::fs::read(path)
            .map_err(|source| GgufError::Io { path: path.display().to_string(), source })?;
        Gguf::parse(bytes)
    }

    /// Parses a whole file held in memory.
    pub fn parse(bytes: Vec<u8>) -> Res<Gguf> {
        let mut c = Cursor { b: &bytes, pos: 0 };
        let magic = c.take(4, "the magic").map_err(|_| GgufError::BadMagic {
            found: String::from_utf8_lossy(&bytes[..bytes.len().min(4)]).into_owned(),
        })?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: String::from_utf8_lossy(magic).into_owned() });
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            let hint = if version > 0xffff { "; a big-endian file?" } else { "" };
            return Err(GgufError::UnsupportedVersion { version, hint });
        }
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&format!("the type of metadata `{key}`"))?;
            let value = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Invalid(format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::Invalid(format!(
                        "general.alignment {v:?} is not a power of two up to 1 MiB"
                    )));
                }
            },
        };
        let mut tensors: Vec<TensorInfo> = Vec::new();
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("the name of tensor {i}"))?;
            let n_dims = c.u32(&format!("the rank of tensor `{name}`"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Invalid(format!(
                    "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(c.u64(&format!("dimension {d} of tensor `{name}`"))?);
            }
            let ty = GgmlType::from_u32(c.u32(&format!("the type of tensor `{name}`"))?);
            let offset = c.u64(&format!("the offset of tensor `{name}`"))?;
            if offset % alignment != 0 {
                return Err(GgufError::Invalid(format!(
                    "tensor `{name}` starts at offset {offset}, not a multiple of the alignment \
                     {alignment}"
                )));
            }
            let elements =
                dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
                    GgufError::Invalid(format!(
                        "tensor `{name}` has dimensions {dims:?} that overflow"
                    ))
                })?;
            let bytes = match ty.block() {
                None => None,
                Some((per_block, block_bytes)) => {
                    if dims[0] % per_block != 0 {
                        return Err(GgufError::Invalid(format!(
                            "tensor `{name}` of type {} has a first dimension {} that is not a \
                             multiple of its block size {per_block}",
                            ty.name(),
                            dims[0]
                        )));
                    }
                    Some((elements / per_block).checked_mul(block_bytes).ok_or_else(|| {
                        GgufError::Invalid(format!("tensor `{name}` is too large"))
                    })?)
                }
            };
            if !names.insert(name.clone()) {
                return Err(GgufError::Invalid(format!("tensor `{name}` appears twice")));
            }
            tensors.push(TensorInfo { name, dims, ty, offset, bytes });
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        let available = file_len.saturating_sub(data_start);
        if !tensors.is_empty() && data_start > file_len {
            return Err(GgufError::Truncated {
                what: "the padding before the data section".into(),
                offset: c.pos as u64,
                needed: data_start - c.pos as u64,
                available: file_len - c.pos as u64,
            });
        }
        for t in &tensors {
            let end = t.offset.checked_add(t.bytes.unwrap_or(0));
            if end.is_none_or(|e| e > available) || t.offset > available {
                return Err(GgufError::DataOutOfBounds {
                    name: t.name.clone(),
                    start: t.offset,
                    end: end.unwrap_or(u64::MAX),
                    available,
                });
            }
        }
        Ok(Gguf { version, metadata, tensors, alignment, data_start: data_start as usize, bytes })
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Every metadata entry, by key.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required integer metadata value.
    pub fn get_u64(&self, key: &str) -> Res<u64> {
        self.required(key)?.as_u64().ok_or_else(|| self.wrong_type(key, "a non-negative integer"))
    }

    /// A required float metadata value.
    pub fn get_f64(&self, key: &str) -> Res<f64> {
        self.required(key)?.as_f64().ok_or_else(|| self.wrong_type(key, "a float"))
    }

    /// A required string metadata value.
    pub fn get_str(&self, key: &str) -> Res<&str> {
        self.required(key)?.as_str().ok_or_else(|| self.wrong_type(key, "a string"))
    }

    /// A required array of strings.
    pub fn get_strings(&self, key: &str) -> Res<&[String]> {
        match self.required(key)?.as_array() {
            Some(Array::String(v)) => Ok(v),
            _ => Err(self.wrong_type(key, "an array of strings")),
        }
    }

    fn required(&self, key: &str) -> Res<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| GgufError::Metadata { key: key.into(), reason: "absent".into() })
    }

    fn wrong_type(&self, key: &str, want: &str) -> GgufError {
        GgufError::Metadata {
            key: key.into(),
            reason: format!("expected {want}, found {:?}", short(&self.metadata[key])),
        }
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor's info.
    pub fn tensor(&self, name: &str) -> Res<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::MissingTensor(name.into()))
    }

    /// A tensor dequantised to f32, with its row-major shape ([`TensorInfo::shape`]).
    pub fn tensor_f32(&self, name: &str) -> Res<(Vec<usize>, Vec<f32>)> {
        let t = self.tensor(name)?;
        let unsupported = || GgufError::UnsupportedType { name: name.into(), ty: t.ty.name() };
        let len = t.bytes.ok_or_else(unsupported)?;
        // Bounds were checked at parse time.
        let start = self.data_start + t.offset as usize;
        let raw = &self.bytes[start..start + len as usize];
        let n = t.elements() as usize;
        let mut out = Vec::with_capacity(n);
        match t.ty {
            GgmlType::F32 => out
                .extend(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            GgmlType::F16 => out
                .extend(raw.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))),
            GgmlType::Q4_1 => {
                for block in raw.chunks_exact(20) {
                    let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
                    let m = f16_to_f32(u16::from_le_bytes([block[2], block[3]]));
                    let qs = &block[4..20];
                    out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
                    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
                }
            }
            GgmlType::Q8_0 => {
                for block in raw.chunks_exact(34) {
                    let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
                    out.extend(block[2..34].iter().map(|&q| f32::from(q as i8) * d));
                }
            }
            GgmlType::Other(_) => return Err(unsupported()),
        }
        Ok((t.shape(), out))
    }
}

/// A short description of a value for error messages (arrays by type and length).
fn short(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("an array of {} elements", a.len()),
        Value::String(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
        other => format!("{other:?}"),
    }
}

/// IEEE binary16 bits to f32 (exact: every f16 is an f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise the mantissa.
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// A bounded reader over the file's bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Res<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.into(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Res<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Res<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Res<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Res<String> {
        let len = self.u64(what)?;
        let at = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| GgufError::Invalid(format!("{what} at byte {at} is not UTF-8")))
    }

    /// A count of elements of at least `min_size` bytes each, checked against the bytes left.
    fn count(&mut self, min_size: u64, what: &str) -> Res<usize> {
        let at = self.pos as u64;
        let n = self.u64(what)?;
        match n.checked_mul(min_size) {
            Some(need) if need <= self.remaining() => Ok(n as usize),
            _ => Err(GgufError::Truncated {
                what: format!("{what} ({n} elements)"),
                offset: at,
                needed: n.saturating_mul(min_size),
                available: self.remaining(),
            }),
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Res<Value> {
        let what = &format!("the value of `{key}`");
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => Value::Bool(self.bool(what)?),
            8 => Value::String(self.string(what)?),
            9 => Value::Array(self.array_value(key, depth)?),
            10 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(GgufError::Invalid(format!(
                    "metadata `{key}` has value type {other} (0 to 12 exist)"
                )));
            }
        })
    }

    fn bool(&mut self, what: &str) -> Res<bool> {
        let at = self.pos;
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(GgufError::Invalid(format!("{what} at byte {at}: boolean byte {b}"))),
        }
    }

    fn array_value(&mut self, key: &str, depth: u32) -> Res<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::Invalid(format!(
                "metadata `{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"
            )));
        }
        let what = format!("the array `{key}`");
        let ty = self.u32(&what)?;
        macro_rules! numbers {
            ($variant:ident, $t:ty) => {{
                const SIZE: usize = std::mem::size_of::<$t>();
                let n = self.count(SIZE as u64, &what)?;
                let raw = self.take((n * SIZE) as u64, &what)?;
                Array::$variant(
                    raw.chunks_exact(SIZE)
                        .map(|b| {
                            let mut a = [0u8; SIZE];
                            a.copy_from_slice(b);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            0 => numbers!(U8, u8),
            1 => numbers!(I8, i8),
            2 => numbers!(U16, u16),
            3 => numbers!(I16, i16),
            4 => numbers!(U32, u32),
            5 => numbers!(I32, i32),
            6 => numbers!(F32, f32),
            7 => {
                let n = self.count(1, &what)?;
                Array::Bool((0..n).map(|_| self.bool(&what)).collect::<Res<_>>()?)
            }
            8 => {
                let n = self.count(8, &what)?;
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(&format!("element {i} of `{key}`"))?);
                }
                Array::String(v)
            }
            9 => {
                let n = self.count(12, &what)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
            10 => numbers!(U64, u64),
            11 => numbers!(I64, i64),
            12 => numbers!(F64, f64),
            other => {
                return Err(GgufError::Invalid(format!(
                    "metadata array `{key}` has element type {other} (0 to 12 exist)"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests;

//! Typed tensors: the decoded form of an ONNX `TensorProto`.
//!
//! ONNX stores tensor elements either in `raw_data` (little-endian bytes, what PyTorch and
//! tf2onnx write) or in one of the typed repeated fields (`float_data`, `int32_data`, ...). Which
//! typed field holds which element type follows `onnx.proto`: 8- and 16-bit integers, booleans
//! and 16-bit floats (as bit patterns) live in `int32_data`, `uint32`/`uint64` in `uint64_data`.
//! [`Tensor::from_proto`] reads either form; [`Tensor::to_proto`] always writes `raw_data` (or
//! `string_data` for strings).

use tract_onnx::pb;

use super::GraphError;

/// An ONNX element type that Hone can decode.
///
/// The discriminants are the `TensorProto.DataType` codes of `onnx.proto`. Complex, 8-bit float
/// and 4-bit types are not represented: tensors of those types are refused with
/// [`GraphError::UnsupportedDataType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    /// 32-bit IEEE float (`FLOAT`).
    F32 = 1,
    /// `UINT8`.
    U8 = 2,
    /// `INT8`.
    I8 = 3,
    /// `UINT16`.
    U16 = 4,
    /// `INT16`.
    I16 = 5,
    /// `INT32`.
    I32 = 6,
    /// `INT64`.
    I64 = 7,
    /// `STRING` (bytes, not necessarily UTF-8).
    String = 8,
    /// `BOOL`.
    Bool = 9,
    /// 16-bit IEEE float (`FLOAT16`).
    F16 = 10,
    /// 64-bit IEEE float (`DOUBLE`).
    F64 = 11,
    /// `UINT32`.
    U32 = 12,
    /// `UINT64`.
    U64 = 13,
    /// bfloat16 (`BFLOAT16`).
    BF16 = 16,
}

impl DataType {
    /// The type for an ONNX `TensorProto.DataType` code, if Hone supports it.
    pub fn from_onnx(code: i32) -> Option<DataType> {
        Some(match code {
            1 => DataType::F32,
            2 => DataType::U8,
            3 => DataType::I8,
            4 => DataType::U16,
            5 => DataType::I16,
            6 => DataType::I32,
            7 => DataType::I64,
            8 => DataType::String,
            9 => DataType::Bool,
            10 => DataType::F16,
            11 => DataType::F64,
            12 => DataType::U32,
            13 => DataType::U64,
            16 => DataType::BF16,
            _ => return None,
        })
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        self as i32
    }

    /// Bytes per element in `raw_data`; `None` for strings.
    pub fn size_of(self) -> Option<usize> {
        Some(match self {
            DataType::U8 | DataType::I8 | DataType::Bool => 1,
            DataType::U16 | DataType::I16 | DataType::F16 | DataType::BF16 => 2,
            DataType::F32 | DataType::I32 | DataType::U32 => 4,
            DataType::F64 | DataType::I64 | DataType::U64 => 8,
            DataType::String => return None,
        })
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            DataType::F32 => "f32",
            DataType::U8 => "u8",
            DataType::I8 => "i8",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::I32 => "i32",
            DataType::I64 => "i64",
            DataType::String => "string",
            DataType::Bool => "bool",
            DataType::F16 => "f16",
            DataType::F64 => "f64",
            DataType::U32 => "u32",
            DataType::U64 => "u64",
            DataType::BF16 => "bf16",
        };
        f.write_str(name)
    }
}

/// The elements of a [`Tensor`], row-major, one variant per [`DataType`].
///
/// 16-bit floats are kept as their bit patterns (`u16`), so that a decode→encode round trip is
/// exact without a half-precision dependency.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `FLOAT`.
    F32(Vec<f32>),
    /// `DOUBLE`.
    F64(Vec<f64>),
    /// `FLOAT16`, as IEEE binary16 bit patterns.
    F16(Vec<u16>),
    /// `BFLOAT16`, as bit patterns.
    BF16(Vec<u16>),
    /// `INT8`.
    I8(Vec<i8>),
    /// `INT16`.
    I16(Vec<i16>),
    /// `INT32`.
    I32(Vec<i32>),
    /// `INT64`.
    I64(Vec<i64>),
    /// `UINT8`.
    U8(Vec<u8>),
    /// `UINT16`.
    U16(Vec<u16>),
    /// `UINT32`.
    U32(Vec<u32>),
    /// `UINT64`.
    U64(Vec<u64>),
    /// `BOOL`.
    Bool(Vec<bool>),
    /// `STRING`, one byte string per element.
    String(Vec<Vec<u8>>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::F16(v) | TensorData::BF16(v) | TensorData::U16(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::I16(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::U32(v) => v.len(),
            TensorData::U64(v) => v.len(),
            TensorData::Bool(v) => v.len(),
            TensorData::String(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn data_type(&self) -> DataType {
        match self {
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
            TensorData::F16(_) => DataType::F16,
            TensorData::BF16(_) => DataType::BF16,
            TensorData::I8(_) => DataType::I8,
            TensorData::I16(_) => DataType::I16,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::U8(_) => DataType::U8,
            TensorData::U16(_) => DataType::U16,
            TensorData::U32(_) => DataType::U32,
            TensorData::U64(_) => DataType::U64,
            TensorData::Bool(_) => DataType::Bool,
            TensorData::String(_) => DataType::String,
        }
    }
}

/// A decoded tensor: its dimensions and its elements.
///
/// A scalar has empty `dims` and one element. The invariant `data.len() == dims.product()` holds
/// for every tensor built by [`Tensor::new`] or [`Tensor::from_proto`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Elements, row-major.
    pub data: TensorData,
}

impl Tensor {
    /// A tensor, checking that the element count matches `dims`.
    pub fn new(dims: Vec<usize>, data: TensorData) -> Result<Tensor, GraphError> {
        let expected = element_count(&dims).ok_or_else(|| GraphError::Tensor {
            name: String::new(),
            reason: format!("dims {dims:?} overflow"),
        })?;
        if expected != data.len() {
            return Err(GraphError::Tensor {
                name: String::new(),
                reason: format!("dims {dims:?} need {expected} elements, got {}", data.len()),
            });
        }
        Ok(Tensor { dims, data })
    }

    /// A 1-D `i64` tensor (the usual form of shapes and axes).
    pub fn vec_i64(values: &[i64]) -> Tensor {
        Tensor { dims: vec![values.len()], data: TensorData::I64(values.to_vec()) }
    }

    /// A 0-D `i64` tensor.
    pub fn scalar_i64(value: i64) -> Tensor {
        Tensor { dims: vec![], data: TensorData::I64(vec![value]) }
    }

    /// A 0-D `f32` tensor.
    pub fn scalar_f32(value: f32) -> Tensor {
        Tensor { dims: vec![], data: TensorData::F32(vec![value]) }
    }

    /// The element type.
    pub fn data_type(&self) -> DataType {
        self.data.data_type()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements (some dimension is 0).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements if this is an `f32` tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements if this is an `i64` tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The elements widened to `i64`, for any integer or boolean tensor (`u64` values above
    /// `i64::MAX` give `None`).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match &self.data {
            TensorData::I8(v) => v.iter().map(|&x| x.into()).collect(),
            TensorData::I16(v) => v.iter().map(|&x| x.into()).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x.into()).collect(),
            TensorData::I64(v) => v.clone(),
            TensorData::U8(v) => v.iter().map(|&x| x.into()).collect(),
            TensorData::U16(v) => v.iter().map(|&x| x.into()).collect(),
            TensorData::U32(v) => v.iter().map(|&x| x.into()).collect(),
            TensorData::U64(v) => {
                v.iter().map(|&x| i64::try_from(x).ok()).collect::<Option<_>>()?
            }
            TensorData::Bool(v) => v.iter().map(|&x| x.into()).collect(),
            _ => return None,
        })
    }

    /// The elements as little-endian bytes, as ONNX `raw_data` holds them (booleans as one byte
    /// 0 or 1); `None` for strings.
    pub fn to_le_bytes(&self) -> Option<Vec<u8>> {
        fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            let mut out = Vec::with_capacity(v.len() * N);
            for &x in v {
                out.extend_from_slice(&f(x));
            }
            out
        }
        Some(match &self.data {
            TensorData::F32(v) => le(v, f32::to_le_bytes),
            TensorData::F64(v) => le(v, f64::to_le_bytes),
            TensorData::F16(v) | TensorData::BF16(v) | TensorData::U16(v) => {
                le(v, u16::to_le_bytes)
            }
            TensorData::I8(v) => le(v, i8::to_le_bytes),
            TensorData::I16(v) => le(v, i16::to_le_bytes),
            TensorData::I32(v) => le(v, i32::to_le_bytes),
            TensorData::I64(v) => le(v, i64::to_le_bytes),
            TensorData::U8(v) => v.clone(),
            TensorData::U32(v) => le(v, u32::to_le_bytes),
            TensorData::U64(v) => le(v, u64::to_le_bytes),
            TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
            TensorData::String(_) => return None,
        })
    }

    /// Decodes an ONNX tensor from `raw_data` (little-endian) or from its typed field.
    ///
    /// A tensor whose data still lives in an external file is refused: [`super::Graph`] resolves
    /// external data when it loads a model, so this only happens on protos built elsewhere.
    pub fn from_proto(t: &pb::TensorProto) -> Result<Tensor, GraphError> {
        let bad = |reason: String| GraphError::Tensor { name: t.name.clone(), reason };
        if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
            return Err(bad("its data is in an external file that was not resolved".into()));
        }
        let dt = DataType::from_onnx(t.data_type).ok_or_else(|| {
            GraphError::UnsupportedDataType { name: t.name.clone(), data_type: t.data_type }
        })?;
        let dims = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
            .collect::<Result<Vec<usize>, _>>()?;
        let n = element_count(&dims).ok_or_else(|| bad(format!("dims {dims:?} overflow")))?;
        let data = if dt != DataType::String && (!t.raw_data.is_empty() || n == 0) {
            decode_raw(dt, &t.raw_data, n).map_err(bad)?
        } else {
            decode_typed(dt, t).map_err(bad)?
        };
        if data.len() != n {
            return Err(bad(format!(
                "dims {dims:?} need {n} elements, the data holds {}",
                data.len()
            )));
        }
        Ok(Tensor { dims, data })
    }

    /// Encodes this tensor as an ONNX initializer named `name`, in `raw_data` (strings in
    /// `string_data`).
    pub fn to_proto(&self, name: &str) -> pb::TensorProto {
        let mut t = pb::TensorProto {
            name: name.into(),
            dims: self.dims.iter().map(|&d| d as i64).collect(),
            data_type: self.data_type().onnx_code(),
            ..Default::default()
        };
        match (&self.data, self.to_le_bytes()) {
            (TensorData::String(s), _) => t.string_data = s.clone(),
            (_, Some(raw)) => t.raw_data = raw,
            (_, None) => {}
        }
        t
    }
}

/// Product of `dims`, `None` on overflow.
pub(crate) fn element_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn decode_raw(dt: DataType, raw: &[u8], n: usize) -> Result<TensorData, String> {
    let size = dt.size_of().ok_or("string tensors cannot use raw_data")?;
    if Some(raw.len()) != n.checked_mul(size) {
        return Err(format!(
            "raw_data holds {} bytes, {n} elements of {dt} need {}",
            raw.len(),
            n.saturating_mul(size)
        ));
    }
    fn conv<T, const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    Ok(match dt {
        DataType::F32 => TensorData::F32(conv(raw, f32::from_le_bytes)),
        DataType::F64 => TensorData::F64(conv(raw, f64::from_le_bytes)),
        DataType::F16 => TensorData::F16(conv(raw, u16::from_le_bytes)),
        DataType::BF16 => TensorData::BF16(conv(raw, u16::from_le_bytes)),
        DataType::I8 => TensorData::I8(conv(raw, i8::from_le_bytes)),
        DataType::I16 => TensorData::I16(conv(raw, i16::from_le_bytes)),
        DataType::I32 => TensorData::I32(conv(raw, i32::from_le_bytes)),
        DataType::I64 => TensorData::I64(conv(raw, i64::from_le_bytes)),
        DataType::U8 => TensorData::U8(raw.to_vec()),
        DataType::U16 => TensorData::U16(conv(raw, u16::from_le_bytes)),
        DataType::U32 => TensorData::U32(conv(raw, u32::from_le_bytes)),
        DataType::U64 => TensorData::U64(conv(raw, u64::from_le_bytes)),
        DataType::Bool => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
        DataType::String => return Err("string tensors cannot use raw_data".into()),
    })
}

fn decode_typed(dt: DataType, t: &pb::TensorProto) -> Result<TensorData, String> {
    fn narrow<T: TryFrom<i32>>(v: &[i32], dt: DataType) -> Result<Vec<T>, String> {
        v.iter()
            .map(|&x| T::try_from(x).map_err(|_| format!("int32_data value {x} does not fit {dt}")))
            .collect()
    }
    Ok(match dt {
        DataType::F32 => TensorData::F32(t.float_data.clone()),
        DataType::F64 => TensorData::F64(t.double_data.clone()),
        // 16-bit floats are stored as their bit patterns in int32_data.
        DataType::F16 => TensorData::F16(t.int32_data.iter().map(|&x| x as u16).collect()),
        DataType::BF16 => TensorData::BF16(t.int32_data.iter().map(|&x| x as u16).collect()),
        DataType::I8 => TensorData::I8(narrow(&t.int32_data, dt)?),
        DataType::I16 => TensorData::I16(narrow(&t.int32_data, dt)?),
        DataType::I32 => TensorData::I32(t.int32_data.clone()),
        DataType::I64 => TensorData::I64(t.int64_data.clone()),
        DataType::U8 => TensorData::U8(narrow(&t.int32_data, dt)?),
        DataType::U16 => TensorData::U16(narrow(&t.int32_data, dt)?),
        DataType::U32 => TensorData::U32(
            t.uint64_data
                .iter()
                .map(|&x| u32::try_from(x).map_err(|_| format!("uint64_data value {x} > u32")))
                .collect::<Result<_, _>>()?,
        ),
        DataType::U64 => TensorData::U64(t.uint64_data.clone()),
        DataType::Bool => TensorData::Bool(t.int32_data.iter().map(|&x| x != 0).collect()),
        DataType::String => TensorData::String(t.string_data.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_data_decodes_little_endian_and_encodes_back_identically() {
        let t = Tensor::new(vec![2, 2], TensorData::F32(vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE]))
            .unwrap();
        let proto = t.to_proto("w");
        assert_eq!(proto.raw_data.len(), 16);
        assert_eq!(&proto.raw_data[4..8], &(-2.5f32).to_le_bytes());
        assert_eq!(Tensor::from_proto(&proto).unwrap(), t);
        let i = Tensor::vec_i64(&[-1, i64::MAX, 7]);
        assert_eq!(Tensor::from_proto(&i.to_proto("s")).unwrap(), i);
    }

    #[test]
    fn typed_fields_decode_per_onnx_proto_rules() {
        let p = |data_type: DataType, dims: Vec<i64>| pb::TensorProto {
            name: "t".into(),
            dims,
            data_type: data_type.onnx_code(),
            ..Default::default()
        };
        let f = pb::TensorProto { float_data: vec![1.5, 2.5], ..p(DataType::F32, vec![2]) };
        assert_eq!(Tensor::from_proto(&f).unwrap().as_f32(), Some(&[1.5, 2.5][..]));
        let i = pb::TensorProto { int64_data: vec![4], ..p(DataType::I64, vec![]) };
        assert_eq!(Tensor::from_proto(&i).unwrap(), Tensor::scalar_i64(4));
        let b = pb::TensorProto { int32_data: vec![0, 1, 1], ..p(DataType::Bool, vec![3]) };
        assert_eq!(Tensor::from_proto(&b).unwrap().data, TensorData::Bool(vec![false, true, true]));
        let h = pb::TensorProto { int32_data: vec![0x3c00], ..p(DataType::F16, vec![1]) };
        assert_eq!(Tensor::from_proto(&h).unwrap().data, TensorData::F16(vec![0x3c00]));
        let u = pb::TensorProto { uint64_data: vec![7], ..p(DataType::U32, vec![1]) };
        assert_eq!(Tensor::from_proto(&u).unwrap().data, TensorData::U32(vec![7]));
        let s =
            pb::TensorProto { string_data: vec![b"a".to_vec()], ..p(DataType::String, vec![1]) };
        let st = Tensor::from_proto(&s).unwrap();
        assert_eq!(Tensor::from_proto(&st.to_proto("s")).unwrap(), st);
    }

    #[test]
    fn element_count_mismatch_and_bad_types_are_refused_with_the_tensor_name() {
        let short = pb::TensorProto {
            name: "w".into(),
            dims: vec![3],
            data_type: 1,
            raw_data: vec![0; 8],
            ..Default::default()
        };
        let err = Tensor::from_proto(&short).unwrap_err().to_string();
        assert!(err.contains("`w`") && err.contains("8 bytes"), "{err}");
        let neg = pb::TensorProto { dims: vec![-1], ..short.clone() };
        assert!(Tensor::from_proto(&neg).unwrap_err().to_string().contains("negative"));
        let complex = pb::TensorProto { data_type: 14, ..short.clone() };
        assert!(matches!(
            Tensor::from_proto(&complex),
            Err(GraphError::UnsupportedDataType { data_type: 14, .. })
        ));
        let ext = pb::TensorProto { data_location: Some(1), raw_data: vec![], ..short };
        assert!(Tensor::from_proto(&ext).unwrap_err().to_string().contains("external"));
        assert!(Tensor::new(vec![2, 3], TensorData::I64(vec![1])).is_err());
    }

    #[test]
    fn zero_element_tensors_round_trip() {
        let t = Tensor::new(vec![0, 4], TensorData::F32(vec![])).unwrap();
        assert!(t.is_empty());
        assert_eq!(Tensor::from_proto(&t.to_proto("e")).unwrap(), t);
    }
}

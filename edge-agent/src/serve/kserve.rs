//! The Open Inference Protocol (KServe v2) as the serving process speaks it: request and
//! response bodies, the binary-data extension, and the checks of a request against a model's
//! tensors. Pure: no IO and no tract (tensors are typed vectors, [`Values`]).
//!
//! Binary-data extension: with the header [`HEADER_LENGTH`]` = N`, the first N bytes of a body
//! are its JSON header and the rest are the raw little-endian bytes of the tensors that carry
//! `"parameters": {"binary_data_size": B}`, in their order in the header.

use std::fmt;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// The header that gives the length of the JSON part of a body with binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Marks the agent's own probe requests: they count as requests (and in latency), but their
/// synthetic tensors stay out of the input and output statistics, so they never look like
/// drift.
pub const PROBE_HEADER: &str = "x-hone-probe";

/// Element types the server accepts and returns (the KServe names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataType {
    /// One byte per element, 0 or 1.
    #[serde(rename = "BOOL")]
    Bool,
    /// Unsigned 8-bit.
    #[serde(rename = "UINT8")]
    U8,
    /// Signed 8-bit.
    #[serde(rename = "INT8")]
    I8,
    /// Signed 32-bit.
    #[serde(rename = "INT32")]
    I32,
    /// Signed 64-bit.
    #[serde(rename = "INT64")]
    I64,
    /// 32-bit float.
    #[serde(rename = "FP32")]
    F32,
    /// 64-bit float.
    #[serde(rename = "FP64")]
    F64,
}

impl DataType {
    /// The KServe name (`FP32`, `INT64`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::I8 => "INT8",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
        }
    }

    /// The type of a KServe name, if the server supports it.
    pub fn parse(name: &str) -> Option<DataType> {
        [
            DataType::Bool,
            DataType::U8,
            DataType::I8,
            DataType::I32,
            DataType::I64,
            DataType::F32,
            DataType::F64,
        ]
        .into_iter()
        .find(|d| d.as_str() == name)
    }

    /// Bytes per element in the binary-data extension.
    pub fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::I32 | DataType::F32 => 4,
            DataType::I64 | DataType::F64 => 8,
        }
    }

    /// Whether values of this type are integers (token ids, class ids, quantised pixels).
    pub fn is_integer(self) -> bool {
        matches!(self, DataType::U8 | DataType::I8 | DataType::I32 | DataType::I64)
    }
}

/// The elements of one tensor, in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `BOOL`.
    Bool(Vec<bool>),
    /// `UINT8`.
    U8(Vec<u8>),
    /// `INT8`.
    I8(Vec<i8>),
    /// `INT32`.
    I32(Vec<i32>),
    /// `INT64`.
    I64(Vec<i64>),
    /// `FP32`.
    F32(Vec<f32>),
    /// `FP64`.
    F64(Vec<f64>),
}

impl Values {
    /// The element type.
    pub fn datatype(&self) -> DataType {
        match self {
            Values::Bool(_) => DataType::Bool,
            Values::U8(_) => DataType::U8,
            Values::I8(_) => DataType::I8,
            Values::I32(_) => DataType::I32,
            Values::I64(_) => DataType::I64,
            Values::F32(_) => DataType::F32,
            Values::F64(_) => DataType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Values::Bool(v) => v.len(),
            Values::U8(v) => v.len(),
            Values::I8(v) => v.len(),
            Values::I32(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the little-endian bytes of the elements to `out`.
    pub fn write_le(&self, out: &mut Vec<u8>) {
        match self {
            Values::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
            Values::U8(v) => out.extend_from_slice(v),
            Values::I8(v) => out.extend(v.iter().map(|x| x.to_le_bytes()[0])),
            Values::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Values::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Values::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Values::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }

    /// Decodes little-endian bytes; their length must be a whole number of elements.
    pub fn read_le(datatype: DataType, bytes: &[u8]) -> Result<Values, String> {
        if !bytes.len().is_multiple_of(datatype.size()) {
            return Err(format!(
                "{} bytes are not a whole number of {} elements",
                bytes.len(),
                datatype.as_str()
            ));
        }
        fn chunks<const N: usize, T>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            bytes.chunks_exact(N).map(|c| f(c.try_into().expect("exact chunk"))).collect()
        }
        Ok(match datatype {
            DataType::Bool => {
                if let Some(b) = bytes.iter().find(|b| **b > 1) {
                    return Err(format!("BOOL byte {b} is neither 0 nor 1"));
                }
                Values::Bool(bytes.iter().map(|b| *b == 1).collect())
            }
            DataType::U8 => Values::U8(bytes.to_vec()),
            DataType::I8 => Values::I8(chunks(bytes, i8::from_le_bytes)),
            DataType::I32 => Values::I32(chunks(bytes, i32::from_le_bytes)),
            DataType::I64 => Values::I64(chunks(bytes, i64::from_le_bytes)),
            DataType::F32 => Values::F32(chunks(bytes, f32::from_le_bytes)),
            DataType::F64 => Values::F64(chunks(bytes, f64::from_le_bytes)),
        })
    }

    /// Converts JSON numbers to `datatype`: integers must be whole and in range, booleans are
    /// `true`/`false` or 0/1.
    pub fn from_scalars(datatype: DataType, scalars: &[Scalar]) -> Result<Values, String> {
        fn ints<T: TryFrom<i128>>(scalars: &[Scalar], name: &str) -> Result<Vec<T>, String> {
            scalars
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let whole = match *s {
                        Scalar::Int(v) => Some(i128::from(v)),
                        Scalar::UInt(v) => Some(i128::from(v)),
                        Scalar::Float(f) if f.fract() == 0.0 && f.abs() < 1e19 => Some(f as i128),
                        _ => None,
                    };
                    whole.and_then(|w| T::try_from(w).ok()).ok_or_else(|| {
                        format!("element {i} ({}) is not a valid {name}", s.describe())
                    })
                })
                .collect()
        }
        fn floats(scalars: &[Scalar]) -> Result<Vec<f64>, String> {
            scalars
                .iter()
                .enumerate()
                .map(|(i, s)| match *s {
                    Scalar::Int(v) => Ok(v as f64),
                    Scalar::UInt(v) => Ok(v as f64),
                    Scalar::Float(f) => Ok(f),
                    Scalar::Bool(_) => Err(format!("element {i} is a boolean, not a number")),
                })
                .collect()
        }
        Ok(match datatype {
            DataType::Bool => Values::Bool(
                scalars
                    .iter()
                    .enumerate()
                    .map(|(i, s)| match *s {
                        Scalar::Bool(b) => Ok(b),
                        Scalar::Int(0) | Scalar::UInt(0) => Ok(false),
                        Scalar::Int(1) | Scalar::UInt(1) => Ok(true),
                        _ => Err(format!("element {i} ({}) is not a BOOL", s.describe())),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            DataType::U8 => Values::U8(ints(scalars, "UINT8")?),
            DataType::I8 => Values::I8(ints(scalars, "INT8")?),
            DataType::I32 => Values::I32(ints(scalars, "INT32")?),
            DataType::I64 => Values::I64(ints(scalars, "INT64")?),
            DataType::F32 => Values::F32(floats(scalars)?.into_iter().map(|f| f as f32).collect()),
            DataType::F64 => Values::F64(floats(scalars)?),
        })
    }
}

impl Serialize for Values {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Values::Bool(v) => v.serialize(s),
            Values::U8(v) => v.serialize(s),
            Values::I8(v) => v.serialize(s),
            Values::I32(v) => v.serialize(s),
            Values::I64(v) => v.serialize(s),
            Values::F32(v) => v.serialize(s),
            Values::F64(v) => v.serialize(s),
        }
    }
}

/// One named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Input or output name.
    pub name: String,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Elements (as many as the shape's product).
    pub values: Values,
}

/// A tensor as a model declares it (metadata, and what requests are checked against).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMeta {
    /// Name.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Shape; `-1` for an axis of any size.
    pub shape: Vec<i64>,
}

/// A JSON scalar of a `data` array.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// A negative integer (or any integer serde_json reads as i64).
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A number with a fraction or exponent.
    Float(f64),
}

impl Scalar {
    fn describe(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(v) => v.to_string(),
            Scalar::UInt(v) => v.to_string(),
            Scalar::Float(f) => f.to_string(),
        }
    }
}

/// A `data` field: flat or nested arrays of scalars, flattened in row-major order as it is
/// read (no intermediate JSON tree).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlatData(pub Vec<Scalar>);

struct Flatten<'a>(&'a mut Vec<Scalar>);

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, a boolean, or a (nested) array of them")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push(Scalar::Bool(v));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(Scalar::Int(v));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(Scalar::UInt(v));
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(Scalar::Float(v));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        while seq.next_element_seed(Flatten(&mut *out))?.is_some() {}
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FlatData, D::Error> {
        let mut out = Vec::new();
        d.deserialize_any(Flatten(&mut out))?;
        Ok(FlatData(out))
    }
}

/// The `parameters` the server reads (others are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Parameters {
    /// Bytes of this tensor in the binary part of the body.
    #[serde(default)]
    pub binary_data_size: Option<u64>,
    /// On a requested output: return it as binary data.
    #[serde(default)]
    pub binary_data: Option<bool>,
    /// On the request: return every output as binary data.
    #[serde(default)]
    pub binary_data_output: Option<bool>,
}

/// One input of an inference request, as sent.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestInput {
    /// Input name.
    pub name: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// KServe element type name.
    pub datatype: String,
    /// Elements, unless they are in the binary part.
    #[serde(default)]
    pub data: Option<FlatData>,
    /// `binary_data_size`.
    #[serde(default)]
    pub parameters: Parameters,
}

/// One requested output.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestOutput {
    /// Output name.
    pub name: String,
    /// `binary_data`.
    #[serde(default)]
    pub parameters: Parameters,
}

/// The JSON part of an inference request.
#[derive(Debug, Clone, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// `binary_data_output`.
    #[serde(default)]
    pub parameters: Parameters,
    /// Inputs.
    pub inputs: Vec<RequestInput>,
    /// Outputs to return (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// A decoded request: tensors with checked sizes, and which outputs to return how.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    /// Echoed in the response.
    pub id: Option<String>,
    /// Inputs in request order.
    pub inputs: Vec<Tensor>,
    /// Outputs asked for, with whether each is wanted as binary; `None`: every output.
    pub outputs: Option<Vec<(String, bool)>>,
    /// Every output as binary unless it says otherwise (`binary_data_output`).
    pub binary_by_default: bool,
}

/// Decodes a request body. `header_length` is the value of [`HEADER_LENGTH`], if sent.
pub fn parse_request(body: &[u8], header_length: Option<&str>) -> Result<ParsedRequest, String> {
    let (json, mut binary) = match header_length {
        None => (body, &body[body.len()..]),
        Some(h) => {
            let n: usize = h
                .trim()
                .parse()
                .map_err(|_| format!("{HEADER_LENGTH} `{h}` is not a byte count"))?;
            if n > body.len() {
                return Err(format!(
                    "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                    body.len()
                ));
            }
            body.split_at(n)
        }
    };
    let request: InferRequest =
        serde_json::from_slice(json).map_err(|e| format!("malformed request JSON: {e}"))?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let name = input.name;
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            format!("input `{name}`: datatype `{}` is not supported", input.datatype)
        })?;
        let shape = input
            .shape
            .iter()
            .map(|d| usize::try_from(*d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| format!("input `{name}`: shape {:?} has a negative axis", input.shape))?;
        let elements = shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d));
        let values = match (input.data, input.parameters.binary_data_size) {
            (Some(_), Some(_)) => {
                return Err(format!("input `{name}` has both `data` and `binary_data_size`"));
            }
            (None, None) => return Err(format!("input `{name}` has no `data`")),
            (Some(data), None) => Values::from_scalars(datatype, &data.0)
                .map_err(|e| format!("input `{name}`: {e}"))?,
            (None, Some(size)) => {
                if header_length.is_none() {
                    return Err(format!(
                        "input `{name}` has `binary_data_size` but the request has no \
                         {HEADER_LENGTH} header"
                    ));
                }
                let size =
                    usize::try_from(size).ok().filter(|s| *s <= binary.len()).ok_or_else(|| {
                        format!(
                            "input `{name}`: binary_data_size {size} is more than the {} bytes \
                             left in the body",
                            binary.len()
                        )
                    })?;
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                Values::read_le(datatype, bytes).map_err(|e| format!("input `{name}`: {e}"))?
            }
        };
        if elements != Some(values.len()) {
            return Err(format!(
                "input `{name}`: shape {shape:?} has {} elements but {} were given",
                elements.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                values.len()
            ));
        }
        inputs.push(Tensor { name, shape, values });
    }
    if !binary.is_empty() {
        return Err(format!(
            "{} bytes after the JSON header belong to no input (binary_data_size)",
            binary.len()
        ));
    }
    let binary_by_default = request.parameters.binary_data_output.unwrap_or(false);
    let outputs = request.outputs.map(|outs| {
        outs.into_iter()
            .map(|o| (o.name, o.parameters.binary_data.unwrap_or(binary_by_default)))
            .collect()
    });
    Ok(ParsedRequest { id: request.id, inputs, outputs, binary_by_default })
}

/// Checks the inputs against a model's and returns them in the model's order: every input
/// once, no other, with its datatype and a shape that agrees with every fixed axis.
pub fn match_inputs(given: Vec<Tensor>, model: &[TensorMeta]) -> Result<Vec<Tensor>, String> {
    let mut slots: Vec<Option<Tensor>> = vec![None; model.len()];
    for tensor in given {
        let ix = model.iter().position(|m| m.name == tensor.name).ok_or_else(|| {
            let names: Vec<&str> = model.iter().map(|m| m.name.as_str()).collect();
            format!("the model has no input `{}` (inputs: {})", tensor.name, names.join(", "))
        })?;
        let meta = &model[ix];
        if slots[ix].is_some() {
            return Err(format!("input `{}` is given twice", meta.name));
        }
        if tensor.values.datatype() != meta.datatype {
            return Err(format!(
                "input `{}` is {}, but the model takes {}",
                meta.name,
                tensor.values.datatype().as_str(),
                meta.datatype.as_str()
            ));
        }
        let fits = tensor.shape.len() == meta.shape.len()
            && tensor.shape.iter().zip(&meta.shape).all(|(g, m)| *m < 0 || *g as i64 == *m);
        if !fits {
            return Err(format!(
                "input `{}` has shape {:?}, but the model takes {:?}",
                meta.name, tensor.shape, meta.shape
            ));
        }
        slots[ix] = Some(tensor);
    }
    slots
        .into_iter()
        .zip(model)
        .map(|(t, m)| t.ok_or_else(|| format!("input `{}` is missing", m.name)))
        .collect()
}

/// Which outputs to return, each with whether it goes as binary, in the order asked.
pub fn select_outputs(
    request: &ParsedRequest,
    model: &[TensorMeta],
) -> Result<Vec<(usize, bool)>, String> {
    match &request.outputs {
        None => Ok((0..model.len()).map(|i| (i, request.binary_by_default)).collect()),
        Some(asked) => asked
            .iter()
            .map(|(name, binary)| {
                model
                    .iter()
                    .position(|m| &m.name == name)
                    .map(|i| (i, *binary))
                    .ok_or_else(|| format!("the model has no output `{name}`"))
            })
            .collect(),
    }
}

#[derive(Serialize)]
struct ResponseOutput<'a> {
    name: &'a str,
    datatype: DataType,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Values>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<ResponseOutput<'a>>,
}

/// An encoded response body.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseBody {
    /// JSON, followed by the binary outputs when there are any.
    pub bytes: Vec<u8>,
    /// Length of the JSON part when binary outputs follow (the [`HEADER_LENGTH`] value).
    pub header_length: Option<usize>,
}

/// Encodes a response: `outputs` are (tensor, as binary) pairs.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[(&Tensor, bool)],
) -> ResponseBody {
    let mut binary = Vec::new();
    let entries = outputs
        .iter()
        .map(|(t, as_binary)| {
            if *as_binary {
                let before = binary.len();
                t.values.write_le(&mut binary);
                ResponseOutput {
                    name: &t.name,
                    datatype: t.values.datatype(),
                    shape: &t.shape,
                    data: None,
                    parameters: Some(BinarySize { binary_data_size: binary.len() - before }),
                }
            } else {
                ResponseOutput {
                    name: &t.name,
                    datatype: t.values.datatype(),
                    shape: &t.shape,
                    data: Some(&t.values),
                    parameters: None,
                }
            }
        })
        .collect();
    let response = InferResponse { model_name, model_version, id, outputs: entries };
    let mut bytes = serde_json::to_vec(&response).expect("response serialises");
    let any_binary = outputs.iter().any(|(_, b)| *b);
    let header_length = any_binary.then_some(bytes.len());
    bytes.extend_from_slice(&binary);
    ResponseBody { bytes, header_length }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, datatype: DataType, shape: &[i64]) -> TensorMeta {
        TensorMeta { name: name.into(), datatype, shape: shape.to_vec() }
    }

    fn binary_body(header: &serde_json::Value, payloads: &[&[u8]]) -> (Vec<u8>, String) {
        let mut body = serde_json::to_vec(header).unwrap();
        let n = body.len();
        for p in payloads {
            body.extend_from_slice(p);
        }
        (body, n.to_string())
    }

    #[test]
    fn nested_and_flat_data_give_the_same_tensor() {
        let nested = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32",
            "data":[[1,2.5],[-3,4e0]]}]}"#;
        let flat = br#"{"id":"r1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32",
            "data":[1,2.5,-3,4]}]}"#;
        let a = parse_request(nested, None).unwrap();
        let b = parse_request(flat, None).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.inputs[0].values, Values::F32(vec![1.0, 2.5, -3.0, 4.0]));
        assert_eq!(b.id.as_deref(), Some("r1"));
        assert_eq!(a.outputs, None);
    }

    #[test]
    fn integers_must_be_whole_and_in_range() {
        let body = |dt: &str, data: &str| {
            format!(
                r#"{{"inputs":[{{"name":"ids","shape":[3],"datatype":"{dt}","data":{data}}}]}}"#
            )
        };
        let ok = parse_request(body("INT64", "[1, -2, 3.0]").as_bytes(), None).unwrap();
        assert_eq!(ok.inputs[0].values, Values::I64(vec![1, -2, 3]));
        let e = parse_request(body("INT64", "[1, 2.5, 3]").as_bytes(), None).unwrap_err();
        assert!(e.contains("element 1 (2.5) is not a valid INT64"), "{e}");
        let e = parse_request(body("UINT8", "[1, 256, 3]").as_bytes(), None).unwrap_err();
        assert!(e.contains("element 1 (256)"), "{e}");
        let e = parse_request(body("FP32", "[1, true, 3]").as_bytes(), None).unwrap_err();
        assert!(e.contains("boolean"), "{e}");
        let e = parse_request(body("BYTES", "[1, 2, 3]").as_bytes(), None).unwrap_err();
        assert!(e.contains("datatype `BYTES` is not supported"), "{e}");
    }

    #[test]
    fn element_count_must_match_the_shape() {
        let e = parse_request(
            br#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5]}]}"#,
            None,
        )
        .unwrap_err();
        assert!(e.contains("shape [2, 3] has 6 elements but 5 were given"), "{e}");
        let e = parse_request(
            br#"{"inputs":[{"name":"x","shape":[-1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
            None,
        )
        .unwrap_err();
        assert!(e.contains("negative axis"), "{e}");
        // An overflowing shape is refused, not wrapped.
        let e = parse_request(
            br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296],"datatype":"FP32","data":[1]}]}"#,
            None,
        )
        .unwrap_err();
        assert!(e.contains("too many elements"), "{e}");
    }

    #[test]
    fn malformed_json_is_refused() {
        let bodies: [&[u8]; 5] =
            [b"{", b"[]", b"{\"inputs\": 3}", b"", b"{\"inputs\":[{\"name\":\"x\"}]}"];
        for body in bodies {
            let e = parse_request(body, None).unwrap_err();
            assert!(e.starts_with("malformed request JSON"), "{e}");
        }
    }

    #[test]
    fn binary_inputs_are_split_in_order() {
        let x: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|f| f.to_le_bytes()).collect();
        let ids: Vec<u8> = [7i64, 8, 9].iter().flat_map(|f| f.to_le_bytes()).collect();
        let header = serde_json::json!({
            "inputs": [
                {"name": "x", "shape": [1, 2], "datatype": "FP32",
                 "parameters": {"binary_data_size": 8}},
                {"name": "mask", "shape": [2], "datatype": "BOOL", "data": [true, 0]},
                {"name": "ids", "shape": [3], "datatype": "INT64",
                 "parameters": {"binary_data_size": 24}},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": true}}, {"name": "z"}]
        });
        let (body, len) = binary_body(&header, &[&x, &ids]);
        let r = parse_request(&body, Some(&len)).unwrap();
        assert_eq!(r.inputs[0].values, Values::F32(vec![1.5, -2.0]));
        assert_eq!(r.inputs[1].values, Values::Bool(vec![true, false]));
        assert_eq!(r.inputs[2].values, Values::I64(vec![7, 8, 9]));
        assert_eq!(r.outputs, Some(vec![("y".into(), true), ("z".into(), false)]));
    }

    #[test]
    fn binary_sizes_and_header_lengths_are_checked() {
        let x: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|f| f.to_le_bytes()).collect();
        let header = |size: u64, shape: &[i64]| {
            serde_json::json!({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32",
                "parameters": {"binary_data_size": size}}]})
        };
        // Trailing bytes that no input claims.
        let (body, len) = binary_body(&header(4, &[1]), &[&x]);
        let e = parse_request(&body, Some(&len)).unwrap_err();
        assert!(e.contains("4 bytes after the JSON header belong to no input"), "{e}");
        // More than is there.
        let (body, len) = binary_body(&header(12, &[3]), &[&x]);
        let e = parse_request(&body, Some(&len)).unwrap_err();
        assert!(e.contains("binary_data_size 12 is more than the 8 bytes"), "{e}");
        // Not a whole number of elements.
        let (body, len) = binary_body(&header(7, &[2]), &[&x[..7]]);
        let e = parse_request(&body, Some(&len)).unwrap_err();
        assert!(e.contains("7 bytes are not a whole number of FP32 elements"), "{e}");
        // Size agrees with the bytes but not with the shape.
        let (body, len) = binary_body(&header(8, &[3]), &[&x]);
        let e = parse_request(&body, Some(&len)).unwrap_err();
        assert!(e.contains("has 3 elements but 2 were given"), "{e}");
        // The header length itself.
        let (body, _) = binary_body(&header(8, &[2]), &[&x]);
        let e = parse_request(&body, Some("many")).unwrap_err();
        assert!(e.contains("is not a byte count"), "{e}");
        let e = parse_request(&body, Some(&(body.len() + 1).to_string())).unwrap_err();
        assert!(e.contains("but the body has only"), "{e}");
        let e = parse_request(&body, Some("10")).unwrap_err();
        assert!(e.starts_with("malformed request JSON"), "{e}");
        // binary_data_size without the header.
        let e = parse_request(&body[..body.len() - 8], None).unwrap_err();
        assert!(e.contains("has no inference-header-content-length header"), "{e}");
    }

    #[test]
    fn inputs_are_matched_to_the_model() {
        let model = [meta("a", DataType::F32, &[-1, 3]), meta("b", DataType::I64, &[1, 4])];
        let t = |name: &str, shape: &[usize], values: Values| Tensor {
            name: name.into(),
            shape: shape.to_vec(),
            values,
        };
        let a = || t("a", &[2, 3], Values::F32(vec![0.0; 6]));
        let b = || t("b", &[1, 4], Values::I64(vec![1; 4]));
        let ordered = match_inputs(vec![b(), a()], &model).unwrap();
        assert_eq!(ordered[0].name, "a");
        assert_eq!(ordered[1].name, "b");
        let e = match_inputs(vec![a()], &model).unwrap_err();
        assert_eq!(e, "input `b` is missing");
        let e = match_inputs(vec![a(), b(), a()], &model).unwrap_err();
        assert_eq!(e, "input `a` is given twice");
        let e =
            match_inputs(vec![a(), b(), t("c", &[1], Values::F32(vec![0.0]))], &model).unwrap_err();
        assert!(e.contains("no input `c` (inputs: a, b)"), "{e}");
        let e =
            match_inputs(vec![a(), t("b", &[1, 4], Values::I32(vec![1; 4]))], &model).unwrap_err();
        assert_eq!(e, "input `b` is INT32, but the model takes INT64");
        let e = match_inputs(vec![t("a", &[2, 4], Values::F32(vec![0.0; 8])), b()], &model)
            .unwrap_err();
        assert_eq!(e, "input `a` has shape [2, 4], but the model takes [-1, 3]");
        let e =
            match_inputs(vec![t("a", &[6], Values::F32(vec![0.0; 6])), b()], &model).unwrap_err();
        assert!(e.contains("has shape [6]"), "{e}");
    }

    #[test]
    fn responses_put_binary_outputs_after_the_header() {
        let y = Tensor { name: "y".into(), shape: vec![2], values: Values::F32(vec![0.5, 2.0]) };
        let z = Tensor { name: "z".into(), shape: vec![1], values: Values::I64(vec![3]) };
        let r = encode_response("m", "art-1", Some("r1"), &[(&y, true), (&z, false)]);
        let n = r.header_length.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&r.bytes[..n]).unwrap();
        assert_eq!(json["model_version"], "art-1");
        assert_eq!(json["id"], "r1");
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(json["outputs"][0].get("data").is_none());
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([3]));
        assert_eq!(json["outputs"][1]["datatype"], "INT64");
        assert_eq!(Values::read_le(DataType::F32, &r.bytes[n..]).unwrap(), y.values);
        let r = encode_response("m", "art-1", None, &[(&z, false)]);
        assert_eq!(r.header_length, None);
        let json: serde_json::Value = serde_json::from_slice(&r.bytes).unwrap();
        assert!(json.get("id").is_none());
    }
}

//! Typed views of ONNX nodes, attributes and value declarations.
//!
//! These are copies, not borrows: reading them never changes the graph, and building one and
//! handing it to [`super::Graph::insert_nodes`] is how new nodes are written.

use std::collections::BTreeMap;

use tract_onnx::pb;

use super::GraphError;
use super::tensor::{DataType, Tensor};

/// One node of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Node name (ONNX allows it to be empty; Hone's edits address nodes by name).
    pub name: String,
    /// Operator, e.g. `MatMul`.
    pub op_type: String,
    /// Operator domain; empty for the default `ai.onnx` domain.
    pub domain: String,
    /// Input value names, in operator order. An empty name is an omitted optional input.
    pub inputs: Vec<String>,
    /// Output value names, in operator order. An empty name is an omitted optional output.
    pub outputs: Vec<String>,
    /// Attributes by name.
    pub attributes: BTreeMap<String, Attribute>,
}

impl Node {
    /// A node of the default domain with no attributes.
    pub fn new(name: &str, op_type: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        Node {
            name: name.into(),
            op_type: op_type.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attributes: BTreeMap::new(),
        }
    }

    /// This node with one more attribute (replacing one of the same name).
    pub fn with_attribute(mut self, name: &str, value: Attribute) -> Node {
        self.attributes.insert(name.into(), value);
        self
    }

    /// An attribute by name.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.get(name)
    }

    /// Decodes a node; fails only when an attribute tensor is malformed.
    pub fn from_proto(p: &pb::NodeProto) -> Result<Node, GraphError> {
        let attributes = p
            .attribute
            .iter()
            .map(|a| Ok((a.name.clone(), Attribute::from_proto(a)?)))
            .collect::<Result<_, GraphError>>()?;
        Ok(Node {
            name: p.name.clone(),
            op_type: p.op_type.clone(),
            domain: p.domain.clone(),
            inputs: p.input.clone(),
            outputs: p.output.clone(),
            attributes,
        })
    }

    /// Encodes the node (attributes in name order).
    pub fn to_proto(&self) -> pb::NodeProto {
        pb::NodeProto {
            name: self.name.clone(),
            op_type: self.op_type.clone(),
            domain: self.domain.clone(),
            input: self.inputs.clone(),
            output: self.outputs.clone(),
            attribute: self.attributes.iter().map(|(k, v)| v.to_proto(k)).collect(),
            doc_string: String::new(),
        }
    }
}

impl From<Node> for pb::NodeProto {
    fn from(node: Node) -> pb::NodeProto {
        node.to_proto()
    }
}

impl From<&Node> for pb::NodeProto {
    fn from(node: &Node) -> pb::NodeProto {
        node.to_proto()
    }
}

/// A node attribute, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    /// `FLOAT`.
    Float(f32),
    /// `INT`.
    Int(i64),
    /// `STRING`: bytes, as in the protobuf; see [`Attribute::as_str`].
    String(Vec<u8>),
    /// `TENSOR`.
    Tensor(Tensor),
    /// `GRAPH` (the body of `If`, `Loop`, `Scan`).
    Graph(Box<pb::GraphProto>),
    /// `FLOATS`.
    Floats(Vec<f32>),
    /// `INTS`.
    Ints(Vec<i64>),
    /// `STRINGS`.
    Strings(Vec<Vec<u8>>),
    /// `TENSORS`.
    Tensors(Vec<Tensor>),
    /// `GRAPHS`.
    Graphs(Vec<pb::GraphProto>),
    /// Anything else (sparse tensors, type protos, references to function attributes), kept
    /// verbatim so that a round trip loses nothing.
    Other(Box<pb::AttributeProto>),
}

impl Attribute {
    /// The integer of an `Int` attribute.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Attribute::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The float of a `Float` attribute.
    pub fn as_float(&self) -> Option<f32> {
        match self {
            Attribute::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The integers of an `Ints` attribute.
    pub fn as_ints(&self) -> Option<&[i64]> {
        match self {
            Attribute::Ints(v) => Some(v),
            _ => None,
        }
    }

    /// The floats of a `Floats` attribute.
    pub fn as_floats(&self) -> Option<&[f32]> {
        match self {
            Attribute::Floats(v) => Some(v),
            _ => None,
        }
    }

    /// The text of a `String` attribute, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Attribute::String(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    /// The tensor of a `Tensor` attribute.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Attribute::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// Decodes an attribute. Old exporters leave `type` unset; the kind is then taken from the
    /// field that holds a value.
    pub fn from_proto(a: &pb::AttributeProto) -> Result<Attribute, GraphError> {
        use pb::attribute_proto::AttributeType as T;
        if !a.ref_attr_name.is_empty() {
            return Ok(Attribute::Other(Box::new(a.clone())));
        }
        let kind = match T::try_from(a.r#type).unwrap_or(T::Undefined) {
            T::Undefined => infer_kind(a),
            k => k,
        };
        Ok(match kind {
            T::Float => Attribute::Float(a.f),
            T::Int => Attribute::Int(a.i),
            T::String => Attribute::String(a.s.clone()),
            T::Tensor => match &a.t {
                Some(t) => Attribute::Tensor(Tensor::from_proto(t)?),
                None => Attribute::Other(Box::new(a.clone())),
            },
            T::Graph => match &a.g {
                Some(g) => Attribute::Graph(Box::new(g.clone())),
                None => Attribute::Other(Box::new(a.clone())),
            },
            T::Floats => Attribute::Floats(a.floats.clone()),
            T::Ints => Attribute::Ints(a.ints.clone()),
            T::Strings => Attribute::Strings(a.strings.clone()),
            T::Tensors => Attribute::Tensors(
                a.tensors.iter().map(Tensor::from_proto).collect::<Result<_, _>>()?,
            ),
            T::Graphs => Attribute::Graphs(a.graphs.clone()),
            _ => Attribute::Other(Box::new(a.clone())),
        })
    }

    /// Encodes the attribute under `name`, with its `type` set.
    pub fn to_proto(&self, name: &str) -> pb::AttributeProto {
        use pb::attribute_proto::AttributeType as T;
        let base = |kind: T| pb::AttributeProto {
            name: name.into(),
            r#type: kind as i32,
            ..Default::default()
        };
        match self {
            Attribute::Float(f) => pb::AttributeProto { f: *f, ..base(T::Float) },
            Attribute::Int(i) => pb::AttributeProto { i: *i, ..base(T::Int) },
            Attribute::String(s) => pb::AttributeProto { s: s.clone(), ..base(T::String) },
            Attribute::Tensor(t) => {
                pb::AttributeProto { t: Some(t.to_proto("")), ..base(T::Tensor) }
            }
            Attribute::Graph(g) => pb::AttributeProto { g: Some((**g).clone()), ..base(T::Graph) },
            Attribute::Floats(v) => pb::AttributeProto { floats: v.clone(), ..base(T::Floats) },
            Attribute::Ints(v) => pb::AttributeProto { ints: v.clone(), ..base(T::Ints) },
            Attribute::Strings(v) => pb::AttributeProto { strings: v.clone(), ..base(T::Strings) },
            Attribute::Tensors(v) => pb::AttributeProto {
                tensors: v.iter().map(|t| t.to_proto("")).collect(),
                ..base(T::Tensors)
            },
            Attribute::Graphs(v) => pb::AttributeProto { graphs: v.clone(), ..base(T::Graphs) },
            Attribute::Other(a) => pb::AttributeProto { name: name.into(), ..(**a).clone() },
        }
    }
}

fn infer_kind(a: &pb::AttributeProto) -> pb::attribute_proto::AttributeType {
    use pb::attribute_proto::AttributeType as T;
    if a.t.is_some() {
        T::Tensor
    } else if a.g.is_some() {
        T::Graph
    } else if !a.floats.is_empty() {
        T::Floats
    } else if !a.ints.is_empty() {
        T::Ints
    } else if !a.strings.is_empty() {
        T::Strings
    } else if !a.tensors.is_empty() {
        T::Tensors
    } else if !a.graphs.is_empty() {
        T::Graphs
    } else if !a.s.is_empty() {
        T::String
    } else if a.f != 0.0 {
        T::Float
    } else {
        T::Int
    }
}

/// One dimension of a declared value shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Value(i64),
    /// A named symbolic size (`dim_param`), e.g. `batch`.
    Symbol(String),
    /// Neither (the dimension exists but nothing is said about it).
    Unknown,
}

/// A declared graph input, output or `value_info` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    /// Value name.
    pub name: String,
    /// Element type; `None` when undeclared or of a type Hone does not decode.
    pub data_type: Option<DataType>,
    /// Dimensions; `None` when the rank itself is undeclared.
    pub dims: Option<Vec<Dim>>,
}

impl ValueInfo {
    /// A tensor declaration.
    pub fn tensor(name: &str, data_type: DataType, dims: Vec<Dim>) -> ValueInfo {
        ValueInfo { name: name.into(), data_type: Some(data_type), dims: Some(dims) }
    }

    /// The dimensions if all of them are fixed.
    pub fn concrete_dims(&self) -> Option<Vec<usize>> {
        self.dims
            .as_ref()?
            .iter()
            .map(|d| match d {
                Dim::Value(v) => usize::try_from(*v).ok(),
                _ => None,
            })
            .collect()
    }

    /// Decodes a declaration.
    pub fn from_proto(v: &pb::ValueInfoProto) -> ValueInfo {
        use pb::tensor_shape_proto::dimension::Value as D;
        // `TensorType` is the only kind of type tract's protobuf knows.
        let tensor = v
            .r#type
            .as_ref()
            .and_then(|t| t.value.as_ref())
            .map(|pb::type_proto::Value::TensorType(t)| t);
        ValueInfo {
            name: v.name.clone(),
            data_type: tensor.and_then(|t| DataType::from_onnx(t.elem_type)),
            dims: tensor.and_then(|t| t.shape.as_ref()).map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(D::DimValue(v)) => Dim::Value(*v),
                        Some(D::DimParam(p)) => Dim::Symbol(p.clone()),
                        None => Dim::Unknown,
                    })
                    .collect()
            }),
        }
    }

    /// Encodes the declaration.
    pub fn to_proto(&self) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::dimension::Value as D;
        let typed = self.data_type.is_some() || self.dims.is_some();
        pb::ValueInfoProto {
            name: self.name.clone(),
            r#type: typed.then(|| pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: self.data_type.map_or(0, DataType::onnx_code),
                    shape: self.dims.as_ref().map(|dims| pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| pb::tensor_shape_proto::Dimension {
                                denotation: String::new(),
                                value: match d {
                                    Dim::Value(v) => Some(D::DimValue(*v)),
                                    Dim::Symbol(s) => Some(D::DimParam(s.clone())),
                                    Dim::Unknown => None,
                                },
                            })
                            .collect(),
                    }),
                })),
            }),
            doc_string: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_with_every_common_attribute_kind_round_trips_through_proto() {
        let node = Node::new("c", "Conv", &["x", "w", ""], &["y"])
            .with_attribute("alpha", Attribute::Float(0.5))
            .with_attribute("group", Attribute::Int(4))
            .with_attribute("auto_pad", Attribute::String(b"SAME_UPPER".to_vec()))
            .with_attribute("pads", Attribute::Ints(vec![1, 1, 1, 1]))
            .with_attribute("scales", Attribute::Floats(vec![2.0]))
            .with_attribute("value", Attribute::Tensor(Tensor::vec_i64(&[1, 2])));
        let back = Node::from_proto(&node.to_proto()).unwrap();
        assert_eq!(back, node);
        assert_eq!(back.attribute("auto_pad").and_then(Attribute::as_str), Some("SAME_UPPER"));
        assert_eq!(back.attribute("group").and_then(Attribute::as_int), Some(4));
        assert_eq!(back.inputs[2], "", "omitted optional inputs keep their slot");
    }

    #[test]
    fn untyped_attributes_from_old_exporters_are_typed_by_their_field() {
        let a = pb::AttributeProto { name: "axes".into(), ints: vec![0, 2], ..Default::default() };
        assert_eq!(Attribute::from_proto(&a).unwrap(), Attribute::Ints(vec![0, 2]));
        let f = pb::AttributeProto { name: "eps".into(), f: 1e-5, ..Default::default() };
        assert_eq!(Attribute::from_proto(&f).unwrap(), Attribute::Float(1e-5));
    }

    #[test]
    fn value_info_keeps_symbols_and_values() {
        let v = ValueInfo::tensor(
            "x",
            DataType::I64,
            vec![Dim::Value(1), Dim::Symbol("seq".into()), Dim::Unknown],
        );
        let back = ValueInfo::from_proto(&v.to_proto());
        assert_eq!(back, v);
        assert_eq!(back.concrete_dims(), None);
        let c = ValueInfo::tensor("y", DataType::F32, vec![Dim::Value(2), Dim::Value(3)]);
        assert_eq!(c.concrete_dims(), Some(vec![2, 3]));
    }
}

//! Hone's graph IR: an ONNX model held as its protobuf (`tract_onnx::pb`), with typed
//! inspection, checked edits, shape inference and constant folding by tract, and lossless
//! decode→encode.
//!
//! # Model
//! A [`Graph`] owns one `pb::ModelProto` and keeps two invariants:
//! - it has a graph (`ModelProto.graph` is `Some`);
//! - every tensor's bytes are in memory. External data is read when the model is loaded
//!   ([`Graph::load`], [`Graph::from_bytes_in`]) and written back only on request
//!   ([`Graph::save_with_external_data`]), so edits and tract never see a file reference.
//!
//! Values are named as in ONNX: a value is an initializer, a graph input, or a node output. Edits
//! address nodes by their (non-empty) name and values by their name.
//!
//! # Reading
//! - [`Graph::nodes`] → [`Node`] (`name`, `op_type`, `inputs`, `outputs`, typed
//!   [`Attribute`]s); [`Graph::node_protos`] for the raw protos in graph order.
//! - [`Graph::initializer`] / [`Graph::initializers`] → [`Tensor`] with typed [`TensorData`].
//! - [`Graph::inputs`] (true inputs, initializers excluded) and [`Graph::outputs`] →
//!   [`ValueInfo`] with [`DataType`] and [`Dim`]s (value or symbol).
//! - [`Graph::opset`], [`Graph::producer_name`], [`Graph::ir_version`].
//! - [`Graph::infer_shapes`]: datum type and concrete dims of every value tract knows for given
//!   input dims (see its documentation for what may be missing).
//!
//! # Editing
//! [`Graph::replace_initializer`], [`Graph::add_initializer`], [`Graph::remove_nodes`],
//! [`Graph::insert_nodes`] (checked: no dangling input, no cycle, no duplicate value),
//! [`Graph::replace_uses`], [`Graph::add_output`], [`Graph::rename_value`],
//! [`Graph::rename_node`], [`Graph::topo_sort`], [`Graph::validate`], [`Graph::prune_unused`] and
//! [`Graph::constant_fold_shapes`]. Edits that fail leave the graph unchanged.
//!
//! # Executing
//! This module does not run models; `to_bytes` (or `proto`) feeds tract, and the differentiable
//! executor reads [`Graph::node_protos`] in order (which [`Graph::validate`] guarantees is
//! topological) with [`Graph::initializers`] as its variables.

mod edit;
mod external;
mod fold;
pub mod gate;
mod infer;
mod node;
pub mod shapes;
mod tensor;

#[cfg(test)]
mod real_models;
#[cfg(test)]
mod testing;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message as _;
/// The ONNX protobuf types (tract's `tract_onnx::pb`), for callers that build models.
pub use tract_onnx::pb;

pub use edit::PruneReport;
pub use fold::{FOLDABLE_OPS, FoldReport};
pub use infer::ValueShape;
pub use node::{Attribute, Dim, Node, ValueInfo};
pub use shapes::relax_shape_hints;
pub use tensor::{DataType, Tensor, TensorData};

/// Why a graph cannot be loaded, saved, read or edited.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// tract refuses the model, so it was not written.
    #[error("tract rejects the model, so {} was not written: {reason}", path.display())]
    Rejected {
        /// Where it would have gone.
        path: PathBuf,
        /// tract's reason.
        reason: String,
    },
    /// The bytes are not an ONNX protobuf.
    #[error("{origin} is not a valid ONNX model: {reason}")]
    Corrupt {
        /// The file path, or `in-memory bytes`.
        origin: String,
        /// The protobuf decoder's explanation.
        reason: String,
    },
    /// The protobuf decodes but holds no graph.
    #[error("{origin} holds no graph")]
    NoGraph {
        /// The file path, or `in-memory bytes`.
        origin: String,
    },
    /// External data is missing, out of bounds or inconsistent.
    #[error("external data of tensor `{tensor}`: {reason}")]
    ExternalData {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// An external data location escapes the model's folder (absolute, `..`, or a symbolic link
    /// leading out).
    #[error("external data of tensor `{tensor}` is at `{location}`, outside the model's folder")]
    ExternalPathOutside {
        /// The tensor.
        tensor: String,
        /// The location as written in the model.
        location: String,
    },
    /// A tensor's content does not match its declaration.
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// The tensor (empty for a tensor built in code).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor of an element type Hone does not decode.
    #[error("tensor `{name}` has ONNX data type {data_type}, which Hone does not decode")]
    UnsupportedDataType {
        /// The tensor.
        name: String,
        /// The ONNX `TensorProto.DataType` code.
        data_type: i32,
    },
    /// No node has this name.
    #[error("no node is named `{0}`")]
    UnknownNode(String),
    /// No initializer, graph input or node output has this name.
    #[error("no value is named `{0}`")]
    UnknownValue(String),
    /// No initializer has this name.
    #[error("no initializer is named `{0}`")]
    UnknownInitializer(String),
    /// The name is already used by a value or node.
    #[error("the name `{0}` is already used")]
    NameTaken(String),
    /// The graph (or the graph an edit would produce) breaks a structural rule.
    #[error("invalid graph: {0}")]
    Invalid(Problem),
    /// A graph input cannot be given the requested facts.
    #[error("graph input `{name}`: {reason}")]
    Input {
        /// The input.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// tract failed (or panicked) on the graph.
    #[error("tract: {0}")]
    Tract(String),
}

/// A structural defect, as found by [`Graph::validate`] and [`Graph::topo_sort`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A node reads a value that no initializer, graph input or earlier node produces.
    #[error(
        "node `{node}` reads `{value}`, which no initializer, graph input or earlier node produces"
    )]
    UndefinedInput {
        /// The reading node (its name, or `#index op_type` when unnamed).
        node: String,
        /// The value.
        value: String,
    },
    /// Two producers (nodes, initializers or inputs) for one value name.
    #[error("value `{value}` is produced more than once")]
    DuplicateValue {
        /// The value.
        value: String,
    },
    /// A graph output that nothing produces.
    #[error("graph output `{value}` is never produced")]
    UndefinedOutput {
        /// The value.
        value: String,
    },
    /// Nodes that depend on each other.
    #[error("nodes {nodes:?} form a cycle")]
    Cycle {
        /// The nodes left once every acyclic node was ordered.
        nodes: Vec<String>,
    },
}

/// An ONNX model, decoded, with all tensor data in memory. See the [module](self) documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    proto: pb::ModelProto,
}

const IN_MEMORY: &str = "in-memory bytes";

impl Graph {
    /// Loads a model file, reading external data relative to the file's folder.
    pub fn load(path: impl AsRef<Path>) -> Result<Graph, GraphError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| GraphError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self::decode(&bytes, &path.display().to_string(), Some(&dir))
    }

    /// Decodes a model held in memory. A model with external data is refused (there is no folder
    /// to read it from); use [`Graph::from_bytes_in`] or [`Graph::load`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Graph, GraphError> {
        Self::decode(bytes, IN_MEMORY, None)
    }

    /// Decodes a model held in memory whose external data lives in `model_dir`.
    pub fn from_bytes_in(bytes: &[u8], model_dir: &Path) -> Result<Graph, GraphError> {
        Self::decode(bytes, IN_MEMORY, Some(model_dir))
    }

    /// Wraps a protobuf. It must have a graph and no unresolved external data.
    pub fn from_proto(proto: pb::ModelProto) -> Result<Graph, GraphError> {
        Self::checked(proto, IN_MEMORY, None)
    }

    fn decode(bytes: &[u8], origin: &str, dir: Option<&Path>) -> Result<Graph, GraphError> {
        let proto = pb::ModelProto::decode(bytes)
            .map_err(|e| GraphError::Corrupt { origin: origin.into(), reason: e.to_string() })?;
        Self::checked(proto, origin, dir)
    }

    fn checked(
        mut proto: pb::ModelProto,
        origin: &str,
        dir: Option<&Path>,
    ) -> Result<Graph, GraphError> {
        let Some(graph) = proto.graph.as_mut() else {
            return Err(GraphError::NoGraph { origin: origin.into() });
        };
        external::resolve(graph, dir)?;
        Ok(Graph { proto })
    }

    /// The model as protobuf bytes, every tensor inline.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// Writes the model with every tensor inline (through a temporary file and a rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), GraphError> {
        external::write_atomically(path.as_ref(), &self.to_bytes())
    }

    /// Writes the model only if tract accepts it with `inputs` ([`gate::check_with_tract`]): the
    /// check runs on
    /// the encoded bytes before anything touches the disk, and the file appears through a
    /// temporary file and a rename, so a rejected model never exists at `path`. Every command
    /// that writes a model for agents to run writes it this way.
    pub fn save_gated(
        &self,
        path: impl AsRef<Path>,
        inputs: &hone_common::shapes::InputShapes,
    ) -> Result<serde_json::Value, GraphError> {
        let path = path.as_ref();
        let bytes = self.to_bytes();
        let summary = gate::check_with_tract(&bytes, inputs).map_err(|e| GraphError::Rejected {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| GraphError::Io {
                action: "create the folder of",
                path: path.to_path_buf(),
                source,
            })?;
        }
        external::write_atomically(path, &bytes)?;
        Ok(summary)
    }

    /// Writes the model with every initializer of at least `threshold_bytes` bytes moved to
    /// `<file name>.data` next to it (ONNX external data: `location`, `offset`, `length`;
    /// offsets aligned to 64 bytes). Smaller initializers, string tensors and attribute tensors
    /// stay inline. No data file is written when nothing reaches the threshold.
    pub fn save_with_external_data(
        &self,
        path: impl AsRef<Path>,
        threshold_bytes: usize,
    ) -> Result<(), GraphError> {
        external::save(&self.proto, path.as_ref(), threshold_bytes)
    }

    /// The protobuf.
    pub fn proto(&self) -> &pb::ModelProto {
        &self.proto
    }

    /// The protobuf, consuming the graph.
    pub fn into_proto(self) -> pb::ModelProto {
        self.proto
    }

    /// The graph protobuf.
    pub fn graph_proto(&self) -> &pb::GraphProto {
        static EMPTY: pb::GraphProto = pb::GraphProto {
            node: Vec::new(),
            name: String::new(),
            initializer: Vec::new(),
            sparse_initializer: Vec::new(),
            doc_string: String::new(),
            input: Vec::new(),
            output: Vec::new(),
            value_info: Vec::new(),
            quantization_annotation: Vec::new(),
        };
        // The graph is always present (checked on construction); the fallback only avoids a
        // panic path.
        self.proto.graph.as_ref().unwrap_or(&EMPTY)
    }

    /// The graph protobuf, for edits this type does not offer. The caller keeps the graph
    /// valid ([`Graph::validate`] checks it); tensors must keep their data inline.
    pub fn graph_proto_mut(&mut self) -> &mut pb::GraphProto {
        self.proto.graph.get_or_insert_with(Default::default)
    }

    /// The ONNX IR version.
    pub fn ir_version(&self) -> i64 {
        self.proto.ir_version
    }

    /// The opset version of the default (`ai.onnx`) domain, if imported.
    pub fn opset(&self) -> Option<i64> {
        self.proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
    }

    /// The producing tool, e.g. `pytorch`.
    pub fn producer_name(&self) -> &str {
        &self.proto.producer_name
    }

    /// The producing tool's version.
    pub fn producer_version(&self) -> &str {
        &self.proto.producer_version
    }

    /// The model's metadata entry `key` (ONNX `metadata_props`), if present.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.proto.metadata_props.iter().find(|e| e.key == key).map(|e| e.value.as_str())
    }

    /// Sets the metadata entry `key` to `value`, replacing an earlier one.
    pub fn set_metadata(&mut self, key: &str, value: impl Into<String>) {
        self.proto.metadata_props.retain(|e| e.key != key);
        self.proto
            .metadata_props
            .push(pb::StringStringEntryProto { key: key.to_owned(), value: value.into() });
    }

    /// The node protobufs, in graph order.
    pub fn node_protos(&self) -> &[pb::NodeProto] {
        &self.graph_proto().node
    }

    /// Every node, decoded, in graph order.
    pub fn nodes(&self) -> Result<Vec<Node>, GraphError> {
        self.node_protos().iter().map(Node::from_proto).collect()
    }

    /// One node by name.
    pub fn node(&self, name: &str) -> Result<Node, GraphError> {
        let p = self
            .node_protos()
            .iter()
            .find(|n| !name.is_empty() && n.name == name)
            .ok_or_else(|| GraphError::UnknownNode(name.into()))?;
        Node::from_proto(p)
    }

    /// The true graph inputs (declared inputs that no initializer shadows), in order.
    pub fn inputs(&self) -> Vec<ValueInfo> {
        let inits = self.initializer_set();
        self.graph_proto()
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .map(ValueInfo::from_proto)
            .collect()
    }

    /// The graph outputs, in order.
    pub fn outputs(&self) -> Vec<ValueInfo> {
        self.graph_proto().output.iter().map(ValueInfo::from_proto).collect()
    }

    /// The `value_info` declarations (optional type hints on intermediate values).
    pub fn value_infos(&self) -> Vec<ValueInfo> {
        self.graph_proto().value_info.iter().map(ValueInfo::from_proto).collect()
    }

    /// Initializer names, in graph order.
    pub fn initializer_names(&self) -> Vec<&str> {
        self.graph_proto().initializer.iter().map(|t| t.name.as_str()).collect()
    }

    /// One initializer, decoded.
    pub fn initializer(&self, name: &str) -> Result<Tensor, GraphError> {
        let t = self
            .graph_proto()
            .initializer
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GraphError::UnknownInitializer(name.into()))?;
        Tensor::from_proto(t)
    }

    /// Every initializer, decoded, in graph order.
    pub fn initializers(&self) -> Result<Vec<(String, Tensor)>, GraphError> {
        self.graph_proto()
            .initializer
            .iter()
            .map(|t| Ok((t.name.clone(), Tensor::from_proto(t)?)))
            .collect()
    }

    /// Whether `name` is an initializer, a graph input or a node output.
    pub fn has_value(&self, name: &str) -> bool {
        !name.is_empty() && self.value_names().contains(name)
    }

    /// The indices (in [`Graph::node_protos`]) of the nodes that read `value`, including reads
    /// from inside `If`/`Loop`/`Scan` bodies.
    pub fn consumers(&self, value: &str) -> Vec<usize> {
        self.node_protos()
            .iter()
            .enumerate()
            .filter(|(_, n)| node_dependencies(n).iter().any(|d| d == value))
            .map(|(i, _)| i)
            .collect()
    }

    /// The index (in [`Graph::node_protos`]) of the node that produces `value`.
    pub fn producer(&self, value: &str) -> Option<usize> {
        if value.is_empty() {
            return None;
        }
        self.node_protos().iter().position(|n| n.output.iter().any(|o| o == value))
    }

    fn initializer_set(&self) -> HashSet<&str> {
        self.graph_proto().initializer.iter().map(|t| t.name.as_str()).collect()
    }

    /// Every value name: initializers, inputs and node outputs.
    fn value_names(&self) -> HashSet<&str> {
        let g = self.graph_proto();
        g.initializer
            .iter()
            .map(|t| t.name.as_str())
            .chain(g.input.iter().map(|i| i.name.as_str()))
            .chain(g.node.iter().flat_map(|n| n.output.iter().map(String::as_str)))
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// A readable label for a node: its name, or `#index op_type` when it has none.
pub fn node_label(index: usize, node: &pb::NodeProto) -> String {
    if node.name.is_empty() { format!("#{index} {}", node.op_type) } else { node.name.clone() }
}

/// The values a node needs before it can run: its non-empty inputs, then the outer values its
/// subgraph attributes (`If`/`Loop`/`Scan` bodies) capture, each once.
pub(crate) fn node_dependencies(node: &pb::NodeProto) -> Vec<String> {
    let mut deps: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for i in node.input.iter().filter(|i| !i.is_empty()) {
        if seen.insert(i.clone()) {
            deps.push(i.clone());
        }
    }
    for a in &node.attribute {
        for g in a.g.iter().chain(a.graphs.iter()) {
            for c in captured_values(g) {
                if seen.insert(c.clone()) {
                    deps.push(c);
                }
            }
        }
    }
    deps
}

/// The names a subgraph reads from its enclosing scopes.
fn captured_values(g: &pb::GraphProto) -> Vec<String> {
    let mut defined: HashSet<&str> = g
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .chain(g.input.iter().map(|i| i.name.as_str()))
        .collect();
    let mut out = Vec::new();
    for n in &g.node {
        for d in node_dependencies(n) {
            if !defined.contains(d.as_str()) && !out.contains(&d) {
                out.push(d);
            }
        }
        defined.extend(n.output.iter().map(String::as_str));
    }
    for o in &g.output {
        if !defined.contains(o.name.as_str()) && !out.contains(&o.name) {
            out.push(o.name.clone());
        }
    }
    out
}

/// Maps each produced value name to the index of its producing node.
pub(crate) fn producers(nodes: &[pb::NodeProto]) -> HashMap<&str, usize> {
    let mut map = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            map.entry(o.as_str()).or_insert(i);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::testing::mlp;
    use super::*;

    #[test]
    fn corrupt_truncated_and_graphless_files_are_refused_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.onnx");
        std::fs::write(&garbage, b"\xff\xfe\xfd definitely not protobuf").unwrap();
        let err = Graph::load(&garbage).unwrap_err();
        assert!(matches!(err, GraphError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("garbage.onnx"), "{err}");

        let bytes = mlp().to_bytes();
        let truncated = dir.path().join("truncated.onnx");
        std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
        let err = Graph::load(&truncated).unwrap_err();
        assert!(matches!(err, GraphError::Corrupt { .. }) && err.to_string().contains("truncated"));

        let empty = dir.path().join("empty.onnx");
        std::fs::write(&empty, b"").unwrap();
        let err = Graph::load(&empty).unwrap_err();
        assert!(matches!(&err, GraphError::NoGraph { origin } if origin.contains("empty.onnx")));

        let err = Graph::load(dir.path().join("missing.onnx")).unwrap_err();
        assert!(
            matches!(err, GraphError::Io { action: "read", .. })
                && err.to_string().contains("missing.onnx")
        );
        let err = Graph::from_bytes(b"\x0a").unwrap_err();
        assert!(matches!(&err, GraphError::Corrupt { origin, .. } if origin == IN_MEMORY));
    }

    #[test]
    fn inspection_lists_nodes_initializers_and_io() {
        let g = mlp();
        assert_eq!(g.opset(), Some(17));
        assert_eq!(g.producer_name(), "hone-graph-tests");
        let nodes = g.nodes().unwrap();
        let ops: Vec<&str> = nodes.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["MatMul", "Add", "Relu", "Neg"]);
        assert_eq!(nodes[0].inputs, ["x", "W"]);
        assert_eq!(g.initializer_names(), ["W", "b", "unused"]);
        let inits = g.initializers().unwrap();
        assert_eq!(inits[1].1.dims, vec![3]);
        assert_eq!(g.inputs()[0].concrete_dims(), Some(vec![2, 2]));
        assert_eq!(g.outputs()[0].data_type, Some(DataType::F32));
        assert_eq!(g.producer("h"), Some(0));
        assert_eq!(g.consumers("x"), vec![0, 3]);
        assert!(g.has_value("W") && g.has_value("y") && !g.has_value("q"));
        assert_eq!(Graph::from_bytes(&g.to_bytes()).unwrap(), g);
        assert!(matches!(g.node("nope"), Err(GraphError::UnknownNode(_))));
    }
}

//! The differentiable executor: an ONNX graph evaluated in candle (CPU), forward and backward.
//!
//! # Model
//! An [`Executor`] is built once from a [`Graph`]. It decodes every node and initializer:
//! - float initializers (`f32`, `f64`, `f16`, `bf16`) chosen as trainable become
//!   `candle_core::Var`s ([`Executor::parameters`]); by default ([`default_trainable`]) these are
//!   the float initializers that some node reads as differentiable data (weights, biases,
//!   embeddings, norm scales), not those read only as settings (shapes, axes, `Pow` exponents,
//!   `Clip` bounds, `BatchNormalization` running mean and variance);
//! - every other initializer is a constant tensor.
//!
//! [`Executor::run`] evaluates the nodes that the requested values depend on, in graph order
//! (which [`Graph::validate`] guarantees is topological). Every op is built from candle ops that
//! carry their own backward, so the returned tensors are part of candle's autograd graph: call
//! [`Executor::backward`] on a loss computed from them to get the gradient of every trainable
//! initializer by name.
//!
//! # Values
//! Values are candle tensors. ONNX element types map to candle types as follows: `float`,
//! `double`, `float16` and `bfloat16` keep their type; every integer type becomes `i64` (so an
//! `int32` output is returned as `i64`); `bool` becomes `u8` (0 or 1). Strings are not supported.
//!
//! # What is differentiable, and how
//! No op needs a hand-written backward: each is a composition of candle ops whose backward
//! candle implements, chosen so that it holds for every attribute value.
//! - `Conv` (1-D and 2-D, any pads, strides, dilations and groups) is an im2col: explicit zero
//!   padding, one strided view of the input per kernel tap (`narrow`, or `index_select` when the
//!   stride is above 1), then a grouped batched `matmul`. Candle's own `conv2d` is not used: it
//!   takes one padding, stride and dilation for both axes and its backward mis-sizes the input
//!   gradient when height and width leave different remainders.
//! - `MaxPool` (any kernel, stride, pads, dilations, `ceil_mode`) stacks the same strided views
//!   (padding with −∞) and takes the max over the stack; candle's `max_pool2d` has no backward
//!   when kernel ≠ stride. At ties every maximal element receives the full gradient.
//! - `AveragePool` sums the views and divides by a constant count tensor, which implements
//!   `count_include_pad` and the `ceil_mode` overhang exactly.
//! - `Softmax` subtracts the detached row maximum, then `exp` / `sum`. `LayerNormalization`
//!   and `BatchNormalization` (inference form) are written out with mean, variance and
//!   `sqrt`. `Sigmoid` is `(tanh(x/2) + 1) / 2`, whose backward stays finite for large |x|.
//!   `Erf` uses candle's `erf` and its backward `2/√π·e^(−x²)`.
//! - Integer and boolean values (shapes, indices, masks) carry no gradient. `Gather`, `Slice`,
//!   `Reshape` and the like read their index and shape inputs as host values.
//!
//! The op set is [`SUPPORTED_OPS`]; any other op, any non-default domain and any node with a
//! subgraph attribute is refused with [`ExecError::UnsupportedOp`] when the executor is built.

mod ops;
mod prims;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use tract_onnx::pb;

use hone_graph::{DataType, Dim, Graph, GraphError, Node, Tensor as GraphTensor, TensorData};

pub use ops::SUPPORTED_OPS;

/// Why a graph cannot be executed, or a run or backward pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The graph uses an operator the executor does not implement.
    #[error(
        "node `{node}`: operator `{op}`{} is not supported by the differentiable executor",
        if domain.is_empty() { String::new() } else { format!(" of domain `{domain}`") }
    )]
    UnsupportedOp {
        /// The node (its name, or `#index op_type` when unnamed).
        node: String,
        /// The operator.
        op: String,
        /// The operator domain (empty for `ai.onnx`).
        domain: String,
    },
    /// A node's attributes or inputs are invalid for its operator.
    #[error("node `{node}` ({op}): {reason}")]
    Node {
        /// The node.
        node: String,
        /// The operator.
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// candle failed while evaluating a node (typically a shape mismatch).
    #[error("node `{node}` ({op}): {source}")]
    Candle {
        /// The node.
        node: String,
        /// The operator.
        op: String,
        /// candle's error.
        #[source]
        source: Box<candle_core::Error>,
    },
    /// A graph input was not given.
    #[error("graph input `{0}` was not given")]
    MissingInput(String),
    /// A value was given that is not a graph input.
    #[error("`{0}` is not a graph input")]
    UnknownInput(String),
    /// A given input does not match its declaration (element type, rank or dimension).
    #[error("graph input `{name}`: {reason}")]
    Input {
        /// The input.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A requested value is not produced by the graph.
    #[error("no value is named `{0}`")]
    UnknownValue(String),
    /// An initializer cannot be turned into a candle tensor, or a parameter cannot be written
    /// back into one.
    #[error("initializer `{name}`: {reason}")]
    Initializer {
        /// The initializer.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// candle's backward pass failed.
    #[error("backward pass: {0}")]
    Backward(#[source] Box<candle_core::Error>),
    /// The graph itself is invalid (e.g. its nodes are not in topological order).
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// One trainable initializer.
#[derive(Debug)]
struct Param {
    name: String,
    var: Var,
}

/// An ONNX graph ready to run forward and backward in candle. See the [module](self)
/// documentation.
#[derive(Debug)]
pub struct Executor {
    nodes: Vec<Node>,
    labels: Vec<String>,
    opset: i64,
    /// Declared true graph inputs (name, candle type when declared, dims when declared).
    inputs: Vec<(String, Option<DataType>, Option<Vec<Dim>>)>,
    /// Names of values that may be given as inputs (true inputs and initializers declared as
    /// inputs, which a given value overrides).
    input_names: HashSet<String>,
    outputs: Vec<String>,
    params: Vec<Param>,
    constants: HashMap<String, Tensor>,
    /// The value names every node produces, to answer "is this a value?".
    produced: HashMap<String, usize>,
}

/// The gradients of one backward pass.
#[derive(Debug)]
pub struct Gradients {
    by_name: BTreeMap<String, Tensor>,
    store: GradStore,
}

impl Gradients {
    /// The gradient of the trainable initializer `name`; `None` when the loss does not depend
    /// on it.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.by_name.get(name)
    }

    /// The gradient of any tensor that took part in the loss (a `Var` passed as an input, for
    /// example).
    pub fn of(&self, tensor: &Tensor) -> Option<&Tensor> {
        self.store.get(tensor)
    }

    /// Every trainable initializer that received a gradient, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of named gradients.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no trainable initializer received a gradient.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// candle's gradient store.
    pub fn into_store(self) -> GradStore {
        self.store
    }
}

/// The float initializers that the default executor trains: those that at least one node
/// (among those that reach a graph output) reads in a differentiable input slot. Initializers
/// read only as settings (shapes, axes, indices, `Pow` exponents, `Clip` bounds,
/// `BatchNormalization` mean and variance) are left out.
pub fn default_trainable(graph: &Graph) -> Vec<String> {
    let floats: HashSet<&str> = graph
        .graph_proto()
        .initializer
        .iter()
        .filter(|t| {
            DataType::from_onnx(t.data_type).is_some_and(|d| {
                matches!(d, DataType::F32 | DataType::F64 | DataType::F16 | DataType::BF16)
            })
        })
        .map(|t| t.name.as_str())
        .collect();
    let outputs: Vec<&str> = graph.graph_proto().output.iter().map(|o| o.name.as_str()).collect();
    let live = live_nodes(graph.node_protos(), &outputs);
    let mut used = HashSet::new();
    for (ix, n) in graph.node_protos().iter().enumerate() {
        if !live[ix] {
            continue;
        }
        for (slot, name) in n.input.iter().enumerate() {
            if floats.contains(name.as_str()) && ops::is_differentiable_input(&n.op_type, slot) {
                used.insert(name.as_str());
            }
        }
    }
    graph.initializer_names().into_iter().filter(|n| used.contains(n)).map(String::from).collect()
}

impl Executor {
    /// An executor that trains [`default_trainable`] initializers.
    pub fn new(graph: &Graph) -> Result<Executor, ExecError> {
        let trainable: HashSet<String> = default_trainable(graph).into_iter().collect();
        Self::with_trainable(graph, |name| trainable.contains(name))
    }

    /// An executor for a protobuf (see [`Executor::new`]).
    pub fn from_proto(proto: &pb::ModelProto) -> Result<Executor, ExecError> {
        Self::new(&Graph::from_proto(proto.clone())?)
    }

    /// An executor whose trainable initializers are the float initializers for which
    /// `trainable(name)` holds; all others are constants.
    pub fn with_trainable(
        graph: &Graph,
        trainable: impl Fn(&str) -> bool,
    ) -> Result<Executor, ExecError> {
        graph.validate()?;
        let protos = graph.node_protos();
        let opset = graph.opset().unwrap_or(17);
        let labels: Vec<String> =
            protos.iter().enumerate().map(|(i, n)| hone_graph::node_label(i, n)).collect();
        let outputs: Vec<String> = graph.outputs().into_iter().map(|o| o.name).collect();
        let output_refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        let live = live_nodes(protos, &output_refs);
        for (ix, n) in protos.iter().enumerate() {
            if live[ix] {
                check_supported(n, &labels[ix])?;
            }
        }
        let nodes = graph.nodes()?;

        let mut params = Vec::new();
        let mut constants = HashMap::new();
        for (name, t) in graph.initializers()? {
            let tensor = to_candle(&t)
                .map_err(|reason| ExecError::Initializer { name: name.clone(), reason })?;
            if tensor.dtype().is_float() && trainable(&name) {
                let var = Var::from_tensor(&tensor).map_err(|e| ExecError::Initializer {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
                params.push(Param { name, var });
            } else {
                constants.insert(name, tensor);
            }
        }

        let inputs =
            graph.inputs().into_iter().map(|v| (v.name, v.data_type, v.dims)).collect::<Vec<_>>();
        let input_names = graph.graph_proto().input.iter().map(|i| i.name.clone()).collect();
        let mut produced = HashMap::new();
        for (ix, n) in protos.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                produced.insert(o.clone(), ix);
            }
        }
        Ok(Executor {
            nodes,
            labels,
            opset,
            inputs,
            input_names,
            outputs,
            params,
            constants,
            produced,
        })
    }

    /// The trainable initializers, in graph order, with their variables.
    pub fn parameters(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// The variable of trainable initializer `name`.
    pub fn parameter(&self, name: &str) -> Option<&Var> {
        self.params.iter().find(|p| p.name == name).map(|p| &p.var)
    }

    /// The graph outputs' names, in order.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// The opset the nodes are interpreted with (17 when the model imports none).
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Evaluates every graph output.
    pub fn forward<I, S>(&self, inputs: I) -> Result<HashMap<String, Tensor>, ExecError>
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        let outputs: Vec<&str> = self.outputs.iter().map(String::as_str).collect();
        self.run(inputs, &outputs)
    }

    /// Evaluates the values named in `outputs` (graph outputs, intermediate values, inputs or
    /// initializers), running only the nodes they depend on.
    pub fn run<I, S>(
        &self,
        inputs: I,
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>, ExecError>
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        self.run_overriding(inputs, Vec::new(), outputs)
    }

    /// [`Executor::run`] with some intermediate values given instead of computed: a node whose
    /// every output is in `overrides` is skipped, and its consumers read the given tensor (an
    /// interpolated embedding for integrated gradients, say). Gradients flow into the given
    /// tensors when they are part of an autograd graph.
    pub fn run_overriding<I, S>(
        &self,
        inputs: I,
        overrides: Vec<(String, Tensor)>,
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>, ExecError>
    where
        I: IntoIterator<Item = (S, Tensor)>,
        S: Into<String>,
    {
        for (name, _) in &overrides {
            if !self.produced.contains_key(name) {
                return Err(ExecError::UnknownValue(name.clone()));
            }
        }
        let overridden: HashSet<String> = overrides.iter().map(|(n, _)| n.clone()).collect();
        let mut env: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in inputs {
            let name = name.into();
            if !self.input_names.contains(&name) {
                return Err(ExecError::UnknownInput(name));
            }
            env.insert(name, t);
        }
        self.check_inputs(&mut env)?;
        for p in &self.params {
            env.entry(p.name.clone()).or_insert_with(|| p.var.as_tensor().clone());
        }
        for (name, t) in &self.constants {
            env.entry(name.clone()).or_insert_with(|| t.clone());
        }
        env.extend(overrides);
        for o in outputs {
            if !env.contains_key(*o) && !self.produced.contains_key(*o) {
                return Err(ExecError::UnknownValue((*o).to_string()));
            }
        }

        let protos_live = self.live(outputs);
        // The last node that reads each value, so that intermediate values are dropped early.
        let mut last_use: HashMap<&str, usize> = HashMap::new();
        for (ix, n) in self.nodes.iter().enumerate().filter(|(ix, _)| protos_live[*ix]) {
            for i in n.inputs.iter().filter(|i| !i.is_empty()) {
                last_use.insert(i.as_str(), ix);
            }
        }
        let keep: HashSet<&str> = outputs.iter().copied().collect();

        for (ix, node) in self.nodes.iter().enumerate() {
            if !protos_live[ix] {
                continue;
            }
            if !overridden.is_empty()
                && node.outputs.iter().filter(|o| !o.is_empty()).all(|o| overridden.contains(o))
            {
                continue;
            }
            let label = &self.labels[ix];
            check_supported_node(node, label)?;
            let args = node
                .inputs
                .iter()
                .map(|i| {
                    if i.is_empty() {
                        Ok(None)
                    } else {
                        env.get(i).cloned().map(Some).ok_or_else(|| ExecError::Node {
                            node: label.clone(),
                            op: node.op_type.clone(),
                            reason: format!("input `{i}` is not available"),
                        })
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let results = ops::eval(node, &args, self.opset).map_err(|e| e.at(node, label))?;
            for (name, t) in node.outputs.iter().zip(results) {
                if !name.is_empty() {
                    env.insert(name.clone(), t);
                }
            }
            for i in node.inputs.iter().filter(|i| !i.is_empty()) {
                if last_use.get(i.as_str()) == Some(&ix) && !keep.contains(i.as_str()) {
                    env.remove(i);
                }
            }
        }
        outputs
            .iter()
            .map(|o| {
                env.get(*o)
                    .cloned()
                    .map(|t| ((*o).to_string(), t))
                    .ok_or_else(|| ExecError::UnknownValue((*o).to_string()))
            })
            .collect()
    }

    /// Runs candle's backward pass from `loss` (seeded with ones, so a non-scalar loss is
    /// summed) and names the gradient of every trainable initializer it reaches.
    pub fn backward(&self, loss: &Tensor) -> Result<Gradients, ExecError> {
        let store = loss.backward().map_err(|e| ExecError::Backward(Box::new(e)))?;
        let by_name = self
            .params
            .iter()
            .filter_map(|p| store.get(p.var.as_tensor()).map(|g| (p.name.clone(), g.clone())))
            .collect();
        Ok(Gradients { by_name, store })
    }

    /// Writes the current value of every trainable initializer back into `graph` (the graph
    /// this executor was built from), keeping each initializer's element type (`f32` or `f64`).
    pub fn write_back(&self, graph: &mut Graph) -> Result<(), ExecError> {
        for p in &self.params {
            let bad = |reason: String| ExecError::Initializer { name: p.name.clone(), reason };
            let t = p.var.as_tensor();
            let dims = t.dims().to_vec();
            let flat = t.flatten_all().map_err(|e| bad(e.to_string()))?;
            let data = match t.dtype() {
                DType::F32 => TensorData::F32(flat.to_vec1().map_err(|e| bad(e.to_string()))?),
                DType::F64 => TensorData::F64(flat.to_vec1().map_err(|e| bad(e.to_string()))?),
                other => return Err(bad(format!("cannot write {other:?} parameters back"))),
            };
            let tensor = GraphTensor::new(dims, data)?;
            graph.replace_initializer(&p.name, &tensor)?;
        }
        Ok(())
    }

    /// Which nodes the values in `outputs` depend on.
    fn live(&self, outputs: &[&str]) -> Vec<bool> {
        let mut needed: HashSet<&str> = outputs.iter().copied().collect();
        let mut live = vec![false; self.nodes.len()];
        for (ix, n) in self.nodes.iter().enumerate().rev() {
            if n.outputs.iter().any(|o| needed.contains(o.as_str())) {
                live[ix] = true;
                needed.extend(n.inputs.iter().filter(|i| !i.is_empty()).map(String::as_str));
            }
        }
        live
    }

    /// Checks given inputs against their declarations, converting integer inputs to `i64`.
    fn check_inputs(&self, env: &mut HashMap<String, Tensor>) -> Result<(), ExecError> {
        let mut symbols: HashMap<&str, (usize, &str)> = HashMap::new();
        for (name, data_type, dims) in &self.inputs {
            let bad = |reason: String| ExecError::Input { name: name.clone(), reason };
            let t = env.get(name).ok_or_else(|| ExecError::MissingInput(name.clone()))?;
            let t = normalize_input(t, *data_type).map_err(bad)?;
            if let Some(dims) = dims {
                let got = t.dims();
                if got.len() != dims.len() {
                    return Err(bad(format!(
                        "expected rank {} ({}), got shape {got:?}",
                        dims.len(),
                        show_dims(dims)
                    )));
                }
                for (axis, (d, &g)) in dims.iter().zip(got).enumerate() {
                    match d {
                        Dim::Value(v) if *v >= 0 && *v as usize != g => {
                            return Err(bad(format!(
                                "expected shape ({}), got {got:?}: dimension {axis} is {g}, not {v}",
                                show_dims(dims)
                            )));
                        }
                        // `?` (Paddle's exports) and an empty name mark an unknown dimension,
                        // each its own: they bind nothing across axes or inputs.
                        Dim::Symbol(s) if s.is_empty() || s == "?" => {}
                        Dim::Symbol(s) => match symbols.get(s.as_str()) {
                            Some(&(v, first)) if v != g => {
                                return Err(bad(format!(
                                    "dimension {axis} (`{s}`) is {g}, but `{first}` gave `{s}` = {v}"
                                )));
                            }
                            Some(_) => {}
                            None => {
                                symbols.insert(s.as_str(), (g, name.as_str()));
                            }
                        },
                        _ => {}
                    }
                }
            }
            env.insert(name.clone(), t);
        }
        Ok(())
    }
}

fn show_dims(dims: &[Dim]) -> String {
    dims.iter()
        .map(|d| match d {
            Dim::Value(v) => v.to_string(),
            Dim::Symbol(s) => s.clone(),
            Dim::Unknown => "?".into(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which nodes reach one of `outputs`.
fn live_nodes(nodes: &[pb::NodeProto], outputs: &[&str]) -> Vec<bool> {
    let mut needed: HashSet<&str> = outputs.iter().copied().collect();
    let mut live = vec![false; nodes.len()];
    for (ix, n) in nodes.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o.as_str())) {
            live[ix] = true;
            needed.extend(n.input.iter().filter(|i| !i.is_empty()).map(String::as_str));
        }
    }
    live
}

fn check_supported(n: &pb::NodeProto, label: &str) -> Result<(), ExecError> {
    let unsupported = || ExecError::UnsupportedOp {
        node: label.into(),
        op: n.op_type.clone(),
        domain: n.domain.clone(),
    };
    let default_domain = n.domain.is_empty() || n.domain == "ai.onnx";
    let has_subgraph = n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty());
    if !default_domain || has_subgraph || !SUPPORTED_OPS.contains(&n.op_type.as_str()) {
        return Err(unsupported());
    }
    Ok(())
}

fn check_supported_node(n: &Node, label: &str) -> Result<(), ExecError> {
    let default_domain = n.domain.is_empty() || n.domain == "ai.onnx";
    if !default_domain || !SUPPORTED_OPS.contains(&n.op_type.as_str()) {
        return Err(ExecError::UnsupportedOp {
            node: label.into(),
            op: n.op_type.clone(),
            domain: n.domain.clone(),
        });
    }
    Ok(())
}

/// The candle type that holds values of an ONNX type.
pub(crate) fn candle_dtype(dt: DataType) -> Option<DType> {
    Some(match dt {
        DataType::F32 => DType::F32,
        DataType::F64 => DType::F64,
        DataType::F16 => DType::F16,
        DataType::BF16 => DType::BF16,
        DataType::Bool => DType::U8,
        DataType::String => return None,
        _ => DType::I64,
    })
}

/// Converts a given input to the candle type of its declaration (integers to `i64`).
fn normalize_input(t: &Tensor, declared: Option<DataType>) -> Result<Tensor, String> {
    let is_int =
        |d: DType| matches!(d, DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64);
    let Some(declared) = declared else {
        return if is_int(t.dtype()) && t.dtype() != DType::I64 {
            t.to_dtype(DType::I64).map_err(|e| e.to_string())
        } else {
            Ok(t.clone())
        };
    };
    let want = candle_dtype(declared)
        .ok_or_else(|| format!("inputs of type {declared} are not supported"))?;
    if t.dtype() == want {
        return Ok(t.clone());
    }
    if want == DType::I64 && is_int(t.dtype()) {
        return t.to_dtype(DType::I64).map_err(|e| e.to_string());
    }
    Err(format!("expected element type {declared}, got {:?}", t.dtype()))
}

/// A decoded ONNX tensor as a candle tensor on the CPU (see the [module](self) documentation
/// for the type mapping).
pub(crate) fn to_candle(t: &GraphTensor) -> Result<Tensor, String> {
    let dev = &Device::Cpu;
    let dims = t.dims.clone();
    let r = match &t.data {
        TensorData::F32(v) => Tensor::from_vec(v.clone(), dims, dev),
        TensorData::F64(v) => Tensor::from_vec(v.clone(), dims, dev),
        TensorData::F16(v) => {
            let f: Vec<f32> = v.iter().map(|&b| f16_to_f32(b)).collect();
            Tensor::from_vec(f, dims, dev).and_then(|x| x.to_dtype(DType::F16))
        }
        TensorData::BF16(v) => {
            let f: Vec<f32> = v.iter().map(|&b| f32::from_bits(u32::from(b) << 16)).collect();
            Tensor::from_vec(f, dims, dev).and_then(|x| x.to_dtype(DType::BF16))
        }
        TensorData::Bool(v) => {
            Tensor::from_vec(v.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>(), dims, dev)
        }
        TensorData::String(_) => return Err("string tensors are not supported".into()),
        _ => {
            let v = t.to_i64_vec().ok_or("an integer does not fit i64")?;
            Tensor::from_vec(v, dims, dev)
        }
    };
    r.map_err(|e| e.to_string())
}

/// IEEE binary16 bits to `f32`.
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let man = f32::from(h & 0x3ff);
    match exp {
        0 => sign * man * 2f32.powi(-24),
        31 if man == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + man / 1024.0) * 2f32.powi(exp - 15),
    }
}

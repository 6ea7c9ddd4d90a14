//! Structured pruning of ONNX graphs: whole neurons, channels and attention heads are removed,
//! so that tract runs a physically smaller model.
//!
//! The pipeline: [`normalize`] the graph (constants as initializers, topological order),
//! [`groups::analyse`] it into dependency groups, score units ([`importance`]), choose how
//! many to keep per group ([`alloc`]: uniform, global or sensitivity-based, widths rounded for
//! the target's SIMD), cut ([`apply::apply`]), then validate: tract loads the child, its latency
//! is measured side by side with the parent's ([`latency`]), its accuracy or fidelity on held-out
//! data, with an optional recovery fine-tune ([`finetune`]). [`run`] is one whole run (what
//! `coordinator prune` does), [`search`] the `--target-speedup` search, [`ort`] the ONNX Runtime
//! reference timing.

pub mod alloc;
pub mod apply;
pub mod finetune;
pub mod groups;
pub mod importance;
pub mod latency;
pub mod ort;
pub mod reconstruct;
pub mod run;
pub mod search;

use std::collections::BTreeMap;

use hone_common::shapes::InputShapes;
use hone_graph::{Attribute, Dim, Graph, GraphError, Tensor, ValueInfo, ValueShape};

pub use apply::{Selection, apply};
pub use groups::{Analysis, Group, analyse};

/// Turns `Constant` nodes into initializers of the same name and sorts the nodes
/// topologically, so that the analysis sees every constant the same way.
pub fn normalize(graph: &Graph) -> Result<Graph, GraphError> {
    let mut g = graph.clone();
    let mut constants: Vec<(String, Tensor)> = Vec::new();
    let mut drop = Vec::new();
    for (ix, n) in g.node_protos().iter().enumerate() {
        if n.op_type != "Constant" || !n.domain.is_empty() || n.output.len() != 1 {
            continue;
        }
        let node = hone_graph::Node::from_proto(n)?;
        let t = match node.attributes.iter().next() {
            Some((k, Attribute::Tensor(t))) if k == "value" => t.clone(),
            Some((k, Attribute::Float(f))) if k == "value_float" => Tensor::scalar_f32(*f),
            Some((k, Attribute::Int(i))) if k == "value_int" => Tensor::scalar_i64(*i),
            Some((k, Attribute::Ints(v))) if k == "value_ints" => Tensor::vec_i64(v),
            Some((k, Attribute::Floats(v))) if k == "value_floats" => {
                Tensor::new(vec![v.len()], hone_graph::TensorData::F32(v.clone()))?
            }
            _ => continue,
        };
        if node.attributes.len() != 1 {
            continue;
        }
        constants.push((n.output[0].clone(), t));
        drop.push(ix);
    }
    let proto = g.graph_proto_mut();
    let mut ix = 0;
    proto.node.retain(|_| {
        ix += 1;
        !drop.contains(&(ix - 1))
    });
    for (name, t) in constants {
        proto.initializer.push(t.to_proto(&name));
    }
    g.topo_sort()?;
    Ok(g)
}

/// Concrete input dims for the analysis: `given` shapes (`--input`) for the inputs they name;
/// for the others, declared dims, with a dynamic batch (symbolic, `-1` or `?`) set to 2 and other
/// dynamic dims to `seq` (distinct values, so that reshapes are unambiguous).
pub fn analysis_dims(graph: &Graph, seq: usize, given: &InputShapes) -> Vec<(String, Vec<usize>)> {
    let inputs = graph.inputs();
    hone_learn::eval::tract::true_inputs(graph)
        .into_iter()
        .filter_map(|name| {
            let info = inputs.iter().find(|i| i.name == name)?;
            let dims = input_dims(info, 2, seq, given)?;
            Some((name, dims))
        })
        .collect()
}

/// Concrete dims of one declared input: its `given` shape; else its declared dims with a
/// dynamic first axis (symbolic, `-1` or `?`) set to `batch` and other dynamic axes to `seq`.
/// `None` when neither gives a rank.
pub fn input_dims(
    info: &ValueInfo,
    batch: usize,
    seq: usize,
    given: &InputShapes,
) -> Option<Vec<usize>> {
    if let Some(dims) = given.get(&info.name) {
        return Some(dims.iter().map(|&d| d as usize).collect());
    }
    let dims = info.dims.as_ref()?;
    Some(
        dims.iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Value(v) if *v > 0 => *v as usize,
                _ if i == 0 => batch,
                _ => seq,
            })
            .collect(),
    )
}

/// A normalised graph and its dependency groups.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The normalised graph (what selections apply to).
    pub graph: Graph,
    /// Its groups.
    pub analysis: Analysis,
}

/// Normalises `graph` and analyses it with tract's shapes at `dims`.
pub fn prepare(graph: &Graph, dims: &[(String, Vec<usize>)]) -> Result<Prepared, GraphError> {
    let graph = normalize(graph)?;
    let shapes: BTreeMap<String, ValueShape> =
        graph.infer_shapes(dims.iter().map(|(n, d)| (n.as_str(), d.as_slice())))?;
    let analysis = analyse(&graph, shapes)?;
    Ok(Prepared { graph, analysis })
}

/// Initializers read as embedding tables (the data input of a `Gather`).
pub fn embedding_tables(graph: &Graph) -> std::collections::HashSet<&str> {
    graph
        .node_protos()
        .iter()
        .filter(|n| n.op_type == "Gather")
        .filter_map(|n| n.input.first().map(String::as_str))
        .collect()
}

/// Float parameters outside embedding tables.
pub fn params_no_embeddings(graph: &Graph) -> usize {
    let tables = embedding_tables(graph);
    float_params(graph, |name| !tables.contains(name))
}

/// Number of float parameters (initializer elements) of a graph.
pub fn param_count(graph: &Graph) -> usize {
    float_params(graph, |_| true)
}

/// Elements of the f32 initializers whose name `keep` accepts.
fn float_params(graph: &Graph, keep: impl Fn(&str) -> bool) -> usize {
    graph
        .graph_proto()
        .initializer
        .iter()
        .filter(|t| t.data_type == 1 && keep(&t.name))
        .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
        .sum()
}

/// Multiply-accumulates of one run at `dims` (Conv, Gemm and MatMul; from tract's shapes).
pub fn macs(graph: &Graph, dims: &[(String, Vec<usize>)]) -> Result<u64, GraphError> {
    let shapes = graph.infer_shapes(dims.iter().map(|(n, d)| (n.as_str(), d.as_slice())))?;
    let inits: BTreeMap<&str, Vec<usize>> = graph
        .graph_proto()
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t.dims.iter().map(|&d| d.max(0) as usize).collect()))
        .collect();
    let dims_of = |v: &str| -> Option<Vec<usize>> {
        inits.get(v).cloned().or_else(|| shapes.get(v).map(|s| s.dims.clone()))
    };
    let mut total = 0u64;
    for n in graph.node_protos() {
        let out = n.output.first().and_then(|o| dims_of(o));
        let Some(out) = out else { continue };
        let out_elems: u64 = out.iter().map(|&d| d as u64).product();
        match n.op_type.as_str() {
            "Conv" => {
                if let Some(w) = n.input.get(1).and_then(|w| dims_of(w)) {
                    total += out_elems * w[1..].iter().map(|&d| d as u64).product::<u64>();
                }
            }
            "MatMul" | "Gemm" => {
                let a = n.input.first().and_then(|a| dims_of(a));
                if let Some(a) = a {
                    let trans_a = n
                        .attribute
                        .iter()
                        .any(|x| x.name == "transA" && x.i == 1 && n.op_type == "Gemm");
                    let k = if trans_a { a.first() } else { a.last() };
                    total += out_elems * k.copied().unwrap_or(0) as u64;
                }
            }
            _ => {}
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests;

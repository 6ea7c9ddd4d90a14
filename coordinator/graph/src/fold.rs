//! Conservative constant folding of shape subgraphs: [`Graph::constant_fold_shapes`].

use std::collections::{HashMap, HashSet};

use tract_onnx::pb;

use super::edit::topo_order;
use super::infer::eval_node;
use super::{Attribute, Graph, GraphError, Tensor, TensorData, node_label};

/// Ops folded by evaluation in tract when all their inputs are constant.
pub const FOLDABLE_OPS: &[&str] = &[
    "Identity",
    "Cast",
    "CastLike",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Concat",
    "Split",
    "Gather",
    "Slice",
    "Transpose",
    "Expand",
    "ConstantOfShape",
    "Range",
    "Tile",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Abs",
    "Sqrt",
    "Floor",
    "Ceil",
    "Min",
    "Max",
    "Mod",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "Not",
    "And",
    "Or",
    "Where",
    "ReduceProd",
    "ReduceSum",
    "ReduceMin",
    "ReduceMax",
];

/// Elements a folded node may produce even from tiny inputs.
const MIN_OUTPUT_CAP: usize = 1024;

/// What [`Graph::constant_fold_shapes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoldReport {
    /// Folded (and removed) nodes, in graph order.
    pub folded_nodes: Vec<String>,
    /// Initializers created for folded values still read by the graph.
    pub new_initializers: Vec<String>,
    /// Nodes that qualified but were kept, with the reason (tract failed, output too large).
    pub skipped: Vec<(String, String)>,
}

impl Graph {
    /// Folds constant and static-shape subgraphs into initializers. Fails only when the graph is
    /// structurally invalid (then it is unchanged).
    ///
    /// A value is *constant* when it is an initializer (not also declared as a graph input: ONNX
    /// lets such an input override its initializer) or the output of a folded node. A node is
    /// folded when it is in the default domain, has no subgraph attribute, and either
    /// - is `Constant` (attributes `value`, `value_float(s)`, `value_int(s)`; sparse and string
    ///   constants are left alone), evaluated here;
    /// - is `Shape` or `Size` of a value whose shape is static: a constant, or a graph input whose
    ///   declared dims are all fixed; evaluated here (`Shape` with opset-15 `start`/`end`);
    /// - is in [`FOLDABLE_OPS`] and reads only constants; evaluated by tract on a one-node model,
    ///   so the folded values are exactly what tract computes at load time.
    ///
    /// A node whose outputs would hold more than `max(1024, elements of its inputs)` elements is
    /// not folded (so `Expand`, `ConstantOfShape`, `Tile` and `Range` never materialise large
    /// tensors), nor is one tract cannot evaluate; both are listed in [`FoldReport::skipped`].
    /// Folded values that unfolded nodes or graph outputs read become initializers; folded nodes
    /// are removed. Intermediate shapes of non-input values are never assumed, so `Shape` of an
    /// activation with a symbolic batch stays in the graph.
    pub fn constant_fold_shapes(&mut self) -> Result<FoldReport, GraphError> {
        let g = self.graph_proto();
        let order = topo_order(g, &g.node).map_err(GraphError::Invalid)?;
        let declared_inputs: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
        let initializers: HashMap<&str, &pb::TensorProto> = g
            .initializer
            .iter()
            .filter(|t| !declared_inputs.contains(t.name.as_str()))
            .map(|t| (t.name.as_str(), t))
            .collect();
        let static_inputs: HashMap<String, Vec<usize>> = self
            .inputs()
            .into_iter()
            .filter_map(|i| Some((i.name.clone(), i.concrete_dims()?)))
            .collect();

        let mut known: HashMap<String, Tensor> = HashMap::new();
        let mut folded: HashSet<usize> = HashSet::new();
        let mut report = FoldReport::default();
        for ix in order {
            let node = &g.node[ix];
            if !(node.domain.is_empty() || node.domain == "ai.onnx")
                || node.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())
            {
                continue;
            }
            let outcome = match node.op_type.as_str() {
                "Constant" => constant_value(node).map(|r| r.map(|t| vec![t])),
                "Shape" | "Size" => {
                    let input = node.input.first().map(String::as_str).unwrap_or_default();
                    let dims = match lookup(input, &mut known, &initializers) {
                        Some(t) => Some(t.dims.clone()),
                        None => static_inputs.get(input).cloned(),
                    };
                    dims.map(|d| shape_op(node, &d).map(|t| vec![t]))
                }
                op if FOLDABLE_OPS.contains(&op) => {
                    // Availability is checked before decoding anything, so that a large weight
                    // read by a node that also reads an activation is never decoded for nothing.
                    let mut names: Vec<&str> = Vec::new();
                    for n in node.input.iter().filter(|n| !n.is_empty()) {
                        if !names.contains(&n.as_str()) {
                            names.push(n);
                        }
                    }
                    let available = !names.is_empty()
                        && names
                            .iter()
                            .all(|n| known.contains_key(*n) || initializers.contains_key(n));
                    let inputs: Option<Vec<(&str, Tensor)>> = if available {
                        names
                            .iter()
                            .map(|n| Some((*n, lookup(n, &mut known, &initializers)?.clone())))
                            .collect()
                    } else {
                        None
                    };
                    inputs.map(|inputs| {
                        let cap = inputs.iter().map(|(_, t)| t.len()).sum::<usize>();
                        let cap = cap.max(MIN_OUTPUT_CAP);
                        let too_big =
                            |n: usize| format!("{n} output elements exceed the cap of {cap}");
                        match estimated_elements(op, &inputs) {
                            Some(Some(n)) if n > cap => return Err(too_big(n)),
                            Some(None) => return Err("cannot bound its output size".into()),
                            _ => {}
                        }
                        let refs: Vec<(&str, &Tensor)> =
                            inputs.iter().map(|(n, t)| (*n, t)).collect();
                        let outs = eval_node(&self.proto, node, &refs)?;
                        let total: usize = outs.iter().map(Tensor::len).sum();
                        if total > cap { Err(too_big(total)) } else { Ok(outs) }
                    })
                }
                _ => None,
            };
            match outcome {
                None => {}
                Some(Err(reason)) => report.skipped.push((node_label(ix, node), reason)),
                Some(Ok(values)) => {
                    let names = node.output.iter().filter(|o| !o.is_empty());
                    for (name, value) in names.zip(values) {
                        known.insert(name.clone(), value);
                    }
                    folded.insert(ix);
                }
            }
        }
        if folded.is_empty() {
            return Ok(report);
        }

        // Folded values still read by kept nodes or graph outputs become initializers.
        let mut read: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
        for (_, n) in g.node.iter().enumerate().filter(|(ix, _)| !folded.contains(ix)) {
            read.extend(super::node_dependencies(n));
        }
        let mut new_inits = Vec::new();
        for (ix, n) in g.node.iter().enumerate() {
            if folded.contains(&ix) {
                report.folded_nodes.push(node_label(ix, n));
                for o in n.output.iter().filter(|o| read.contains(*o)) {
                    if let Some(t) = known.get(o) {
                        new_inits.push(t.to_proto(o));
                        report.new_initializers.push(o.clone());
                    }
                }
            }
        }
        let removed_values: HashSet<String> = g
            .node
            .iter()
            .enumerate()
            .filter(|(ix, _)| folded.contains(ix))
            .flat_map(|(_, n)| n.output.iter().cloned())
            .filter(|o| !read.contains(o))
            .collect();
        let g = self.graph_proto_mut();
        let mut ix = 0;
        g.node.retain(|_| {
            ix += 1;
            !folded.contains(&(ix - 1))
        });
        g.initializer.extend(new_inits);
        g.value_info.retain(|v| !removed_values.contains(&v.name));
        Ok(report)
    }
}

/// For ops whose output can be much larger than their inputs, the output element count
/// computed before evaluating (`Some(None)` when it cannot be bounded); `None` for other ops.
fn estimated_elements(op: &str, inputs: &[(&str, Tensor)]) -> Option<Option<usize>> {
    let input = |i: usize| inputs.get(i).map(|(_, t)| t);
    let values = |i: usize| input(i).and_then(Tensor::to_i64_vec);
    let product =
        |v: &[i64]| v.iter().try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?));
    Some(match op {
        "ConstantOfShape" => values(0).and_then(|s| product(&s)),
        "Expand" => (|| {
            let dims = &input(0)?.dims;
            let shape = values(1)?;
            let rank = dims.len().max(shape.len());
            let at = |v: &[i64], i: usize| (i + v.len()).checked_sub(rank).map_or(1, |j| v[j]);
            let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
            let out: Vec<i64> = (0..rank).map(|i| at(&dims, i).max(at(&shape, i))).collect();
            product(&out)
        })(),
        "Tile" => (|| input(0)?.len().checked_mul(product(&values(1)?)?))(),
        "Range" => (|| {
            let scalar = |i: usize| -> Option<f64> {
                let t = input(i)?;
                match &t.data {
                    TensorData::F32(v) => v.first().map(|&x| x.into()),
                    TensorData::F64(v) => v.first().copied(),
                    _ => t.to_i64_vec()?.first().map(|&x| x as f64),
                }
            };
            let (start, limit, delta) = (scalar(0)?, scalar(1)?, scalar(2)?);
            let n = ((limit - start) / delta).ceil();
            (n.is_finite() && n < 1e15).then(|| n.max(0.0) as usize)
        })(),
        _ => return None,
    })
}

/// A constant's value: a folded value, or a decoded initializer (cached).
fn lookup<'a>(
    name: &str,
    known: &'a mut HashMap<String, Tensor>,
    initializers: &HashMap<&str, &pb::TensorProto>,
) -> Option<&'a Tensor> {
    if !known.contains_key(name) {
        let t = Tensor::from_proto(initializers.get(name)?).ok()?;
        known.insert(name.to_string(), t);
    }
    known.get(name)
}

/// The value of a `Constant` node, when it is one Hone folds.
fn constant_value(node: &pb::NodeProto) -> Option<Result<Tensor, String>> {
    let [a] = node.attribute.as_slice() else { return None };
    let attr = Attribute::from_proto(a).ok()?;
    let t = match (a.name.as_str(), attr) {
        ("value", Attribute::Tensor(t)) => t,
        ("value_float", Attribute::Float(f)) => Tensor::scalar_f32(f),
        ("value_floats", Attribute::Floats(v)) => {
            Tensor { dims: vec![v.len()], data: TensorData::F32(v) }
        }
        ("value_int", Attribute::Int(i)) => Tensor::scalar_i64(i),
        ("value_ints", Attribute::Ints(v)) => Tensor::vec_i64(&v),
        _ => return None,
    };
    (t.data_type() != super::DataType::String).then_some(Ok(t))
}

/// `Shape` (with `start`/`end`) or `Size` of a tensor of dims `dims`.
fn shape_op(node: &pb::NodeProto, dims: &[usize]) -> Result<Tensor, String> {
    let as_i64 = |d: usize| i64::try_from(d).map_err(|_| format!("dimension {d} overflows i64"));
    if node.op_type == "Size" {
        let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("size overflows")?;
        return Ok(Tensor::scalar_i64(as_i64(n)?));
    }
    let rank = dims.len() as i64;
    let attr = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i);
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let start = clamp(attr("start").unwrap_or(0));
    let end = clamp(attr("end").unwrap_or(rank));
    let picked = if start < end { &dims[start..end] } else { &[][..] };
    let values = picked.iter().map(|&d| as_i64(d)).collect::<Result<Vec<_>, _>>()?;
    Ok(Tensor::vec_i64(&values))
}

#[cfg(test)]
mod tests {
    use tract_onnx::prelude::Tensor as TractTensor;

    use super::super::testing::{assert_bitwise_equal, f32_value, model, run_proto};
    use super::super::{DataType, Dim, Node, ValueInfo};
    use super::*;

    /// `y = Reshape(x, Concat(Shape(x)[0:1], [-1]))` plus a weight built from a Constant,
    /// Unsqueeze and Cast, and a `Shape` of a symbolic input that must stay.
    fn shape_graph(batch: Dim) -> Graph {
        let ints = |name: &str, v: &[i64]| Attribute::Tensor(Tensor::vec_i64(v)).to_proto(name);
        let mut c = Node::new("c_minus1", "Constant", &[], &["minus1"]).to_proto();
        c.attribute.push(ints("value", &[-1]));
        let mut g = model(
            vec![
                Node::new("shape", "Shape", &["x"], &["s"]),
                Node::new("first", "Gather", &["s", "zero"], &["n"]),
                Node::new("unsq", "Unsqueeze", &["n", "axes"], &["n1"]),
                Node::new("cat", "Concat", &["n1", "minus1"], &["target"])
                    .with_attribute("axis", Attribute::Int(0)),
                Node::new("reshape", "Reshape", &["x", "target"], &["flat"]),
                Node::new("scale_i", "Unsqueeze", &["three", "axes"], &["three1"]),
                Node::new("scale", "Cast", &["three1"], &["scale_f"])
                    .with_attribute("to", Attribute::Int(1)),
                Node::new("mul", "Mul", &["flat", "scale_f"], &["y"]),
            ],
            vec![
                ("zero", Tensor::scalar_i64(0)),
                ("axes", Tensor::vec_i64(&[0])),
                ("three", Tensor::scalar_i64(3)),
            ],
            vec![],
            vec![
                ValueInfo { name: "y".into(), data_type: Some(DataType::F32), dims: None }
                    .to_proto(),
            ],
        );
        g.graph_proto_mut().input.push(
            ValueInfo::tensor("x", DataType::F32, vec![batch, Dim::Value(2), Dim::Value(3)])
                .to_proto(),
        );
        let gp = g.graph_proto_mut();
        gp.node.insert(0, c);
        g
    }

    fn input() -> TractTensor {
        let v: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        TractTensor::from_shape(&[2, 2, 3], &v).unwrap()
    }

    #[test]
    fn static_shape_subgraphs_fold_into_initializers_with_identical_outputs() {
        let mut g = shape_graph(Dim::Value(2));
        let before = run_proto(g.proto(), &[input()]);
        let report = g.constant_fold_shapes().unwrap();
        assert_eq!(
            report.folded_nodes,
            ["c_minus1", "shape", "first", "unsq", "cat", "scale_i", "scale"]
        );
        assert_eq!(report.new_initializers, ["target", "scale_f"]);
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(g.initializer("target").unwrap(), Tensor::vec_i64(&[2, -1]));
        assert_eq!(g.initializer("scale_f").unwrap().data, TensorData::F32(vec![3.0]));
        let ops: Vec<&str> = g.node_protos().iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Reshape", "Mul"]);
        g.validate().unwrap();
        assert_bitwise_equal(&before, &run_proto(g.proto(), &[input()]));
        let pruned = g.prune_unused();
        assert_eq!(pruned.removed_initializers, ["zero", "axes", "three"]);
    }

    #[test]
    fn shapes_of_symbolic_inputs_are_not_folded() {
        let mut g = shape_graph(Dim::Symbol("batch".into()));
        let before = run_proto(g.proto(), &[input()]);
        let report = g.constant_fold_shapes().unwrap();
        assert_eq!(report.folded_nodes, ["c_minus1", "scale_i", "scale"]);
        let ops: Vec<&str> = g.node_protos().iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Mul"]);
        assert_bitwise_equal(&before, &run_proto(g.proto(), &[input()]));
    }

    #[test]
    fn large_broadcasts_and_overridable_initializers_are_left_alone() {
        let mut g = model(
            vec![
                Node::new("big", "ConstantOfShape", &["shape"], &["ones"]),
                Node::new("neg", "Neg", &["w"], &["nw"]),
                Node::new("add", "Add", &["ones", "nw"], &["y"]),
            ],
            vec![("shape", Tensor::vec_i64(&[64, 64])), ("w", Tensor::scalar_f32(1.0))],
            vec![f32_value("w", &[])],
            vec![f32_value("y", &[64, 64])],
        );
        let report = g.constant_fold_shapes().unwrap();
        assert!(report.folded_nodes.is_empty(), "{report:?}");
        assert_eq!(report.skipped.len(), 1);
        assert!(report.skipped[0].1.contains("4096 output elements"), "{:?}", report.skipped);
        assert_eq!(g.node_protos().len(), 3);
    }

    #[test]
    fn folding_a_cyclic_graph_is_refused_and_changes_nothing() {
        let mut g = shape_graph(Dim::Value(2));
        g.graph_proto_mut().node[1].input[0] = "y".into();
        let before = g.clone();
        assert!(matches!(g.constant_fold_shapes(), Err(GraphError::Invalid(_))));
        assert_eq!(g, before);
    }

    #[test]
    fn shape_op_honours_start_and_end() {
        let mut n = Node::new("s", "Shape", &["x"], &["y"]);
        n = n.with_attribute("start", Attribute::Int(-2));
        assert_eq!(shape_op(&n.to_proto(), &[4, 5, 6]).unwrap(), Tensor::vec_i64(&[5, 6]));
        let n = n.with_attribute("end", Attribute::Int(-2));
        assert_eq!(shape_op(&n.to_proto(), &[4, 5, 6]).unwrap(), Tensor::vec_i64(&[]));
        let size = Node::new("s", "Size", &["x"], &["y"]).to_proto();
        assert_eq!(shape_op(&size, &[4, 5, 6]).unwrap(), Tensor::scalar_i64(120));
    }
}

//! Checked edits: initializers, nodes, outputs, names, ordering, validation and pruning.
//!
//! Every edit either succeeds or returns an error with the graph unchanged.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use tract_onnx::pb;

use super::{
    Graph, GraphError, Problem, Tensor, captured_values, node_dependencies, node_label, producers,
};

/// What [`Graph::prune_unused`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Removed nodes (names, or `#index op_type` when unnamed), in former graph order.
    pub removed_nodes: Vec<String>,
    /// Removed initializers, in former graph order.
    pub removed_initializers: Vec<String>,
}

impl Graph {
    /// Replaces the data of initializer `name` with `tensor`, which may have another shape or
    /// element type. When the shape or type changes, a legacy graph-input declaration of the
    /// same name is updated and every `value_info` hint is dropped (downstream hints may no
    /// longer hold; they are optional, tract re-infers them).
    pub fn replace_initializer(&mut self, name: &str, tensor: &Tensor) -> Result<(), GraphError> {
        let g = self.graph_proto_mut();
        let slot = g
            .initializer
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or_else(|| GraphError::UnknownInitializer(name.into()))?;
        let mut new = tensor.to_proto(name);
        new.doc_string = std::mem::take(&mut slot.doc_string);
        let changed = new.dims != slot.dims || new.data_type != slot.data_type;
        *slot = new;
        if changed {
            let decl = initializer_declaration(name, tensor);
            for i in g.input.iter_mut().filter(|i| i.name == name) {
                *i = decl.clone();
            }
            g.value_info.clear();
        }
        Ok(())
    }

    /// Adds a new initializer. The name must not be used by any value.
    pub fn add_initializer(&mut self, name: &str, tensor: &Tensor) -> Result<(), GraphError> {
        if name.is_empty() || self.has_value(name) {
            return Err(GraphError::NameTaken(name.into()));
        }
        self.graph_proto_mut().initializer.push(tensor.to_proto(name));
        Ok(())
    }

    /// Removes the named nodes and returns them (in graph order). Values they produced
    /// disappear with them (and their `value_info` hints); consumers are left dangling until
    /// rewired ([`Graph::replace_uses`]) or replaced ([`Graph::insert_nodes`]) — run
    /// [`Graph::validate`] when done.
    pub fn remove_nodes(&mut self, names: &[&str]) -> Result<Vec<pb::NodeProto>, GraphError> {
        let existing: HashSet<&str> = self.node_protos().iter().map(|n| n.name.as_str()).collect();
        if let Some(missing) = names.iter().find(|n| n.is_empty() || !existing.contains(*n)) {
            return Err(GraphError::UnknownNode(missing.to_string()));
        }
        let doomed: HashSet<&str> = names.iter().copied().collect();
        let g = self.graph_proto_mut();
        let (removed, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut g.node).into_iter().partition(|n| doomed.contains(n.name.as_str()));
        g.node = kept;
        let gone: HashSet<&str> =
            removed.iter().flat_map(|n| n.output.iter()).map(|s| s.as_str()).collect();
        g.value_info.retain(|v| !gone.contains(v.name.as_str()));
        Ok(removed)
    }

    /// Inserts nodes, then re-sorts the graph topologically (stable: existing nodes keep their
    /// relative order). Node names must be new (or empty), outputs must be new values, and the
    /// resulting graph must pass [`Graph::validate`] (no dangling input, no cycle); otherwise the
    /// graph is left unchanged.
    pub fn insert_nodes<I, N>(&mut self, nodes: I) -> Result<(), GraphError>
    where
        I: IntoIterator<Item = N>,
        N: Into<pb::NodeProto>,
    {
        let new: Vec<pb::NodeProto> = nodes.into_iter().map(Into::into).collect();
        let mut names: HashSet<&str> = self.node_protos().iter().map(|n| n.name.as_str()).collect();
        let mut values = self.value_names();
        for n in &new {
            if !n.name.is_empty() && !names.insert(n.name.as_str()) {
                return Err(GraphError::NameTaken(n.name.clone()));
            }
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                if !values.insert(o.as_str()) {
                    return Err(GraphError::NameTaken(o.clone()));
                }
            }
        }
        let mut candidate = self.graph_proto().node.clone();
        candidate.extend(new);
        let order = topo_order(self.graph_proto(), &candidate).map_err(GraphError::Invalid)?;
        self.graph_proto_mut().node = reorder(candidate, &order);
        Ok(())
    }

    /// Makes every node that reads `old` read `new` instead (including reads from inside
    /// subgraph bodies), except the nodes `new` is computed from (rewiring those would be a
    /// cycle). `old` need not exist any more (its producer may just have been removed); `new`
    /// must. Graph outputs keep their names (use [`Graph::rename_value`] for that). Returns the
    /// number of rewired reads.
    pub fn replace_uses(&mut self, old: &str, new: &str) -> Result<usize, GraphError> {
        if !self.has_value(new) {
            return Err(GraphError::UnknownValue(new.into()));
        }
        let ancestors = self.ancestors(new);
        let mut count = 0;
        for (i, n) in self.graph_proto_mut().node.iter_mut().enumerate() {
            if !ancestors.contains(&i) {
                count += rename_reads(n, old, new);
            }
        }
        Ok(count)
    }

    /// Indices of the nodes `value` is computed from (its producer and theirs, transitively).
    fn ancestors(&self, value: &str) -> HashSet<usize> {
        let nodes = self.node_protos();
        let by_value = producers(nodes);
        let mut seen = HashSet::new();
        let mut work = vec![value.to_string()];
        while let Some(v) = work.pop() {
            if let Some(&ix) = by_value.get(v.as_str())
                && seen.insert(ix)
            {
                work.extend(node_dependencies(&nodes[ix]));
            }
        }
        seen
    }

    /// Declares an existing value as a graph output (for activation capture). Its type is taken
    /// from a `value_info` hint, the initializer or the graph input of that name when there is
    /// one; otherwise the declaration is untyped (tract infers it). Adding an existing output
    /// does nothing.
    pub fn add_output(&mut self, value: &str) -> Result<(), GraphError> {
        if !self.has_value(value) {
            return Err(GraphError::UnknownValue(value.into()));
        }
        let g = self.graph_proto();
        if g.output.iter().any(|o| o.name == value) {
            return Ok(());
        }
        let decl = g
            .value_info
            .iter()
            .chain(g.input.iter())
            .find(|v| v.name == value && v.r#type.is_some())
            .cloned()
            .or_else(|| {
                g.initializer.iter().find(|t| t.name == value).map(|t| pb::ValueInfoProto {
                    name: value.into(),
                    r#type: Some(tensor_type(t.data_type, &t.dims)),
                    doc_string: String::new(),
                })
            })
            .unwrap_or_else(|| pb::ValueInfoProto { name: value.into(), ..Default::default() });
        self.graph_proto_mut().output.push(decl);
        Ok(())
    }

    /// Renames a value everywhere: its producer, its readers (subgraph captures included),
    /// initializers, graph inputs and outputs, and `value_info` hints.
    pub fn rename_value(&mut self, old: &str, new: &str) -> Result<(), GraphError> {
        if !self.has_value(old) {
            return Err(GraphError::UnknownValue(old.into()));
        }
        if new.is_empty() || self.has_value(new) {
            return Err(GraphError::NameTaken(new.into()));
        }
        let g = self.graph_proto_mut();
        for n in &mut g.node {
            rename_reads(n, old, new);
            for o in n.output.iter_mut().filter(|o| *o == old) {
                *o = new.into();
            }
        }
        for t in g.initializer.iter_mut().filter(|t| t.name == old) {
            t.name = new.into();
        }
        for v in g.input.iter_mut().chain(&mut g.output).chain(&mut g.value_info) {
            if v.name == old {
                v.name = new.into();
            }
        }
        Ok(())
    }

    /// Renames a node. The new name must be non-empty and unused by other nodes.
    pub fn rename_node(&mut self, old: &str, new: &str) -> Result<(), GraphError> {
        let nodes = self.node_protos();
        let Some(ix) = nodes.iter().position(|n| !old.is_empty() && n.name == old) else {
            return Err(GraphError::UnknownNode(old.into()));
        };
        if new.is_empty() || (old != new && nodes.iter().any(|n| n.name == new)) {
            return Err(GraphError::NameTaken(new.into()));
        }
        self.graph_proto_mut().node[ix].name = new.into();
        Ok(())
    }

    /// Reorders nodes topologically (stable: nodes already in order keep it). Fails on a
    /// dangling input, a duplicate value or a cycle, leaving the graph unchanged.
    pub fn topo_sort(&mut self) -> Result<(), GraphError> {
        let order =
            topo_order(self.graph_proto(), self.node_protos()).map_err(GraphError::Invalid)?;
        let nodes = std::mem::take(&mut self.graph_proto_mut().node);
        self.graph_proto_mut().node = reorder(nodes, &order);
        Ok(())
    }

    /// Checks that every node input (and subgraph capture) is an initializer, a graph input or
    /// the output of an earlier node; that no value is produced twice; and that every graph
    /// output is produced. Returns the first problem found.
    pub fn validate(&self) -> Result<(), GraphError> {
        let g = self.graph_proto();
        let mut defined: HashSet<&str> = HashSet::new();
        for t in &g.initializer {
            if !defined.insert(t.name.as_str()) {
                return Err(GraphError::Invalid(Problem::DuplicateValue { value: t.name.clone() }));
            }
        }
        let inits = self.initializer_set();
        for i in &g.input {
            // A legacy declaration of an initializer as an input is not a second producer.
            if !inits.contains(i.name.as_str()) && !defined.insert(i.name.as_str()) {
                return Err(GraphError::Invalid(Problem::DuplicateValue { value: i.name.clone() }));
            }
        }
        for (ix, n) in g.node.iter().enumerate() {
            for d in node_dependencies(n) {
                if !defined.contains(d.as_str()) {
                    return Err(GraphError::Invalid(Problem::UndefinedInput {
                        node: node_label(ix, n),
                        value: d,
                    }));
                }
            }
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                if !defined.insert(o.as_str()) {
                    return Err(GraphError::Invalid(Problem::DuplicateValue { value: o.clone() }));
                }
            }
        }
        if let Some(o) = g.output.iter().find(|o| !defined.contains(o.name.as_str())) {
            return Err(GraphError::Invalid(Problem::UndefinedOutput { value: o.name.clone() }));
        }
        Ok(())
    }

    /// Removes the nodes whose outputs do not reach a graph output, and the initializers no
    /// remaining node (or output) reads. Graph inputs stay (they are the model's interface),
    /// except legacy input declarations of removed initializers. `value_info` hints of removed
    /// values go too.
    pub fn prune_unused(&mut self) -> PruneReport {
        let g = self.graph_proto();
        let by_value = producers(&g.node);
        let mut live_nodes = vec![false; g.node.len()];
        let mut needed: HashSet<String> = HashSet::new();
        let mut work: Vec<String> = g.output.iter().map(|o| o.name.clone()).collect();
        while let Some(v) = work.pop() {
            if !needed.insert(v.clone()) {
                continue;
            }
            if let Some(&ix) = by_value.get(v.as_str())
                && !live_nodes[ix]
            {
                live_nodes[ix] = true;
                work.extend(node_dependencies(&g.node[ix]));
            }
        }
        let mut report = PruneReport::default();
        for (ix, n) in g.node.iter().enumerate().filter(|(ix, _)| !live_nodes[*ix]) {
            report.removed_nodes.push(node_label(ix, n));
        }
        let dead_inits: HashSet<String> = g
            .initializer
            .iter()
            .filter(|t| !needed.contains(&t.name))
            .map(|t| t.name.clone())
            .collect();
        report.removed_initializers = g
            .initializer
            .iter()
            .filter(|t| dead_inits.contains(&t.name))
            .map(|t| t.name.clone())
            .collect();

        let g = self.graph_proto_mut();
        let mut ix = 0;
        g.node.retain(|_| {
            ix += 1;
            live_nodes[ix - 1]
        });
        g.initializer.retain(|t| !dead_inits.contains(&t.name));
        g.input.retain(|i| !dead_inits.contains(&i.name));
        let existing: HashSet<String> = g
            .initializer
            .iter()
            .map(|t| t.name.clone())
            .chain(g.input.iter().map(|i| i.name.clone()))
            .chain(g.node.iter().flat_map(|n| n.output.iter().cloned()))
            .collect();
        g.value_info.retain(|v| existing.contains(&v.name));
        report
    }
}

/// A stable topological order of `nodes` (indices), given the initializers and inputs of `g`.
pub(super) fn topo_order(
    g: &pb::GraphProto,
    nodes: &[pb::NodeProto],
) -> Result<Vec<usize>, Problem> {
    let base: HashSet<&str> = g
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .chain(g.input.iter().map(|i| i.name.as_str()))
        .collect();
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if base.contains(o.as_str()) || producer.insert(o.as_str(), i).is_some() {
                return Err(Problem::DuplicateValue { value: o.clone() });
            }
        }
    }
    let mut indegree = vec![0usize; nodes.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for d in node_dependencies(n) {
            if base.contains(d.as_str()) {
                continue;
            }
            match producer.get(d.as_str()) {
                Some(&p) => {
                    indegree[i] += 1;
                    users[p].push(i);
                }
                None => {
                    return Err(Problem::UndefinedInput { node: node_label(i, n), value: d });
                }
            }
        }
    }
    if let Some(o) = g
        .output
        .iter()
        .find(|o| !base.contains(o.name.as_str()) && !producer.contains_key(o.name.as_str()))
    {
        return Err(Problem::UndefinedOutput { value: o.name.clone() });
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..nodes.len()).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    if order.len() < nodes.len() {
        let placed: HashSet<usize> = order.iter().copied().collect();
        let nodes = (0..nodes.len())
            .filter(|i| !placed.contains(i))
            .map(|i| node_label(i, &nodes[i]))
            .collect();
        return Err(Problem::Cycle { nodes });
    }
    Ok(order)
}

fn reorder(nodes: Vec<pb::NodeProto>, order: &[usize]) -> Vec<pb::NodeProto> {
    let mut slots: Vec<Option<pb::NodeProto>> = nodes.into_iter().map(Some).collect();
    order.iter().filter_map(|&i| slots[i].take()).collect()
}

/// Renames reads of `old` in a node's inputs and in its subgraphs' captures; returns how many.
fn rename_reads(n: &mut pb::NodeProto, old: &str, new: &str) -> usize {
    let mut count = 0;
    for i in n.input.iter_mut().filter(|i| *i == old) {
        *i = new.into();
        count += 1;
    }
    for a in &mut n.attribute {
        for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
            count += rename_captures(g, old, new);
        }
    }
    count
}

fn rename_captures(g: &mut pb::GraphProto, old: &str, new: &str) -> usize {
    if !captured_values(g).iter().any(|c| c == old) {
        return 0;
    }
    let mut count = 0;
    for n in &mut g.node {
        count += rename_reads(n, old, new);
    }
    for o in g.output.iter_mut().filter(|o| o.name == old) {
        o.name = new.into();
        count += 1;
    }
    count
}

fn tensor_type(data_type: i32, dims: &[i64]) -> pb::TypeProto {
    pb::TypeProto {
        denotation: String::new(),
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: data_type,
            shape: Some(pb::TensorShapeProto {
                dim: dims
                    .iter()
                    .map(|&d| pb::tensor_shape_proto::Dimension {
                        denotation: String::new(),
                        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                    })
                    .collect(),
            }),
        })),
    }
}

fn initializer_declaration(name: &str, t: &Tensor) -> pb::ValueInfoProto {
    let dims: Vec<i64> = t.dims.iter().map(|&d| d as i64).collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(tensor_type(t.data_type().onnx_code(), &dims)),
        doc_string: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use tract_onnx::prelude::Tensor as TractTensor;

    use super::super::testing::{f32_value, mat, mlp, mlp_input, model, run_proto};
    use super::super::{Attribute, Node, TensorData};
    use super::*;

    fn outputs(g: &Graph) -> Vec<TractTensor> {
        run_proto(g.proto(), &[mlp_input()])
    }

    fn f32s(t: &TractTensor) -> Vec<f32> {
        t.to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    #[test]
    fn replacing_an_initializer_changes_what_tract_computes() {
        let mut g = mlp();
        let before = f32s(&outputs(&g)[0]);
        g.replace_initializer("W", &mat([0.0; 6])).unwrap();
        // relu(0 + b) with b = [0.1, -0.2, 0.3], for both rows.
        assert_eq!(f32s(&outputs(&g)[0]), vec![0.1, 0.0, 0.3, 0.1, 0.0, 0.3]);
        assert_ne!(before, f32s(&outputs(&g)[0]));
        assert_eq!(g.initializer("W").unwrap(), mat([0.0; 6]));
        assert!(matches!(
            g.replace_initializer("nope", &mat([0.0; 6])),
            Err(GraphError::UnknownInitializer(_))
        ));
    }

    #[test]
    fn replacing_an_initializer_with_a_new_shape_updates_its_legacy_input_and_drops_hints() {
        let mut g = mlp();
        g.graph_proto_mut().input.push(f32_value("W", &[2, 3]));
        g.graph_proto_mut().value_info.push(f32_value("h", &[2, 3]));
        let wide = Tensor::new(vec![2, 4], TensorData::F32(vec![1.0; 8])).unwrap();
        g.replace_initializer("W", &wide).unwrap();
        assert_eq!(g.initializer("W").unwrap().dims, vec![2, 4]);
        let decl = g.graph_proto().input.iter().find(|i| i.name == "W").unwrap();
        assert_eq!(super::super::ValueInfo::from_proto(decl).concrete_dims(), Some(vec![2, 4]));
        assert!(g.graph_proto().value_info.is_empty());
        assert_eq!(g.inputs().len(), 1, "the legacy declaration is not a true input");
    }

    #[test]
    fn removing_a_node_then_rewiring_its_readers_keeps_the_graph_valid() {
        let mut g = mlp();
        let removed = g.remove_nodes(&["bias"]).unwrap();
        assert_eq!(removed[0].op_type, "Add");
        assert!(matches!(
            g.validate(),
            Err(GraphError::Invalid(Problem::UndefinedInput { ref node, ref value }))
                if node == "act" && value == "z"
        ));
        assert!(matches!(g.replace_uses("z", "nothing"), Err(GraphError::UnknownValue(_))));
        assert_eq!(g.replace_uses("z", "h").unwrap(), 1);
        g.validate().unwrap();
        // relu(x · W), x = [[1, -2], [0.5, 3]].
        assert_eq!(f32s(&outputs(&g)[0]), vec![0.0, 0.0, 3.5, 4.75, 0.25, 0.0]);
        assert!(matches!(g.remove_nodes(&["ghost"]), Err(GraphError::UnknownNode(_))));
    }

    #[test]
    fn inserting_nodes_in_any_order_sorts_them_into_place() {
        let mut g = mlp();
        // y2 = relu(z) * 2, inserted consumer-first and rewired so `act` reads the doubled value.
        let two = Tensor::scalar_f32(2.0);
        g.add_initializer("two", &two).unwrap();
        g.insert_nodes([
            Node::new("double", "Mul", &["z1", "two"], &["z2"]),
            Node::new("copy", "Identity", &["z"], &["z1"]),
        ])
        .unwrap();
        assert_eq!(g.replace_uses("z", "z2").unwrap(), 1, "only `act`: `copy` feeds z2");
        assert!(g.validate().is_err(), "act now reads z2, produced after it");
        g.topo_sort().unwrap();
        g.validate().unwrap();
        let order: Vec<&str> = g.node_protos().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(order, ["mm", "bias", "dead", "copy", "double", "act"]);
        let want = [0.0, 0.0, 7.6, 9.7, 0.1, 0.0];
        let got = f32s(&outputs(&g)[0]);
        assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{got:?}");
    }

    #[test]
    fn inserting_a_node_with_a_dangling_input_or_a_cycle_is_refused_and_changes_nothing() {
        let mut g = mlp();
        let before = g.clone();
        let err = g.insert_nodes([Node::new("n", "Relu", &["missing"], &["m"])]).unwrap_err();
        assert!(matches!(err, GraphError::Invalid(Problem::UndefinedInput { .. })), "{err}");
        let err = g
            .insert_nodes([
                Node::new("p", "Relu", &["q_out"], &["p_out"]),
                Node::new("q", "Relu", &["p_out"], &["q_out"]),
            ])
            .unwrap_err();
        assert!(
            matches!(err, GraphError::Invalid(Problem::Cycle { ref nodes }) if nodes.len() == 2)
        );
        let err = g.insert_nodes([Node::new("mm", "Relu", &["x"], &["fresh"])]).unwrap_err();
        assert!(matches!(err, GraphError::NameTaken(ref n) if n == "mm"));
        let err = g.insert_nodes([Node::new("other", "Relu", &["x"], &["h"])]).unwrap_err();
        assert!(matches!(err, GraphError::NameTaken(ref n) if n == "h"));
        assert_eq!(g, before);
    }

    #[test]
    fn added_outputs_expose_intermediate_activations_to_tract() {
        let mut g = mlp();
        g.add_output("h").unwrap();
        g.add_output("h").unwrap();
        g.add_output("W").unwrap();
        assert_eq!(g.outputs().len(), 3);
        let out = outputs(&g);
        assert_eq!(f32s(&out[1]), vec![-2.5, -1.5, 3.5, 4.75, 0.25, -1.25]);
        assert_eq!(out[2].shape(), &[2, 3]);
        assert!(matches!(g.add_output("nothing"), Err(GraphError::UnknownValue(_))));
    }

    #[test]
    fn renaming_a_value_reaches_every_reference_and_refuses_clashes() {
        let mut g = mlp();
        g.rename_value("x", "pixels").unwrap();
        g.rename_value("W", "weight").unwrap();
        g.rename_value("y", "logits").unwrap();
        g.validate().unwrap();
        assert_eq!(g.inputs()[0].name, "pixels");
        assert_eq!(g.outputs()[0].name, "logits");
        assert_eq!(g.node("mm").unwrap().inputs, vec!["pixels", "weight"]);
        assert!(matches!(g.rename_value("h", "z"), Err(GraphError::NameTaken(_))));
        assert!(matches!(g.rename_value("x", "q"), Err(GraphError::UnknownValue(_))));
        g.rename_node("mm", "matmul").unwrap();
        assert!(matches!(g.rename_node("act", "bias"), Err(GraphError::NameTaken(_))));
        assert!(g.node("matmul").is_ok() && g.node("mm").is_err());
        assert_eq!(f32s(&outputs(&g)[0]), f32s(&outputs(&mlp())[0]));
    }

    #[test]
    fn pruning_drops_dead_nodes_and_unread_initializers_only() {
        let mut g = mlp();
        let report = g.prune_unused();
        assert_eq!(report.removed_nodes, vec!["dead"]);
        assert_eq!(report.removed_initializers, vec!["unused"]);
        assert_eq!(g.initializer_names(), vec!["W", "b"]);
        assert_eq!(g.inputs().len(), 1, "graph inputs are the interface and stay");
        assert_eq!(g.prune_unused(), PruneReport::default());
        g.validate().unwrap();
    }

    #[test]
    fn validation_reports_duplicates_order_and_missing_outputs() {
        let mut g = mlp();
        g.graph_proto_mut().node.swap(0, 1);
        assert!(matches!(
            g.validate(),
            Err(GraphError::Invalid(Problem::UndefinedInput { ref node, .. })) if node == "bias"
        ));
        g.topo_sort().unwrap();
        g.validate().unwrap();
        g.graph_proto_mut().node[3].output[0] = "h".into();
        assert!(matches!(
            g.validate(),
            Err(GraphError::Invalid(Problem::DuplicateValue { ref value })) if value == "h"
        ));
        assert!(g.topo_sort().is_err());
        let mut g = mlp();
        g.graph_proto_mut().output[0].name = "nowhere".into();
        assert!(matches!(g.validate(), Err(GraphError::Invalid(Problem::UndefinedOutput { .. }))));
    }

    #[test]
    fn subgraph_captures_count_as_dependencies() {
        // An If whose then-branch reads the outer value `h`: pruning must keep `mm`, and
        // renaming `h` must reach inside the branch.
        let branch = |out: &str, src: &str| pb::GraphProto {
            name: out.into(),
            node: vec![Node::new(out, "Identity", &[src], &[out]).to_proto()],
            output: vec![f32_value(out, &[2, 3])],
            ..Default::default()
        };
        let g_if = Node::new("if", "If", &["cond"], &["y"])
            .with_attribute("then_branch", Attribute::Graph(Box::new(branch("t", "h"))))
            .with_attribute("else_branch", Attribute::Graph(Box::new(branch("e", "h"))));
        let cond = Tensor::new(vec![], TensorData::Bool(vec![true])).unwrap();
        let mut g = model(
            vec![Node::new("mm", "MatMul", &["x", "W"], &["h"]), g_if],
            vec![("W", mat([1.0; 6])), ("cond", cond)],
            vec![f32_value("x", &[2, 2])],
            vec![f32_value("y", &[2, 3])],
        );
        assert_eq!(g.consumers("h"), vec![1]);
        assert!(g.prune_unused().removed_nodes.is_empty());
        g.rename_value("h", "hidden").unwrap();
        g.validate().unwrap();
        let then = g.node("if").unwrap();
        let Some(Attribute::Graph(b)) = then.attribute("then_branch") else { panic!() };
        assert_eq!(b.node[0].input, vec!["hidden"]);
    }
}

//! Physically removing units: every recorded initializer slice is cut, reshape targets are
//! rewritten, depthwise `group` attributes follow, and the result is a smaller ONNX graph.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hone_graph::{Attribute, Graph, GraphError, Tensor, TensorData};

use super::groups::{Analysis, Group};

/// Units to keep per group id (sorted, deduplicated); a group left out keeps everything.
pub type Selection = BTreeMap<usize, Vec<usize>>;

/// The channels of producer `member` removed from `group` when `keep` units stay.
pub fn removed_channels(group: &Group, member: usize, keep: &[usize]) -> Vec<usize> {
    let keep: BTreeSet<usize> = keep.iter().copied().collect();
    (0..group.units())
        .filter(|u| !keep.contains(u))
        .flat_map(|u| group.member_channels(member, u))
        .collect()
}

/// Applies `selection` to `graph` (the normalised graph the analysis ran on).
pub fn apply(
    graph: &Graph,
    analysis: &Analysis,
    selection: &Selection,
) -> Result<Graph, GraphError> {
    let mut removed: HashMap<(String, usize), BTreeSet<usize>> = HashMap::new();
    let mut shape_delta: BTreeMap<(usize, usize, usize), usize> = BTreeMap::new();
    let mut depthwise: BTreeMap<usize, usize> = BTreeMap::new();
    for (&gid, keep) in selection {
        let group = analysis.groups.get(gid).ok_or_else(|| GraphError::Tensor {
            name: String::new(),
            reason: format!("no group {gid}"),
        })?;
        if keep.len() == group.units() {
            continue;
        }
        if !group.prunable() {
            return Err(GraphError::Tensor {
                name: String::new(),
                reason: format!(
                    "group {gid} cannot be pruned: {}",
                    group.blocked.as_deref().unwrap_or("it has one unit")
                ),
            });
        }
        if keep.is_empty() || keep.iter().any(|&u| u >= group.units()) {
            return Err(GraphError::Tensor {
                name: String::new(),
                reason: format!("group {gid}: keep 1..={} of its units", group.units()),
            });
        }
        let by_member: HashMap<usize, Vec<usize>> =
            group.members.iter().map(|m| (m.id, removed_channels(group, m.id, keep))).collect();
        let gone = |member: usize| by_member.get(&member).map_or(&[][..], Vec::as_slice);
        for p in &group.params {
            removed
                .entry((p.init.clone(), p.axis))
                .or_default()
                .extend(p.track.removed_positions(gone(p.track.member)));
        }
        for e in &group.shape_edits {
            *shape_delta.entry((e.node, e.slot, e.element)).or_default() +=
                e.track.removed_positions(gone(e.track.member)).len();
        }
        for &(member, n) in &group.depthwise {
            *depthwise.entry(n).or_default() += gone(member).len();
        }
    }

    let mut out = graph.clone();
    // Slice initializers, all axes of one initializer at once.
    let mut by_init: BTreeMap<String, Vec<(usize, BTreeSet<usize>)>> = BTreeMap::new();
    for ((init, axis), pos) in removed {
        by_init.entry(init).or_default().push((axis, pos));
    }
    for (init, cuts) in by_init {
        let mut t = out.initializer(&init)?;
        for (axis, pos) in cuts {
            t = drop_positions(&t, axis, &pos)
                .map_err(|reason| GraphError::Tensor { name: init.clone(), reason })?;
        }
        out.replace_initializer(&init, &t)?;
    }
    // Reshape targets: a fresh initializer per edited (node, slot), so shared constants stay.
    let mut edits: BTreeMap<(usize, usize), Vec<(usize, usize)>> = BTreeMap::new();
    for ((node, slot, element), delta) in shape_delta {
        edits.entry((node, slot)).or_default().push((element, delta));
    }
    for ((node, slot), changes) in edits {
        let name = out.node_protos()[node].input[slot].clone();
        let mut v = out.initializer(&name)?.to_i64_vec().ok_or_else(|| GraphError::Tensor {
            name: name.clone(),
            reason: "a reshape target that is not integer".into(),
        })?;
        for (element, delta) in changes {
            v[element] -= delta as i64;
        }
        let dims = out.initializer(&name)?.dims;
        let t = Tensor::new(dims, TensorData::I64(v))?;
        let mut fresh = format!("{name}__hone_pruned");
        let mut k = 1;
        while out.has_value(&fresh) {
            k += 1;
            fresh = format!("{name}__hone_pruned{k}");
        }
        out.add_initializer(&fresh, &t)?;
        out.graph_proto_mut().node[node].input[slot] = fresh;
    }
    for (node, gone) in depthwise {
        let n = &mut out.graph_proto_mut().node[node];
        if let Some(a) = n.attribute.iter_mut().find(|a| a.name == "group") {
            let g = Attribute::from_proto(a)?.as_int().unwrap_or(1);
            *a = Attribute::Int(g - gone as i64).to_proto("group");
        }
    }
    out.graph_proto_mut().value_info.clear();
    out.prune_unused();
    out.validate()?;
    Ok(out)
}

/// `t` without the positions `pos` of `axis`.
pub fn drop_positions(t: &Tensor, axis: usize, pos: &BTreeSet<usize>) -> Result<Tensor, String> {
    let dims = &t.dims;
    if axis >= dims.len() {
        return Err(format!("axis {axis} of a rank-{} tensor", dims.len()));
    }
    if let Some(&p) = pos.iter().next_back()
        && p >= dims[axis]
    {
        return Err(format!("position {p} of an axis of {}", dims[axis]));
    }
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let keep: Vec<usize> = (0..dims[axis]).filter(|p| !pos.contains(p)).collect();
    let mut nd = dims.clone();
    nd[axis] = keep.len();
    fn take<T: Clone>(v: &[T], outer: usize, d: usize, inner: usize, keep: &[usize]) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * keep.len() * inner);
        for o in 0..outer {
            for &k in keep {
                let s = (o * d + k) * inner;
                out.extend_from_slice(&v[s..s + inner]);
            }
        }
        out
    }
    let d = dims[axis];
    let data = match &t.data {
        TensorData::F32(v) => TensorData::F32(take(v, outer, d, inner, &keep)),
        TensorData::F64(v) => TensorData::F64(take(v, outer, d, inner, &keep)),
        TensorData::F16(v) => TensorData::F16(take(v, outer, d, inner, &keep)),
        TensorData::BF16(v) => TensorData::BF16(take(v, outer, d, inner, &keep)),
        TensorData::I64(v) => TensorData::I64(take(v, outer, d, inner, &keep)),
        TensorData::I32(v) => TensorData::I32(take(v, outer, d, inner, &keep)),
        TensorData::I8(v) => TensorData::I8(take(v, outer, d, inner, &keep)),
        TensorData::U8(v) => TensorData::U8(take(v, outer, d, inner, &keep)),
        TensorData::Bool(v) => TensorData::Bool(take(v, outer, d, inner, &keep)),
        other => return Err(format!("cannot slice {} tensors", other.data_type())),
    };
    Tensor::new(nd, data).map_err(|e| e.to_string())
}

/// Sum of `f(x)` over each position of `axis` (all other axes summed).
pub fn axis_sums(t: &[f32], dims: &[usize], axis: usize, f: impl Fn(f32) -> f64) -> Vec<f64> {
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let d = dims[axis];
    let mut out = vec![0.0; d];
    for o in 0..outer {
        for (k, slot) in out.iter_mut().enumerate() {
            let s = (o * d + k) * inner;
            *slot += t[s..s + inner].iter().map(|&x| f(x)).sum::<f64>();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_positions_cuts_the_middle_axis() {
        let t = Tensor::new(vec![2, 3, 2], TensorData::F32((0..12).map(|x| x as f32).collect()))
            .unwrap();
        let r = drop_positions(&t, 1, &BTreeSet::from([1])).unwrap();
        assert_eq!(r.dims, vec![2, 2, 2]);
        assert_eq!(r.as_f32().unwrap(), &[0., 1., 4., 5., 6., 7., 10., 11.]);
        assert!(drop_positions(&t, 1, &BTreeSet::from([3])).is_err());
        assert_eq!(axis_sums(&[1., 2., 3., 4.], &[2, 2], 1, f64::from), vec![4., 6.]);
    }
}

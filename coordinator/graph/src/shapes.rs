//! Input shapes of ONNX models from the wild, for everything that runs or analyses them: the
//! declared inputs in [`hone_common::shapes`] terms, their resolution to concrete shapes (given
//! `--input` shapes, named symbols with one value everywhere, `-1`/`?` axes), and the relaxing of
//! exporters' symbolic hints on intermediate values. The edge agent and the coordinator both use
//! this module, so a model that benchmarks on an agent also registers, prunes and explains.

use std::borrow::Cow;

use hone_common::shapes::{DeclaredDim, DeclaredInput, InputShapes, ResolveError, resolve};
use tract_onnx::pb;

/// tract's datum type for an ONNX element type it takes as a model input.
pub fn tract_datum(elem_type: i32) -> Option<tract_onnx::prelude::DatumType> {
    use pb::tensor_proto::DataType as D;
    use tract_onnx::prelude::DatumType;
    Some(match D::try_from(elem_type).ok()? {
        D::Float => DatumType::F32,
        D::Double => DatumType::F64,
        D::Int64 => DatumType::I64,
        D::Int32 => DatumType::I32,
        D::Int8 => DatumType::I8,
        D::Uint8 => DatumType::U8,
        D::Bool => DatumType::Bool,
        _ => return None,
    })
}

/// A declared axis.
pub fn declared_dim(dim: &pb::tensor_shape_proto::Dimension) -> DeclaredDim {
    use pb::tensor_shape_proto::dimension::Value;
    match &dim.value {
        Some(Value::DimValue(v)) => DeclaredDim::from_onnx(Some(*v), None),
        Some(Value::DimParam(p)) => DeclaredDim::from_onnx(None, Some(p)),
        None => DeclaredDim::Unnamed,
    }
}

/// The true inputs of a graph (declared inputs that are not initializers), in order, with their
/// declared shapes and element types (`None` when not a tensor).
pub fn declared_inputs(graph: &pb::GraphProto) -> Vec<(DeclaredInput, Option<i32>)> {
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|input| {
            let tensor = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(pb::type_proto::Value::TensorType(t)) => Some(t),
                _ => None,
            };
            let dims = tensor
                .and_then(|t| t.shape.as_ref())
                .map(|s| s.dim.iter().map(declared_dim).collect());
            (DeclaredInput { name: input.name.clone(), dims }, tensor.map(|t| t.elem_type))
        })
        .collect()
}

/// Concrete shapes of the true inputs: `given` first, the rest by [`resolve`]'s rules (a named
/// symbol has one value everywhere; an unnamed dynamic axis defaults only as a leading batch).
/// `batch` sets the leading dynamic axis of every input, when given.
pub fn concrete_inputs(
    graph: &pb::GraphProto,
    given: &InputShapes,
    batch: Option<u64>,
) -> Result<Vec<(String, Vec<usize>)>, ResolveError> {
    let declared: Vec<DeclaredInput> = declared_inputs(graph).into_iter().map(|(d, _)| d).collect();
    let resolved = resolve(&declared, given, &[], batch)?;
    Ok(resolved
        .inputs
        .into_iter()
        .map(|(n, d)| (n, d.into_iter().map(|x| x as usize).collect()))
        .collect())
}

fn is_dynamic(d: &pb::tensor_shape_proto::Dimension) -> bool {
    !matches!(d.value, Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0)
        && d.value.is_some()
}

fn infos_mut(
    infos: &mut [pb::ValueInfoProto],
) -> impl Iterator<Item = &mut pb::tensor_shape_proto::Dimension> {
    infos.iter_mut().flat_map(|info| {
        let shape = match info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            Some(pb::type_proto::Value::TensorType(t)) => t.shape.as_mut(),
            _ => None,
        };
        shape.into_iter().flat_map(|s| s.dim.iter_mut())
    })
}

fn relax_graph(graph: &mut pb::GraphProto, subgraph: bool) -> usize {
    let mut n = 0;
    let mut forget = |infos: &mut [pb::ValueInfoProto]| {
        for d in infos_mut(infos) {
            if is_dynamic(d) {
                d.value = None;
                n += 1;
            }
        }
    };
    forget(&mut graph.output);
    forget(&mut graph.value_info);
    if subgraph {
        forget(&mut graph.input);
    }
    for node in &mut graph.node {
        for attr in &mut node.attribute {
            if let Some(g) = attr.g.as_mut() {
                n += relax_graph(g, true);
            }
            for g in &mut attr.graphs {
                n += relax_graph(g, true);
            }
        }
    }
    n
}

/// Forgets every size in output and `value_info` shapes that is not a fixed positive number, in
/// the graph and in every subgraph (where the inputs' sizes are forgotten too). Exporters keep
/// the inputs' symbols there (`batch`, `2*batch`, `unk__12`) or write `-1`; once the inputs are
/// concrete, tract would hold such a size against the one it infers and refuse the model
/// ("Impossible to unify Sym(batch) with Val(1)"). Fixed sizes stay, and so do the main graph's
/// input declarations; tract infers the rest. Returns how many sizes were forgotten.
pub fn relax_shape_hints(proto: &mut pb::ModelProto) -> usize {
    proto.graph.as_mut().map_or(0, |g| relax_graph(g, false))
}

/// `proto` with [`relax_shape_hints`] applied, copied only when there is something to relax.
pub fn relaxed(proto: &pb::ModelProto) -> Cow<'_, pb::ModelProto> {
    fn any_dynamic(g: &pb::GraphProto, subgraph: bool) -> bool {
        let infos = g
            .output
            .iter()
            .chain(&g.value_info)
            .chain(subgraph.then_some(&g.input).into_iter().flatten());
        infos.into_iter().any(|v| match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => {
                t.shape.as_ref().is_some_and(|s| s.dim.iter().any(is_dynamic))
            }
            _ => false,
        }) || g.node.iter().flat_map(|n| &n.attribute).any(|a| {
            a.g.as_ref().is_some_and(|g| any_dynamic(g, true))
                || a.graphs.iter().any(|g| any_dynamic(g, true))
        })
    }
    if !proto.graph.as_ref().is_some_and(|g| any_dynamic(g, false)) {
        return Cow::Borrowed(proto);
    }
    let mut owned = proto.clone();
    relax_shape_hints(&mut owned);
    Cow::Owned(owned)
}

//! What tract knows about a graph: value shapes for concrete inputs
//! ([`Graph::infer_shapes`]), and evaluation of single constant nodes (for
//! [`Graph::constant_fold_shapes`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use tract_onnx::pb;
use tract_onnx::prelude::{
    DatumType, Fact as _, Framework as _, InferenceFact, InferenceModelExt as _, IntoRunnable as _,
    IntoTensor as _, OutletId, TVec, Tensor as TractTensor, TractResult,
};

use super::{DataType, Graph, GraphError, Problem, Tensor, TensorData};

/// The datum type and concrete dimensions tract inferred for a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueShape {
    /// Element type (shape tensors, `TDim` inside tract, are `I64`).
    pub data_type: DataType,
    /// Concrete dimensions.
    pub dims: Vec<usize>,
}

impl Graph {
    /// Runs tract's type and shape inference with concrete input dimensions and returns the datum
    /// type and dimensions of every value tract resolves, by ONNX value name (graph inputs and
    /// initializers included).
    ///
    /// `input_dims` gives dims per true graph input, by name; an input left out must have fully
    /// fixed declared dims. Element types come from the input declarations.
    ///
    /// # How ONNX value names are recovered from tract
    /// tract's ONNX parser names each node after the ONNX node (or its first output) and labels
    /// each node outlet with the ONNX output name; inputs and initializers become source and
    /// constant nodes, reached through the parser's `outlets_by_name`. Shapes are read from two
    /// places:
    /// 1. the inference model after `analyse`, through `outlets_by_name` (every ONNX value, as long
    ///    as inference reached a concrete type and shape for it);
    /// 2. the typed model after `into_typed`, through outlet labels (tract's translation carries
    ///    labels over; when an op is translated to an existing outlet, e.g. `Identity`, the label
    ///    is overwritten by the later name, which denotes the same tensor).
    ///
    /// Typed facts win where both exist; a value that tract's `incorporate` pass fuses away before
    /// the typed model exists keeps its inference fact. A value is missing from the result when
    /// tract never gives it a concrete datum type and shape (inference stopped short, or the value
    /// sits in a branch tract drops); nothing is ever guessed. tract computes shape tensors as
    /// `TDim`; they are reported as `I64`, their ONNX type.
    pub fn infer_shapes<I, S, D>(
        &self,
        input_dims: I,
    ) -> Result<BTreeMap<String, ValueShape>, GraphError>
    where
        I: IntoIterator<Item = (S, D)>,
        S: AsRef<str>,
        D: AsRef<[usize]>,
    {
        let inputs = self.inputs();
        let mut given: HashMap<String, Vec<usize>> = HashMap::new();
        for (name, dims) in input_dims {
            let name = name.as_ref();
            if !inputs.iter().any(|i| i.name == name) {
                return Err(GraphError::Input {
                    name: name.into(),
                    reason: "not an input of this graph".into(),
                });
            }
            given.insert(name.into(), dims.as_ref().to_vec());
        }
        let mut facts = Vec::with_capacity(inputs.len());
        for input in &inputs {
            let bad = |reason: String| GraphError::Input { name: input.name.clone(), reason };
            let dims = match (given.remove(&input.name), input.concrete_dims()) {
                (Some(d), _) => d,
                (None, Some(d)) => d,
                (None, None) => {
                    return Err(bad("dims not given and not fixed by the model".into()));
                }
            };
            if let Some(decl) = &input.dims {
                if decl.len() != dims.len() {
                    return Err(bad(format!("declared rank {}, given dims {dims:?}", decl.len())));
                }
                for (d, &v) in decl.iter().zip(&dims) {
                    // A negative declared size (exporters write -1 for "dynamic") fixes nothing.
                    if matches!(d, super::Dim::Value(x) if *x >= 0 && *x != v as i64) {
                        return Err(bad(format!("declared dims {decl:?}, given {dims:?}")));
                    }
                }
            }
            let dt = input.data_type.and_then(datum_type).ok_or_else(|| {
                bad(format!("element type {:?} is not one tract takes", input.data_type))
            })?;
            facts.push(InferenceFact::dt_shape(dt, dims));
        }
        let names: HashSet<&str> = self.value_names();
        let proto = crate::shapes::relaxed(self.proto());
        guarded(|| infer(&proto, facts, &names)).and_then(|r| r)
    }
}

fn infer(
    proto: &pb::ModelProto,
    facts: Vec<InferenceFact>,
    names: &HashSet<&str>,
) -> Result<BTreeMap<String, ValueShape>, GraphError> {
    let tract = |e: tract_onnx::prelude::TractError| GraphError::Tract(format!("{e:#}"));
    let parsed = tract_onnx::onnx().parse(proto, None).map_err(tract)?;
    if let Some(value) = parsed.unresolved_inputs.first() {
        return Err(GraphError::Invalid(Problem::UndefinedInput {
            node: "(graph)".into(),
            value: value.clone(),
        }));
    }
    let mut model = parsed.model;
    for (ix, fact) in facts.into_iter().enumerate() {
        model.set_input_fact(ix, fact).map_err(tract)?;
    }
    model.analyse(false).map_err(tract)?;
    let mut shapes = BTreeMap::new();
    for (name, outlet) in &parsed.outlets_by_name {
        let fact = model.outlet_fact(*outlet).map_err(tract)?;
        let dt = fact.datum_type().and_then(onnx_type);
        let dims = fact.shape.as_concrete_finite().ok().flatten();
        if let (Some(dt), Some(dims)) = (dt, dims) {
            let dims = dims.to_vec();
            shapes.insert(name.clone(), ValueShape { data_type: dt, dims });
        }
    }
    let typed = model.into_typed().map_err(tract)?;
    for node in typed.nodes() {
        for (ix, out) in node.outputs.iter().enumerate() {
            let Some(label) = typed.outlet_label(OutletId::new(node.id, ix)) else { continue };
            if !names.contains(label) {
                continue;
            }
            let (Some(dt), Some(dims)) =
                (onnx_type(out.fact.datum_type), out.fact.shape.as_concrete())
            else {
                continue;
            };
            shapes.insert(label.to_string(), ValueShape { data_type: dt, dims: dims.to_vec() });
        }
    }
    Ok(shapes)
}

/// Runs `f`, turning a tract panic into [`GraphError::Tract`].
pub(super) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, GraphError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        GraphError::Tract(format!("tract panicked: {msg}"))
    })
}

/// Evaluates one node whose inputs are all given, by building a one-node model and running it
/// in tract. Returns one tensor per non-empty output, or tract's explanation.
pub(super) fn eval_node(
    model: &pb::ModelProto,
    node: &pb::NodeProto,
    inputs: &[(&str, &Tensor)],
) -> Result<Vec<Tensor>, String> {
    let outputs: Vec<&String> = node.output.iter().filter(|o| !o.is_empty()).collect();
    let proto = pb::ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        graph: Some(pb::GraphProto {
            name: "fold".into(),
            node: vec![node.clone()],
            initializer: inputs.iter().map(|(n, t)| t.to_proto(n)).collect(),
            output: outputs
                .iter()
                .map(|o| pb::ValueInfoProto { name: (*o).clone(), ..Default::default() })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = || -> TractResult<TVec<TractTensor>> {
        let plan =
            tract_onnx::onnx().model_for_proto_model(&proto)?.into_typed()?.into_runnable()?;
        Ok(plan.run(TVec::new())?.into_iter().map(|v| v.into_tensor()).collect())
    };
    let values = guarded(run).map_err(|e| e.to_string())?.map_err(|e| format!("{e:#}"))?;
    if values.len() != outputs.len() {
        return Err(format!("tract gave {} outputs, expected {}", values.len(), outputs.len()));
    }
    values
        .iter()
        .map(|t| from_tract(t).ok_or_else(|| format!("tract datum type {:?}", t.datum_type())))
        .collect()
}

/// Converts a tract tensor; `None` for datum types ONNX initializers cannot hold.
pub(super) fn from_tract(t: &TractTensor) -> Option<Tensor> {
    fn vec<T: tract_onnx::prelude::Datum + Clone>(t: &TractTensor) -> Option<Vec<T>> {
        Some(t.to_plain_array_view::<T>().ok()?.iter().cloned().collect())
    }
    use tract_onnx::prelude::f16;
    let data = match t.datum_type() {
        DatumType::F32 => TensorData::F32(vec(t)?),
        DatumType::F64 => TensorData::F64(vec(t)?),
        DatumType::F16 => TensorData::F16(vec::<f16>(t)?.iter().map(|x| x.to_bits()).collect()),
        DatumType::I8 => TensorData::I8(vec(t)?),
        DatumType::I16 => TensorData::I16(vec(t)?),
        DatumType::I32 => TensorData::I32(vec(t)?),
        DatumType::I64 => TensorData::I64(vec(t)?),
        DatumType::U8 => TensorData::U8(vec(t)?),
        DatumType::U16 => TensorData::U16(vec(t)?),
        DatumType::U32 => TensorData::U32(vec(t)?),
        DatumType::U64 => TensorData::U64(vec(t)?),
        DatumType::Bool => TensorData::Bool(vec(t)?),
        DatumType::TDim => TensorData::I64(vec(t.cast_to::<i64>().ok()?.as_ref())?),
        _ => return None,
    };
    Tensor::new(t.shape().to_vec(), data).ok()
}

fn datum_type(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::F32 => DatumType::F32,
        DataType::F64 => DatumType::F64,
        DataType::F16 => DatumType::F16,
        DataType::I8 => DatumType::I8,
        DataType::I16 => DatumType::I16,
        DataType::I32 => DatumType::I32,
        DataType::I64 => DatumType::I64,
        DataType::U8 => DatumType::U8,
        DataType::U16 => DatumType::U16,
        DataType::U32 => DatumType::U32,
        DataType::U64 => DatumType::U64,
        DataType::Bool => DatumType::Bool,
        DataType::String => DatumType::String,
        DataType::BF16 => return None,
    })
}

fn onnx_type(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::F32 => DataType::F32,
        DatumType::F64 => DataType::F64,
        DatumType::F16 => DataType::F16,
        DatumType::I8 => DataType::I8,
        DatumType::I16 => DataType::I16,
        DatumType::I32 => DataType::I32,
        DatumType::I64 | DatumType::TDim => DataType::I64,
        DatumType::U8 => DataType::U8,
        DatumType::U16 => DataType::U16,
        DatumType::U32 => DataType::U32,
        DatumType::U64 => DataType::U64,
        DatumType::Bool => DataType::Bool,
        DatumType::String => DataType::String,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{f32_value, mat, mlp, model};
    use super::super::{Dim, Node, ValueInfo};
    use super::*;
    use crate::{Tensor, TensorData};

    /// `y = relu(x) + 1` declared the way other exporters write it: `dynamic` names every
    /// dynamic input axis (`Ok(symbol)`), or writes `-1` (`Err(())`); the intermediate `h` and the
    /// output carry the same hints in `value_info`.
    fn exported(dynamic: impl Fn(&str) -> Dim) -> Graph {
        let dims = |d: &[&str]| {
            d.iter()
                .map(|s| s.parse::<i64>().map_or_else(|_| dynamic(s), Dim::Value))
                .collect::<Vec<_>>()
        };
        let v = |n: &str, d: &[&str]| ValueInfo::tensor(n, DataType::F32, dims(d)).to_proto();
        let mut g = model(
            vec![
                Node::new("relu", "Relu", &["x"], &["h"]),
                Node::new("add", "Add", &["h", "one"], &["y"]),
            ],
            vec![("one", Tensor::new(vec![], TensorData::F32(vec![1.0])).unwrap())],
            vec![v("x", &["batch", "3", "height", "width"])],
            vec![v("y", &["batch", "3", "height", "width"])],
        );
        g.graph_proto_mut().value_info.push(v("h", &["batch", "3", "height", "width"]));
        g
    }

    #[test]
    fn minus_one_and_symbolic_hints_follow_the_given_dims() {
        for g in [exported(|s| Dim::Symbol(s.into())), exported(|_| Dim::Value(-1))] {
            let s = g.infer_shapes([("x", [1, 3, 48, 320])]).unwrap();
            assert_eq!(s["h"].dims, [1, 3, 48, 320]);
            assert_eq!(s["y"].dims, [1, 3, 48, 320]);
            // A fixed size still binds.
            assert!(matches!(
                g.infer_shapes([("x", [1, 4, 48, 320])]),
                Err(GraphError::Input { .. })
            ));
            // The model's own file is untouched; only tract's copy is relaxed.
            let mut p = g.proto().clone();
            assert_eq!(crate::relax_shape_hints(&mut p), 6, "h and y: batch, height, width");
            assert_eq!(crate::relax_shape_hints(&mut p), 0);
        }
        // The gate: `-1` on non-leading axes needs shapes, and with them the model loads.
        let bytes = exported(|_| Dim::Value(-1)).to_bytes();
        let e = crate::gate::check_with_tract(&bytes, &Default::default()).unwrap_err();
        assert!(e.to_string().contains("--input x=1x3x?x?"), "{e}");
        let given = hone_common::shapes::InputShapes::parse("x=1x3x48x320").unwrap();
        crate::gate::check_with_tract(&bytes, &given).unwrap();
        let named = exported(|s| Dim::Symbol(s.into())).to_bytes();
        crate::gate::check_with_tract(&named, &Default::default()).unwrap();
    }

    #[test]
    fn shapes_of_every_value_follow_the_given_input_dims() {
        let mut g = mlp();
        // Make the batch symbolic so the given dims matter.
        g.graph_proto_mut().input[0] =
            ValueInfo::tensor("x", DataType::F32, vec![Dim::Symbol("n".into()), Dim::Value(2)])
                .to_proto();
        let s = g.infer_shapes([("x", [5, 2])]).unwrap();
        let f32_dims = |d: &[usize]| ValueShape { data_type: DataType::F32, dims: d.to_vec() };
        assert_eq!(s["x"], f32_dims(&[5, 2]));
        assert_eq!(s["W"], f32_dims(&[2, 3]));
        assert_eq!(s["h"], f32_dims(&[5, 3]));
        assert_eq!(s["y"], f32_dims(&[5, 3]));
        assert_eq!(s["nx"], f32_dims(&[5, 2]));
        assert!(matches!(g.infer_shapes([("x", [5, 3])]), Err(GraphError::Input { .. })));
        assert!(matches!(
            g.infer_shapes(Vec::<(&str, Vec<usize>)>::new()),
            Err(GraphError::Input { .. })
        ));
        assert!(matches!(g.infer_shapes([("nope", [1])]), Err(GraphError::Input { .. })));
    }

    #[test]
    fn shape_tensors_are_reported_as_i64_and_fixed_inputs_need_no_dims() {
        let g = model(
            vec![
                Node::new("shape", "Shape", &["x"], &["s"]),
                Node::new("reshape", "Reshape", &["x", "flat"], &["y"]),
            ],
            vec![("flat", Tensor::vec_i64(&[-1]))],
            vec![f32_value("x", &[2, 3])],
            vec![f32_value("y", &[6])],
        );
        let s = g.infer_shapes(Vec::<(&str, Vec<usize>)>::new()).unwrap();
        assert_eq!(s["s"], ValueShape { data_type: DataType::I64, dims: vec![2] });
        assert_eq!(s["y"].dims, vec![6]);
    }

    #[test]
    fn tract_errors_surface_as_graph_errors() {
        let g = model(
            vec![Node::new("bad", "MatMul", &["x", "W"], &["y"])],
            vec![("W", mat([1.0; 6]))],
            vec![f32_value("x", &[4, 4])],
            vec![f32_value("y", &[4, 3])],
        );
        assert!(matches!(g.infer_shapes([("x", [4, 4])]), Err(GraphError::Tract(_))));
    }
}

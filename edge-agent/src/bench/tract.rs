//! The only module of the agent that knows tract: load, optimise, plan and time one model.
//!
//! Runs inside the benchmark child process (see [`super`]), never in the agent itself, so that a
//! model that crashes or exhausts the runtime cannot take the agent down.

use std::path::Path;
use std::time::Instant;

use hone_common::bench::{BenchReport, BenchSpec, Execution, Runtime};
use hone_common::wire::FailureKind;
use prost::Message as _;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Version string of the runtime, as reported in every result.
pub const RUNTIME: &str = "tract 0.23.9";

/// A benchmark failure with its category.
#[derive(Debug)]
pub struct BenchFailure {
    /// Category.
    pub kind: FailureKind,
    /// Explanation, naming the op or node when tract does.
    pub reason: String,
}

impl BenchFailure {
    /// A [`FailureKind::ModelInvalid`] failure.
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        BenchFailure { kind: FailureKind::ModelInvalid, reason: reason.into() }
    }
}

/// One graph input with the concrete shape chosen for the benchmark.
#[derive(Debug, Clone)]
pub(crate) struct InputPlan {
    /// Graph input name.
    pub(crate) name: String,
    /// Element type.
    pub(crate) datum: DatumType,
    /// Concrete shape.
    pub(crate) shape: Vec<usize>,
}

/// What the child measured, with the clocks the parent needs to align its own records.
#[derive(Debug)]
pub struct ChildResult {
    /// The report (parent-side fields left at their defaults).
    pub report: BenchReport,
    /// Unix ns when the measured phase started.
    pub measure_start_unix_ns: u128,
    /// Unix ns when the first inference ended.
    pub first_inference_end_unix_ns: u128,
}

/// An optimised, runnable plan.
pub(crate) type Runnable = std::sync::Arc<TypedSimplePlan>;

/// Loads `proto` with the concrete input facts of `plans`, optimises it and plans it.
pub(crate) fn load(proto: &pb::ModelProto, plans: &[InputPlan]) -> Result<Runnable, BenchFailure> {
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(proto)
        .map_err(|e| BenchFailure::invalid(format!("tract cannot load the model: {e:#}")))?;
    for (ix, plan) in plans.iter().enumerate() {
        model
            .set_input_fact(ix, InferenceFact::dt_shape(plan.datum, plan.shape.clone()))
            .map_err(|e| BenchFailure::invalid(format!("input `{}`: {e:#}", plan.name)))?;
    }
    model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| BenchFailure::invalid(format!("tract cannot optimise the model: {e:#}")))
}

/// Synthetic inputs for `plans` (see [`synthetic_tensor`]).
pub(crate) fn inputs_for(plans: &[InputPlan]) -> Result<TVec<TValue>, BenchFailure> {
    Ok(plans
        .iter()
        .map(synthetic_tensor)
        .collect::<Result<Vec<Tensor>, _>>()?
        .into_iter()
        .map(|t| t.into_tvalue())
        .collect())
}

/// Runs one inference, discarding the outputs.
pub(crate) fn run_once(runnable: &Runnable, inputs: &TVec<TValue>) -> Result<(), BenchFailure> {
    runnable
        .run(inputs.clone())
        .map(drop)
        .map_err(|e| BenchFailure::invalid(format!("tract failed to run the model: {e:#}")))
}

/// Loads `path` with tract and measures it as `spec.mode` says: warm-up iterations are never
/// measured; `single` runs up to `spec.max_iterations` bounded by `spec.max_time_ms`;
/// `sustained` runs for its seconds and records a timeline; `cold` times process start to the
/// end of the first inference; `throughput` measures each batch size.
pub fn run_benchmark(path: &Path, spec: &BenchSpec) -> Result<ChildResult, BenchFailure> {
    let bytes = std::fs::read(path).map_err(|e| read_failure(path, e))?;
    let load_start = Instant::now();
    let proto = decode_proto(&bytes)?;
    drop(bytes);
    let batch_one = super::measure::first_batch(spec);
    let plans = plan_inputs(&proto, spec, batch_one)?;
    let runnable = load(&proto, &plans)?;
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    let first = TractLoaded { inputs: inputs_for(&plans)?, runnable };
    let described = plans.iter().map(describe).collect();
    super::measure::measure(
        spec,
        load_start,
        load_ms,
        first,
        described,
        |batch| {
            let plans = plan_inputs(&proto, spec, Some(batch))?;
            Ok(TractLoaded { runnable: load(&proto, &plans)?, inputs: inputs_for(&plans)? })
        },
        super::measure::RuntimeInfo {
            name: RUNTIME.to_string(),
            execution: Execution { runtime: Runtime::Tract, threads: 1, spinning: false },
        },
    )
}

/// A tract plan with its inputs.
struct TractLoaded {
    runnable: Runnable,
    inputs: TVec<TValue>,
}

impl super::measure::Loaded for TractLoaded {
    fn run_once(&mut self) -> Result<(), BenchFailure> {
        run_once(&self.runnable, &self.inputs)
    }
}

/// Compute cost of a model as tract plans it for `spec`'s input shapes.
#[derive(Debug, serde::Serialize)]
pub struct ModelCost {
    /// Multiply-accumulates (f32 FMA) of one inference.
    pub macs: u64,
    /// Parameters (elements of float initializers).
    pub params: u64,
    /// Concrete input shapes used.
    pub inputs: Vec<String>,
}

/// Counts the multiply-accumulates of one inference with tract's cost model.
pub fn cost(path: &Path, spec: &BenchSpec) -> Result<ModelCost, BenchFailure> {
    let proto = read_proto(path)?;
    let params = proto
        .graph
        .as_ref()
        .map(|g| {
            g.initializer
                .iter()
                .filter(|t| t.data_type == pb::tensor_proto::DataType::Float as i32)
                .map(|t| t.dims.iter().product::<i64>().max(0) as u64)
                .sum()
        })
        .unwrap_or(0);
    let plans = plan_inputs(&proto, spec, None)?;
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(&proto)
        .map_err(|e| BenchFailure::invalid(format!("tract cannot load the model: {e:#}")))?;
    for (ix, plan) in plans.iter().enumerate() {
        model
            .set_input_fact(ix, InferenceFact::dt_shape(plan.datum, plan.shape.clone()))
            .map_err(|e| BenchFailure::invalid(format!("input `{}`: {e:#}", plan.name)))?;
    }
    let typed = model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(|e| BenchFailure::invalid(format!("tract cannot type the model: {e:#}")))?;
    let mut macs = 0u64;
    for node in typed.nodes() {
        let facts =
            typed.node_input_facts(node.id).map_err(|e| BenchFailure::invalid(format!("{e:#}")))?;
        let costs = node.op.cost(&facts).map_err(|e| BenchFailure::invalid(format!("{e:#}")))?;
        for (c, n) in costs {
            if matches!(c, tract_onnx::tract_core::ops::Cost::FMA(_)) {
                macs += n.to_i64().unwrap_or(0).max(0) as u64;
            }
        }
    }
    Ok(ModelCost { macs, params, inputs: plans.iter().map(describe).collect() })
}

/// Decodes a model and forgets the dynamic sizes of its intermediate and output shapes (see
/// [`hone_graph::relax_shape_hints`]); the inputs keep theirs for [`plan_inputs`].
pub(crate) fn decode_proto(bytes: &[u8]) -> Result<pb::ModelProto, BenchFailure> {
    let mut proto = pb::ModelProto::decode(bytes)
        .map_err(|e| BenchFailure::invalid(format!("not an ONNX protobuf: {e}")))?;
    hone_graph::relax_shape_hints(&mut proto);
    Ok(proto)
}

/// Reads and decodes a model file (see [`decode_proto`]).
pub(crate) fn read_proto(path: &Path) -> Result<pb::ModelProto, BenchFailure> {
    decode_proto(&std::fs::read(path).map_err(|e| read_failure(path, e))?)
}

fn read_failure(path: &Path, e: std::io::Error) -> BenchFailure {
    let kind = if e.kind() == std::io::ErrorKind::OutOfMemory {
        FailureKind::Oom
    } else {
        FailureKind::Internal
    };
    BenchFailure { kind, reason: format!("cannot read {}: {e}", path.display()) }
}

/// One output of [`infer`].
#[derive(Debug, serde::Serialize)]
pub struct OutputValues {
    /// Graph output name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values as f32 (integer outputs are converted).
    pub values: Vec<f32>,
}

/// Runs one inference on the same deterministic synthetic inputs as the benchmarks and returns
/// every output (used to compare architectures: the aarch64 agent against the x86_64 one).
pub fn infer(path: &Path, spec: &BenchSpec) -> Result<Vec<OutputValues>, BenchFailure> {
    let proto = read_proto(path)?;
    let plans = plan_inputs(&proto, spec, None)?;
    let runnable = load(&proto, &plans)?;
    let outputs = runnable
        .run(inputs_for(&plans)?)
        .map_err(|e| BenchFailure::invalid(format!("tract failed to run the model: {e:#}")))?;
    let names: Vec<String> = proto
        .graph
        .as_ref()
        .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
        .unwrap_or_default();
    outputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let f = t
                .cast_to::<f32>()
                .map_err(|e| BenchFailure::invalid(format!("output {i} is not numeric: {e:#}")))?;
            let values = f
                .to_plain_array_view::<f32>()
                .map_err(|e| BenchFailure::invalid(format!("output {i}: {e:#}")))?
                .iter()
                .copied()
                .collect();
            Ok(OutputValues {
                name: names.get(i).cloned().unwrap_or_else(|| format!("output{i}")),
                shape: t.shape().to_vec(),
                values,
            })
        })
        .collect()
}

pub(crate) fn describe(plan: &InputPlan) -> String {
    let dims: Vec<String> = plan.shape.iter().map(|d| d.to_string()).collect();
    format!("{}: {:?}[{}]", plan.name, plan.datum, dims.join(","))
}

/// Chooses a concrete datum type and shape for every true graph input (initializers excluded):
/// the spec's `inputs` and `symbols` first, then the defaults of [`hone_common::shapes::resolve`]
/// (a named symbol has one value everywhere; an unnamed `-1`/`?` axis defaults only as a batch).
pub(crate) fn plan_inputs(
    proto: &pb::ModelProto,
    spec: &BenchSpec,
    batch: Option<u64>,
) -> Result<Vec<InputPlan>, BenchFailure> {
    let graph = proto.graph.as_ref().ok_or_else(|| BenchFailure::invalid("model has no graph"))?;
    let mut declared = Vec::new();
    let mut datums = Vec::new();
    for (input, elem) in hone_graph::shapes::declared_inputs(graph) {
        let elem = elem.ok_or_else(|| {
            BenchFailure::invalid(format!("input `{}` is not a tensor", input.name))
        })?;
        datums.push(hone_graph::shapes::tract_datum(elem).ok_or_else(|| {
            BenchFailure::invalid(format!(
                "input `{}` has unsupported element type {elem}",
                input.name
            ))
        })?);
        declared.push(input);
    }
    let resolved =
        spec.resolve_inputs(&declared, batch).map_err(|e| BenchFailure::invalid(e.to_string()))?;
    let mut plans = Vec::with_capacity(resolved.inputs.len());
    for ((name, dims), datum) in resolved.inputs.into_iter().zip(datums) {
        let elements = dims.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d));
        if elements.is_none_or(|n| n > MAX_INPUT_ELEMENTS) {
            return Err(BenchFailure::invalid(format!(
                "input `{name}` would need {} elements (at most {MAX_INPUT_ELEMENTS}); give it a \
                 smaller shape with --input",
                elements.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
            )));
        }
        let shape = dims.iter().map(|d| *d as usize).collect();
        plans.push(InputPlan { name, datum, shape });
    }
    Ok(plans)
}

/// Largest synthetic input, in elements.
const MAX_INPUT_ELEMENTS: u64 = 512 * 1024 * 1024;

/// Deterministic synthetic data: floats in [0, 1) from a fixed LCG; integers are 1 (a valid
/// token id and attention-mask value for every text model Hone ships); booleans are `true`.
pub(crate) fn synthetic_tensor(plan: &InputPlan) -> Result<Tensor, BenchFailure> {
    let n: usize = plan.shape.iter().product();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f64) / ((1u64 << 24) as f64)
    };
    let shape = &plan.shape;
    let t = match plan.datum {
        DatumType::F32 => {
            Tensor::from_shape(shape, &(0..n).map(|_| next() as f32).collect::<Vec<_>>())
        }
        DatumType::F64 => Tensor::from_shape(shape, &(0..n).map(|_| next()).collect::<Vec<_>>()),
        DatumType::I64 => Tensor::from_shape(shape, &vec![1i64; n]),
        DatumType::I32 => Tensor::from_shape(shape, &vec![1i32; n]),
        DatumType::I8 => Tensor::from_shape(shape, &vec![1i8; n]),
        DatumType::U8 => Tensor::from_shape(shape, &vec![1u8; n]),
        DatumType::Bool => Tensor::from_shape(shape, &vec![true; n]),
        other => return Err(BenchFailure::invalid(format!("cannot synthesise {other:?} input"))),
    };
    t.map_err(|e| BenchFailure::invalid(format!("input `{}`: {e:#}", plan.name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_common::bench::BenchMode;
    use hone_common::shapes::InputShapes;

    /// A shape as exporters write it: a number (`-1` included) or a `dim_param` (`?` included).
    fn info(name: &str, dims: &[&str]) -> pb::ValueInfoProto {
        let dims = dims.iter().map(|d| {
            d.parse::<i64>()
                .map_or_else(|_| hone_graph::Dim::Symbol(d.to_string()), hone_graph::Dim::Value)
        });
        hone_graph::ValueInfo::tensor(name, hone_graph::DataType::F32, dims.collect()).to_proto()
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            name: output.into(),
            op_type: op.into(),
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn write(
        dir: &tempfile::TempDir,
        nodes: Vec<pb::NodeProto>,
        inputs: Vec<pb::ValueInfoProto>,
        value_info: Vec<pb::ValueInfoProto>,
        outputs: Vec<pb::ValueInfoProto>,
    ) -> std::path::PathBuf {
        let bytes = pb::ModelProto {
            ir_version: 8,
            producer_name: "hone-tests".into(),
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(pb::GraphProto {
                name: "g".into(),
                node: nodes,
                input: inputs,
                value_info,
                output: outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn quick(inputs: &str) -> BenchSpec {
        BenchSpec {
            warmup: 1,
            max_iterations: 2,
            max_time_ms: 1_000,
            inputs: if inputs.is_empty() {
                InputShapes::default()
            } else {
                InputShapes::parse(inputs).unwrap()
            },
            ..BenchSpec::default()
        }
    }

    fn reason(r: Result<ChildResult, BenchFailure>) -> String {
        match r {
            Ok(r) => panic!("expected a failure, got inputs {:?}", r.report.inputs),
            Err(f) => {
                assert!(matches!(f.kind, FailureKind::ModelInvalid), "{:?}", f.kind);
                f.reason
            }
        }
    }

    /// What PyTorch writes with `dynamic_axes`: the input's symbol in every `value_info` and
    /// output, and derived sizes as expressions (`2*batch`).
    #[test]
    fn value_info_symbols_follow_the_concrete_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            vec![
                node("Relu", &["x"], "h"),
                node("Concat", &["h", "h"], "c").with_axis(0),
                node("Sigmoid", &["c"], "y"),
            ],
            vec![info("x", &["batch", "4"])],
            vec![info("h", &["batch", "4"]), info("c", &["2*batch", "4"])],
            vec![info("y", &["2*batch", "4"])],
        );
        let r = run_benchmark(&path, &quick("")).unwrap();
        assert_eq!(r.report.inputs, vec!["x: F32[1,4]"]);
        let r = run_benchmark(&path, &quick("x=3x4")).unwrap();
        assert_eq!(r.report.inputs, vec!["x: F32[3,4]"]);
        let out = infer(&path, &quick("x=3x4")).unwrap();
        assert_eq!(out[0].shape, vec![6, 4]);
        // Throughput re-plans each batch size against the same facts.
        let spec =
            BenchSpec { mode: BenchMode::Throughput { batch_sizes: vec![1, 5] }, ..quick("") };
        let r = run_benchmark(&path, &spec).unwrap();
        assert_eq!(r.report.throughput.len(), 2);
    }

    /// What tf2onnx and Paddle2ONNX write: `unk__N` names, `?` and `-1` in `value_info` and
    /// outputs, and a symbol of the intermediate shapes that no input has.
    #[test]
    fn unknown_markers_in_value_info_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            vec![node("Relu", &["x"], "h"), node("GlobalAveragePool", &["h"], "y")],
            vec![info("x", &["-1", "3", "?", "p2o.DynamicDimension.1"])],
            vec![info("h", &["unk__7", "3", "height", "-1"])],
            vec![info("y", &["p2o.DynamicDimension.2", "3", "1", "1"])],
        );
        let out = infer(&path, &quick("x=1x3x48x320")).unwrap();
        assert_eq!(out[0].shape, vec![1, 3, 1, 1]);
    }

    #[test]
    fn unnamed_axes_need_a_shape_and_each_takes_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            vec![node("Relu", &["x"], "y")],
            vec![info("x", &["-1", "3", "?", "?"])],
            vec![],
            vec![info("y", &["-1", "3", "?", "?"])],
        );
        let why = reason(run_benchmark(&path, &quick("")));
        assert!(why.contains("axis 2 has neither a size nor a name"), "{why}");
        assert!(why.contains("--input x=1x3x?x?"), "{why}");
        // Two unnamed axes, two sizes: a 48x320 image, not 48x48 or 320x320.
        let r = run_benchmark(&path, &quick("x=1x3x48x320")).unwrap();
        assert_eq!(r.report.inputs, vec!["x: F32[1,3,48,320]"]);
        assert_eq!(infer(&path, &quick("x=2x3x48x320")).unwrap()[0].shape, vec![2, 3, 48, 320]);
        // A shape the model cannot take is refused before tract sees it.
        let why = reason(run_benchmark(&path, &quick("x=1x4x48x320")));
        assert!(why.contains("axis 1 is fixed at 3, but 4 was given"), "{why}");
        let why = reason(run_benchmark(&path, &quick("image=1x3x8x8")));
        assert!(why.contains("no input `image`") && why.contains("`x` [?,3,?,?]"), "{why}");
    }

    #[test]
    fn a_named_symbol_has_one_value_across_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            vec![node("Add", &["a", "b"], "y")],
            vec![info("a", &["batch", "seq"]), info("b", &["batch", "seq"])],
            vec![info("s", &["batch", "seq"])],
            vec![info("y", &["batch", "seq"])],
        );
        let r = run_benchmark(&path, &quick("a=2x7")).unwrap();
        assert_eq!(r.report.inputs, vec!["a: F32[2,7]", "b: F32[2,7]"]);
        let why = reason(run_benchmark(&path, &quick("a=2x7,b=2x8")));
        assert!(why.contains("symbol `seq` would be 7"), "{why}");
    }

    trait WithAxis {
        fn with_axis(self, axis: i64) -> Self;
    }

    impl WithAxis for pb::NodeProto {
        fn with_axis(mut self, axis: i64) -> Self {
            self.attribute.push(pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: axis,
                ..Default::default()
            });
            self
        }
    }
}

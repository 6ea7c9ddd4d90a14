//! The only module of the agent that knows ONNX Runtime (the `ort` crate, loading
//! `libonnxruntime` at run time). Like [`super::tract`], it runs inside the benchmark child
//! process: a library that crashes on load or on a model ends the child, never the agent.
//!
//! Threads: one intra-op pool of `spec.threads` (the agent sets the profile's cores), no
//! inter-op parallelism, and idle threads never spin: under a CPU quota a spinning thread burns
//! the quota the computation needs. Both are recorded in the report ([`Execution`]).

use std::path::Path;
use std::time::Instant;

use hone_common::bench::{BenchSpec, Execution, Runtime};
use hone_common::wire::FailureKind;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::DynValue;
use tract_onnx::prelude::DatumType;

use super::tract::{self as bt, BenchFailure, ChildResult, InputPlan};

/// Loads the library at `lib` and returns ONNX Runtime's version (`1.31.1`), or why it cannot
/// be used: missing file, not an ONNX Runtime library, or a version older than the API this
/// agent was built for (1.31).
pub fn probe(lib: &Path) -> Result<String, String> {
    init(lib).map(|(_, version)| version)
}

/// Loads the library and starts ONNX Runtime's environment; returns it with the library's
/// version.
fn init(lib: &Path) -> Result<(ort::environment::Environment, String), String> {
    if !lib.is_file() {
        return Err(format!("no ONNX Runtime library at {}", lib.display()));
    }
    // `ort` reports the version the library gives (`OrtGetApiBase()->GetVersionString()`) only
    // in its load event; the build string says `git-branch=HEAD` for release wheels.
    let capture = VersionCapture::default();
    let loaded = tracing::subscriber::with_default(capture.clone(), || ort::init_from(lib));
    let builder =
        loaded.map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?;
    let env = builder
        .with_name("hone-agent")
        .build()
        .map_err(|e| format!("ONNX Runtime at {} failed to start: {e}", lib.display()))?;
    let version = capture.version().unwrap_or_else(|| "unknown".to_string());
    Ok((env, version))
}

/// A tracing subscriber that keeps the version from `ort`'s "Loaded ONNX Runtime dylib ...;
/// version '1.31.1'" event.
#[derive(Clone, Default)]
struct VersionCapture(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl VersionCapture {
    fn version(&self) -> Option<String> {
        self.0.lock().ok()?.clone()
    }
}

struct MessageVisitor(Option<String>);

impl tracing::field::Visit for MessageVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// The version inside `...; version '1.31.1'`.
fn version_in(message: &str) -> Option<String> {
    let rest = &message[message.find("version '")? + "version '".len()..];
    let v = &rest[..rest.find('\'')?];
    (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.')).then(|| v.to_string())
}

impl tracing::Subscriber for VersionCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut visitor = MessageVisitor(None);
        event.record(&mut visitor);
        if let Some(v) = visitor.0.as_deref().and_then(version_in)
            && let Ok(mut slot) = self.0.lock()
        {
            *slot = Some(v);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A session with its inputs.
struct OrtLoaded {
    session: Session,
    inputs: Vec<(String, DynValue)>,
}

impl super::measure::Loaded for OrtLoaded {
    fn run_once(&mut self) -> Result<(), BenchFailure> {
        let inputs: Vec<(&str, &DynValue)> =
            self.inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
        self.session.run(inputs).map(drop).map_err(|e| {
            BenchFailure::invalid(format!("ONNX Runtime failed to run the model: {e}"))
        })
    }
}

fn session(
    env: &ort::environment::Environment,
    bytes: &[u8],
    threads: u32,
) -> Result<Session, BenchFailure> {
    let fail = |e: ort::Error| BenchFailure {
        kind: FailureKind::Internal,
        reason: format!("ONNX Runtime options: {e}"),
    };
    Session::builder(env)
        .map_err(fail)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| fail(e.into()))?
        .with_intra_threads(threads.max(1) as usize)
        .map_err(|e| fail(e.into()))?
        .with_inter_threads(1)
        .map_err(|e| fail(e.into()))?
        .with_intra_op_spinning(false)
        .map_err(|e| fail(e.into()))?
        .with_inter_op_spinning(false)
        .map_err(|e| fail(e.into()))?
        .commit_from_memory(bytes)
        .map_err(|e| BenchFailure::invalid(format!("ONNX Runtime cannot load the model: {e}")))
}

/// The benchmark's synthetic inputs (the same values tract gets) as ONNX Runtime tensors.
fn inputs_for(plans: &[InputPlan]) -> Result<Vec<(String, DynValue)>, BenchFailure> {
    plans
        .iter()
        .map(|plan| {
            let t = bt::synthetic_tensor(plan)?;
            let shape: Vec<i64> = plan.shape.iter().map(|d| *d as i64).collect();
            let value = match plan.datum {
                DatumType::F32 => to_ort::<f32>(&t, shape),
                DatumType::F64 => to_ort::<f64>(&t, shape),
                DatumType::I64 => to_ort::<i64>(&t, shape),
                DatumType::I32 => to_ort::<i32>(&t, shape),
                DatumType::I8 => to_ort::<i8>(&t, shape),
                DatumType::U8 => to_ort::<u8>(&t, shape),
                DatumType::Bool => to_ort::<bool>(&t, shape),
                other => Err(format!("ONNX Runtime inputs of {other:?} are not synthesised")),
            };
            let value =
                value.map_err(|e| BenchFailure::invalid(format!("input `{}`: {e}", plan.name)))?;
            Ok((plan.name.clone(), value))
        })
        .collect()
}

/// A tract tensor's values as an ONNX Runtime tensor of `shape`.
fn to_ort<T>(t: &tract_onnx::prelude::Tensor, shape: Vec<i64>) -> Result<DynValue, String>
where
    T: tract_onnx::prelude::Datum + Copy + ort::value::PrimitiveTensorElementType + std::fmt::Debug,
{
    let values: Vec<T> =
        t.to_plain_array_view::<T>().map_err(|e| format!("{e:#}"))?.iter().copied().collect();
    Ok(ort::value::Tensor::from_array((shape, values)).map_err(|e| e.to_string())?.into_dyn())
}

/// Loads `path` in ONNX Runtime (library `lib`) and measures it as `spec.mode` says, with the
/// same loop, inputs and statistics as tract.
pub fn run_benchmark(
    path: &Path,
    spec: &BenchSpec,
    lib: &Path,
) -> Result<ChildResult, BenchFailure> {
    let (env, version) =
        init(lib).map_err(|reason| BenchFailure { kind: FailureKind::Unsupported, reason })?;
    let threads = spec.threads.unwrap_or(1).max(1);
    let bytes = std::fs::read(path).map_err(|e| BenchFailure {
        kind: FailureKind::Internal,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let load_start = Instant::now();
    let proto = bt::decode_proto(&bytes)?;
    let batch_one = super::measure::first_batch(spec);
    let plans = bt::plan_inputs(&proto, spec, batch_one)?;
    let first = OrtLoaded { session: session(&env, &bytes, threads)?, inputs: inputs_for(&plans)? };
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    let described = plans.iter().map(bt::describe).collect();
    super::measure::measure(
        spec,
        load_start,
        load_ms,
        first,
        described,
        |batch| {
            let plans = bt::plan_inputs(&proto, spec, Some(batch))?;
            Ok(OrtLoaded { session: session(&env, &bytes, threads)?, inputs: inputs_for(&plans)? })
        },
        super::measure::RuntimeInfo {
            name: format!("onnxruntime {version}"),
            execution: Execution { runtime: Runtime::Ort, threads, spinning: false },
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_is_read_from_the_load_event() {
        let m = "Loaded ONNX Runtime dylib from \"/x/libonnxruntime.so.1.31.1\"; version '1.31.1'";
        assert_eq!(super::version_in(m).as_deref(), Some("1.31.1"));
        assert_eq!(super::version_in("version ''"), None);
        assert_eq!(super::version_in("version 'x; rm'"), None);
        assert_eq!(super::version_in("no version here"), None);
    }
}

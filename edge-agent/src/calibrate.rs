//! Host calibration: how fast this host is, measured once and cached with its identity.
//!
//! Two microbenchmarks, single-threaded like the benchmarks themselves:
//! - f32 matrix multiply in tract (a 256×256×256 MatMul graph built in code): GFLOP/s per core,
//!   the number device profiles are scaled against;
//! - memory copy of 64 MiB buffers: GB/s (read + write, STREAM "copy" convention).
//!
//! The measurement runs in a child process (`edge-agent calibrate --json`) and is cached in
//! `calibration.json` under the state directory, keyed by the host identity (CPU model, core
//! count, host name); a different host identity re-measures.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use hone_common::bench::HostCalibration;
use prost::Message as _;
use tract_onnx::pb;
use tract_onnx::prelude::*;

const N: usize = 256;

/// CPU model, logical cores and host name.
pub fn host_id() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| {
            l.starts_with("model name") || l.starts_with("Model") || l.starts_with("CPU part")
        })
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("{model} | {cores} cpus | {}", host.trim())
}

fn matmul_model() -> Vec<u8> {
    let dims = |d: &[i64]| pb::ValueInfoProto {
        name: String::new(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: d
                        .iter()
                        .map(|v| pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(*v)),
                        })
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    };
    let n = N as i64;
    let w: Vec<f32> = (0..N * N).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: "calibration".into(),
            node: vec![pb::NodeProto {
                name: "mm".into(),
                op_type: "MatMul".into(),
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            initializer: vec![pb::TensorProto {
                name: "w".into(),
                dims: vec![n, n],
                data_type: 1,
                float_data: w,
                ..Default::default()
            }],
            input: vec![pb::ValueInfoProto { name: "x".into(), ..dims(&[n, n]) }],
            output: vec![pb::ValueInfoProto { name: "y".into(), ..dims(&[n, n]) }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Runs both microbenchmarks in this process (a second or two).
pub fn measure() -> anyhow::Result<HostCalibration> {
    let proto = pb::ModelProto::decode(matmul_model().as_slice())?;
    let model =
        tract_onnx::onnx().model_for_proto_model(&proto)?.into_optimized()?.into_runnable()?;
    let x = Tensor::from_shape(&[N, N], &vec![0.5f32; N * N])?.into_tvalue();
    let flops = 2.0 * (N * N * N) as f64;
    let mut best = f64::MAX;
    for _ in 0..5 {
        model.run(tvec!(x.clone()))?;
    }
    for _ in 0..40 {
        let t = Instant::now();
        model.run(tvec!(x.clone()))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let gflops = flops / best / 1e9;

    let size = 64 << 20;
    let src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    let mut best_copy = f64::MAX;
    for i in 0..6 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        let dt = t.elapsed().as_secs_f64();
        if i > 0 {
            best_copy = best_copy.min(dt);
        }
    }
    std::hint::black_box(&dst);
    let bandwidth = 2.0 * size as f64 / best_copy / 1e9;
    Ok(HostCalibration {
        host_id: host_id(),
        gflops_per_core: gflops,
        memory_bandwidth_gbs: bandwidth,
        measured_at_ms: crate::host::now_ms(),
    })
}

/// The cached calibration for this host, or a new one measured in a child process of `exe`.
pub async fn load_or_measure(cache: &Path, exe: &Path) -> anyhow::Result<HostCalibration> {
    if let Ok(text) = std::fs::read_to_string(cache)
        && let Ok(cal) = serde_json::from_str::<HostCalibration>(&text)
        && cal.host_id == host_id()
        && cal.gflops_per_core > 0.0
    {
        return Ok(cal);
    }
    let out = tokio::process::Command::new(exe)
        .args(["calibrate", "--json", "--no-cache"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running the calibration process")?;
    if !out.status.success() {
        anyhow::bail!("calibration failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let cal: HostCalibration = serde_json::from_slice(&out.stdout).context("calibration output")?;
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::outbox::write_atomic(cache, serde_json::to_string_pretty(&cal)?.as_bytes())?;
    Ok(cal)
}

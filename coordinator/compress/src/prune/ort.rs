//! ONNX Runtime as a reference: the parent timed by `scripts/ort_time.py` in a Python that has
//! `onnxruntime` (`--compare-ort PY`; `scripts/python-env.sh` builds a pinned, cached venv for
//! it). The script travels inside the binary, so an installed coordinator needs no checkout.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use hone_graph::Graph;

const ORT_SCRIPT: &str = include_str!("../../../../scripts/ort_time.py");

/// Median ms of `model` in ONNX Runtime (CPU, one thread) and onnxruntime's version, timed
/// for `seconds` on inputs of the given types and dims (one per true input of `graph`).
pub fn ort_time(
    python: &std::path::Path,
    model: &std::path::Path,
    graph: &Graph,
    timing: &[(candle_core::DType, Vec<usize>)],
    seconds: f64,
) -> anyhow::Result<(f64, String)> {
    let names = hone_learn::eval::tract::true_inputs(graph);
    let specs: Vec<serde_json::Value> = names
        .iter()
        .zip(timing)
        .map(|(n, (dt, dims))| {
            let dt = if *dt == candle_core::DType::I64 { "i64" } else { "f32" };
            serde_json::json!({"name": n, "dtype": dt, "dims": dims})
        })
        .collect();
    let dir = tempfile_dir()?;
    let script = dir.join("ort_time.py");
    std::fs::write(&script, ORT_SCRIPT)?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(model)
        .arg(serde_json::to_string(&specs)?)
        .arg(seconds.to_string())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!(
            "ONNX Runtime timing failed ({}): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("no output")
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("ONNX Runtime timing printed no JSON")?;
    let p50 = v["p50_ms"].as_f64().context("no p50_ms from the ONNX Runtime timing")?;
    Ok((p50, v["onnxruntime"].as_str().unwrap_or("?").to_owned()))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hone-ort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_without_onnxruntime_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        let g = hone_learn::train::builder::ModelSpec {
            name: "m".into(),
            input: [1, 4, 4],
            layers: vec![
                hone_learn::train::builder::Layer::Flatten,
                hone_learn::train::builder::Layer::Dense { out: 2 },
            ],
            seed: 0,
        }
        .build()
        .unwrap()
        .graph;
        g.save(&model).unwrap();
        // `python3 -S` skips site-packages, so onnxruntime cannot be imported even where the
        // machine has it: the error path is exercised without installing anything.
        let py = dir.path().join("python-no-site");
        std::fs::write(&py, "#!/bin/sh\nexec python3 -S \"$@\"\n").unwrap();
        std::fs::set_permissions(&py, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let timing = [(candle_core::DType::F32, vec![1, 1, 4, 4])];
        let e = ort_time(&py, &model, &g, &timing, 0.1).unwrap_err().to_string();
        assert!(e.contains("ONNX Runtime timing failed") && e.contains("No module named"), "{e}");
        let e = ort_time(&dir.path().join("no-python"), &model, &g, &timing, 0.1).unwrap_err();
        assert!(format!("{e:#}").contains("running"), "{e:#}");
    }
}

//! CPU devices and a GPU side by side for one model: latency, throughput, joules per inference
//! and cost per million inferences. CPU figures are the agents' measurements (per device class,
//! the newest single-mode result), with the profile's board power and price; GPU figures are
//! imported measurements (`coordinator results import`), always shown with their provenance.
//! One CPU line per (device class, runtime): its newest single-mode result.
//!
//! Cost per million inferences: a CPU board's price amortised over a stated lifetime at full
//! use (`price × latency / lifetime`), energy excluded; a GPU's stated hourly price over its
//! measured throughput. Both are stated in the output.

use serde::{Deserialize, Serialize};

use crate::db::ResultRow;
use crate::db::imported::ImportedRow;

/// A file of GPU measurements: what `scripts/gpu-baseline.sh` writes, and the shape of
/// `../shared/data/gpu-reference/h100-open-nsfw.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuFile {
    /// The model measured, in words (file, package, digest).
    pub model: String,
    /// The GPU.
    pub device: String,
    /// Framework and how the model ran.
    pub framework: String,
    /// When (a date).
    pub measured: String,
    /// How power was read.
    #[serde(default)]
    pub power: Option<String>,
    /// One row per (runtime, dtype, batch).
    pub rows: Vec<GpuRow>,
}

/// One GPU measurement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuRow {
    /// Batch size.
    pub batch: u32,
    /// `fp32`, `fp16`, ...
    pub dtype: String,
    /// `pytorch-eager`, `onnxruntime-cuda`, ... (the file's framework when absent).
    #[serde(default)]
    pub runtime: Option<String>,
    /// Median latency of one batch, ms.
    pub p50_ms: f64,
    /// p90 of one batch, ms.
    #[serde(default)]
    pub p90_ms: Option<f64>,
    /// Items per second.
    pub throughput_per_s: f64,
    /// Mean GPU power during the timed loop, W.
    #[serde(default)]
    pub avg_power_w: Option<f64>,
    /// Measured joules per item.
    #[serde(default)]
    pub joules_per_inference: Option<f64>,
    /// Timed iterations.
    #[serde(default)]
    pub iters: Option<u64>,
}

/// Largest number of rows a file may hold.
pub const MAX_ROWS: usize = 256;

impl GpuFile {
    /// Checks every figure: finite and positive, batches at least 1, bounded text.
    pub fn validate(&self) -> Result<(), String> {
        if self.rows.is_empty() || self.rows.len() > MAX_ROWS {
            return Err(format!("a file holds 1 to {MAX_ROWS} rows, this one {}", self.rows.len()));
        }
        for (name, text) in [
            ("model", &self.model),
            ("device", &self.device),
            ("framework", &self.framework),
            ("measured", &self.measured),
        ] {
            if text.trim().is_empty() || text.len() > 1000 {
                return Err(format!("`{name}` must be 1 to 1000 characters"));
            }
        }
        for (i, r) in self.rows.iter().enumerate() {
            let positive = |v: f64| v.is_finite() && v > 0.0;
            let optional = |v: Option<f64>| v.is_none_or(positive);
            if r.batch == 0
                || !positive(r.p50_ms)
                || !positive(r.throughput_per_s)
                || !optional(r.p90_ms)
                || !optional(r.avg_power_w)
                || !optional(r.joules_per_inference)
                || r.dtype.is_empty()
                || r.dtype.len() > 32
            {
                return Err(format!(
                    "row {i}: batch, p50_ms and throughput_per_s must be positive and every \
                     figure finite"
                ));
            }
        }
        Ok(())
    }

    /// The provenance line shown beside every figure of this file.
    pub fn source(&self, file: &str) -> String {
        format!(
            "imported from {file}: {} on {}, {}, measured {}",
            self.model, self.device, self.framework, self.measured
        )
    }
}

/// What the comparison assumes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Assumptions {
    /// GPU price, USD per hour.
    pub gpu_hourly_usd: f64,
    /// Where that price comes from.
    pub gpu_price_source: String,
    /// Lifetime a CPU board's price is spread over, years, at full use.
    pub cpu_lifetime_years: f64,
}

/// The default GPU price: the middle of H100 SXM on-demand list prices in early 2026.
pub const DEFAULT_GPU_HOURLY_USD: f64 = 2.99;
/// Where [`DEFAULT_GPU_HOURLY_USD`] comes from.
pub const DEFAULT_GPU_PRICE_SOURCE: &str = "H100 SXM 80GB on-demand $2.49-$3.99/h typical list \
     pricing in early 2026 (CoreWeave, Lambda, Crusoe, RunPod; pricegpu.pages.dev/blog/\
     h100-vs-a100-cloud-price); the middle of that range. Pass --gpu-hourly-usd for yours";

/// One line of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Line {
    /// `cpu` or `gpu`.
    pub kind: String,
    /// A device class (profile) or the GPU.
    pub device: String,
    /// Runtime (and dtype) that ran it.
    pub runtime: String,
    /// Batch size.
    pub batch: u32,
    /// Median latency of one batch, ms.
    pub p50_ms: f64,
    /// Items per second (CPU: one inference at a time).
    pub throughput_per_s: f64,
    /// Joules per inference (CPU: the profile's active board power × latency; GPU: measured).
    pub joules_per_inference: Option<f64>,
    /// USD per million inferences (see the module docs).
    pub usd_per_million: Option<f64>,
    /// How the figure was obtained: `emulated on AMD EPYC`, `native`, `imported from ...`.
    pub provenance: String,
}

/// A CPU device class's line from its latency: the profile's board power and price.
pub fn cpu_line(
    class: &str,
    runtime: &str,
    p50_ms: f64,
    provenance: String,
    a: &Assumptions,
) -> Line {
    let profile = hone_firmware_profiles::find(class);
    let s = p50_ms / 1000.0;
    let lifetime_s = a.cpu_lifetime_years * 365.25 * 86_400.0;
    Line {
        kind: "cpu".into(),
        device: class.to_owned(),
        runtime: runtime.to_owned(),
        batch: 1,
        p50_ms,
        throughput_per_s: 1000.0 / p50_ms,
        joules_per_inference: profile.map(|p| p.power.active_w * s),
        usd_per_million: profile
            .filter(|p| p.unit_cost_usd > 0.0)
            .map(|p| p.unit_cost_usd * s / lifetime_s * 1e6),
        provenance,
    }
}

/// The default assumptions (the cited GPU price, three years for a board).
pub fn default_assumptions() -> Assumptions {
    Assumptions {
        gpu_hourly_usd: DEFAULT_GPU_HOURLY_USD,
        gpu_price_source: DEFAULT_GPU_PRICE_SOURCE.into(),
        cpu_lifetime_years: 3.0,
    }
}

/// CPU lines from agent results (newest single-mode result per profile) and GPU lines from
/// imported rows.
pub fn compare(cpu: &[ResultRow], gpu: &[ImportedRow], a: &Assumptions) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in cpu {
        let Some(class) = r.profile.clone() else { continue };
        let mode = r.report["mode"].as_str().unwrap_or("single");
        let runtime = r.report["runtime"].as_str().unwrap_or("tract").to_owned();
        if mode != "single" || !seen.insert((class.clone(), runtime.clone())) {
            continue;
        }
        let emulation = r.report["emulation"]["status"].as_str().map(str::to_owned).or_else(|| {
            r.report["emulation"]["status"]
                .as_object()
                .map(|o| o.keys().next().cloned().unwrap_or_default())
        });
        let host = r.report["calibration"]["host_id"].as_str().unwrap_or("this host");
        let provenance = match emulation.as_deref() {
            Some("emulated") => format!("agent {} emulating {class} on {host}", r.device_id),
            Some("native") => format!("agent {} on the board", r.device_id),
            Some(other) => format!("agent {} ({other}) on {host}", r.device_id),
            None => format!("agent {}", r.device_id),
        };
        lines.push(cpu_line(&class, &runtime, r.latency.p50_ms, provenance, a));
    }
    for g in gpu {
        let Ok(row) = serde_json::from_value::<GpuRow>(g.measurement["row"].clone()) else {
            continue;
        };
        let device = g.measurement["device"].as_str().unwrap_or("GPU").to_owned();
        let framework = g.measurement["framework"].as_str().unwrap_or("");
        let runtime = row
            .runtime
            .clone()
            .unwrap_or_else(|| framework.split(',').next().unwrap_or(framework).trim().to_owned());
        let joules = row
            .joules_per_inference
            .or_else(|| row.avg_power_w.map(|w| w * row.p50_ms / 1000.0 / f64::from(row.batch)));
        lines.push(Line {
            kind: "gpu".into(),
            device,
            runtime: format!("{runtime} {}", row.dtype),
            batch: row.batch,
            p50_ms: row.p50_ms,
            throughput_per_s: row.throughput_per_s,
            joules_per_inference: joules,
            usd_per_million: Some(a.gpu_hourly_usd / 3600.0 / row.throughput_per_s * 1e6),
            provenance: g.source.clone(),
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_common::bench::LatencyStats;

    fn cpu(profile: &str, p50: f64, age: i64) -> ResultRow {
        ResultRow {
            job_id: format!("j{age}"),
            result_id: "r".into(),
            campaign_id: "c".into(),
            model_id: "m".into(),
            device_id: format!("d-{profile}"),
            profile: Some(profile.into()),
            attempt: 1,
            latency: LatencyStats {
                p50_ms: p50,
                p90_ms: p50,
                p99_ms: p50,
                mean_ms: p50,
                std_ms: 0.0,
                min_ms: p50,
                max_ms: p50,
            },
            load_ms: 1.0,
            peak_rss_bytes: 1,
            iterations: 1,
            synthetic_inputs: true,
            report: serde_json::json!({"mode": "single", "runtime": "tract 0.23.9",
                "emulation": {"status": "emulated"}, "calibration": {"host_id": "AMD EPYC"}}),
            received_at_ms: age,
        }
    }

    fn reference() -> GpuFile {
        serde_json::from_str(include_str!("../../tests/data/h100-open-nsfw.json")).unwrap()
    }

    #[test]
    fn cpu_and_gpu_lines_carry_their_energy_cost_and_provenance() {
        let file = reference();
        file.validate().unwrap();
        let gpu: Vec<ImportedRow> = file
            .rows
            .iter()
            .map(|row| ImportedRow {
                id: "x".into(),
                model_id: "m".into(),
                source: file.source("h100-open-nsfw.json"),
                measurement: serde_json::json!({"device": file.device, "framework": file.framework, "row": row}),
                imported_at_ms: 0,
            })
            .collect();
        let a = Assumptions {
            gpu_hourly_usd: 3.6,
            gpu_price_source: "test".into(),
            cpu_lifetime_years: 3.0,
        };
        // Newest first: the second rpi4 result is older and ignored.
        let lines = compare(&[cpu("rpi4", 100.0, 2), cpu("rpi4", 50.0, 1)], &gpu, &a);
        assert_eq!(lines.len(), 1 + 4);
        let rpi4 = &lines[0];
        assert_eq!((rpi4.kind.as_str(), rpi4.p50_ms), ("cpu", 100.0));
        assert!((rpi4.throughput_per_s - 10.0).abs() < 1e-9);
        // rpi4 board: 6.4 W active, $55 over 3 years.
        assert!((rpi4.joules_per_inference.unwrap() - 0.64).abs() < 1e-9);
        let expected = 55.0 * 0.1 / (3.0 * 365.25 * 86_400.0) * 1e6;
        assert!((rpi4.usd_per_million.unwrap() - expected).abs() < 1e-9);
        assert!(rpi4.provenance.contains("emulating rpi4 on AMD EPYC"));
        // The H100 at batch 64 fp16: $3.6/h over 13,103 items/s.
        let g = lines.iter().find(|l| l.batch == 64 && l.runtime.ends_with("fp16")).unwrap();
        assert!(
            (g.usd_per_million.unwrap() - 3.6 / 3600.0 / g.throughput_per_s * 1e6).abs() < 1e-9
        );
        assert!(g.provenance.starts_with("imported from h100-open-nsfw.json"));
        assert!(g.provenance.contains("NVIDIA H100"));
        assert!((g.joules_per_inference.unwrap() - 0.01779289565563202).abs() < 1e-12);
    }

    #[test]
    fn hostile_files_are_refused_with_the_reason() {
        let mut f = reference();
        f.rows[0].p50_ms = f64::NAN;
        assert!(f.validate().unwrap_err().contains("row 0"));
        let mut f = reference();
        f.rows.clear();
        assert!(f.validate().is_err());
        let mut f = reference();
        f.device = "x".repeat(2000);
        assert!(f.validate().unwrap_err().contains("device"));
        let mut f = reference();
        f.rows[1].batch = 0;
        assert!(f.validate().unwrap_err().contains("row 1"));
        assert!(serde_json::from_str::<GpuFile>("{\"rows\": []}").is_err(), "fields are required");
    }
}

//! A realistic pipeline result for the report's tests: a 3-layer MiniLM sentiment model pruned
//! for two device classes. On `rpi4` no candidate meets the latency budget (the report shows the
//! closest); on `x86-vm-2core` one wins. Each class has measured, rejected, skipped, failed (the
//! same one on both: the gate does not depend on the class) and unmeasured candidates, two equal
//! latencies, and the Pareto flags of its measured ones.
//!
//! Shared by the unit tests of `report` and the browser test of `hone-e2e` (which includes this
//! file by path): it names the result types through `super`, so its parent module imports them.

use super::{CandidateRow, ClassResult, Constraints, Figures, PipelineResult, PredictorReport};

const MIB: f64 = 1024.0 * 1024.0;

/// The parent's accuracy on the validation part.
const PARENT_ACCURACY: f64 = 0.884;

/// One candidate as the search saw it: its id, kept share of heads and neurons, accuracy.
struct Seed {
    id: &'static str,
    keep: f64,
    accuracy: f64,
}

const SEEDS: [Seed; 10] = [
    Seed { id: "c01", keep: 0.90, accuracy: 0.8826 },
    Seed { id: "c02", keep: 0.80, accuracy: 0.8810 },
    Seed { id: "c03", keep: 0.75, accuracy: 0.8804 },
    Seed { id: "c04", keep: 0.70, accuracy: 0.8790 },
    Seed { id: "c05", keep: 0.65, accuracy: 0.8781 },
    Seed { id: "c06", keep: 0.60, accuracy: 0.8762 },
    Seed { id: "c07", keep: 0.55, accuracy: 0.8747 },
    Seed { id: "c08", keep: 0.50, accuracy: 0.8662 },
    Seed { id: "c09", keep: 0.40, accuracy: 0.8511 },
    Seed { id: "c10", keep: 0.85, accuracy: 0.8820 },
];

/// What happened to one candidate on one class.
enum Outcome {
    /// Measured at this p90 (ms); on the front or not.
    Measured(f64, bool),
    /// Over the accuracy budget: never measured.
    Rejected,
    /// Not measured: the predictor put it at this p90 (ms).
    Skipped(f64),
    /// The gate refused it.
    Failed,
    /// Its jobs failed; the predictor had put it at this p90 (ms).
    Unmeasured(f64),
}

fn row(seed: &Seed, outcome: Outcome, class_scale: f64, winner: bool) -> CandidateRow {
    let params = (22_700_000.0 * (0.35 + 0.65 * seed.keep)) as u64;
    let macs = (1_420_000_000.0 * (0.2 + 0.8 * seed.keep)) as u64;
    let mut row = CandidateRow {
        id: seed.id.to_string(),
        model: Some(format!("01JF8Q{}ZK3V9M2T4R6P8X0B1C", seed.id.to_uppercase())),
        method: "prune".into(),
        settings: serde_json::json!({
            "keep": seed.keep,
            "groups": "heads+neurons",
            "finetune_steps": 300,
        }),
        runtime: "tract".into(),
        precision: "f32".into(),
        params: Some(params),
        macs: Some(macs),
        accuracy: Some(seed.accuracy),
        fidelity: Some(1.0 - (PARENT_ACCURACY - seed.accuracy) * 2.1 - 0.004),
        cosine: Some(0.999 - (1.0 - seed.keep) * 0.05),
        status: String::new(),
        winner,
        ..CandidateRow::default()
    };
    match outcome {
        Outcome::Measured(p90, pareto) => {
            row.status = "measured".into();
            row.predicted_ms = Some(p90 * (1.0 + (seed.keep - 0.7) * 0.2));
            row.p50_ms = Some(p90 * 0.93);
            row.p90_ms = Some(p90);
            row.p99_ms = Some(p90 * 1.11);
            row.peak_rss_bytes = Some(((80.0 + 120.0 * seed.keep) * class_scale * MIB) as i64);
            row.load_ms = Some((140.0 + 180.0 * seed.keep) * class_scale);
            row.pareto = pareto;
        }
        Outcome::Rejected => {
            row.status = "rejected".into();
            let drop_pp = (PARENT_ACCURACY - seed.accuracy) * 100.0;
            row.note = Some(format!("accuracy drop {drop_pp:.2} pp is over the 1.00 pp budget"));
        }
        Outcome::Skipped(predicted) => {
            row.status = "skipped".into();
            row.predicted_ms = Some(predicted);
            row.note =
                Some(format!("predicted {predicted:.1} ms: dominated by a measured candidate"));
        }
        Outcome::Failed => {
            row.status = "failed".into();
            row.model = None;
            row.params = None;
            row.macs = None;
            row.accuracy = None;
            row.fidelity = None;
            row.cosine = None;
            row.note =
                Some("gate: tract could not optimise the pruned graph (Reshape to 0x64)".into());
        }
        Outcome::Unmeasured(predicted) => {
            row.status = "unmeasured".into();
            row.predicted_ms = Some(predicted);
            row.note = Some("2 of 2 benchmark jobs timed out after 300 s".into());
        }
    }
    row
}

fn parent(p90: f64, rss_mib: f64, load_ms: f64) -> Figures {
    Figures {
        precision: Default::default(),
        runtime: Default::default(),
        model: "01JF8PARENT0MINILM3SST2X4QW".into(),
        name: "minilm-l3-sentiment".into(),
        p50_ms: Some(p90 * 0.94),
        p90_ms: Some(p90),
        p99_ms: Some(p90 * 1.09),
        peak_rss_bytes: Some((rss_mib * MIB) as i64),
        load_ms: Some(load_ms),
        accuracy: Some(PARENT_ACCURACY),
        fidelity: Some(1.0),
        cosine: Some(1.0),
        perplexity: None,
    }
}

fn figures(row: &CandidateRow, name: &str) -> Figures {
    Figures {
        precision: Default::default(),
        runtime: Default::default(),
        model: row.model.clone().unwrap_or_default(),
        name: name.into(),
        p50_ms: row.p50_ms,
        p90_ms: row.p90_ms,
        p99_ms: row.p99_ms,
        peak_rss_bytes: row.peak_rss_bytes,
        load_ms: row.load_ms,
        accuracy: row.accuracy,
        fidelity: row.fidelity,
        cosine: row.cosine,
        perplexity: row.perplexity,
    }
}

fn rpi4() -> ClassResult {
    use Outcome::*;
    let outcomes = [
        Measured(104.2, true),
        Measured(93.1, true),
        Skipped(88.0),
        Measured(81.7, true),
        Measured(81.7, false), // measured twice on purpose: equal latencies
        Measured(71.3, true),
        Measured(66.0, true),
        Rejected,
        Failed,
        Unmeasured(99.0),
    ];
    let candidates: Vec<CandidateRow> =
        SEEDS.iter().zip(outcomes).map(|(s, o)| row(s, o, 1.0, false)).collect();
    let closest = ["c07", "c06"]
        .iter()
        .filter_map(|id| candidates.iter().find(|c| c.id == *id)?.model.clone())
        .collect();
    ClassResult {
        class: "rpi4".into(),
        measurement: "emulated".into(),
        how: "profile rpi4 (Cortex-A72, 4 cores at 1.5 GHz) emulated on an x86-64 host: cgroup \
              CPU quota 0.38, cpuset of 4 cores, memory.max 3800 MiB; tract, 20 warm-up and 200 \
              measured iterations"
            .into(),
        devices: vec!["agent-rpi4-a".into(), "agent-rpi4-b".into()],
        memory_mib: Some(3800.0),
        parent: Some(parent(121.0, 212.0, 330.0)),
        winner: None,
        reason: "no candidate meets the p90 latency budget of 40 ms on rpi4: the fastest within \
                 the accuracy budget (c07, keep=0.55) takes 66.0 ms"
            .into(),
        closest,
        candidates,
        device_measurements: 8,
        predictor: Some(PredictorReport {
            start: "cold".into(),
            trained_on: 6,
            held_out: 4,
            within_10pct: Some(0.75),
            mean_abs_error_pct: Some(6.2),
        }),
    }
}

fn x86() -> ClassResult {
    use Outcome::*;
    let outcomes = [
        Measured(41.5, true),
        Skipped(37.0),
        Measured(36.0, true),
        Measured(32.0, true),
        Unmeasured(30.1),
        Measured(27.4, true),
        Measured(25.3, true),
        Rejected,
        Failed,
        Measured(42.0, false),
    ];
    let candidates: Vec<CandidateRow> = SEEDS
        .iter()
        .zip(outcomes)
        .map(|(s, o)| {
            let winner = s.id == "c07";
            row(s, o, 1.05, winner)
        })
        .collect();
    let winner =
        candidates.iter().find(|c| c.winner).map(|c| figures(c, "minilm-l3-sentiment-c07"));
    ClassResult {
        class: "x86-vm-2core".into(),
        measurement: "native".into(),
        how: "measured natively on a 2-vCPU x86-64 VM (Intel Xeon, AVX2), no throttling; tract, \
              20 warm-up and 200 measured iterations"
            .into(),
        devices: vec!["agent-x86-1".into()],
        memory_mib: Some(3900.0),
        parent: Some(parent(46.3, 221.0, 290.0)),
        winner,
        reason: "fastest p90 (25.3 ms, 1.83x faster than the parent) within the 40 ms budget \
                 and the 1.00 pp accuracy budget (drop 0.93 pp)"
            .into(),
        closest: vec![],
        candidates,
        device_measurements: 7,
        predictor: Some(PredictorReport {
            start: "warm (14 points)".into(),
            trained_on: 20,
            held_out: 5,
            within_10pct: Some(0.8),
            mean_abs_error_pct: Some(4.7),
        }),
    }
}

/// The sample result.
pub(super) fn sample() -> PipelineResult {
    PipelineResult {
        pipeline: "pl-01JF8Q7XK2M4".into(),
        state: "done".into(),
        stage: "done".into(),
        error: None,
        model: "01JF8PARENT0MINILM3SST2X4QW".into(),
        model_name: "minilm-l3-sentiment".into(),
        data: "vader".into(),
        quality_metric: "accuracy".into(),
        objective: "p90".into(),
        constraints: Constraints {
            max_accuracy_drop: Some(1.0),
            min_fidelity: None,
            latency_budget_ms: Some(40.0),
            memory_budget_mib: Some(512.0),
        },
        exhaustive: false,
        classes: vec![rpi4(), x86()],
        device_measurements: 15,
        wall_seconds: 1873.4,
        report: Some("pipelines/pl-01JF8Q7XK2M4/report.html".into()),
        coordinator_cpu: "AMD EPYC 7B13 (16 cores)".into(),
        gpu_comparison: vec![
            super::cpu_line(
                "rpi4",
                "tract",
                31.2,
                "the winner of rpi4, emulated".into(),
                &super::default_assumptions(),
            ),
            super::Line {
                kind: "gpu".into(),
                device: "NVIDIA H100 80GB HBM3".into(),
                runtime: "PyTorch eager fp16".into(),
                batch: 64,
                p50_ms: 4.88,
                throughput_per_s: 13103.0,
                joules_per_inference: Some(0.0178),
                usd_per_million: Some(0.063),
                provenance: "imported from h100.json: measured elsewhere".into(),
            },
        ],
        dataset: None,
    }
}

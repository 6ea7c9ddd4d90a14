//! Post-training optimisation: passes that need no gradient step, each validated on held-out
//! data (accuracy, or fidelity to the parent) and kept only where the runtime it targets
//! measures it faster ([`optimize`]).
//!
//! - [`Pass::Fold`]: constant and shape subgraphs folded (`Graph::constant_fold_shapes`).
//! - [`Pass::Int8Dynamic`] / [`Pass::Int8Dynamic7`]: `MatMul`/`Gemm` weights to int8 per
//!   output column, activations quantized at run time ([`quant`]); the 7-bit form avoids
//!   u8×s8 saturation on x86 CPUs without VNNI.
//!
//! Latency is always measured side by side in one run ([`timing`]), in tract and in ONNX
//! Runtime, against the original in both.

pub mod lowrank;
pub mod optimize;
pub mod qdq;
pub mod quant;
pub mod timing;

use std::time::Instant;

use anyhow::Context as _;
use hone_graph::Graph;
use serde::{Deserialize, Serialize};

/// Whether this host is an x86 CPU without VNNI, where the u8×s8 int8 kernels (ONNX Runtime's;
/// `vpmaddubsw` adds two u8×s8 products into a saturating i16) can saturate with full 8-bit
/// weights: the case the 7-bit passes exist for.
pub fn u8s8_saturates() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !(std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One post-training pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pass {
    /// Constant and shape subgraphs folded into initializers.
    Fold,
    /// int8 dynamic quantization of matmuls with constant weights (8-bit weights).
    Int8Dynamic,
    /// The same with 7-bit weights (`reduce_range`).
    #[serde(rename = "int8-dynamic-7bit")]
    Int8Dynamic7,
    /// int8 static (QDQ): convolutions and matmuls with per-channel int8 weights, activations
    /// calibrated by min-max on training examples ([`qdq`]).
    Int8Static,
    /// The same, activations clipped at the 99.99th percentile of each tail.
    #[serde(rename = "int8-static-p9999")]
    Int8StaticPercentile,
    /// The same, activations clipped at their entropy (KL) threshold.
    Int8StaticEntropy,
    /// Low-rank factorisation of `MatMul` weights keeping 90 % of each one's energy, where it
    /// cuts the multiply-adds ([`lowrank`]).
    #[serde(rename = "lowrank-90")]
    LowRank90,
    /// The same keeping 97 %.
    #[serde(rename = "lowrank-97")]
    LowRank97,
}

crate::named_enum!(Pass, "pass" {
    Fold => "fold",
    Int8Dynamic => "int8-dynamic",
    Int8Dynamic7 => "int8-dynamic-7bit",
    Int8Static => "int8-static",
    Int8StaticPercentile => "int8-static-p9999",
    Int8StaticEntropy => "int8-static-entropy",
    LowRank90 => "lowrank-90",
    LowRank97 => "lowrank-97",
});

/// Calibration examples of the static passes.
pub const CALIBRATION_EXAMPLES: usize = 64;

impl Pass {
    /// Whether the pass makes an int8 model.
    pub fn is_int8(self) -> bool {
        !matches!(self, Pass::Fold | Pass::LowRank90 | Pass::LowRank97)
    }
}

/// The settings of one post-training candidate: passes applied to the parent, and the runtime
/// it is meant for (measured there by the agents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PtqSettings {
    /// Structured pruning first (with or without reconstruction), so that a class can get
    /// "pruned, int8, ONNX Runtime"; its `round_to` is the class's SIMD width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<crate::method::PruneSettings>,
    /// Passes, in order (none: the parent as it is, in `runtime`).
    pub passes: Vec<Pass>,
    /// The runtime the candidate targets.
    pub runtime: crate::method::Runtime,
}

/// The pruning session a [`PtqMethod`] keeps between candidates (the parent analysed once).
#[derive(Default)]
struct Pruner(std::sync::Mutex<Option<crate::method::PruneMethod>>);

impl PartialEq for Pruner {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Pruner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pruner")
    }
}

/// Post-training optimisation as a pipeline method ([`crate::method::CompressionMethod`]):
/// each setting is a pass list and a runtime, so the pipeline measures "the parent in ONNX
/// Runtime" and "int8 in ONNX Runtime" on the agents beside its tract candidates, and a class
/// gets whichever its devices run fastest within the quality budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PtqMethod {
    /// The settings, in grid order.
    pub settings: Vec<PtqSettings>,
    #[serde(skip)]
    pruner: std::sync::Arc<Pruner>,
}

impl Default for PtqMethod {
    /// The parent in ONNX Runtime, and in ONNX Runtime: int8 dynamic (8- and 7-bit weights)
    /// and int8 static (min-max calibration), each after folding.
    fn default() -> Self {
        use crate::method::Runtime::Ort;
        PtqMethod {
            settings: vec![
                PtqSettings { prune: None, passes: vec![], runtime: Ort },
                PtqSettings {
                    prune: None,
                    passes: vec![Pass::Fold, Pass::Int8Dynamic],
                    runtime: Ort,
                },
                PtqSettings {
                    prune: None,
                    passes: vec![Pass::Fold, Pass::Int8Dynamic7],
                    runtime: Ort,
                },
                PtqSettings {
                    prune: None,
                    passes: vec![Pass::Fold, Pass::Int8Static],
                    runtime: Ort,
                },
            ],
            pruner: Default::default(),
        }
    }
}

impl crate::method::CompressionMethod for PtqMethod {
    fn name(&self) -> &'static str {
        "ptq"
    }

    fn grid(&self, target: &crate::method::Target) -> Vec<serde_json::Value> {
        self.settings
            .iter()
            .map(|s| {
                let mut s = s.clone();
                if let Some(p) = &mut s.prune {
                    p.round_to = target.simd_width;
                }
                serde_json::to_value(s).expect("settings serialise")
            })
            .collect()
    }

    fn compress(
        &self,
        ctx: &crate::method::MethodContext<'_>,
        settings: &serde_json::Value,
    ) -> anyhow::Result<crate::method::Candidate> {
        let s: PtqSettings = serde_json::from_value(settings.clone())
            .context("post-training settings: passes, runtime")?;
        let mut pruned = serde_json::Value::Null;
        let parent = match &s.prune {
            None => hone_learn::eval::load_model(ctx.parent)?,
            Some(p) => {
                let path = ctx.out.with_extension("pruned.onnx");
                let mut guard = self.pruner.0.lock().unwrap_or_else(|e| e.into_inner());
                let pruner = guard.get_or_insert_with(|| {
                    crate::method::PruneMethod::new(crate::method::PruneGrid::default())
                });
                let inner = crate::method::MethodContext { out: &path, ..ctx.clone() };
                let c = pruner.compress(&inner, &serde_json::to_value(p)?)?;
                pruned = c.report;
                let g = hone_learn::eval::load_model(&path)?;
                let _ = std::fs::remove_file(&path);
                g
            }
        };
        let (graph, records) = apply(&parent, &s.passes, Some(ctx.data))?;
        if s.runtime == crate::method::Runtime::Ort {
            hone_learn::eval::ort::OrtModel::new(&graph, 1)
                .context("ONNX Runtime cannot load the candidate")?;
        }
        graph.save_gated(ctx.out, ctx.inputs).context("writing the optimised model")?;
        let int8 = s.passes.iter().any(|p| p.is_int8());
        Ok(crate::method::Candidate {
            model: ctx.out.to_path_buf(),
            method: "ptq",
            settings: settings.clone(),
            runtime: s.runtime,
            precision: if int8 {
                crate::method::Precision::Int8
            } else {
                crate::method::Precision::F32
            },
            report: serde_json::json!({
                "prune": pruned,
                "passes": records,
                "params_after": if s.prune.is_some() {
                    pruned["params_after"].clone()
                } else {
                    serde_json::json!(crate::prune::param_count(&parent))
                },
            }),
        })
    }
}

/// What one pass did, and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct PassRecord {
    /// The pass.
    pub pass: Pass,
    /// Wall time of the pass on this machine, seconds.
    pub seconds: f64,
    /// The pass's own report.
    pub report: serde_json::Value,
}

/// Applies `passes` in order to a copy of `graph`; `data` calibrates the static passes.
pub fn apply(
    graph: &Graph,
    passes: &[Pass],
    data: Option<&hone_learn::eval::EvalData>,
) -> anyhow::Result<(Graph, Vec<PassRecord>)> {
    let mut g = graph.clone();
    let mut records = Vec::new();
    for &pass in passes {
        let started = Instant::now();
        let report = match pass {
            Pass::Fold => {
                let r = g.constant_fold_shapes().context("folding constants")?;
                let bn = qdq::fold_batch_norms(&mut g).context("folding batch norms")?;
                serde_json::json!({
                    "folded_nodes": r.folded_nodes.len(),
                    "skipped": r.skipped.len(),
                    "folded_batch_norms": bn,
                })
            }
            Pass::LowRank90 | Pass::LowRank97 => {
                let energy = if pass == Pass::LowRank90 { 0.90 } else { 0.97 };
                let (f, r) = lowrank::factorise(&g, energy)?;
                if r.factored.is_empty() {
                    anyhow::bail!(
                        "{pass}: no MatMul weight where a rank keeping {:.0} % of its energy \
                         cuts the multiply-adds",
                        energy * 100.0
                    );
                }
                g = f;
                serde_json::to_value(&r)?
            }
            Pass::Int8Static | Pass::Int8StaticPercentile | Pass::Int8StaticEntropy => {
                let data = data.with_context(|| format!("{pass} needs calibration data"))?;
                let calibration = match pass {
                    Pass::Int8Static => qdq::Calibration::MinMax,
                    Pass::Int8StaticEntropy => qdq::Calibration::Entropy,
                    _ => qdq::Calibration::Percentile(99.99),
                };
                let (q, r) = qdq::quantize_static(&g, data, calibration, CALIBRATION_EXAMPLES)?;
                g = q;
                serde_json::to_value(&r)?
            }
            Pass::Int8Dynamic | Pass::Int8Dynamic7 => {
                let opts = quant::DynamicOptions {
                    per_channel: true,
                    reduce_range: pass == Pass::Int8Dynamic7,
                };
                let (q, r) = quant::quantize_dynamic(&g, opts)?;
                if r.quantized.is_empty() {
                    anyhow::bail!("{pass}: no MatMul or Gemm with a constant weight to quantize");
                }
                g = q;
                serde_json::to_value(&r)?
            }
        };
        records.push(PassRecord { pass, seconds: started.elapsed().as_secs_f64(), report });
    }
    Ok((g, records))
}

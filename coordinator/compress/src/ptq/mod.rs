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

pub mod optimize;
pub mod quant;
pub mod timing;

use std::time::Instant;

use anyhow::Context as _;
use hone_graph::Graph;
use serde::{Deserialize, Serialize};

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
}

crate::named_enum!(Pass, "pass" {
    Fold => "fold",
    Int8Dynamic => "int8-dynamic",
    Int8Dynamic7 => "int8-dynamic-7bit",
});

impl Pass {
    /// Whether the pass makes an int8 model.
    pub fn is_int8(self) -> bool {
        matches!(self, Pass::Int8Dynamic | Pass::Int8Dynamic7)
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

/// Applies `passes` in order to a copy of `graph`.
pub fn apply(graph: &Graph, passes: &[Pass]) -> anyhow::Result<(Graph, Vec<PassRecord>)> {
    let mut g = graph.clone();
    let mut records = Vec::new();
    for &pass in passes {
        let started = Instant::now();
        let report = match pass {
            Pass::Fold => {
                let r = g.constant_fold_shapes().context("folding constants")?;
                serde_json::json!({
                    "folded_nodes": r.folded_nodes.len(),
                    "skipped": r.skipped.len(),
                })
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

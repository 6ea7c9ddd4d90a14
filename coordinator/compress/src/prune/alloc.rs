//! How many units each group keeps, and which.
//!
//! - **uniform**: every prunable group removes the same fraction;
//! - **global**: units of all groups ranked together by their score divided by their group's
//!   mean score (so groups with uneven importance give up more), the lowest fraction removed;
//! - **sensitivity**: each group is pruned alone at the target fraction, and the validation
//!   accuracy lost and the MACs saved are measured; fractions then grow with `√(saved / lost)`,
//!   averaging the target.
//!
//! Kept widths are then rounded up to a multiple of `round_to` channels (the SIMD width of the
//! target: 8 f32 lanes for AVX2, 4 for NEON), so tract's kernels run without remainder loops.

use std::collections::BTreeMap;

use super::Analysis;
use super::apply::Selection;
use super::groups::{Group, gcd, lcm};
use super::importance::Scores;

/// Per-layer allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// The same fraction everywhere.
    #[default]
    Uniform,
    /// One ranking across groups.
    Global,
    /// Fractions inversely proportional to measured sensitivity.
    Sensitivity,
}

crate::named_enum!(Allocation, "allocation" {
    Uniform => "uniform",
    Global => "global",
    Sensitivity => "sensitivity",
});

/// Units to keep of `group` when `keep` would, rounded so the kept channels are a multiple of
/// `round_to` (to the nearest multiple, ties up; never below one step, never above all units).
pub fn rounded(group: &Group, keep: usize, round_to: usize) -> usize {
    let units = group.units();
    let round_to = round_to.max(1);
    // Every producer's kept channels (units × its unit) must be a multiple of `round_to`.
    let step = group.members.iter().fold(1, |acc, m| lcm(acc, round_to / gcd(m.unit, round_to)));
    if units <= step {
        return units;
    }
    let k = keep.clamp(1, units);
    let near = (k + step / 2) / step * step;
    near.clamp(step, units)
}

/// Units kept per group at `fraction` removed, uniformly.
pub fn uniform(analysis: &Analysis, fraction: f64, round_to: usize) -> BTreeMap<usize, usize> {
    analysis
        .prunable()
        .map(|g| {
            let keep = ((1.0 - fraction) * g.units() as f64).round() as usize;
            (g.id, rounded(g, keep, round_to))
        })
        .collect()
}

/// Units kept per group at `fraction` of all units removed, ranked globally.
pub fn global(
    analysis: &Analysis,
    scores: &Scores,
    fraction: f64,
    round_to: usize,
) -> BTreeMap<usize, usize> {
    let mut all: Vec<(f64, usize)> = Vec::new();
    for g in analysis.prunable() {
        let Some(s) = scores.get(&g.id) else { continue };
        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
        all.extend(s.iter().map(|x| (if mean > 0.0 { x / mean } else { 0.0 }, g.id)));
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = all.len();
    let mut removed: BTreeMap<usize, usize> = BTreeMap::new();
    for (_, gid) in all.iter().take((fraction * total as f64).round() as usize) {
        *removed.entry(*gid).or_default() += 1;
    }
    analysis
        .prunable()
        .map(|g| {
            let r = removed.get(&g.id).copied().unwrap_or(0).min(g.units() * 9 / 10);
            (g.id, rounded(g, g.units() - r, round_to))
        })
        .collect()
}

/// What pruning one group alone at the target fraction costs and saves.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sensitivity {
    /// Validation accuracy (or agreement) lost, 0 to 1.
    pub loss: f64,
    /// Fraction of the model's MACs saved.
    pub macs_saved: f64,
}

/// Units kept per group from measured sensitivities: a group's fraction grows with the MACs it
/// saves per accuracy it costs (`√(saved / lost)`), scaled so that the unit-weighted mean
/// fraction is the target. Cheap-to-prune, compute-heavy layers give up more.
pub fn sensitivity(
    analysis: &Analysis,
    measured: &BTreeMap<usize, Sensitivity>,
    fraction: f64,
    round_to: usize,
) -> BTreeMap<usize, usize> {
    let groups: Vec<&Group> = analysis.prunable().collect();
    // One validation example in a thousand: losses below it are noise.
    let eps = 1e-3;
    let inv: Vec<f64> = groups
        .iter()
        .map(|g| {
            let m =
                measured.get(&g.id).copied().unwrap_or(Sensitivity { loss: 0.0, macs_saved: 0.0 });
            ((m.macs_saved.max(0.0) + 1e-4) / (m.loss.max(0.0) + eps)).sqrt()
        })
        .collect();
    let units: Vec<f64> = groups.iter().map(|g| g.units() as f64).collect();
    let total: f64 = units.iter().sum();
    // Scale so that the unit-weighted mean fraction is the target (clamped to [0, 0.9]).
    let mut scale = fraction * total / inv.iter().zip(&units).map(|(i, u)| i * u).sum::<f64>();
    for _ in 0..20 {
        let got: f64 =
            inv.iter().zip(&units).map(|(i, u)| (i * scale).clamp(0.0, 0.9) * u).sum::<f64>();
        if got <= 0.0 {
            break;
        }
        scale *= fraction * total / got;
    }
    groups
        .iter()
        .zip(&inv)
        .map(|(g, i)| {
            let f = (i * scale).clamp(0.0, 0.9);
            let keep = ((1.0 - f) * g.units() as f64).round() as usize;
            (g.id, rounded(g, keep, round_to))
        })
        .collect()
}

/// The highest-scoring `keep[g]` units of each group (ties: lower index first), sorted.
pub fn select(scores: &Scores, keep: &BTreeMap<usize, usize>) -> Selection {
    let mut out = Selection::new();
    for (&gid, &k) in keep {
        let Some(s) = scores.get(&gid) else { continue };
        let mut order: Vec<usize> = (0..s.len()).collect();
        order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        let mut kept: Vec<usize> = order.into_iter().take(k.min(s.len())).collect();
        kept.sort_unstable();
        out.insert(gid, kept);
    }
    out
}

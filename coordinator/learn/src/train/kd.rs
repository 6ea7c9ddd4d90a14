//! Distillation losses: the divergence between a teacher's distribution `p` and a student's `q`
//! over classes (or a vocabulary), computed from logits, with a temperature.
//!
//! - forward KL, `KL(p ‖ q) = Σ p (log p − log q)`: mode-covering, the classic Hinton loss;
//! - reverse KL, `KL(q ‖ p)`: mode-seeking (MiniLLM), so a small student does not spread mass
//!   over what it cannot represent;
//! - skew KL, `KL(p ‖ α p + (1 − α) q)`, and skew reverse KL, `KL(q ‖ (1 − α) p + α q)`
//!   (DistiLLM): the mixture keeps the divergence and its gradient bounded (by `log 1/α`) when
//!   the student puts almost no mass where the teacher does.
//!
//! The teacher is given either as full logits ([`Teacher::Logits`]) or as its top-k
//! log-probabilities cached on disk ([`Teacher::TopK`]). In the top-k case both distributions
//! are compared over k + 1 buckets: the k teacher tokens, and one bucket for all the rest (the
//! teacher's tail mass `1 − Σ top-k`, the student's mass outside those k tokens). Merging
//! outcomes never increases a KL divergence (data processing), so the truncated forward and
//! reverse KL are lower bounds of the full ones: what the tail bucket hides is how the mass
//! outside the top k is spread, and the reverse KL no longer penalises a student that puts
//! its tail mass on tokens the teacher finds unlikely, only the amount of it.
//!
//! Every loss is a scalar in candle's autograd graph. Rows can be weighted (padding positions
//! get 0). With a temperature `T`, both sides are softened (`softmax(z / T)`) and the loss is
//! scaled by `T²`, so its gradient keeps its size as `T` changes (Hinton et al.).

use candle_core::{D, DType, Tensor};

use super::TrainError;
use super::loss::log_softmax;

/// Probabilities are floored here before a logarithm (the tail bucket can be empty).
const FLOOR: f64 = 1e-12;

/// Which divergence a distillation minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Divergence {
    /// Forward KL, `KL(p ‖ q)`.
    Fkl,
    /// Reverse KL, `KL(q ‖ p)`.
    Rkl,
    /// Skew KL, `KL(p ‖ α p + (1 − α) q)`.
    Skl,
    /// Skew reverse KL, `KL(q ‖ (1 − α) p + α q)`.
    Srkl,
}

impl Divergence {
    /// Every divergence, in a stable order.
    pub const ALL: [Divergence; 4] =
        [Divergence::Fkl, Divergence::Rkl, Divergence::Skl, Divergence::Srkl];

    /// The short name (`fkl`, `rkl`, `skl`, `srkl`).
    pub fn name(self) -> &'static str {
        match self {
            Divergence::Fkl => "fkl",
            Divergence::Rkl => "rkl",
            Divergence::Skl => "skl",
            Divergence::Srkl => "srkl",
        }
    }

    /// Whether the method calls for sequences the student generates itself (MiniLLM and
    /// DistiLLM train the reverse and skew-reverse forms partly on-policy).
    pub fn on_policy(self) -> bool {
        matches!(self, Divergence::Rkl | Divergence::Srkl)
    }
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Divergence {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fkl" | "kl" | "forward-kl" => Ok(Divergence::Fkl),
            "rkl" | "reverse-kl" => Ok(Divergence::Rkl),
            "skl" | "skew-kl" => Ok(Divergence::Skl),
            "srkl" | "skew-reverse-kl" => Ok(Divergence::Srkl),
            other => Err(format!("unknown loss `{other}`: fkl, rkl, skl or srkl")),
        }
    }
}

/// A distillation loss: the divergence, its temperature and the skew `α`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KdLoss {
    /// The divergence.
    pub divergence: Divergence,
    /// Softening temperature (1: none).
    pub temperature: f64,
    /// DistiLLM's skew (0 < α < 1); only the skew divergences read it.
    pub alpha: f64,
}

impl KdLoss {
    /// `divergence` at temperature 1 with DistiLLM's default skew, 0.1.
    pub fn new(divergence: Divergence) -> KdLoss {
        KdLoss { divergence, temperature: 1.0, alpha: 0.1 }
    }

    /// Checks the settings.
    pub fn check(&self) -> Result<(), TrainError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(TrainError::config(format!(
                "the temperature must be positive, got {}",
                self.temperature
            )));
        }
        if matches!(self.divergence, Divergence::Skl | Divergence::Srkl)
            && !(self.alpha > 0.0 && self.alpha < 1.0)
        {
            return Err(TrainError::config(format!(
                "the skew α must be strictly between 0 and 1, got {}",
                self.alpha
            )));
        }
        Ok(())
    }
}

/// The teacher's side of a distillation loss, for N rows.
#[derive(Debug, Clone)]
pub enum Teacher {
    /// Full logits `[N, C]`.
    Logits(Tensor),
    /// The k most likely classes of each row: `indices` `[N, k]` (u32) and their
    /// log-probabilities at temperature 1, `[N, k]`; the rest of each row's mass is the tail.
    TopK {
        /// Class indices, `[N, k]`, u32.
        indices: Tensor,
        /// Their log-probabilities, `[N, k]`, f32.
        logprobs: Tensor,
    },
}

/// Log-probabilities of teacher and student over the same buckets, `[N, B]` each.
fn buckets(student: &Tensor, teacher: &Teacher, temp: f64) -> Result<(Tensor, Tensor), TrainError> {
    let student = if temp == 1.0 { student.clone() } else { student.affine(1.0 / temp, 0.0)? };
    let lq = log_softmax(&student)?;
    match teacher {
        Teacher::Logits(t) => {
            if t.dims() != lq.dims() {
                return Err(TrainError::config(format!(
                    "distillation: teacher logits {:?} and student logits {:?} differ in shape",
                    t.dims(),
                    lq.dims()
                )));
            }
            let t = t.to_dtype(lq.dtype())?.detach();
            let t = if temp == 1.0 { t } else { t.affine(1.0 / temp, 0.0)? };
            Ok((log_softmax(&t)?, lq))
        }
        Teacher::TopK { indices, logprobs } => {
            if temp != 1.0 {
                return Err(TrainError::config(
                    "distillation from cached top-k log-probabilities needs temperature 1 (the \
                     tail cannot be re-softened)",
                ));
            }
            let (n, k) = indices.dims2()?;
            let (n2, c) = lq.dims2()?;
            if n != n2 || logprobs.dims() != [n, k] || k >= c {
                return Err(TrainError::config(format!(
                    "distillation: top-k indices {:?} and log-probabilities {:?} do not fit \
                     student logits {:?}",
                    indices.dims(),
                    logprobs.dims(),
                    lq.dims()
                )));
            }
            let lp_top = logprobs.to_dtype(lq.dtype())?.detach();
            let lq_top = lq.gather(&indices.to_dtype(DType::U32)?.contiguous()?, D::Minus1)?;
            Ok((with_tail(&lp_top)?, with_tail(&lq_top)?))
        }
    }
}

/// `[N, k]` log-probabilities plus a last column, the log of the remaining mass.
fn with_tail(top: &Tensor) -> Result<Tensor, TrainError> {
    let mass = top.exp()?.sum_keepdim(D::Minus1)?;
    let tail = mass.affine(-1.0, 1.0)?.clamp(FLOOR, 1.0)?.log()?;
    Ok(Tensor::cat(&[top, &tail], D::Minus1)?)
}

/// `log(a·e^x + (1 − a)·e^y)`, element-wise.
fn log_mix(a: f64, x: &Tensor, y: &Tensor) -> Result<Tensor, TrainError> {
    let m = (x.exp()?.affine(a, 0.0)? + y.exp()?.affine(1.0 - a, 0.0)?)?;
    Ok(m.clamp(FLOOR, f64::MAX)?.log()?)
}

/// Per-row divergence `[N]` between log-probabilities `lp` (teacher) and `lq` (student).
fn per_row(loss: &KdLoss, lp: &Tensor, lq: &Tensor) -> Result<Tensor, TrainError> {
    let kl = |la: &Tensor, lb: &Tensor| -> Result<Tensor, TrainError> {
        Ok((la.exp()? * (la - lb)?)?.sum(D::Minus1)?)
    };
    match loss.divergence {
        Divergence::Fkl => kl(lp, lq),
        Divergence::Rkl => kl(lq, lp),
        Divergence::Skl => kl(lp, &log_mix(loss.alpha, lp, lq)?),
        Divergence::Srkl => kl(lq, &log_mix(1.0 - loss.alpha, lp, lq)?),
    }
}

/// The distillation loss of `student` logits `[N, C]` against `teacher`, averaged over rows
/// with `weights` (`[N]`, e.g. 0 for padding; `None`: all 1), times `T²`.
pub fn kd_loss(
    student: &Tensor,
    teacher: &Teacher,
    loss: &KdLoss,
    weights: Option<&Tensor>,
) -> Result<Tensor, TrainError> {
    loss.check()?;
    if student.rank() != 2 {
        return Err(TrainError::config(format!(
            "distillation needs student logits [N, C], got {:?}",
            student.dims()
        )));
    }
    let (lp, lq) = buckets(student, teacher, loss.temperature)?;
    let rows = per_row(loss, &lp, &lq)?;
    let t2 = loss.temperature * loss.temperature;
    match weights {
        None => Ok(rows.mean_all()?.affine(t2, 0.0)?),
        Some(w) => {
            let w = w.to_dtype(rows.dtype())?.detach();
            let total = w.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if total <= 0.0 {
                return Err(TrainError::config("distillation: every row has weight 0"));
            }
            Ok((rows * w)?.sum_all()?.affine(t2 / total, 0.0)?)
        }
    }
}

/// The teacher's `k` most likely classes of each of N rows, row-major: what a teacher cache
/// keeps on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    /// Classes kept per row.
    pub k: usize,
    /// `N·k` class indices, each row from the most likely down.
    pub indices: Vec<u32>,
    /// Their log-probabilities at temperature 1.
    pub logprobs: Vec<f32>,
}

impl TopK {
    /// The top `k` of each row of `logits` `[N, C]` (`k` is capped at C).
    pub fn of(logits: &Tensor, k: usize) -> Result<TopK, TrainError> {
        let lp: Vec<Vec<f32>> = log_softmax(&logits.to_dtype(DType::F32)?)?.to_vec2()?;
        let k = k.min(lp.first().map_or(0, Vec::len)).max(1);
        let mut out = TopK { k, indices: Vec::new(), logprobs: Vec::new() };
        for row in &lp {
            let mut order: Vec<u32> = (0..row.len() as u32).collect();
            order.select_nth_unstable_by(k - 1, |&a, &b| {
                row[b as usize].total_cmp(&row[a as usize])
            });
            let mut top: Vec<u32> = order[..k].to_vec();
            top.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            out.logprobs.extend(top.iter().map(|&i| row[i as usize]));
            out.indices.extend(top);
        }
        Ok(out)
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.indices.len() / self.k.max(1)
    }

    /// The mass outside the top k of each row.
    pub fn tail_mass(&self) -> Vec<f32> {
        self.logprobs
            .chunks(self.k.max(1))
            .map(|r| (1.0 - r.iter().map(|v| v.exp()).sum::<f32>()).max(0.0))
            .collect()
    }

    /// As a [`Teacher`] on `device`.
    pub fn teacher(&self, device: &candle_core::Device) -> Result<Teacher, TrainError> {
        let n = self.rows();
        Ok(Teacher::TopK {
            indices: Tensor::from_slice(&self.indices, (n, self.k), device)?,
            logprobs: Tensor::from_slice(&self.logprobs, (n, self.k), device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn t(v: &[f64], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn value(x: &Tensor) -> f64 {
        x.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Teacher and student logits of 3 rows over 5 classes, in f64.
    fn logits() -> (Tensor, Tensor) {
        let s = [0.3, -1.2, 2.0, 0.1, 0.5, 1.5, 1.4, -0.3, 0.0, -2.0, 0.2, 0.2, 0.2, 3.0, -1.0];
        let p = [1.0, -0.5, 1.7, 0.9, -0.2, 0.1, 2.4, -1.3, 0.4, -0.6, -0.8, 0.6, 0.0, 2.5, 0.3];
        (t(&s, (3, 5)), t(&p, (3, 5)))
    }

    fn loss(d: Divergence, temperature: f64, alpha: f64) -> KdLoss {
        KdLoss { divergence: d, temperature, alpha }
    }

    #[test]
    fn every_divergence_is_zero_at_the_teacher_and_positive_elsewhere() {
        let (s, p) = logits();
        for d in Divergence::ALL {
            let same = kd_loss(&p, &Teacher::Logits(p.clone()), &loss(d, 2.0, 0.1), None).unwrap();
            assert!(value(&same).abs() < 1e-12, "{d}: {}", value(&same));
            let diff = kd_loss(&s, &Teacher::Logits(p.clone()), &loss(d, 2.0, 0.1), None).unwrap();
            assert!(value(&diff) > 1e-3, "{d}: {}", value(&diff));
        }
    }

    #[test]
    fn forward_kl_matches_a_hand_computation() {
        // One row, two classes: p = softmax([0, ln 3]) = (1/4, 3/4), q = (1/2, 1/2).
        let s = t(&[0.0, 0.0], (1, 2));
        let p = t(&[0.0, 3f64.ln()], (1, 2));
        let f = value(
            &kd_loss(&s, &Teacher::Logits(p.clone()), &KdLoss::new(Divergence::Fkl), None).unwrap(),
        );
        let want = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
        assert!((f - want).abs() < 1e-12, "{f} vs {want}");
        let r =
            value(&kd_loss(&s, &Teacher::Logits(p), &KdLoss::new(Divergence::Rkl), None).unwrap());
        let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((r - want).abs() < 1e-12, "{r} vs {want}");
    }

    #[test]
    fn reverse_kl_is_forward_kl_with_roles_swapped_and_skews_tend_to_their_limits() {
        let (s, p) = logits();
        let rkl = value(
            &kd_loss(&s, &Teacher::Logits(p.clone()), &loss(Divergence::Rkl, 1.5, 0.1), None)
                .unwrap(),
        );
        let swapped = value(
            &kd_loss(&p, &Teacher::Logits(s.clone()), &loss(Divergence::Fkl, 1.5, 0.1), None)
                .unwrap(),
        );
        assert!((rkl - swapped).abs() < 1e-12);
        assert!(
            (rkl - value(
                &kd_loss(&s, &Teacher::Logits(p.clone()), &loss(Divergence::Fkl, 1.5, 0.1), None)
                    .unwrap()
            ))
            .abs()
                > 1e-3,
            "forward and reverse KL must differ on these rows"
        );
        // α → 0: the mixture becomes the other distribution.
        for (skew, plain) in
            [(Divergence::Skl, Divergence::Fkl), (Divergence::Srkl, Divergence::Rkl)]
        {
            let a = value(
                &kd_loss(&s, &Teacher::Logits(p.clone()), &loss(skew, 1.0, 1e-9), None).unwrap(),
            );
            let b = value(
                &kd_loss(&s, &Teacher::Logits(p.clone()), &loss(plain, 1.0, 0.1), None).unwrap(),
            );
            assert!((a - b).abs() < 1e-6, "{skew} at α→0: {a} vs {b}");
        }
    }

    #[test]
    fn skew_divergences_stay_below_log_one_over_alpha() {
        // A student that puts almost no mass where the teacher does: KL explodes, skew KL not.
        let s = t(&[40.0, -40.0], (1, 2));
        let p = t(&[-40.0, 40.0], (1, 2));
        let fkl = value(
            &kd_loss(&s, &Teacher::Logits(p.clone()), &loss(Divergence::Fkl, 1.0, 0.1), None)
                .unwrap(),
        );
        assert!(fkl > 50.0, "{fkl}");
        for d in [Divergence::Skl, Divergence::Srkl] {
            let v =
                value(&kd_loss(&s, &Teacher::Logits(p.clone()), &loss(d, 1.0, 0.1), None).unwrap());
            assert!(v <= (1.0f64 / 0.1).ln() + 1e-9 && v > 1.0, "{d}: {v}");
        }
    }

    #[test]
    fn top_k_buckets_lower_bound_the_full_divergence_and_equal_it_without_a_tail() {
        let (s, p) = logits();
        for d in [Divergence::Fkl, Divergence::Rkl] {
            let full =
                value(&kd_loss(&s, &Teacher::Logits(p.clone()), &loss(d, 1.0, 0.1), None).unwrap());
            for k in 1..=4 {
                let teacher = TopK::of(&p, k).unwrap().teacher(&Device::Cpu).unwrap();
                let trunc = value(&kd_loss(&s, &teacher, &loss(d, 1.0, 0.1), None).unwrap());
                assert!(trunc <= full + 1e-6, "{d} k={k}: {trunc} > {full}");
                if k == 4 {
                    // 4 of 5 classes plus a one-class tail is the full distribution.
                    assert!((trunc - full).abs() < 1e-5, "{d}: {trunc} vs {full}");
                }
            }
        }
    }

    #[test]
    fn top_k_picks_the_largest_in_order() {
        let top = TopK::of(&t(&[0.1, 3.0, -1.0, 2.0], (1, 4)), 2).unwrap();
        assert_eq!(top.indices, vec![1, 3]);
        assert!(top.logprobs[0] > top.logprobs[1]);
        let tail = top.tail_mass()[0];
        let z: f32 = [0.1f32, 3.0, -1.0, 2.0].iter().map(|v| v.exp()).sum();
        assert!((tail - (0.1f32.exp() + (-1f32).exp()) / z).abs() < 1e-6, "{tail}");
    }

    #[test]
    fn row_weights_ignore_padding_rows() {
        let (s, p) = logits();
        let w = Tensor::new(&[1.0f64, 0.0, 1.0], &Device::Cpu).unwrap();
        let weighted = value(
            &kd_loss(&s, &Teacher::Logits(p.clone()), &KdLoss::new(Divergence::Fkl), Some(&w))
                .unwrap(),
        );
        let rows = |i: usize| {
            value(
                &kd_loss(
                    &s.narrow(0, i, 1).unwrap(),
                    &Teacher::Logits(p.narrow(0, i, 1).unwrap()),
                    &KdLoss::new(Divergence::Fkl),
                    None,
                )
                .unwrap(),
            )
        };
        assert!((weighted - (rows(0) + rows(2)) / 2.0).abs() < 1e-12);
        let zero = Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap();
        assert!(
            kd_loss(&s, &Teacher::Logits(p), &KdLoss::new(Divergence::Fkl), Some(&zero)).is_err()
        );
    }

    #[test]
    fn bad_settings_and_shapes_are_refused() {
        let (s, p) = logits();
        let teacher = Teacher::Logits(p.clone());
        assert!(kd_loss(&s, &teacher, &loss(Divergence::Skl, 1.0, 1.0), None).is_err());
        assert!(kd_loss(&s, &teacher, &loss(Divergence::Fkl, 0.0, 0.1), None).is_err());
        assert!(
            kd_loss(&s.narrow(1, 0, 4).unwrap(), &teacher, &KdLoss::new(Divergence::Fkl), None)
                .is_err()
        );
        let topk = TopK::of(&p, 2).unwrap().teacher(&Device::Cpu).unwrap();
        let err = kd_loss(&s, &topk, &loss(Divergence::Fkl, 2.0, 0.1), None).unwrap_err();
        assert!(err.to_string().contains("temperature 1"), "{err}");
    }

    /// The autograd gradient of every divergence (full and top-k) against central differences,
    /// in f64.
    #[test]
    fn gradients_match_central_differences() {
        let (s, p) = logits();
        let topk = TopK::of(&p, 2).unwrap().teacher(&Device::Cpu).unwrap();
        let base: Vec<f64> = s.flatten_all().unwrap().to_vec1().unwrap();
        for teacher in [Teacher::Logits(p.clone()), topk] {
            for d in Divergence::ALL {
                let temp = if matches!(teacher, Teacher::Logits(_)) { 2.0 } else { 1.0 };
                let cfg = loss(d, temp, 0.2);
                let var = Var::from_tensor(&s).unwrap();
                let l = kd_loss(var.as_tensor(), &teacher, &cfg, None).unwrap();
                let g: Vec<f64> = l
                    .backward()
                    .unwrap()
                    .get(var.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let h = 1e-5;
                for i in 0..base.len() {
                    let at = |delta: f64| {
                        let mut v = base.clone();
                        v[i] += delta;
                        value(&kd_loss(&t(&v, (3, 5)), &teacher, &cfg, None).unwrap())
                    };
                    let numeric = (at(h) - at(-h)) / (2.0 * h);
                    assert!(
                        (g[i] - numeric).abs() < 1e-7,
                        "{d} T={temp} [{i}]: autograd {} vs {numeric}",
                        g[i]
                    );
                }
            }
        }
    }
}

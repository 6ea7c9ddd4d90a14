//! Losses: cross-entropy from logits with class-index targets, mean squared error and cosine
//! distance. Each returns a scalar tensor that is part of candle's autograd graph.

use candle_core::{D, DType, Tensor};

use super::TrainError;

/// Which loss a training run minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// [`cross_entropy`] of logits against class indices.
    CrossEntropy,
    /// [`mse`] against a target tensor.
    Mse,
    /// [`cosine`] distance against a target tensor.
    Cosine,
}

impl std::str::FromStr for LossKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cross-entropy" | "ce" => Ok(LossKind::CrossEntropy),
            "mse" => Ok(LossKind::Mse),
            "cosine" => Ok(LossKind::Cosine),
            other => Err(format!("unknown loss `{other}`: cross-entropy, mse or cosine")),
        }
    }
}

/// Mean cross-entropy of `logits` [N, C] against class indices `targets` (N of them, each
/// below C): `−mean_i log softmax(logits_i)[targets_i]`. The log-softmax subtracts the
/// (detached) row maximum, so large logits do not overflow.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor, TrainError> {
    let (n, c) = logits.dims2().map_err(|_| {
        TrainError::config(format!("cross-entropy needs logits [N, C], got {:?}", logits.dims()))
    })?;
    if targets.len() != n {
        return Err(TrainError::config(format!(
            "cross-entropy: {} targets for {n} rows of logits",
            targets.len()
        )));
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= c) {
        return Err(TrainError::config(format!(
            "cross-entropy: target {t} is not a class of 0..{c}"
        )));
    }
    let logp = log_softmax(logits)?;
    let mut onehot = vec![0f32; n * c];
    for (i, &t) in targets.iter().enumerate() {
        onehot[i * c + t as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (n, c), logits.device())?.to_dtype(logits.dtype())?;
    Ok((logp * onehot)?.sum_all()?.affine(-1.0 / n as f64, 0.0)?)
}

/// Log-softmax over the last axis.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor, TrainError> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let z = logits.broadcast_sub(&max)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(z.broadcast_sub(&lse)?)
}

/// Mean squared error over every element.
pub fn mse(prediction: &Tensor, target: &Tensor) -> Result<Tensor, TrainError> {
    same_shape("mse", prediction, target)?;
    Ok((prediction - target.to_dtype(prediction.dtype())?)?.sqr()?.mean_all()?)
}

/// Mean cosine distance `1 − cos(p_i, t_i)` over rows, a row being everything after the first
/// axis (a vector [D] is one row). Norms are floored at 1e-8.
pub fn cosine(prediction: &Tensor, target: &Tensor) -> Result<Tensor, TrainError> {
    same_shape("cosine", prediction, target)?;
    let rows = if prediction.rank() <= 1 { 1 } else { prediction.dim(0)? };
    let p = prediction.reshape((rows, ()))?;
    let t = target.to_dtype(prediction.dtype())?.reshape((rows, ()))?;
    let dot = (&p * &t)?.sum(1)?;
    let np = p.sqr()?.sum(1)?.sqrt()?.clamp(1e-8, f64::MAX)?;
    let nt = t.sqr()?.sum(1)?.sqrt()?.clamp(1e-8, f64::MAX)?;
    let cos = (dot / (np * nt)?)?;
    Ok(cos.mean_all()?.affine(-1.0, 1.0)?)
}

/// Number of rows of `logits` [N, C] whose argmax is the target.
pub fn correct(logits: &Tensor, targets: &[u32]) -> Result<usize, TrainError> {
    let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?;
    Ok(pred.iter().zip(targets).filter(|(p, t)| p == t).count())
}

fn same_shape(what: &str, a: &Tensor, b: &Tensor) -> Result<(), TrainError> {
    if a.dims() != b.dims() {
        return Err(TrainError::config(format!(
            "{what}: prediction {:?} and target {:?} differ in shape",
            a.dims(),
            b.dims()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn cross_entropy_matches_hand_computation_and_its_gradient() {
        let logits = Var::from_tensor(&t(&[1.0, 2.0, 3.0, 0.5, 0.5, 0.5], (2, 3))).unwrap();
        let loss = cross_entropy(logits.as_tensor(), &[2, 0]).unwrap();
        let lse0 = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let expected = ((lse0 - 3.0) + 3f32.ln()) / 2.0;
        assert!((loss.to_scalar::<f32>().unwrap() - expected).abs() < 1e-6);
        // d/dlogits = (softmax − onehot) / N
        let g = loss.backward().unwrap();
        let g: Vec<Vec<f32>> = g.get(logits.as_tensor()).unwrap().to_vec2().unwrap();
        let s2 = 3f32.exp() / lse0.exp();
        assert!((g[0][2] - (s2 - 1.0) / 2.0).abs() < 1e-6);
        assert!((g[1][0] - (1.0 / 3.0 - 1.0) / 2.0).abs() < 1e-6);
        assert!((g[1][1] - (1.0 / 3.0) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_is_stable_for_large_logits_and_checks_targets() {
        let loss = cross_entropy(&t(&[1000.0, 0.0], (1, 2)), &[0]).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap().abs() < 1e-6);
        let err = cross_entropy(&t(&[1.0, 0.0], (1, 2)), &[2]).unwrap_err();
        assert!(err.to_string().contains("target 2"), "{err}");
        assert!(cross_entropy(&t(&[1.0, 0.0], (1, 2)), &[0, 1]).is_err());
    }

    #[test]
    fn mse_and_cosine_match_hand_computation() {
        let a = t(&[1.0, 2.0, 3.0, 4.0], (2, 2));
        let b = t(&[1.0, 0.0, 3.0, 2.0], (2, 2));
        let m = mse(&a, &b).unwrap().to_scalar::<f32>().unwrap();
        assert!((m - (0.0 + 4.0 + 0.0 + 4.0) / 4.0).abs() < 1e-6);
        let c = cosine(&a, &b).unwrap().to_scalar::<f32>().unwrap();
        let c0 = 1.0 / 5f32.sqrt();
        let c1 = (9.0 + 8.0) / (25f32.sqrt() * 13f32.sqrt());
        assert!((c - (1.0 - (c0 + c1) / 2.0)).abs() < 1e-6, "{c}");
        assert!(cosine(&a, &a).unwrap().to_scalar::<f32>().unwrap().abs() < 1e-6);
        assert!(mse(&a, &t(&[1.0, 2.0], (1, 2))).is_err());
    }

    #[test]
    fn correct_counts_argmax_hits() {
        let logits = t(&[0.1, 0.9, 0.8, 0.2, 0.3, 0.7], (3, 2));
        assert_eq!(correct(&logits, &[1, 0, 0]).unwrap(), 2);
    }
}

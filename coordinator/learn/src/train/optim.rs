//! Optimizers over the executor's trainable variables: SGD with momentum and AdamW, written on
//! candle tensors with PyTorch's update rules. Updates are computed on detached tensors, so they
//! never enter the autograd graph, and written in place with `Var::set`.

use candle_core::{Tensor, Var};

use super::TrainError;
use super::exec::{Executor, Gradients};

/// Optimizer settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// [`Sgd`].
    Sgd {
        /// Momentum coefficient (0 = plain SGD).
        momentum: f64,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
    },
    /// [`AdamW`].
    AdamW {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Added to the root of the second moment.
        eps: f64,
        /// Decoupled weight decay (applied to parameters of rank ≥ 2 only).
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// AdamW with PyTorch's defaults (β = 0.9, 0.999, ε = 1e-8) and the given weight decay.
    pub fn adamw(weight_decay: f64) -> OptimizerConfig {
        OptimizerConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }

    /// SGD with momentum 0.9 and the given weight decay.
    pub fn sgd(weight_decay: f64) -> OptimizerConfig {
        OptimizerConfig::Sgd { momentum: 0.9, weight_decay }
    }

    /// An optimizer of this kind over every trainable parameter of `exec`.
    pub fn build(&self, exec: &Executor) -> Box<dyn Optimizer> {
        let params: Vec<(String, Var)> =
            exec.parameters().map(|(n, v)| (n.to_owned(), v.clone())).collect();
        self.build_for(params)
    }

    /// An optimizer of this kind over the given variables.
    pub fn build_for(&self, params: Vec<(String, Var)>) -> Box<dyn Optimizer> {
        match *self {
            OptimizerConfig::Sgd { momentum, weight_decay } => {
                Box::new(Sgd::new(params, momentum, weight_decay))
            }
            OptimizerConfig::AdamW { beta1, beta2, eps, weight_decay } => {
                Box::new(AdamW::new(params, beta1, beta2, eps, weight_decay))
            }
        }
    }
}

/// Something that updates variables from their gradients.
pub trait Optimizer {
    /// One update with learning rate `lr`, reading each variable's gradient by name from
    /// `grads` (variables without a gradient are left as they are).
    fn step(&mut self, grads: &Gradients, lr: f64) -> Result<(), TrainError> {
        let g = |name: &str| grads.get(name).cloned();
        self.step_with(&g, lr)
    }

    /// One update, with gradients looked up by `grad(name)`.
    fn step_with(
        &mut self,
        grad: &dyn Fn(&str) -> Option<Tensor>,
        lr: f64,
    ) -> Result<(), TrainError>;

    /// Number of updates so far.
    fn steps(&self) -> u64;
}

/// SGD with momentum and L2 weight decay (PyTorch's rule): `g ← g + wd·p`,
/// `v ← μ·v + g` (`v ← g` on the first step), `p ← p − lr·v`.
#[derive(Debug)]
pub struct Sgd {
    params: Vec<(String, Var)>,
    velocity: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
    steps: u64,
}

impl Sgd {
    /// SGD over `params`.
    pub fn new(params: Vec<(String, Var)>, momentum: f64, weight_decay: f64) -> Sgd {
        let velocity = vec![None; params.len()];
        Sgd { params, velocity, momentum, weight_decay, steps: 0 }
    }
}

impl Optimizer for Sgd {
    fn step_with(
        &mut self,
        grad: &dyn Fn(&str) -> Option<Tensor>,
        lr: f64,
    ) -> Result<(), TrainError> {
        for ((name, var), vel) in self.params.iter().zip(&mut self.velocity) {
            let Some(g) = grad(name) else { continue };
            let p = var.as_detached_tensor();
            let mut g = g.detach().to_dtype(p.dtype())?;
            if self.weight_decay != 0.0 {
                g = (g + p.affine(self.weight_decay, 0.0)?)?;
            }
            let d = if self.momentum != 0.0 {
                let v = match vel.take() {
                    Some(v) => (v.affine(self.momentum, 0.0)? + g)?,
                    None => g,
                };
                *vel = Some(v.clone());
                v
            } else {
                g
            };
            var.set(&(p - d.affine(lr, 0.0)?)?)?;
        }
        self.steps += 1;
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }
}

/// AdamW (Loshchilov and Hutter; PyTorch's rule): `p ← p·(1 − lr·wd)`, `m ← β1·m + (1−β1)·g`,
/// `v ← β2·v + (1−β2)·g²`, `p ← p − lr·m̂ / (√v̂ + ε)` with bias-corrected `m̂ = m / (1−β1^t)`,
/// `v̂ = v / (1−β2^t)`. The decay applies to parameters of rank ≥ 2 (weights, not biases or
/// norm scales).
#[derive(Debug)]
pub struct AdamW {
    params: Vec<(String, Var)>,
    moments: Vec<Option<(Tensor, Tensor)>>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    steps: u64,
}

impl AdamW {
    /// AdamW over `params`.
    pub fn new(
        params: Vec<(String, Var)>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> AdamW {
        let moments = vec![None; params.len()];
        AdamW { params, moments, beta1, beta2, eps, weight_decay, steps: 0 }
    }
}

impl AdamW {
    /// The moments of every parameter that has them, as `m/{name}` and `v/{name}`, for a
    /// checkpoint (see [`AdamW::load_state`]).
    pub fn state(&self) -> std::collections::HashMap<String, Tensor> {
        let mut out = std::collections::HashMap::new();
        for ((name, _), state) in self.params.iter().zip(&self.moments) {
            if let Some((m, v)) = state {
                out.insert(format!("m/{name}"), m.clone());
                out.insert(format!("v/{name}"), v.clone());
            }
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] (entries of other names are ignored, and a
    /// moment whose shape no longer fits its parameter is dropped) and the step count.
    pub fn load_state(&mut self, saved: &std::collections::HashMap<String, Tensor>, steps: u64) {
        for ((name, var), state) in self.params.iter().zip(&mut self.moments) {
            if let (Some(m), Some(v)) =
                (saved.get(&format!("m/{name}")), saved.get(&format!("v/{name}")))
                && m.dims() == var.dims()
                && v.dims() == var.dims()
            {
                *state = Some((m.clone(), v.clone()));
            }
        }
        self.steps = steps;
    }
}

impl Optimizer for AdamW {
    fn step_with(
        &mut self,
        grad: &dyn Fn(&str) -> Option<Tensor>,
        lr: f64,
    ) -> Result<(), TrainError> {
        self.steps += 1;
        let t = self.steps as i32;
        let c1 = 1.0 - self.beta1.powi(t);
        let c2 = 1.0 - self.beta2.powi(t);
        for ((name, var), state) in self.params.iter().zip(&mut self.moments) {
            let Some(g) = grad(name) else { continue };
            let mut p = var.as_detached_tensor();
            let g = g.detach().to_dtype(p.dtype())?;
            if self.weight_decay != 0.0 && p.rank() >= 2 {
                p = p.affine(1.0 - lr * self.weight_decay, 0.0)?;
            }
            let (m, v) = match state.take() {
                Some((m, v)) => (
                    (m.affine(self.beta1, 0.0)? + g.affine(1.0 - self.beta1, 0.0)?)?,
                    (v.affine(self.beta2, 0.0)? + g.sqr()?.affine(1.0 - self.beta2, 0.0)?)?,
                ),
                None => (g.affine(1.0 - self.beta1, 0.0)?, g.sqr()?.affine(1.0 - self.beta2, 0.0)?),
            };
            let denom = v.affine(1.0 / c2, 0.0)?.sqrt()?.affine(1.0, self.eps)?;
            let update = (m.affine(lr / c1, 0.0)? / denom)?;
            var.set(&(p - update)?)?;
            *state = Some((m, v));
        }
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn var(v: &[f32]) -> Var {
        Var::from_slice(v, (v.len(),), &Device::Cpu).unwrap()
    }

    fn vec_of(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1().unwrap()
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v, (v.len(),), &Device::Cpu).unwrap()
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((f64::from(*x) - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sgd_with_momentum_and_decay_matches_hand_computed_steps() {
        let w = var(&[1.0, -2.0]);
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], 0.9, 0.1);
        let g = t(&[0.5, 0.25]);
        let grad = |_: &str| Some(g.clone());
        opt.step_with(&grad, 0.1).unwrap();
        // g' = g + 0.1·p = [0.6, 0.05]; v = g'; p = p − 0.1·v
        close(&vec_of(&w), &[1.0 - 0.06, -2.0 - 0.005]);
        opt.step_with(&grad, 0.1).unwrap();
        // p = [0.94, −2.005]; g' = [0.594, 0.0495]; v = 0.9·[0.6, 0.05] + g' = [1.134, 0.0945]
        close(&vec_of(&w), &[0.94 - 0.1134, -2.005 - 0.00945]);
        assert_eq!(opt.steps(), 2);
    }

    #[test]
    fn adamw_matches_hand_computed_steps() {
        let w = Var::from_slice(&[1.0f32, -2.0], (1, 2), &Device::Cpu).unwrap();
        let b = var(&[0.5]);
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
            0.9,
            0.999,
            1e-8,
            0.01,
        );
        let gw = Tensor::from_slice(&[0.5f32, -0.1], (1, 2), &Device::Cpu).unwrap();
        let gb = t(&[2.0]);
        let grad = |n: &str| Some(if n == "w" { gw.clone() } else { gb.clone() });
        let lr = 0.1;
        opt.step_with(&grad, lr).unwrap();
        // Step 1: m̂ = g, v̂ = g², update = lr·g/(|g|+ε) ≈ lr·sign(g); decay on w only.
        let w1: Vec<f64> = [1.0f64, -2.0]
            .iter()
            .zip([0.5f64, -0.1])
            .map(|(p, g)| p * (1.0 - lr * 0.01) - lr * g / (g.abs() + 1e-8))
            .collect();
        let wv: Vec<f32> = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        close(&wv, &w1);
        close(&vec_of(&b), &[0.5 - lr * 2.0 / (2.0 + 1e-8)]);
        opt.step_with(&grad, lr).unwrap();
        // Step 2 with the same gradient: m = (0.1 + 0.09)·g = 0.19 g, m̂ = 0.19 g / 0.19 = g;
        // v = (0.001 + 0.000999) g², v̂ = g² again, so the update is again lr·sign(g).
        let w2: Vec<f64> = w1
            .iter()
            .zip([0.5f64, -0.1])
            .map(|(p, g)| p * (1.0 - lr * 0.01) - lr * g / (g.abs() + 1e-8))
            .collect();
        let wv: Vec<f32> = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        close(&wv, &w2);
        close(&vec_of(&b), &[0.5 - 2.0 * lr]);
    }

    #[test]
    fn adamw_with_different_gradients_matches_the_formula() {
        let w = var(&[0.0]);
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], 0.9, 0.999, 1e-8, 0.0);
        let (g1, g2) = (1.0f64, 3.0f64);
        opt.step_with(&|_| Some(t(&[g1 as f32])), 0.01).unwrap();
        opt.step_with(&|_| Some(t(&[g2 as f32])), 0.01).unwrap();
        let m = 0.9 * 0.1 * g1 + 0.1 * g2;
        let v = 0.999 * 0.001 * g1 * g1 + 0.001 * g2 * g2;
        let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.999f64.powi(2)));
        let expected = -0.01 - 0.01 * mh / (vh.sqrt() + 1e-8);
        close(&vec_of(&w), &[expected]);
    }

    #[test]
    fn parameters_without_gradient_are_untouched() {
        let w = var(&[1.0]);
        let mut opt = OptimizerConfig::adamw(0.1).build_for(vec![("w".into(), w.clone())]);
        opt.step_with(&|_| None, 0.1).unwrap();
        close(&vec_of(&w), &[1.0]);
    }

    #[test]
    fn adamw_resumed_from_its_state_continues_exactly() {
        let grad = |_: &str| Some(t(&[0.5, -1.0, 2.0]));
        let a = var(&[1.0, 2.0, 3.0]);
        let mut one = AdamW::new(vec![("w".into(), a.clone())], 0.9, 0.999, 1e-8, 0.0);
        for _ in 0..3 {
            one.step_with(&grad, 0.1).unwrap();
        }
        let before = vec_of(&a);
        let b = var(&before);
        let mut two = AdamW::new(vec![("w".into(), b.clone())], 0.9, 0.999, 1e-8, 0.0);
        two.load_state(&one.state(), one.steps());
        let other = |_: &str| Some(t(&[-3.0, 0.25, 1.0]));
        one.step_with(&other, 0.1).unwrap();
        two.step_with(&other, 0.1).unwrap();
        assert_eq!(vec_of(&a), vec_of(&b));
        // Without the state, the fourth step differs (the moments start over).
        let c = var(&before);
        let mut fresh = AdamW::new(vec![("w".into(), c.clone())], 0.9, 0.999, 1e-8, 0.0);
        fresh.step_with(&other, 0.1).unwrap();
        assert_ne!(vec_of(&c), vec_of(&a));
    }
}

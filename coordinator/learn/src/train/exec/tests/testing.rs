//! Test helpers: graphs built in code with seeded random data, tract as the forward reference,
//! and central finite differences as the gradient reference.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use tract_onnx::pb;
use tract_onnx::prelude::{
    Framework as _, InferenceFact, InferenceModelExt as _, IntoRunnable as _, IntoTValue as _,
    IntoTensor as _, TValue, TVec, Tensor as TractTensor,
};

use crate::data::SplitMix64;
use crate::train::exec::{Executor, to_candle};
use hone_graph::{Attribute, DataType, Dim, Graph, Node, Tensor as GTensor, TensorData, ValueInfo};

/// A graph and the inputs to run it on.
pub(super) struct Case {
    pub(super) graph: Graph,
    pub(super) inputs: Vec<(String, GTensor)>,
}

/// Builds a [`Case`]: float data in the builder's type, drawn from a seeded generator.
pub(super) struct Builder {
    rng: SplitMix64,
    dt: DataType,
    opset: i64,
    nodes: Vec<Node>,
    inits: Vec<(String, GTensor)>,
    inputs: Vec<(String, GTensor)>,
    outputs: Vec<String>,
}

impl Builder {
    pub(super) fn new(seed: u64, dt: DataType) -> Builder {
        Builder {
            rng: SplitMix64::new(seed),
            dt,
            opset: 17,
            nodes: Vec::new(),
            inits: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    pub(super) fn opset(mut self, v: i64) -> Builder {
        self.opset = v;
        self
    }

    /// A float tensor of `dims` with values uniform in `[lo, hi)`, nudged at least 1e-2 away
    /// from each of `kinks`.
    pub(super) fn floats(&mut self, dims: &[usize], lo: f64, hi: f64, kinks: &[f64]) -> GTensor {
        let n: usize = dims.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| {
                let mut x = lo + (hi - lo) * self.rng.next_f64();
                for &k in kinks {
                    if (x - k).abs() < 1e-2 {
                        x = k + if x >= k { 1e-2 } else { -1e-2 };
                    }
                }
                x
            })
            .collect();
        float_tensor(dims, v, self.dt)
    }

    /// A float input with values in [-1, 1).
    pub(super) fn input(&mut self, name: &str, dims: &[usize]) -> &mut Builder {
        let t = self.floats(dims, -1.0, 1.0, &[]);
        self.input_tensor(name, t)
    }

    /// An input with the given value.
    pub(super) fn input_tensor(&mut self, name: &str, t: GTensor) -> &mut Builder {
        self.inputs.push((name.into(), t));
        self
    }

    /// A float initializer with values in [-1, 1).
    pub(super) fn init(&mut self, name: &str, dims: &[usize]) -> &mut Builder {
        let t = self.floats(dims, -1.0, 1.0, &[]);
        self.init_tensor(name, t)
    }

    /// An initializer with the given value.
    pub(super) fn init_tensor(&mut self, name: &str, t: GTensor) -> &mut Builder {
        self.inits.push((name.into(), t));
        self
    }

    /// A 1-D `i64` initializer.
    pub(super) fn ints(&mut self, name: &str, v: &[i64]) -> &mut Builder {
        self.init_tensor(name, GTensor::vec_i64(v))
    }

    /// A scalar float initializer in the builder's type.
    pub(super) fn scalar(&mut self, name: &str, v: f64) -> &mut Builder {
        let t = float_tensor(&[], vec![v], self.dt);
        self.init_tensor(name, t)
    }

    pub(super) fn node(&mut self, n: Node) -> &mut Builder {
        self.nodes.push(n);
        self
    }

    pub(super) fn output(&mut self, name: &str) -> &mut Builder {
        self.outputs.push(name.into());
        self
    }

    pub(super) fn build(&mut self) -> Case {
        let declare = |(name, t): &(String, GTensor)| {
            ValueInfo::tensor(
                name,
                t.data_type(),
                t.dims.iter().map(|&d| Dim::Value(d as i64)).collect(),
            )
            .to_proto()
        };
        let proto = pb::ModelProto {
            ir_version: 8,
            producer_name: "hone-train-tests".into(),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            graph: Some(pb::GraphProto {
                name: "g".into(),
                node: self.nodes.iter().map(Node::to_proto).collect(),
                initializer: self.inits.iter().map(|(n, t)| t.to_proto(n)).collect(),
                input: self.inputs.iter().map(declare).collect(),
                output: self
                    .outputs
                    .iter()
                    .map(|o| ValueInfo { name: o.clone(), data_type: None, dims: None }.to_proto())
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Case { graph: Graph::from_proto(proto).unwrap(), inputs: std::mem::take(&mut self.inputs) }
    }
}

/// A float tensor of type `dt` (f32 or f64).
pub(super) fn float_tensor(dims: &[usize], v: Vec<f64>, dt: DataType) -> GTensor {
    let data = match dt {
        DataType::F32 => TensorData::F32(v.iter().map(|&x| x as f32).collect()),
        DataType::F64 => TensorData::F64(v),
        other => panic!("float_tensor({other})"),
    };
    GTensor::new(dims.to_vec(), data).unwrap()
}

/// A node with attributes.
pub(super) fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<(&str, Attribute)>,
) -> Node {
    let mut n = Node::new(name, op, inputs, outputs);
    for (k, v) in attrs {
        n = n.with_attribute(k, v);
    }
    n
}

pub(super) fn ints(v: &[i64]) -> Attribute {
    Attribute::Ints(v.to_vec())
}

fn to_tract(t: &GTensor) -> TractTensor {
    match &t.data {
        TensorData::F32(v) => TractTensor::from_shape(&t.dims, v).unwrap(),
        TensorData::F64(v) => TractTensor::from_shape(&t.dims, v).unwrap(),
        TensorData::I64(v) => TractTensor::from_shape(&t.dims, v).unwrap(),
        TensorData::Bool(v) => TractTensor::from_shape(&t.dims, v).unwrap(),
        other => panic!("to_tract({:?})", other.data_type()),
    }
}

/// An output as dims and `f64` values.
pub(super) type Flat = (Vec<usize>, Vec<f64>);

fn tract_flat(t: &TractTensor) -> Flat {
    let t = if t.datum_type() == bool::datum_type() {
        t.cast_to::<u8>().unwrap().into_owned()
    } else {
        t.clone()
    };
    let c = t.cast_to::<f64>().unwrap();
    let v = c.to_plain_array_view::<f64>().unwrap().iter().copied().collect();
    (t.shape().to_vec(), v)
}

use tract_onnx::prelude::Datum as _;

/// A candle tensor as dims and `f64` values.
pub(super) fn candle_flat(t: &Tensor) -> Flat {
    let v = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    (t.dims().to_vec(), v)
}

/// tract's outputs (optimised plan, as agents run it), in graph output order.
pub(super) fn run_tract(proto: &pb::ModelProto, inputs: &[(String, GTensor)]) -> Vec<Flat> {
    run_tract_tensors(proto, &inputs.iter().map(|(_, t)| to_tract(t)).collect::<Vec<_>>())
}

/// tract's outputs for tract tensors given in graph input order.
pub(super) fn run_tract_tensors(proto: &pb::ModelProto, inputs: &[TractTensor]) -> Vec<Flat> {
    run_tract_timed(proto, inputs, 1).0
}

/// tract's outputs, and the time of the last of `runs` runs of the optimised plan (the first
/// run warms it up).
pub(super) fn run_tract_timed(
    proto: &pb::ModelProto,
    inputs: &[TractTensor],
    runs: usize,
) -> (Vec<Flat>, std::time::Duration) {
    let mut model = tract_onnx::onnx().model_for_proto_model(proto).unwrap();
    for (ix, t) in inputs.iter().enumerate() {
        model.set_input_fact(ix, InferenceFact::dt_shape(t.datum_type(), t.shape())).unwrap();
    }
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let given: TVec<TValue> = inputs.iter().cloned().map(|t| t.into_tvalue()).collect();
        let t0 = std::time::Instant::now();
        let out = plan.run(given).unwrap();
        last = Some((out, t0.elapsed()));
    }
    let (out, time) = last.unwrap();
    (out.iter().map(|v| tract_flat(&v.clone().into_tensor())).collect(), time)
}

/// The executor's outputs, in graph output order.
pub(super) fn run_candle(exec: &Executor, inputs: &[(String, GTensor)]) -> Vec<Flat> {
    let given: Vec<(String, Tensor)> =
        inputs.iter().map(|(n, t)| (n.clone(), to_candle(t).unwrap())).collect();
    let out = exec.forward(given).unwrap();
    exec.output_names().iter().map(|n| candle_flat(&out[n])).collect()
}

/// The largest `|a − b|` relative to the reference's scale (its largest magnitude, at least
/// 1e-6), after checking shapes.
pub(super) fn worst_relative(reference: &Flat, other: &Flat) -> f64 {
    assert_eq!(reference.0, other.0, "shapes differ");
    let scale = reference.1.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
    let worst =
        reference.1.iter().zip(&other.1).fold(0f64, |m, (a, b)| {
            if a.is_nan() && b.is_nan() { m } else { m.max((a - b).abs()) }
        });
    worst / scale
}

/// Forward parity with tract: max |diff| ≤ 1e-4 × scale on every output. Returns the worst
/// relative error.
pub(super) fn assert_parity(case: &Case) -> f64 {
    let exec = Executor::new(&case.graph).unwrap();
    let reference = run_tract(case.graph.proto(), &case.inputs);
    let ours = run_candle(&exec, &case.inputs);
    assert_eq!(reference.len(), ours.len());
    let mut worst = 0f64;
    for (i, (r, o)) in reference.iter().zip(&ours).enumerate() {
        let e = worst_relative(r, o);
        assert!(
            e <= 1e-4,
            "output {} ({}): max |diff| = {e:e} × scale\ntract: {:?}\nours:  {:?}",
            i,
            exec.output_names()[i],
            &r.1[..r.1.len().min(12)],
            &o.1[..o.1.len().min(12)]
        );
        worst = worst.max(e);
    }
    worst
}

/// Σ over outputs of Σ(output · weight), with fixed pseudo-random weights: a scalar loss whose
/// gradient reaches every output element with a different factor.
fn weighted_loss(outputs: &HashMap<String, Tensor>, names: &[String]) -> Tensor {
    let mut total: Option<Tensor> = None;
    for (k, n) in names.iter().enumerate() {
        let o = &outputs[n];
        if !o.dtype().is_float() {
            continue;
        }
        let mut rng = SplitMix64::new(1000 + k as u64);
        let w: Vec<f64> = (0..o.elem_count()).map(|_| rng.next_f64() * 2.0 - 1.0).collect();
        let w = Tensor::from_vec(w, o.dims(), &Device::Cpu).unwrap().to_dtype(o.dtype()).unwrap();
        let term = o.mul(&w).unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap();
        total = Some(match total {
            Some(t) => (t + term).unwrap(),
            None => term,
        });
    }
    total.expect("a float output")
}

/// What a gradient check compared.
#[derive(Debug, Default)]
pub(super) struct GradReport {
    /// Trainable initializers and float inputs checked.
    pub(super) checked: Vec<String>,
    /// The largest |analytic − numeric| relative to max(1, largest |numeric|).
    pub(super) worst: f64,
}

/// Compares the executor's gradients with central finite differences (step `h`) for every
/// trainable initializer and every float input, on up to 24 elements of each.
pub(super) fn grad_check(case: &Case, h: f64, tol: f64) -> GradReport {
    let exec = Executor::new(&case.graph).unwrap();
    let names = exec.output_names().to_vec();
    // Float inputs become variables so that their gradients are recorded too.
    let inputs: Vec<(String, Tensor, Option<Var>)> = case
        .inputs
        .iter()
        .map(|(n, t)| {
            let c = to_candle(t).unwrap();
            if c.dtype().is_float() {
                let v = Var::from_tensor(&c).unwrap();
                (n.clone(), v.as_tensor().clone(), Some(v))
            } else {
                (n.clone(), c, None)
            }
        })
        .collect();
    let loss_of = |given: &[(String, Tensor)]| -> f64 {
        let out = exec.forward(given.to_vec()).unwrap();
        weighted_loss(&out, &names).to_vec0::<f64>().unwrap()
    };
    let given: Vec<(String, Tensor)> =
        inputs.iter().map(|(n, t, _)| (n.clone(), t.clone())).collect();
    let out = exec.forward(given.clone()).unwrap();
    let grads = exec.backward(&weighted_loss(&out, &names)).unwrap();

    let mut report = GradReport::default();
    let mut check = |label: &str,
                     analytic: Option<&Tensor>,
                     value: &Tensor,
                     set: &dyn Fn(&Tensor) -> f64| {
        let dims = value.dims().to_vec();
        let base =
            value.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let analytic = match analytic {
            Some(g) => {
                g.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
            }
            None => vec![0.0; base.len()],
        };
        assert_eq!(analytic.len(), base.len(), "{label}: gradient shape");
        let stride = base.len().div_ceil(24).max(1);
        let mut numeric = Vec::new();
        let mut picked = Vec::new();
        for i in (0..base.len()).step_by(stride) {
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            let mk = |v: Vec<f64>| {
                Tensor::from_vec(v, dims.clone(), &Device::Cpu)
                    .unwrap()
                    .to_dtype(value.dtype())
                    .unwrap()
            };
            let fp = set(&mk(plus));
            let fm = set(&mk(minus));
            numeric.push((fp - fm) / (2.0 * h));
            picked.push(i);
        }
        set(&value.clone());
        let scale = numeric.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (&i, n) in picked.iter().zip(&numeric) {
            let e = (analytic[i] - n).abs() / scale;
            assert!(
                e <= tol,
                "{label}[{i}]: analytic {} vs numeric {n} (rel {e:e} > {tol:e})",
                analytic[i]
            );
            report.worst = report.worst.max(e);
        }
        report.checked.push(label.to_string());
    };

    for (name, var) in exec.parameters() {
        let original = var.as_tensor().copy().unwrap();
        check(name, grads.get(name), &original, &|t| {
            var.set(t).unwrap();
            loss_of(&given)
        });
        var.set(&original).unwrap();
    }
    for (k, (name, t, var)) in inputs.iter().enumerate() {
        if var.is_none() {
            continue;
        }
        check(name, grads.of(t), t, &|v| {
            let mut g = given.clone();
            g[k].1 = v.clone();
            loss_of(&g)
        });
    }
    assert!(!report.checked.is_empty(), "nothing to check");
    report
}

/// The graph with every `f32` tensor made `f64`: initializers, `Constant` and
/// `ConstantOfShape` values, `Cast` targets and declared inputs and outputs. A model exported in
/// f32 then runs in f64, so that finite differences can use tiny steps.
pub(super) fn to_f64(graph: &Graph) -> Graph {
    fn widen(t: &GTensor) -> GTensor {
        match &t.data {
            TensorData::F32(v) => GTensor::new(
                t.dims.clone(),
                TensorData::F64(v.iter().map(|&x| f64::from(x)).collect()),
            )
            .unwrap(),
            _ => t.clone(),
        }
    }
    let mut g = graph.clone();
    for (name, t) in graph.initializers().unwrap() {
        g.replace_initializer(&name, &widen(&t)).unwrap();
    }
    let nodes = g.nodes().unwrap();
    let gp = g.graph_proto_mut();
    for (proto, n) in gp.node.iter_mut().zip(nodes) {
        let mut n = n;
        for (key, a) in n.attributes.iter_mut() {
            match (n.op_type.as_str(), key.as_str(), &*a) {
                ("Constant" | "ConstantOfShape", "value", Attribute::Tensor(t)) => {
                    *a = Attribute::Tensor(widen(t));
                }
                ("Cast", "to", Attribute::Int(1)) => *a = Attribute::Int(11),
                _ => {}
            }
        }
        *proto = n.to_proto();
    }
    for v in gp.input.iter_mut().chain(gp.output.iter_mut()) {
        if let Some(pb::type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
            && t.elem_type == 1
        {
            t.elem_type = 11;
        }
    }
    g
}

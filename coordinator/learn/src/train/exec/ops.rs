//! The ONNX operators, each as a composition of differentiable candle ops.
//!
//! Every function takes the node (for attributes), its inputs (`None` for an omitted optional
//! input) and the model's opset, and returns its outputs in order. Settings that ONNX passes as
//! inputs (shapes, axes, indices, bounds) are read back to the host.

use candle_core::{DType, Device, Tensor};

use super::prims::{self, AutoPad, Axis};
use super::{ExecError, candle_dtype};
use hone_graph::{Attribute, DataType, Node};

/// Every operator the executor implements (default ONNX domain).
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Cos",
    "Div",
    "Dropout",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "MatMul",
    "MaxPool",
    "Mul",
    "Neg",
    "Pad",
    "Pow",
    "Range",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Sin",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
];

/// Whether input `slot` of `op` is differentiable data (as opposed to a setting read on the
/// host, or a buffer such as a running mean).
pub(super) fn is_differentiable_input(op: &str, slot: usize) -> bool {
    match op {
        "Shape" | "Constant" | "ConstantOfShape" | "Equal" | "Range" => false,
        "BatchNormalization" => slot < 3,
        "Where" => slot == 1 || slot == 2,
        "Clip" | "Reshape" | "Gather" | "Unsqueeze" | "Squeeze" | "Slice" | "Split" | "Pow"
        | "Expand" | "Trilu" | "Pad" | "Cast" | "Dropout" => slot == 0,
        _ => true,
    }
}

/// An op failure, before it is tied to its node.
#[derive(Debug)]
pub(super) enum OpError {
    Invalid(String),
    Candle(Box<candle_core::Error>),
}

impl From<candle_core::Error> for OpError {
    fn from(e: candle_core::Error) -> OpError {
        OpError::Candle(Box::new(e))
    }
}

impl From<String> for OpError {
    fn from(s: String) -> OpError {
        OpError::Invalid(s)
    }
}

impl OpError {
    pub(super) fn at(self, node: &Node, label: &str) -> ExecError {
        match self {
            OpError::Invalid(reason) => {
                ExecError::Node { node: label.into(), op: node.op_type.clone(), reason }
            }
            OpError::Candle(source) => {
                ExecError::Candle { node: label.into(), op: node.op_type.clone(), source }
            }
        }
    }
}

type Res<T> = Result<T, OpError>;

fn invalid<T>(reason: impl Into<String>) -> Res<T> {
    Err(OpError::Invalid(reason.into()))
}

/// Evaluates one node.
pub(super) fn eval(node: &Node, args: &[Option<Tensor>], opset: i64) -> Res<Vec<Tensor>> {
    let a = Args { node, args, opset };
    let one = |t: Tensor| Ok(vec![t]);
    match node.op_type.as_str() {
        "Add" => one(a.binary(Tensor::broadcast_add)?),
        "Sub" => one(a.binary(Tensor::broadcast_sub)?),
        "Mul" => one(a.binary(Tensor::broadcast_mul)?),
        "Div" => one(div(&a)?),
        "Relu" => {
            let x = a.req(0)?;
            // candle's unary kernels exist for floats only.
            one(if x.dtype().is_float() { x.relu()? } else { x.maximum(0i64)? })
        }
        "Sigmoid" => one(prims::sigmoid(a.float(0)?)?),
        "Tanh" => one(a.float(0)?.tanh()?),
        "Sqrt" => one(a.float(0)?.sqrt()?),
        "Erf" => one(a.float(0)?.erf()?),
        "Exp" => one(a.float(0)?.exp()?),
        "Sin" => one(a.float(0)?.sin()?),
        "Cos" => one(a.float(0)?.cos()?),
        "Neg" => {
            let x = a.req(0)?;
            one(if x.dtype().is_float() { x.neg()? } else { x.zeros_like()?.sub(x)? })
        }
        "Identity" => one(a.req(0)?.clone()),
        "Dropout" => dropout(&a),
        "Clip" => one(clip(&a)?),
        "HardSigmoid" => {
            let alpha = a.float_attr("alpha", 0.2);
            let beta = a.float_attr("beta", 0.5);
            one(hard_sigmoid(a.float(0)?, alpha, beta)?)
        }
        "HardSwish" => {
            let x = a.float(0)?;
            one(x.mul(&hard_sigmoid(x, 1.0 / 6.0, 0.5)?)?)
        }
        "Pow" => one(pow(&a)?),
        "Gemm" => one(gemm(&a)?),
        "MatMul" => one(matmul(a.req(0)?, a.req(1)?)?),
        "Conv" => one(conv(&a)?),
        "BatchNormalization" => one(batch_norm(&a)?),
        "MaxPool" => one(pool(&a, Pool::Max)?),
        "AveragePool" => one(pool(&a, Pool::Average)?),
        "GlobalAveragePool" => {
            let x = a.req(0)?;
            let dims: Vec<usize> = (2..x.rank()).collect();
            one(x.mean_keepdim(dims)?)
        }
        "Flatten" => one(flatten(&a)?),
        "Reshape" => one(reshape(&a)?),
        "Transpose" => one(transpose(&a)?),
        "Concat" => one(concat(&a)?),
        "Softmax" => one(softmax(&a)?),
        "Gather" => one(gather(&a)?),
        "Unsqueeze" => one(unsqueeze(&a)?),
        "Squeeze" => one(squeeze(&a)?),
        "Shape" => one(shape(&a)?),
        "Constant" => one(constant(&a)?),
        "Cast" => one(cast(&a)?),
        "Slice" => one(slice(&a)?),
        "Split" => split(&a),
        "ReduceMean" => one(reduce(&a, true)?),
        "ReduceSum" => one(reduce(&a, false)?),
        "LayerNormalization" => layer_norm(&a),
        "Where" => one(where_(&a)?),
        "Equal" => {
            let (x, y) = (a.req(0)?, a.req(1)?);
            let y = if y.dtype() != x.dtype() { y.to_dtype(x.dtype())? } else { y.clone() };
            one(x.broadcast_eq(&y)?)
        }
        "Expand" => one(expand(&a)?),
        "ConstantOfShape" => one(constant_of_shape(&a)?),
        "Range" => one(range(&a)?),
        "Trilu" => one(trilu(&a)?),
        "Pad" => one(pad(&a)?),
        other => invalid(format!("operator `{other}` has no implementation")),
    }
}

/// A node's inputs and attributes.
struct Args<'a> {
    node: &'a Node,
    args: &'a [Option<Tensor>],
    opset: i64,
}

impl Args<'_> {
    fn opt(&self, i: usize) -> Option<&Tensor> {
        self.args.get(i).and_then(Option::as_ref)
    }

    fn req(&self, i: usize) -> Res<&Tensor> {
        self.opt(i).ok_or_else(|| OpError::Invalid(format!("input {i} is required")))
    }

    fn float(&self, i: usize) -> Res<&Tensor> {
        let t = self.req(i)?;
        if !t.dtype().is_float() {
            return invalid(format!("input {i} must be a float tensor, got {:?}", t.dtype()));
        }
        Ok(t)
    }

    fn binary(&self, f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>) -> Res<Tensor> {
        let (x, y) = self.same_type(0, 1)?;
        Ok(f(&x, &y)?)
    }

    /// Inputs `i` and `j`, the second converted to the first's type when only their widths
    /// differ (candle refuses mixed types; ONNX graphs never mix them on purpose).
    fn same_type(&self, i: usize, j: usize) -> Res<(Tensor, Tensor)> {
        let (x, y) = (self.req(i)?, self.req(j)?);
        if x.dtype() == y.dtype() {
            return Ok((x.clone(), y.clone()));
        }
        invalid(format!(
            "inputs {i} and {j} have different types {:?} and {:?}",
            x.dtype(),
            y.dtype()
        ))
    }

    fn attr(&self, name: &str) -> Option<&Attribute> {
        self.node.attribute(name)
    }

    fn int_attr(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(Attribute::as_int).unwrap_or(default)
    }

    fn float_attr(&self, name: &str, default: f64) -> f64 {
        self.attr(name).and_then(Attribute::as_float).map_or(default, f64::from)
    }

    fn ints_attr(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).and_then(Attribute::as_ints).map(<[i64]>::to_vec)
    }

    fn str_attr(&self, name: &str) -> Option<&str> {
        self.attr(name).and_then(Attribute::as_str)
    }
}

/// The elements of a (small) tensor as `i64`.
fn host_i64(t: &Tensor) -> Res<Vec<i64>> {
    if t.dtype().is_float() {
        return invalid(format!("expected an integer tensor, got {:?}", t.dtype()));
    }
    Ok(t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?)
}

/// The elements of a (small) tensor as `f64`.
fn host_f64(t: &Tensor) -> Res<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

fn scalar_f64(t: &Tensor, what: &str) -> Res<f64> {
    let v = host_f64(t)?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => invalid(format!("{what} must hold one element, it holds {}", v.len())),
    }
}

fn scalar_i64(t: &Tensor, what: &str) -> Res<i64> {
    let v = host_i64(t)?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => invalid(format!("{what} must hold one element, it holds {}", v.len())),
    }
}

/// A possibly negative axis of a rank-`rank` tensor.
fn axis(a: i64, rank: usize) -> Res<usize> {
    let r = rank as i64;
    if a < -r || a >= r {
        return invalid(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

fn div(a: &Args<'_>) -> Res<Tensor> {
    let (x, y) = a.same_type(0, 1)?;
    if !y.dtype().is_float() && host_i64(&y)?.contains(&0) {
        return invalid("integer division by zero");
    }
    Ok(x.broadcast_div(&y)?)
}

fn dropout(a: &Args<'_>) -> Res<Vec<Tensor>> {
    let x = a.req(0)?;
    if let Some(t) = a.opt(2)
        && host_i64(t)? != [0]
    {
        return invalid("training mode is not supported");
    }
    let mut out = vec![x.clone()];
    if a.node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
        out.push(Tensor::ones(x.dims(), DType::U8, x.device())?);
    }
    Ok(out)
}

fn clip(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let (lo, hi) = if a.opset >= 11 {
        let lo = a.opt(1).map(|t| scalar_f64(t, "min")).transpose()?;
        let hi = a.opt(2).map(|t| scalar_f64(t, "max")).transpose()?;
        (lo, hi)
    } else {
        (
            a.attr("min").and_then(Attribute::as_float).map(f64::from),
            a.attr("max").and_then(Attribute::as_float).map(f64::from),
        )
    };
    let mut y = x.clone();
    if let Some(lo) = lo {
        y = y.maximum(lo)?;
    }
    if let Some(hi) = hi {
        y = y.minimum(hi)?;
    }
    Ok(y)
}

fn hard_sigmoid(x: &Tensor, alpha: f64, beta: f64) -> Res<Tensor> {
    Ok(x.affine(alpha, beta)?.maximum(0.0)?.minimum(1.0)?)
}

fn pow(a: &Args<'_>) -> Res<Tensor> {
    let x = a.float(0)?;
    let e = a.req(1)?;
    if e.elem_count() == 1 {
        let p = scalar_f64(e, "a one-element exponent")?;
        let y = if p == 1.0 {
            x.clone()
        } else if p == 2.0 {
            x.sqr()?
        } else if p == 0.5 {
            x.sqrt()?
        } else {
            x.powf(p)?
        };
        // A one-element exponent of higher rank broadcasts the result.
        let shape = prims::broadcast_shape(x.dims(), e.dims())?;
        return Ok(prims::broadcast_to(&y, &shape)?);
    }
    // exp(e·ln x): defined for positive bases only.
    let e = if e.dtype() == x.dtype() { e.clone() } else { e.to_dtype(x.dtype())? };
    Ok(x.broadcast_pow(&e)?)
}

fn gemm(a: &Args<'_>) -> Res<Tensor> {
    let mut x = a.float(0)?.clone();
    let mut w = a.float(1)?.clone();
    if x.rank() != 2 || w.rank() != 2 {
        return invalid(format!("A and B must be matrices, got {:?} and {:?}", x.dims(), w.dims()));
    }
    if a.int_attr("transA", 0) != 0 {
        x = x.t()?;
    }
    if a.int_attr("transB", 0) != 0 {
        w = w.t()?;
    }
    let mut y = prims::contiguous(&x)?.matmul(&prims::contiguous(&w)?)?;
    let alpha = a.float_attr("alpha", 1.0);
    if alpha != 1.0 {
        y = y.affine(alpha, 0.0)?;
    }
    if let Some(c) = a.opt(2) {
        let beta = a.float_attr("beta", 1.0);
        if beta != 0.0 {
            let c = if beta == 1.0 { c.clone() } else { c.affine(beta, 0.0)? };
            y = y.broadcast_add(&c)?;
        }
    }
    Ok(y)
}

/// numpy `matmul`: 1-D operands are promoted and the promoted axis removed; batch axes
/// broadcast.
fn matmul(x: &Tensor, w: &Tensor) -> Res<Tensor> {
    if x.rank() == 0 || w.rank() == 0 {
        return invalid("MatMul operands must have rank ≥ 1");
    }
    let vec_x = x.rank() == 1;
    let vec_w = w.rank() == 1;
    let x2 = if vec_x { x.unsqueeze(0)? } else { prims::contiguous(x)? };
    let w2 = if vec_w { w.unsqueeze(1)? } else { prims::contiguous(w)? };
    let mut y = x2.broadcast_matmul(&w2)?;
    if vec_w {
        y = y.squeeze(y.rank() - 1)?;
    }
    if vec_x {
        let d = if vec_w { y.rank() - 1 } else { y.rank() - 2 };
        y = y.squeeze(d)?;
    }
    Ok(y)
}

fn auto_pad(a: &Args<'_>) -> Res<AutoPad> {
    Ok(match a.str_attr("auto_pad").unwrap_or("NOTSET") {
        "NOTSET" | "" => AutoPad::NotSet,
        "SAME_UPPER" => AutoPad::SameUpper,
        "SAME_LOWER" => AutoPad::SameLower,
        "VALID" => AutoPad::Valid,
        other => return invalid(format!("unknown auto_pad `{other}`")),
    })
}

/// The window geometry of a conv or pool over spatial dims `spatial` (1 or 2 of them), as two
/// axes (a 1-D window gets a unit leading axis).
fn window_axes(
    a: &Args<'_>,
    spatial: &[usize],
    kernel: &[usize],
    ceil_mode: bool,
) -> Res<[Axis; 2]> {
    let n = spatial.len();
    let get = |name: &str, len: usize, default: usize| -> Res<Vec<usize>> {
        match a.ints_attr(name) {
            None => Ok(vec![default; len]),
            Some(v) if v.len() == len && v.iter().all(|&x| x >= 0) => {
                Ok(v.iter().map(|&x| x as usize).collect())
            }
            Some(v) => invalid(format!("`{name}` must hold {len} non-negative values, got {v:?}")),
        }
    };
    let strides = get("strides", n, 1)?;
    let dilations = get("dilations", n, 1)?;
    let pads = get("pads", 2 * n, 0)?;
    let auto = auto_pad(a)?;
    let mut axes = Vec::with_capacity(2);
    if n == 1 {
        axes.push(Axis::new(1, 1, 1, 1, (0, 0), AutoPad::NotSet, false)?);
    }
    for k in 0..n {
        axes.push(Axis::new(
            spatial[k],
            kernel[k],
            strides[k],
            dilations[k],
            (pads[k], pads[k + n]),
            auto,
            ceil_mode,
        )?);
    }
    Ok([axes[0], axes[1]])
}

/// A [N, C, L] tensor as [N, C, 1, L]; 4-D tensors pass through.
fn to_4d(x: &Tensor) -> Res<Tensor> {
    match x.rank() {
        3 => Ok(x.unsqueeze(2)?),
        4 => Ok(x.clone()),
        r => invalid(format!("only 1-D and 2-D windows are supported, the input has rank {r}")),
    }
}

fn conv(a: &Args<'_>) -> Res<Tensor> {
    let x = a.float(0)?;
    let w = a.float(1)?;
    if w.rank() != x.rank() {
        return invalid(format!("input {:?} and weight {:?} differ in rank", x.dims(), w.dims()));
    }
    let spatial = &x.dims()[2..];
    let kernel = &w.dims()[2..];
    if let Some(ks) = a.ints_attr("kernel_shape")
        && ks.iter().map(|&k| k as usize).collect::<Vec<_>>() != kernel
    {
        return invalid(format!("kernel_shape {ks:?} does not match the weight {:?}", w.dims()));
    }
    let groups = a.int_attr("group", 1);
    let c = x.dim(1)?;
    let m = w.dim(0)?;
    if groups < 1
        || c % groups as usize != 0
        || m % groups as usize != 0
        || w.dim(1)? * groups as usize != c
    {
        return invalid(format!(
            "group {groups} does not fit input channels {c}, weight {:?}",
            w.dims()
        ));
    }
    let axes = window_axes(a, spatial, kernel, false)?;
    let y = prims::conv2d(&to_4d(x)?, &to_4d(w)?, &axes, groups as usize)?;
    let y = if x.rank() == 3 { y.squeeze(2)? } else { y };
    match a.opt(2) {
        Some(b) => {
            let mut dims = vec![1; y.rank()];
            dims[1] = m;
            Ok(y.broadcast_add(&b.reshape(dims)?)?)
        }
        None => Ok(y),
    }
}

/// A per-channel vector [C] as [C, 1, …] for an input of rank `rank` (channels at axis 1).
fn per_channel(t: &Tensor, rank: usize) -> Res<Tensor> {
    let mut dims = vec![t.elem_count()];
    dims.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
    Ok(t.reshape(dims)?)
}

fn batch_norm(a: &Args<'_>) -> Res<Tensor> {
    if a.int_attr("training_mode", 0) != 0 || a.node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
        return invalid("only the inference form (one output, training_mode = 0) is supported");
    }
    let x = a.float(0)?;
    let r = x.rank();
    let eps = a.float_attr("epsilon", 1e-5);
    let scale = per_channel(a.req(1)?, r)?;
    let bias = per_channel(a.req(2)?, r)?;
    let mean = per_channel(a.req(3)?, r)?;
    let var = per_channel(a.req(4)?, r)?;
    let inv = var.affine(1.0, eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_sub(&mean)?.broadcast_mul(&inv.mul(&scale)?)?.broadcast_add(&bias)?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Max,
    Average,
}

fn pool(a: &Args<'_>, kind: Pool) -> Res<Tensor> {
    let x = a.float(0)?;
    if a.node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
        return invalid("the Indices output is not supported");
    }
    if x.rank() < 3 {
        return invalid(format!("the input must have rank 3 or 4, got {:?}", x.dims()));
    }
    let kernel: Vec<usize> = match a.ints_attr("kernel_shape") {
        Some(k) if k.len() == x.rank() - 2 && k.iter().all(|&v| v > 0) => {
            k.iter().map(|&v| v as usize).collect()
        }
        other => {
            return invalid(format!("kernel_shape {other:?} does not fit input {:?}", x.dims()));
        }
    };
    if kind == Pool::Average && a.ints_attr("dilations").is_some_and(|d| d.iter().any(|&v| v != 1))
    {
        return invalid("dilated average pooling is not supported");
    }
    let ceil_mode = a.int_attr("ceil_mode", 0) != 0;
    let axes = window_axes(a, &x.dims()[2..], &kernel, ceil_mode)?;
    let x4 = to_4d(x)?;
    let y = match kind {
        Pool::Max => prims::max_pool2d(&x4, &axes)?,
        Pool::Average => prims::avg_pool2d(&x4, &axes, a.int_attr("count_include_pad", 0) != 0)?,
    };
    Ok(if x.rank() == 3 { y.squeeze(2)? } else { y })
}

fn flatten(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let r = x.rank() as i64;
    let ax = a.int_attr("axis", 1);
    if ax < -r || ax > r {
        return invalid(format!("axis {ax} is out of range for rank {r}"));
    }
    let ax = if ax < 0 { ax + r } else { ax } as usize;
    let outer: usize = x.dims()[..ax].iter().product();
    let inner: usize = x.dims()[ax..].iter().product();
    Ok(x.reshape((outer, inner))?)
}

fn reshape(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let spec = match a.opt(1) {
        Some(t) => host_i64(t)?,
        None => a.ints_attr("shape").ok_or("the shape is missing".to_string())?,
    };
    let allow_zero = a.int_attr("allowzero", 0) != 0;
    let mut dims = Vec::with_capacity(spec.len());
    let mut hole = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 if !allow_zero => match x.dims().get(i) {
                Some(&v) => dims.push(v),
                None => return invalid(format!("shape {spec:?}: no input dimension {i} to copy")),
            },
            -1 if hole.is_none() => {
                hole = Some(i);
                dims.push(1);
            }
            d if d >= 0 => dims.push(d as usize),
            _ => return invalid(format!("invalid shape {spec:?}")),
        }
    }
    let known: usize = dims.iter().product();
    if let Some(h) = hole {
        if known == 0 || x.elem_count() % known != 0 {
            return invalid(format!("cannot reshape {:?} to {spec:?}", x.dims()));
        }
        dims[h] = x.elem_count() / known;
    }
    if dims.iter().product::<usize>() != x.elem_count() {
        return invalid(format!("cannot reshape {:?} to {spec:?}", x.dims()));
    }
    Ok(x.reshape(dims)?)
}

fn transpose(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let r = x.rank();
    let perm: Vec<usize> = match a.ints_attr("perm") {
        Some(p) => p.iter().map(|&v| axis(v, r)).collect::<Res<_>>()?,
        None => (0..r).rev().collect(),
    };
    let mut seen = perm.clone();
    seen.sort_unstable();
    if seen != (0..r).collect::<Vec<_>>() {
        return invalid(format!("perm {perm:?} is not a permutation of rank {r}"));
    }
    Ok(x.permute(perm)?)
}

fn concat(a: &Args<'_>) -> Res<Tensor> {
    let ts: Vec<&Tensor> = a.args.iter().flatten().collect();
    let first = ts.first().ok_or("no inputs".to_string())?;
    let ax = a.attr("axis").and_then(Attribute::as_int).ok_or("`axis` is required".to_string())?;
    let ax = axis(ax, first.rank())?;
    Ok(Tensor::cat(&ts, ax)?)
}

fn softmax(a: &Args<'_>) -> Res<Tensor> {
    let x = a.float(0)?;
    let r = x.rank();
    if a.opset >= 13 {
        let ax = axis(a.int_attr("axis", -1), r)?;
        return Ok(prims::softmax(x, ax)?);
    }
    // Before opset 13: the input is coerced to 2-D at `axis`.
    let ax = axis(a.int_attr("axis", 1), r)?;
    let outer: usize = x.dims()[..ax].iter().product();
    let inner: usize = x.dims()[ax..].iter().product();
    Ok(prims::softmax(&x.reshape((outer, inner))?, 1)?.reshape(x.dims())?)
}

fn gather(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let idx = a.req(1)?;
    let ax = axis(a.int_attr("axis", 0), x.rank())?;
    let n = x.dim(ax)? as i64;
    let ids = host_i64(idx)?
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + n } else { i };
            if (0..n).contains(&j) {
                Ok(j)
            } else {
                invalid(format!("index {i} is out of range for axis {ax} of size {n}"))
            }
        })
        .collect::<Res<Vec<i64>>>()?;
    let y = prims::take(x, ax, &ids)?;
    let mut dims = x.dims()[..ax].to_vec();
    dims.extend_from_slice(idx.dims());
    dims.extend_from_slice(&x.dims()[ax + 1..]);
    Ok(y.reshape(dims)?)
}

fn axes_of(a: &Args<'_>) -> Res<Option<Vec<i64>>> {
    if a.opset >= 13 { Ok(a.opt(1).map(host_i64).transpose()?) } else { Ok(a.ints_attr("axes")) }
}

fn unsqueeze(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let axes = axes_of(a)?.ok_or("`axes` is required".to_string())?;
    let out_rank = x.rank() + axes.len();
    let mut norm = axes.iter().map(|&v| axis(v, out_rank)).collect::<Res<Vec<_>>>()?;
    norm.sort_unstable();
    if norm.windows(2).any(|w| w[0] == w[1]) {
        return invalid(format!("repeated axes {axes:?}"));
    }
    let mut dims = x.dims().to_vec();
    for &ax in &norm {
        dims.insert(ax, 1);
    }
    Ok(x.reshape(dims)?)
}

fn squeeze(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let dims = x.dims();
    let drop: Vec<usize> = match axes_of(a)? {
        Some(axes) => {
            let norm = axes.iter().map(|&v| axis(v, x.rank())).collect::<Res<Vec<_>>>()?;
            if let Some(&bad) = norm.iter().find(|&&ax| dims[ax] != 1) {
                return invalid(format!("cannot squeeze axis {bad} of size {}", dims[bad]));
            }
            norm
        }
        None => (0..x.rank()).filter(|&i| dims[i] == 1).collect(),
    };
    let kept: Vec<usize> =
        dims.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, &d)| d).collect();
    Ok(x.reshape(kept)?)
}

fn shape(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let r = x.rank() as i64;
    let clampi = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) } as usize;
    let start = clampi(a.int_attr("start", 0));
    let end = clampi(a.int_attr("end", r));
    let dims: Vec<i64> = x.dims()[start..end.max(start)].iter().map(|&d| d as i64).collect();
    let n = dims.len();
    Ok(Tensor::from_vec(dims, n, &Device::Cpu)?)
}

fn constant(a: &Args<'_>) -> Res<Tensor> {
    let dev = &Device::Cpu;
    if let Some(t) = a.attr("value").and_then(Attribute::as_tensor) {
        return Ok(super::to_candle(t)?);
    }
    if let Some(v) = a.attr("value_float").and_then(Attribute::as_float) {
        return Ok(Tensor::from_vec(vec![v], (), dev)?);
    }
    if let Some(v) = a.attr("value_floats").and_then(Attribute::as_floats) {
        return Ok(Tensor::from_vec(v.to_vec(), v.len(), dev)?);
    }
    if let Some(v) = a.attr("value_int").and_then(Attribute::as_int) {
        return Ok(Tensor::from_vec(vec![v], (), dev)?);
    }
    if let Some(v) = a.attr("value_ints").and_then(Attribute::as_ints) {
        return Ok(Tensor::from_vec(v.to_vec(), v.len(), dev)?);
    }
    invalid("only tensor, float(s) and int(s) values are supported")
}

fn cast(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let code = a.int_attr("to", 0);
    let to = i32::try_from(code)
        .ok()
        .and_then(DataType::from_onnx)
        .ok_or_else(|| OpError::Invalid(format!("unsupported target type {code}")))?;
    let target =
        candle_dtype(to).ok_or_else(|| OpError::Invalid(format!("cannot cast to {to}")))?;
    if to == DataType::Bool {
        return Ok(x.ne(0.0)?);
    }
    if x.dtype() == target {
        return Ok(x.clone());
    }
    Ok(x.to_dtype(target)?)
}

fn slice(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let r = x.rank();
    let (starts, ends, axes, steps) = if a.opset >= 10 {
        (
            host_i64(a.req(1)?)?,
            host_i64(a.req(2)?)?,
            a.opt(3).map(host_i64).transpose()?,
            a.opt(4).map(host_i64).transpose()?,
        )
    } else {
        (
            a.ints_attr("starts").ok_or("`starts` is required".to_string())?,
            a.ints_attr("ends").ok_or("`ends` is required".to_string())?,
            a.ints_attr("axes"),
            None,
        )
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return invalid("starts, ends, axes and steps differ in length");
    }
    let mut y = x.clone();
    for k in 0..n {
        let ax = axis(axes[k], r)?;
        let dim = y.dim(ax)? as i64;
        let step = steps[k];
        let fix = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (s, e) = (fix(starts[k]), fix(ends[k]));
        let ids: Vec<i64> = if step > 0 {
            let (s, e) = (s.clamp(0, dim), e.clamp(0, dim));
            (s..e).step_by(step as usize).collect()
        } else if step < 0 {
            let (s, e) = (s.clamp(0, dim - 1), e.clamp(-1, dim - 1));
            let mut v = Vec::new();
            let mut i = s;
            while i > e {
                v.push(i);
                i += step;
            }
            v
        } else {
            return invalid("a step of 0");
        };
        y = if step == 1 {
            let start = ids.first().copied().unwrap_or(0) as usize;
            y.narrow(ax, start, ids.len())?
        } else {
            prims::take(&y, ax, &ids)?
        };
    }
    Ok(y)
}

fn split(a: &Args<'_>) -> Res<Vec<Tensor>> {
    let x = a.req(0)?;
    let ax = axis(a.int_attr("axis", 0), x.rank())?;
    let dim = x.dim(ax)?;
    let outs = a.node.outputs.len();
    let given =
        if a.opset >= 13 { a.opt(1).map(host_i64).transpose()? } else { a.ints_attr("split") };
    let sizes: Vec<usize> = match given {
        Some(s) => {
            if s.len() != outs || s.iter().any(|&v| v < 0) || s.iter().sum::<i64>() != dim as i64 {
                return invalid(format!("split {s:?} does not divide dimension {dim} into {outs}"));
            }
            s.iter().map(|&v| v as usize).collect()
        }
        None => {
            let parts = a.int_attr("num_outputs", outs as i64).max(1) as usize;
            let chunk = dim.div_ceil(parts);
            if a.attr("num_outputs").is_none() && dim % parts != 0 {
                return invalid(format!("dimension {dim} does not split evenly into {parts}"));
            }
            (0..parts).map(|i| chunk.min(dim.saturating_sub(i * chunk))).collect()
        }
    };
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for s in sizes {
        out.push(x.narrow(ax, start, s)?);
        start += s;
    }
    Ok(out)
}

fn reduce(a: &Args<'_>, mean: bool) -> Res<Tensor> {
    let x = if mean { a.float(0)? } else { a.req(0)? };
    let axes_from_input = if mean { a.opset >= 18 } else { a.opset >= 13 };
    let axes =
        if axes_from_input { a.opt(1).map(host_i64).transpose()? } else { a.ints_attr("axes") };
    let keep = a.int_attr("keepdims", 1) != 0;
    let axes: Vec<usize> = match axes {
        Some(v) if !v.is_empty() => {
            let mut n = v.iter().map(|&ax| axis(ax, x.rank())).collect::<Res<Vec<_>>>()?;
            n.sort_unstable();
            n.dedup();
            n
        }
        _ if a.int_attr("noop_with_empty_axes", 0) != 0 => return Ok(x.clone()),
        _ => (0..x.rank()).collect(),
    };
    let y = if mean { x.mean_keepdim(axes.clone())? } else { x.sum_keepdim(axes.clone())? };
    if keep {
        return Ok(y);
    }
    let dims: Vec<usize> =
        x.dims().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
    Ok(y.reshape(dims)?)
}

fn layer_norm(a: &Args<'_>) -> Res<Vec<Tensor>> {
    let x = a.float(0)?;
    let ax = axis(a.int_attr("axis", -1), x.rank())?;
    let eps = a.float_attr("epsilon", 1e-5);
    let dims: Vec<usize> = (ax..x.rank()).collect();
    let mean = x.mean_keepdim(dims.clone())?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(dims)?;
    let inv = var.affine(1.0, eps)?.sqrt()?.recip()?;
    let mut y = centered.broadcast_mul(&inv)?.broadcast_mul(a.req(1)?)?;
    if let Some(b) = a.opt(2) {
        y = y.broadcast_add(b)?;
    }
    let mut out = vec![y];
    let wants = |i: usize| a.node.outputs.get(i).is_some_and(|o| !o.is_empty());
    if wants(1) || wants(2) {
        out.push(mean);
        out.push(inv);
    }
    Ok(out)
}

fn where_(a: &Args<'_>) -> Res<Tensor> {
    let c = a.req(0)?;
    let (x, y) = a.same_type(1, 2)?;
    let shape = prims::broadcast_shape(c.dims(), x.dims())?;
    let shape = prims::broadcast_shape(&shape, y.dims())?;
    let c = prims::broadcast_to(c, &shape)?;
    Ok(c.where_cond(&prims::broadcast_to(&x, &shape)?, &prims::broadcast_to(&y, &shape)?)?)
}

fn expand(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let s = host_i64(a.req(1)?)?;
    if s.iter().any(|&d| d < 0) {
        return invalid(format!("negative dimension in shape {s:?}"));
    }
    let s: Vec<usize> = s.iter().map(|&d| d as usize).collect();
    let shape = prims::broadcast_shape(x.dims(), &s)?;
    Ok(prims::broadcast_to(x, &shape)?)
}

fn constant_of_shape(a: &Args<'_>) -> Res<Tensor> {
    let s = host_i64(a.req(0)?)?;
    if s.iter().any(|&d| d < 0) {
        return invalid(format!("negative dimension in shape {s:?}"));
    }
    let dims: Vec<usize> = s.iter().map(|&d| d as usize).collect();
    let value = match a.attr("value").and_then(Attribute::as_tensor) {
        Some(t) => super::to_candle(t)?,
        None => Tensor::from_vec(vec![0f32], 1, &Device::Cpu)?,
    };
    if value.elem_count() != 1 {
        return invalid("`value` must hold one element");
    }
    Ok(value.flatten_all()?.reshape(())?.broadcast_as(dims)?.contiguous()?)
}

fn range(a: &Args<'_>) -> Res<Tensor> {
    let (start, limit, delta) = (a.req(0)?, a.req(1)?, a.req(2)?);
    let dev = &Device::Cpu;
    if start.dtype().is_float() {
        let (s, l, d) =
            (scalar_f64(start, "start")?, scalar_f64(limit, "limit")?, scalar_f64(delta, "delta")?);
        if d == 0.0 {
            return invalid("delta is 0");
        }
        let n = ((l - s) / d).ceil().max(0.0) as usize;
        if start.dtype() == DType::F32 {
            let (s, d) = (s as f32, d as f32);
            let v: Vec<f32> = (0..n).map(|i| s + i as f32 * d).collect();
            return Ok(Tensor::from_vec(v, n, dev)?);
        }
        let v: Vec<f64> = (0..n).map(|i| s + i as f64 * d).collect();
        return Ok(Tensor::from_vec(v, n, dev)?.to_dtype(start.dtype())?);
    }
    let (s, l, d) =
        (scalar_i64(start, "start")?, scalar_i64(limit, "limit")?, scalar_i64(delta, "delta")?);
    if d == 0 {
        return invalid("delta is 0");
    }
    let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
    let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
    Ok(Tensor::from_vec(v, n, dev)?)
}

fn trilu(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    if x.rank() < 2 {
        return invalid("the input must have rank ≥ 2");
    }
    let k = a.opt(1).map(|t| scalar_i64(t, "k")).transpose()?.unwrap_or(0);
    let upper = a.int_attr("upper", 1) != 0;
    let (m, n) = (x.dim(x.rank() - 2)?, x.dim(x.rank() - 1)?);
    let mask: Vec<u8> = (0..m as i64)
        .flat_map(|i| {
            (0..n as i64).map(move |j| u8::from(if upper { j - i >= k } else { j - i <= k }))
        })
        .collect();
    let mask = Tensor::from_vec(mask, (m, n), &Device::Cpu)?.broadcast_as(x.dims())?;
    Ok(mask.where_cond(x, &x.zeros_like()?)?)
}

fn pad(a: &Args<'_>) -> Res<Tensor> {
    let x = a.req(0)?;
    let mode = a.str_attr("mode").unwrap_or("constant");
    if mode != "constant" {
        return invalid(format!("pad mode `{mode}` is not supported (only `constant`)"));
    }
    let r = x.rank();
    let (pads, value, axes) = if a.opset >= 11 {
        let pads = host_i64(a.req(1)?)?;
        let value = a.opt(2).map(|t| scalar_f64(t, "constant_value")).transpose()?.unwrap_or(0.0);
        let axes = a.opt(3).map(host_i64).transpose()?;
        (pads, value, axes)
    } else {
        let pads = a.ints_attr("pads").ok_or("`pads` is required".to_string())?;
        (pads, a.float_attr("value", 0.0), None)
    };
    let axes: Vec<usize> = match axes {
        Some(v) => v.iter().map(|&ax| axis(ax, r)).collect::<Res<_>>()?,
        None => (0..r).collect(),
    };
    let n = axes.len();
    if pads.len() != 2 * n {
        return invalid(format!("pads {pads:?} must hold {} values", 2 * n));
    }
    let mut y = x.clone();
    for (k, &ax) in axes.iter().enumerate() {
        let (b, e) = (pads[k], pads[k + n]);
        let dim = y.dim(ax)? as i64;
        // Negative pads crop.
        let (cb, ce) = ((-b).max(0), (-e).max(0));
        if cb + ce > dim {
            return invalid(format!("pads {pads:?} crop more than axis {ax} holds"));
        }
        if cb > 0 || ce > 0 {
            y = y.narrow(ax, cb as usize, (dim - cb - ce) as usize)?;
        }
        y = prims::pad_dim(&y, ax, b.max(0) as usize, e.max(0) as usize, value)?;
    }
    Ok(y)
}

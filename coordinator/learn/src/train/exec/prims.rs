//! Differentiable building blocks shared by the ops: strided views, padding, broadcasting,
//! spatial window geometry, im2col convolution and pooling.
//!
//! Every function here is a composition of candle ops that have a backward, so gradients flow
//! through them without any custom op.

use candle_core::{Result, Tensor};

/// `count` elements of `x` along `dim`, starting at `start`, every `step` (≥ 1).
pub(super) fn strided(
    x: &Tensor,
    dim: usize,
    start: usize,
    count: usize,
    step: usize,
) -> Result<Tensor> {
    if step == 1 || count <= 1 {
        return x.narrow(dim, start, count);
    }
    let x = contiguous(x)?;
    let ids: Vec<i64> = (0..count).map(|k| (start + k * step) as i64).collect();
    let ids = Tensor::from_vec(ids, count, x.device())?;
    x.index_select(&ids, dim)
}

/// Elements at `ids` along `dim` (ids already in range).
pub(super) fn take(x: &Tensor, dim: usize, ids: &[i64]) -> Result<Tensor> {
    let ids = Tensor::from_vec(ids.to_vec(), ids.len(), x.device())?;
    contiguous(x)?.index_select(&ids, dim)
}

/// `x` padded along `dim` with `before` and `after` elements equal to `value`.
pub(super) fn pad_dim(
    x: &Tensor,
    dim: usize,
    before: usize,
    after: usize,
    value: f64,
) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return x.pad_with_zeros(dim, before, after);
    }
    let block = |n: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = n;
        Tensor::full(value, dims, x.device())?.to_dtype(x.dtype())
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Tensor::cat(&parts, dim)
}

/// The numpy broadcast of two shapes.
pub(super) fn broadcast_shape(a: &[usize], b: &[usize]) -> std::result::Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

/// `x` broadcast to `shape` (no-op when it already has it).
pub(super) fn broadcast_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.dims() == shape { Ok(x.clone()) } else { x.broadcast_as(shape) }
}

/// `x` made contiguous when it is not (matmul needs plain layouts).
pub(super) fn contiguous(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() { Ok(x.clone()) } else { x.contiguous() }
}

/// `(tanh(x/2) + 1) / 2`: the logistic function with a backward that stays finite.
pub(super) fn sigmoid(x: &Tensor) -> Result<Tensor> {
    x.affine(0.5, 0.0)?.tanh()?.affine(0.5, 0.5)
}

/// Softmax over `dim`, shifted by the (detached) maximum.
pub(super) fn softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(dim)?;
    e.broadcast_div(&s)
}

/// The geometry of one spatial axis of a convolution or pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Axis {
    /// Kernel size.
    pub(super) kernel: usize,
    /// Stride.
    pub(super) stride: usize,
    /// Dilation.
    pub(super) dilation: usize,
    /// Padding before.
    pub(super) pad_begin: usize,
    /// Padding after (as declared).
    pub(super) pad_end: usize,
    /// Extra padding after, beyond `pad_end`, that `ceil_mode` windows reach.
    pub(super) overhang: usize,
    /// Output size.
    pub(super) out: usize,
}

/// How the padding of a window is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AutoPad {
    /// Explicit `pads`.
    NotSet,
    /// Output size `ceil(in / stride)`, extra padding at the end.
    SameUpper,
    /// Output size `ceil(in / stride)`, extra padding at the start.
    SameLower,
    /// No padding.
    Valid,
}

impl Axis {
    /// The geometry for an input of size `input`. `pads` is `(begin, end)`.
    pub(super) fn new(
        input: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
        pads: (usize, usize),
        auto_pad: AutoPad,
        ceil_mode: bool,
    ) -> std::result::Result<Axis, String> {
        if kernel == 0 || stride == 0 || dilation == 0 {
            return Err(format!(
                "kernel {kernel}, stride {stride} and dilation {dilation} must be positive"
            ));
        }
        let span = (kernel - 1) * dilation + 1;
        let (pad_begin, pad_end) = match auto_pad {
            AutoPad::NotSet => pads,
            AutoPad::Valid => (0, 0),
            AutoPad::SameUpper | AutoPad::SameLower => {
                let out = input.div_ceil(stride);
                let total = ((out.saturating_sub(1)) * stride + span).saturating_sub(input);
                let small = total / 2;
                if auto_pad == AutoPad::SameUpper {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
        };
        let padded = input + pad_begin + pad_end;
        if padded < span {
            return Err(format!(
                "the window spans {span} elements but the padded input has {padded}"
            ));
        }
        let mut out = if ceil_mode {
            (padded - span).div_ceil(stride) + 1
        } else {
            (padded - span) / stride + 1
        };
        // A ceil-mode window must start inside the input or the leading padding.
        if ceil_mode && out > 1 && (out - 1) * stride >= input + pad_begin {
            out -= 1;
        }
        let overhang = ((out - 1) * stride + span).saturating_sub(padded);
        Ok(Axis { kernel, stride, dilation, pad_begin, pad_end, overhang, out })
    }
}

/// `x` [N, C, H, W] padded by the geometry (`value` for declared pads, `overhang_value` beyond).
pub(super) fn pad_spatial(
    x: &Tensor,
    axes: &[Axis; 2],
    value: f64,
    overhang_value: f64,
) -> Result<Tensor> {
    let mut y = x.clone();
    for (k, a) in axes.iter().enumerate() {
        y = pad_dim(&y, 2 + k, a.pad_begin, a.pad_end, value)?;
        y = pad_dim(&y, 2 + k, 0, a.overhang, overhang_value)?;
    }
    Ok(y)
}

/// The kernel-tap views of a padded [N, C, H, W] tensor: `kh·kw` tensors [N, C, OH, OW], the
/// tap (i, j) at index `i·kw + j`.
pub(super) fn windows(padded: &Tensor, axes: &[Axis; 2]) -> Result<Vec<Tensor>> {
    let [h, w] = axes;
    let mut out = Vec::with_capacity(h.kernel * w.kernel);
    for i in 0..h.kernel {
        let rows = strided(padded, 2, i * h.dilation, h.out, h.stride)?;
        for j in 0..w.kernel {
            out.push(strided(&rows, 3, j * w.dilation, w.out, w.stride)?);
        }
    }
    Ok(out)
}

/// 2-D convolution: x [N, C, H, W], weight [M, C/groups, KH, KW] → [N, M, OH, OW], by im2col
/// and a grouped matmul.
pub(super) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    axes: &[Axis; 2],
    groups: usize,
) -> Result<Tensor> {
    let n = x.dim(0)?;
    let (m, cg, kh, kw) = weight.dims4()?;
    let (oh, ow) = (axes[0].out, axes[1].out);
    let padded = pad_spatial(x, axes, 0.0, 0.0)?;
    let taps = windows(&padded, axes)?;
    let ck = cg * kh * kw;
    let l = oh * ow;
    // [N, C, K, OH, OW] → [N, G, C/G·K, L] → [G, C/G·K, N·L]
    let cols = if taps.len() == 1 {
        taps[0].reshape((n, groups, ck, l))?
    } else {
        Tensor::stack(&taps, 2)?.reshape((n, groups, ck, l))?
    };
    let cols = cols.permute((1, 2, 0, 3))?.contiguous()?.reshape((groups, ck, n * l))?;
    let w = contiguous(weight)?.reshape((groups, m / groups, ck))?;
    let y = w.matmul(&cols)?; // [G, M/G, N·L]
    y.reshape((groups, m / groups, n, l))?
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((n, m, oh, ow))
}

/// Max pooling of x [N, C, H, W].
pub(super) fn max_pool2d(x: &Tensor, axes: &[Axis; 2]) -> Result<Tensor> {
    let padded = pad_spatial(x, axes, f64::NEG_INFINITY, f64::NEG_INFINITY)?;
    let taps = windows(&padded, axes)?;
    if taps.len() == 1 {
        return Ok(taps[0].clone());
    }
    Tensor::stack(&taps, 4)?.max(4)
}

/// Average pooling of x [N, C, H, W]; the divisor counts declared padding only when
/// `count_include_pad`, and never the `ceil_mode` overhang.
pub(super) fn avg_pool2d(x: &Tensor, axes: &[Axis; 2], count_include_pad: bool) -> Result<Tensor> {
    let padded = pad_spatial(x, axes, 0.0, 0.0)?;
    let taps = windows(&padded, axes)?;
    let mut sum = taps[0].clone();
    for t in &taps[1..] {
        sum = (sum + t)?;
    }
    let (_, _, h, w) = x.dims4()?;
    let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?;
    let fill = if count_include_pad { 1.0 } else { 0.0 };
    let mask = pad_spatial(&ones, axes, fill, 0.0)?;
    let taps = windows(&mask, axes)?;
    let mut count = taps[0].clone();
    for t in &taps[1..] {
        count = (count + t)?;
    }
    sum.broadcast_div(&count)
}

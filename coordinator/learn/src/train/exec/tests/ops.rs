//! Per-op tests: forward parity with tract (f32) and gradient checks against central finite
//! differences (f64), on small generated graphs.
//!
//! Each case is built once per element type: `f32` for parity with tract, `f64` for the
//! gradient check (step 1e-5, tolerance 1e-6 relative to max(1, |gradient|): the truncation
//! error of a central difference is O(h²) ≈ 1e-10 and the rounding error ≈ 1e-16 / h ≈ 1e-11).

use hone_graph::{Attribute, DataType, Tensor as GTensor, TensorData};

use super::testing::{Builder, Case, assert_parity, grad_check, ints, node};
use crate::train::exec::to_candle;

const F32: DataType = DataType::F32;
const F64: DataType = DataType::F64;

/// A parity test (f32) and a gradient test (f64) for a case.
macro_rules! op_tests {
    ($parity:ident, $grad:ident, $case:ident) => {
        #[test]
        fn $parity() {
            assert_parity(&$case(F32));
        }

        #[test]
        fn $grad() {
            grad_check(&$case(F64), 1e-5, 1e-6);
        }
    };
}

fn gemm(dt: DataType) -> Case {
    let mut b = Builder::new(1, dt);
    b.input("a", &[4, 3]).init("w", &[5, 4]).init("c", &[5]).init("w2", &[5, 2]);
    b.node(node(
        "gemm",
        "Gemm",
        &["a", "w", "c"],
        &["y"],
        vec![
            ("transA", Attribute::Int(1)),
            ("transB", Attribute::Int(1)),
            ("alpha", Attribute::Float(0.7)),
            ("beta", Attribute::Float(1.3)),
        ],
    ));
    b.node(node("gemm2", "Gemm", &["y", "w2"], &["z"], vec![]));
    b.output("y").output("z").build()
}
op_tests!(gemm_matches_tract, gemm_gradients_match_finite_differences, gemm);

fn matmul(dt: DataType) -> Case {
    let mut b = Builder::new(2, dt);
    b.input("x", &[2, 3, 4, 5]).init("w", &[5, 6]);
    b.input("p", &[2, 1, 3, 4]).input("q", &[3, 4, 2]);
    b.input("v", &[4]).init("m", &[2, 4, 3]);
    b.node(node("mm", "MatMul", &["x", "w"], &["y1"], vec![]));
    b.node(node("bmm", "MatMul", &["p", "q"], &["y2"], vec![]));
    b.node(node("vmm", "MatMul", &["v", "m"], &["y3"], vec![]));
    b.node(node("mmv", "MatMul", &["m", "v3"], &["y4"], vec![]));
    b.init("v3", &[3]);
    b.output("y1").output("y2").output("y3").output("y4").build()
}
op_tests!(matmul_matches_tract, matmul_gradients_match_finite_differences, matmul);

fn binary(dt: DataType) -> Case {
    let mut b = Builder::new(3, dt);
    b.input("x", &[2, 3, 4]).init("bias", &[4]).input("y", &[2, 1, 4]).init("z", &[3, 1]);
    b.scalar("s", 1.7);
    let d = b.floats(&[1, 3, 1], 0.5, 2.0, &[]);
    b.init_tensor("d", d);
    b.node(node("add", "Add", &["x", "bias"], &["o1"], vec![]));
    b.node(node("sub", "Sub", &["y", "z"], &["o2"], vec![]));
    b.node(node("mul", "Mul", &["x", "s"], &["o3"], vec![]));
    b.node(node("div", "Div", &["x", "d"], &["o4"], vec![]));
    b.node(node("div2", "Div", &["d", "x2"], &["o5"], vec![]));
    let x2 = b.floats(&[2, 1, 4], 0.5, 2.0, &[]);
    b.init_tensor("x2", x2);
    b.output("o1").output("o2").output("o3").output("o4").output("o5").build()
}
op_tests!(
    add_sub_mul_div_broadcast_match_tract,
    add_sub_mul_div_gradients_match_finite_differences,
    binary
);

fn unary(dt: DataType) -> Case {
    let mut b = Builder::new(4, dt);
    let x = b.floats(&[3, 5], -3.0, 3.0, &[0.0]);
    let p = b.floats(&[3, 5], 0.2, 3.0, &[]);
    b.input_tensor("x", x).input_tensor("p", p);
    for op in ["Relu", "Sigmoid", "Tanh", "Erf", "Neg", "Exp", "Sin", "Cos", "Identity", "Dropout"]
    {
        let out = format!("{}_out", op.to_lowercase());
        b.node(node(op, op, &["x"], &[&out], vec![]));
        b.output(&out);
    }
    b.node(node("Sqrt", "Sqrt", &["p"], &["sqrt_out"], vec![])).output("sqrt_out");
    b.build()
}
op_tests!(unary_ops_match_tract, unary_op_gradients_match_finite_differences, unary);

fn clip(dt: DataType) -> Case {
    let mut b = Builder::new(5, dt);
    let x = b.floats(&[4, 6], -1.5, 1.5, &[-0.5, 0.7]);
    b.input_tensor("x", x).scalar("lo", -0.5).scalar("hi", 0.7);
    b.node(node("clip", "Clip", &["x", "lo", "hi"], &["y"], vec![]));
    b.node(node("clip_max", "Clip", &["x", "", "hi"], &["z"], vec![]));
    b.output("y").output("z").build()
}
op_tests!(clip_matches_tract, clip_gradients_match_finite_differences, clip);

fn hard(dt: DataType) -> Case {
    let mut b = Builder::new(6, dt);
    // HardSigmoid(0.3, 0.4) bends at -4/3 and 2; HardSwish at ±3.
    let x = b.floats(&[4, 8], -5.0, 5.0, &[-4.0 / 3.0, 2.0, -3.0, 3.0]);
    b.input_tensor("x", x);
    b.node(node(
        "hs",
        "HardSigmoid",
        &["x"],
        &["y"],
        vec![("alpha", Attribute::Float(0.3)), ("beta", Attribute::Float(0.4))],
    ));
    b.node(node("hw", "HardSwish", &["x"], &["z"], vec![]));
    b.output("y").output("z").build()
}
op_tests!(
    hard_sigmoid_and_swish_match_tract,
    hard_sigmoid_and_swish_gradients_match_finite_differences,
    hard
);

fn conv(dt: DataType) -> Case {
    let mut b = Builder::new(7, dt);
    // Asymmetric pads, different strides and dilations per axis, H and W with different
    // remainders.
    b.input("x", &[2, 3, 7, 8]).init("w", &[4, 3, 3, 3]).init("b", &[4]);
    b.node(node(
        "conv",
        "Conv",
        &["x", "w", "b"],
        &["y"],
        vec![
            ("pads", ints(&[1, 0, 2, 1])),
            ("strides", ints(&[2, 1])),
            ("dilations", ints(&[1, 2])),
            ("kernel_shape", ints(&[3, 3])),
        ],
    ));
    b.output("y").build()
}
op_tests!(
    conv_with_pads_strides_dilations_matches_tract,
    conv_gradients_match_finite_differences,
    conv
);

fn conv_grouped(dt: DataType) -> Case {
    let mut b = Builder::new(8, dt);
    b.input("x", &[2, 4, 6, 5]).init("w", &[6, 2, 3, 2]).init("b", &[6]);
    b.node(node(
        "gconv",
        "Conv",
        &["x", "w", "b"],
        &["y"],
        vec![
            ("group", Attribute::Int(2)),
            ("strides", ints(&[2, 2])),
            ("pads", ints(&[1, 1, 1, 0])),
        ],
    ));
    // Depthwise, SAME_UPPER padding, stride 2.
    b.init("dw", &[4, 1, 3, 3]);
    b.node(node(
        "dwconv",
        "Conv",
        &["x", "dw"],
        &["z"],
        vec![
            ("group", Attribute::Int(4)),
            ("strides", ints(&[2, 2])),
            ("auto_pad", Attribute::String(b"SAME_UPPER".to_vec())),
        ],
    ));
    b.output("y").output("z").build()
}
op_tests!(
    grouped_and_depthwise_conv_match_tract,
    grouped_and_depthwise_conv_gradients_match_finite_differences,
    conv_grouped
);

fn conv_1d_and_pointwise(dt: DataType) -> Case {
    let mut b = Builder::new(9, dt);
    b.input("s", &[2, 3, 10]).init("k", &[4, 3, 3]).init("kb", &[4]);
    b.node(node(
        "conv1d",
        "Conv",
        &["s", "k", "kb"],
        &["y"],
        vec![("pads", ints(&[1, 2])), ("strides", ints(&[3]))],
    ));
    b.input("x", &[1, 5, 4, 4]).init("pw", &[3, 5, 1, 1]);
    b.node(node("pointwise", "Conv", &["x", "pw"], &["z"], vec![]));
    b.output("y").output("z").build()
}
op_tests!(
    conv_1d_and_pointwise_match_tract,
    conv_1d_and_pointwise_gradients_match_finite_differences,
    conv_1d_and_pointwise
);

fn batch_norm(dt: DataType) -> Case {
    let mut b = Builder::new(10, dt);
    b.input("x", &[2, 3, 4, 4]).init("scale", &[3]).init("bias", &[3]).init("mean", &[3]);
    let var = b.floats(&[3], 0.5, 2.0, &[]);
    b.init_tensor("var", var);
    b.node(node(
        "bn",
        "BatchNormalization",
        &["x", "scale", "bias", "mean", "var"],
        &["y"],
        vec![("epsilon", Attribute::Float(1e-3))],
    ));
    b.output("y").build()
}
op_tests!(batch_norm_matches_tract, batch_norm_gradients_match_finite_differences, batch_norm);

#[test]
fn batch_norm_running_statistics_are_not_trained_by_default() {
    let case = batch_norm(F32);
    assert_eq!(super::super::default_trainable(&case.graph), ["scale", "bias"]);
}

fn max_pool(dt: DataType) -> Case {
    let mut b = Builder::new(11, dt);
    b.input("x", &[2, 2, 7, 7]);
    // Overlapping windows (kernel 3, stride 2) with padding: no candle backward for this.
    b.node(node(
        "mp",
        "MaxPool",
        &["x"],
        &["y"],
        vec![
            ("kernel_shape", ints(&[3, 3])),
            ("strides", ints(&[2, 2])),
            ("pads", ints(&[1, 1, 1, 1])),
        ],
    ));
    b.node(node(
        "mp_ceil",
        "MaxPool",
        &["x"],
        &["z"],
        vec![
            ("kernel_shape", ints(&[2, 3])),
            ("strides", ints(&[2, 2])),
            ("ceil_mode", Attribute::Int(1)),
        ],
    ));
    b.node(node(
        "mp_dilated",
        "MaxPool",
        &["x"],
        &["w"],
        vec![("kernel_shape", ints(&[2, 2])), ("dilations", ints(&[2, 2]))],
    ));
    b.output("y").output("z").output("w").build()
}
op_tests!(max_pool_matches_tract, max_pool_gradients_match_finite_differences, max_pool);

fn avg_pool(dt: DataType) -> Case {
    let mut b = Builder::new(12, dt);
    b.input("x", &[2, 2, 7, 6]);
    let k = || ints(&[3, 3]);
    b.node(node(
        "ap",
        "AveragePool",
        &["x"],
        &["y"],
        vec![("kernel_shape", k()), ("strides", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1]))],
    ));
    b.node(node(
        "ap_incl",
        "AveragePool",
        &["x"],
        &["z"],
        vec![
            ("kernel_shape", k()),
            ("strides", ints(&[2, 2])),
            ("pads", ints(&[1, 0, 1, 1])),
            ("count_include_pad", Attribute::Int(1)),
        ],
    ));
    b.node(node(
        "ap_ceil",
        "AveragePool",
        &["x"],
        &["w"],
        vec![
            ("kernel_shape", ints(&[2, 2])),
            ("strides", ints(&[2, 2])),
            ("ceil_mode", Attribute::Int(1)),
        ],
    ));
    b.node(node("gap", "GlobalAveragePool", &["x"], &["g"], vec![]));
    b.output("y").output("z").output("w").output("g").build()
}
op_tests!(average_pools_match_tract, average_pool_gradients_match_finite_differences, avg_pool);

fn shapes(dt: DataType) -> Case {
    let mut b = Builder::new(13, dt);
    b.input("x", &[2, 3, 4, 5]).ints("shape", &[0, -1, 5]);
    b.node(node("flat", "Flatten", &["x"], &["f"], vec![("axis", Attribute::Int(2))]));
    b.node(node("flat0", "Flatten", &["x"], &["f0"], vec![("axis", Attribute::Int(0))]));
    b.node(node("reshape", "Reshape", &["x", "shape"], &["r"], vec![]));
    b.node(node("tr", "Transpose", &["x"], &["t"], vec![("perm", ints(&[0, 2, 3, 1]))]));
    b.node(node("tr_default", "Transpose", &["x"], &["t2"], vec![]));
    b.ints("axes_u", &[0, -1]).ints("axes_s", &[1]);
    b.node(node("unsq", "Unsqueeze", &["x", "axes_u"], &["u"], vec![]));
    b.input("one", &[2, 1, 3]);
    b.node(node("sq", "Squeeze", &["one", "axes_s"], &["s"], vec![]));
    b.node(node("sq_all", "Squeeze", &["one"], &["s2"], vec![]));
    b.ints("expand_to", &[2, 3, 4]);
    b.input("col", &[3, 1]);
    b.node(node("expand", "Expand", &["col", "expand_to"], &["e"], vec![]));
    for o in ["f", "f0", "r", "t", "t2", "u", "s", "s2", "e"] {
        b.output(o);
    }
    b.build()
}
op_tests!(
    flatten_reshape_transpose_unsqueeze_squeeze_expand_match_tract,
    flatten_reshape_transpose_unsqueeze_squeeze_expand_gradients_match_finite_differences,
    shapes
);

fn concat_split_slice(dt: DataType) -> Case {
    let mut b = Builder::new(14, dt);
    b.input("x", &[2, 3, 4]).init("w", &[2, 3, 2]).input("y", &[2, 3, 1]);
    b.node(node("cat", "Concat", &["x", "w", "y"], &["c"], vec![("axis", Attribute::Int(-1))]));
    b.ints("sizes", &[2, 5]);
    b.node(node(
        "split",
        "Split",
        &["c", "sizes"],
        &["s1", "s2"],
        vec![("axis", Attribute::Int(2))],
    ));
    b.node(node("split_even", "Split", &["x"], &["e1", "e2"], vec![("axis", Attribute::Int(2))]));
    b.input("z", &[5, 6, 7]);
    b.ints("starts", &[1, -1])
        .ints("ends", &[100, 0])
        .ints("axes", &[0, 2])
        .ints("steps", &[2, -2]);
    b.node(node("slice", "Slice", &["z", "starts", "ends", "axes", "steps"], &["sl"], vec![]));
    b.ints("st2", &[1, 2]).ints("en2", &[-1, 5]);
    b.node(node("slice_default", "Slice", &["z", "st2", "en2"], &["sl2"], vec![]));
    for o in ["c", "s1", "s2", "e1", "e2", "sl", "sl2"] {
        b.output(o);
    }
    b.build()
}
op_tests!(
    concat_split_slice_match_tract,
    concat_split_slice_gradients_match_finite_differences,
    concat_split_slice
);

fn softmax13(dt: DataType) -> Case {
    let mut b = Builder::new(15, dt);
    b.input("x", &[2, 3, 5]);
    b.node(node("sm", "Softmax", &["x"], &["y"], vec![]));
    b.node(node("sm1", "Softmax", &["x"], &["z"], vec![("axis", Attribute::Int(1))]));
    b.output("y").output("z").build()
}
op_tests!(softmax_matches_tract, softmax_gradients_match_finite_differences, softmax13);

fn softmax11(dt: DataType) -> Case {
    let mut b = Builder::new(16, dt).opset(11);
    b.input("x", &[2, 3, 5]);
    // Before opset 13 the input is flattened to 2-D at the axis.
    b.node(node("sm", "Softmax", &["x"], &["y"], vec![("axis", Attribute::Int(1))]));
    b.ints("axes", &[1]);
    b.node(node("unsq", "Unsqueeze", &["x"], &["u"], vec![("axes", ints(&[0, 3]))]));
    b.node(node("sq", "Squeeze", &["u"], &["s"], vec![("axes", ints(&[0]))]));
    b.node(node(
        "rm",
        "ReduceSum",
        &["x"],
        &["r"],
        vec![("axes", ints(&[1])), ("keepdims", Attribute::Int(0))],
    ));
    b.output("y").output("s").output("r").build()
}
op_tests!(
    opset11_softmax_squeeze_reduce_match_tract,
    opset11_softmax_squeeze_reduce_gradients_match_finite_differences,
    softmax11
);

fn gather(dt: DataType) -> Case {
    let mut b = Builder::new(17, dt);
    b.init("emb", &[10, 4]);
    b.input_tensor(
        "ids",
        GTensor::new(vec![2, 3], TensorData::I64(vec![1, 9, -1, 0, 4, 4])).unwrap(),
    );
    b.node(node("embed", "Gather", &["emb", "ids"], &["e"], vec![]));
    b.input("x", &[3, 5, 2]);
    b.init_tensor("one", GTensor::scalar_i64(2));
    b.node(node("pick", "Gather", &["x", "one"], &["p"], vec![("axis", Attribute::Int(1))]));
    b.output("e").output("p").build()
}
op_tests!(gather_matches_tract, gather_gradients_match_finite_differences, gather);

fn pow(dt: DataType) -> Case {
    let mut b = Builder::new(18, dt);
    b.input("x", &[3, 4]).scalar("two", 2.0).scalar("three", 3.0);
    b.node(node("sq", "Pow", &["x", "two"], &["a"], vec![]));
    b.node(node("cube", "Pow", &["x", "three"], &["c"], vec![]));
    let p = b.floats(&[3, 4], 0.3, 2.0, &[]);
    let e = b.floats(&[4], -1.5, 2.5, &[]);
    b.input_tensor("p", p).init_tensor("e", e);
    b.node(node("pe", "Pow", &["p", "e"], &["d"], vec![]));
    b.output("a").output("c").output("d").build()
}
op_tests!(pow_matches_tract, pow_gradients_match_finite_differences, pow);

fn reduce(dt: DataType) -> Case {
    let mut b = Builder::new(19, dt);
    b.input("x", &[2, 3, 4]).ints("axes", &[0, 2]);
    b.node(node(
        "mean",
        "ReduceMean",
        &["x"],
        &["m"],
        vec![("axes", ints(&[1])), ("keepdims", Attribute::Int(0))],
    ));
    b.node(node("sum", "ReduceSum", &["x", "axes"], &["s"], vec![]));
    b.node(node("sum_all", "ReduceSum", &["x"], &["a"], vec![("keepdims", Attribute::Int(0))]));
    b.output("m").output("s").output("a").build()
}
op_tests!(reduce_mean_and_sum_match_tract, reduce_gradients_match_finite_differences, reduce);

fn layer_norm(dt: DataType) -> Case {
    let mut b = Builder::new(20, dt);
    b.input("x", &[2, 3, 8]).init("g", &[8]).init("b", &[8]).init("g2", &[3, 8]);
    b.node(node(
        "ln",
        "LayerNormalization",
        &["x", "g", "b"],
        &["y"],
        vec![("epsilon", Attribute::Float(1e-5))],
    ));
    b.node(node(
        "ln2",
        "LayerNormalization",
        &["x", "g2"],
        &["z"],
        vec![("axis", Attribute::Int(1))],
    ));
    b.output("y").output("z").build()
}
op_tests!(layer_norm_matches_tract, layer_norm_gradients_match_finite_differences, layer_norm);

fn where_trilu_pad(dt: DataType) -> Case {
    let mut b = Builder::new(21, dt);
    b.input_tensor(
        "cond",
        GTensor::new(vec![3, 1], TensorData::Bool(vec![true, false, true])).unwrap(),
    );
    b.input("x", &[1, 4]).input("y", &[3, 4]);
    b.node(node("where", "Where", &["cond", "x", "y"], &["w"], vec![]));
    b.input("m", &[2, 4, 5]);
    b.init_tensor("k1", GTensor::scalar_i64(1)).init_tensor("km1", GTensor::scalar_i64(-1));
    b.node(node("triu", "Trilu", &["m", "k1"], &["u"], vec![]));
    b.node(node("tril", "Trilu", &["m", "km1"], &["l"], vec![("upper", Attribute::Int(0))]));
    // (tract 0.23.9 refuses negative pads; they are checked by hand below.)
    b.ints("pads", &[0, 1, 1, 1, 2, 0]).scalar("pad_value", 0.5);
    b.node(node("pad", "Pad", &["m", "pads", "pad_value"], &["p"], vec![]));
    b.output("w").output("u").output("l").output("p").build()
}
op_tests!(
    where_trilu_pad_match_tract,
    where_trilu_pad_gradients_match_finite_differences,
    where_trilu_pad
);

fn cast_float(dt: DataType) -> Case {
    let mut b = Builder::new(22, dt);
    b.input("x", &[3, 4]);
    b.node(node("to32", "Cast", &["x"], &["a"], vec![("to", Attribute::Int(1))]));
    b.node(node("to64", "Cast", &["a"], &["y"], vec![("to", Attribute::Int(11))]));
    b.output("y").build()
}

#[test]
fn float_cast_matches_tract() {
    assert_parity(&cast_float(F32));
}

#[test]
fn float_cast_gradients_match_finite_differences() {
    // The round trip through f32 rounds to 2^-24 relative; Cast is linear, so a large step
    // (1e-2) keeps the difference quotient exact up to that rounding: 1e-7 / 1e-2 = 1e-5.
    grad_check(&cast_float(F64), 1e-2, 1e-4);
}

/// The integer "shape subgraph" ops feeding a float computation: Shape, Gather, Unsqueeze,
/// Concat, Reshape, Constant, ConstantOfShape, Range, Equal, Where, Cast.
fn shape_subgraph(dt: DataType) -> Case {
    let mut b = Builder::new(23, dt);
    b.input("x", &[2, 3, 4]);
    b.node(node("shape", "Shape", &["x"], &["s"], vec![]));
    b.init_tensor("i1", GTensor::scalar_i64(1));
    b.node(node("dim1", "Gather", &["s", "i1"], &["d1"], vec![]));
    b.ints("zero", &[0]);
    b.node(node("dim1v", "Unsqueeze", &["d1", "zero"], &["d1v"], vec![]));
    b.node(node(
        "minus1",
        "Constant",
        &[],
        &["m1"],
        vec![("value", Attribute::Tensor(GTensor::vec_i64(&[-1])))],
    ));
    b.node(node("newshape", "Concat", &["m1", "d1v"], &["ns"], vec![("axis", Attribute::Int(0))]));
    b.node(node("reshape", "Reshape", &["x", "ns"], &["r"], vec![]));
    // 1.5 everywhere, shaped like r.
    b.node(node("rshape", "Shape", &["r"], &["rs"], vec![]));
    b.node(node(
        "fill",
        "ConstantOfShape",
        &["rs"],
        &["c"],
        vec![(
            "value",
            Attribute::Tensor(GTensor::new(vec![1], TensorData::F32(vec![1.5])).unwrap()),
        )],
    ));
    b.node(node(
        "cast_fill",
        "Cast",
        &["c"],
        &["cf"],
        vec![("to", Attribute::Int(dt.onnx_code() as i64))],
    ));
    b.node(node("plus", "Add", &["r", "cf"], &["y"], vec![]));
    // A mask from Range == 1 selecting column 1 of r.
    b.init_tensor("r0", GTensor::scalar_i64(0)).init_tensor("step", GTensor::scalar_i64(1));
    b.node(node("range", "Range", &["r0", "d1", "step"], &["cols"], vec![]));
    b.node(node("eq", "Equal", &["cols", "i1"], &["mask"], vec![]));
    b.node(node("select", "Where", &["mask", "y", "r"], &["w"], vec![]));
    // Shape with start/end (opset 15).
    b.node(node("tail", "Shape", &["x"], &["st"], vec![("start", Attribute::Int(-2))]));
    b.node(node(
        "tailf",
        "Cast",
        &["st"],
        &["stf"],
        vec![("to", Attribute::Int(dt.onnx_code() as i64))],
    ));
    // Cast float → int64 truncates toward zero, → bool is "non-zero".
    b.node(node("scaled", "Mul", &["x", "k"], &["xs"], vec![]));
    b.scalar("k", 3.7);
    b.node(node("trunc", "Cast", &["xs"], &["ti"], vec![("to", Attribute::Int(7))]));
    b.node(node("nz", "Cast", &["ti"], &["tb"], vec![("to", Attribute::Int(9))]));
    for o in ["w", "stf", "ti", "tb", "mask"] {
        b.output(o);
    }
    b.build()
}
op_tests!(
    shape_subgraph_ops_match_tract,
    shape_subgraph_gradients_match_finite_differences,
    shape_subgraph
);

/// A float `Range` (tract 0.23.9 panics on a fractional delta) and a `Pad` with negative pads
/// (tract 0.23.9 refuses them), against values computed by hand.
#[test]
fn float_range_and_cropping_pad_match_hand_computed_values() {
    let mut b = Builder::new(24, F32);
    let m = GTensor::new(vec![2, 3], TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])).unwrap();
    b.input_tensor("m", m);
    b.scalar("fs", 0.5).scalar("fl", 3.0).scalar("fd", 0.75);
    b.node(node("frange", "Range", &["fs", "fl", "fd"], &["fr"], vec![]));
    b.ints("pads", &[1, -1, -1, 1]).scalar("v", 9.0);
    b.node(node("crop", "Pad", &["m", "pads", "v"], &["p"], vec![]));
    let case = b.output("fr").output("p").build();
    let exec = crate::train::exec::Executor::new(&case.graph).unwrap();
    let out = super::testing::run_candle(&exec, &case.inputs);
    assert_eq!(out[0], (vec![4], vec![0.5, 1.25, 2.0, 2.75]));
    assert_eq!(out[1], (vec![2, 3], vec![9.0, 9.0, 9.0, 2.0, 3.0, 9.0]));
}

#[test]
fn sigmoid_gradient_stays_finite_for_large_inputs() {
    let mut b = Builder::new(25, F32);
    let x = GTensor::new(vec![4], TensorData::F32(vec![-200.0, -30.0, 30.0, 200.0])).unwrap();
    b.input_tensor("x", x);
    b.node(node("sig", "Sigmoid", &["x"], &["y"], vec![]));
    let case = b.output("y").build();
    let exec = crate::train::exec::Executor::new(&case.graph).unwrap();
    let x = candle_core::Var::from_tensor(&to_candle(&case.inputs[0].1).unwrap()).unwrap();
    let y = exec.forward([("x", x.as_tensor().clone())]).unwrap().remove("y").unwrap();
    assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.0, 1.0, 1.0]);
    let grads = exec.backward(&y.sum_all().unwrap()).unwrap();
    let g = grads.of(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert!(g.iter().all(|v| v.is_finite() && *v >= 0.0 && *v < 1e-12), "{g:?}");
}

/// candle has no integer kernels for its unary ops; integer `Neg`, `Relu` and `Clip` (shape
/// arithmetic) go through binary ops instead of panicking.
#[test]
fn integer_neg_relu_and_clip_work_on_shape_values() {
    let mut b = Builder::new(26, F32);
    b.input("x", &[2, 3, 4]);
    b.node(node("shape", "Shape", &["x"], &["s"], vec![]));
    b.ints("offset", &[3, 3, 3]);
    b.node(node("sub", "Sub", &["s", "offset"], &["d"], vec![]));
    b.node(node("neg", "Neg", &["d"], &["n"], vec![]));
    b.node(node("relu", "Relu", &["n"], &["r"], vec![]));
    b.init_tensor("lo", GTensor::scalar_i64(-1)).init_tensor("hi", GTensor::scalar_i64(0));
    b.node(node("clip", "Clip", &["d", "lo", "hi"], &["c"], vec![]));
    let case = b.output("n").output("r").output("c").build();
    let exec = crate::train::exec::Executor::new(&case.graph).unwrap();
    let out = super::testing::run_candle(&exec, &case.inputs);
    assert_eq!(out[0].1, [1.0, 0.0, -1.0]);
    assert_eq!(out[1].1, [1.0, 0.0, 0.0]);
    assert_eq!(out[2].1, [-1.0, 0.0, 0.0]);
}

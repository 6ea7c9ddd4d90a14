//! A model builder: feed-forward image classifiers defined in code and written as ONNX
//! (`Conv`, `Relu`, `MaxPool`, `Flatten`, `Gemm`; no batch normalisation to fold).
//!
//! The input is `image` f32 `[N, C, H, W]` with a symbolic batch `N`; the output is `logits`
//! f32 `[N, classes]`. Weights are drawn from a seeded [`SplitMix64`] with He-uniform bounds
//! (`±√(6 / fan_in)`) before a ReLU and `±√(1 / fan_in)` otherwise; biases start at zero.
//! Initializers are named `{layer}.weight` and `{layer}.bias` (`conv1`, `fc1`, ...).

use tract_onnx::pb;

use super::TrainError;
use crate::data::SplitMix64;
use hone_graph::{Attribute, DataType, Dim, Graph, Node, Tensor, TensorData, ValueInfo};

/// The input value of built models.
pub const INPUT: &str = "image";
/// The output value of built models.
pub const OUTPUT: &str = "logits";

/// One layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "layer", rename_all = "lowercase")]
pub enum Layer {
    /// 2-D convolution with a square kernel, bias included.
    Conv {
        /// Output channels.
        out: usize,
        /// Kernel side.
        kernel: usize,
        /// Zero padding on every side.
        pad: usize,
        /// Stride.
        stride: usize,
    },
    /// Rectified linear unit.
    Relu,
    /// Max pooling with a square window, no padding.
    MaxPool {
        /// Window side.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// `[N, C, H, W]` → `[N, C·H·W]`.
    Flatten,
    /// Fully connected layer (`Gemm` with `transB = 1`, weight `[out, in]`).
    Dense {
        /// Output features.
        out: usize,
    },
}

impl Layer {
    /// A 3×3 convolution with padding 1 and stride 1.
    pub fn conv3(out: usize) -> Layer {
        Layer::Conv { out, kernel: 3, pad: 1, stride: 1 }
    }

    /// 2×2 max pooling with stride 2.
    pub fn pool2() -> Layer {
        Layer::MaxPool { kernel: 2, stride: 2 }
    }
}

/// A model to build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelSpec {
    /// Graph name.
    pub name: String,
    /// `[C, H, W]` of one input image.
    pub input: [usize; 3],
    /// The layers, in order.
    pub layers: Vec<Layer>,
    /// Seed of the initial weights.
    pub seed: u64,
}

/// A built model.
#[derive(Debug, Clone)]
pub struct BuiltModel {
    /// The ONNX graph.
    pub graph: Graph,
    /// Number of weights and biases.
    pub params: usize,
    /// Multiply-accumulates per image (convolutions and dense layers).
    pub macs: u64,
    /// Number of output classes (features of the last layer).
    pub classes: usize,
}

/// The shape flowing between layers.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Image([usize; 3]),
    Flat(usize),
}

impl ModelSpec {
    /// Builds the graph (see the [module](self) documentation).
    pub fn build(&self) -> Result<BuiltModel, TrainError> {
        let mut rng = SplitMix64::new(self.seed);
        let mut shape = Shape::Image(self.input);
        let mut nodes = Vec::new();
        let mut inits: Vec<(String, Tensor)> = Vec::new();
        let (mut params, mut macs) = (0usize, 0u64);
        let mut value = INPUT.to_owned();
        let (mut n_conv, mut n_fc, mut n_relu, mut n_pool) = (0, 0, 0, 0);
        if !self.layers.iter().any(|l| matches!(l, Layer::Conv { .. } | Layer::Dense { .. })) {
            return Err(TrainError::config("a model needs a convolution or a dense layer"));
        }
        for (ix, layer) in self.layers.iter().enumerate() {
            let relu_next = matches!(self.layers.get(ix + 1), Some(Layer::Relu));
            let bad = |why: String| TrainError::config(format!("layer {ix} ({layer:?}): {why}"));
            let op_out = match *layer {
                Layer::Conv { out, kernel, pad, stride } => {
                    let Shape::Image([c, h, w]) = shape else {
                        return Err(bad("a convolution needs an image input".into()));
                    };
                    if kernel == 0 || stride == 0 || h + 2 * pad < kernel || w + 2 * pad < kernel {
                        return Err(bad(format!("does not fit a {c}×{h}×{w} input")));
                    }
                    n_conv += 1;
                    let name = format!("conv{n_conv}");
                    let (oh, ow) =
                        ((h + 2 * pad - kernel) / stride + 1, (w + 2 * pad - kernel) / stride + 1);
                    let fan_in = c * kernel * kernel;
                    let wt = init(&mut rng, &[out, c, kernel, kernel], fan_in, relu_next);
                    inits.push((format!("{name}.weight"), wt));
                    inits.push((format!("{name}.bias"), zeros(out)));
                    params += out * fan_in + out;
                    macs += (out * oh * ow * fan_in) as u64;
                    let k = kernel as i64;
                    let p = pad as i64;
                    let s = stride as i64;
                    let node = Node::new(
                        &name,
                        "Conv",
                        &[&value, &format!("{name}.weight"), &format!("{name}.bias")],
                        &[&name],
                    )
                    .with_attribute("kernel_shape", Attribute::Ints(vec![k, k]))
                    .with_attribute("pads", Attribute::Ints(vec![p, p, p, p]))
                    .with_attribute("strides", Attribute::Ints(vec![s, s]));
                    nodes.push(node);
                    shape = Shape::Image([out, oh, ow]);
                    name
                }
                Layer::Relu => {
                    n_relu += 1;
                    let name = format!("relu{n_relu}");
                    nodes.push(Node::new(&name, "Relu", &[&value], &[&name]));
                    name
                }
                Layer::MaxPool { kernel, stride } => {
                    let Shape::Image([c, h, w]) = shape else {
                        return Err(bad("pooling needs an image input".into()));
                    };
                    if kernel == 0 || stride == 0 || h < kernel || w < kernel {
                        return Err(bad(format!("does not fit a {c}×{h}×{w} input")));
                    }
                    n_pool += 1;
                    let name = format!("pool{n_pool}");
                    let (k, s) = (kernel as i64, stride as i64);
                    nodes.push(
                        Node::new(&name, "MaxPool", &[&value], &[&name])
                            .with_attribute("kernel_shape", Attribute::Ints(vec![k, k]))
                            .with_attribute("strides", Attribute::Ints(vec![s, s])),
                    );
                    shape = Shape::Image([c, (h - kernel) / stride + 1, (w - kernel) / stride + 1]);
                    name
                }
                Layer::Flatten => {
                    let Shape::Image([c, h, w]) = shape else {
                        return Err(bad("already flat".into()));
                    };
                    nodes.push(
                        Node::new("flatten", "Flatten", &[&value], &["flat"])
                            .with_attribute("axis", Attribute::Int(1)),
                    );
                    shape = Shape::Flat(c * h * w);
                    "flat".to_owned()
                }
                Layer::Dense { out } => {
                    let Shape::Flat(fan_in) = shape else {
                        return Err(bad("a dense layer needs a flat input (add Flatten)".into()));
                    };
                    n_fc += 1;
                    let name = format!("fc{n_fc}");
                    let wt = init(&mut rng, &[out, fan_in], fan_in, relu_next);
                    inits.push((format!("{name}.weight"), wt));
                    inits.push((format!("{name}.bias"), zeros(out)));
                    params += out * fan_in + out;
                    macs += (out * fan_in) as u64;
                    nodes.push(
                        Node::new(
                            &name,
                            "Gemm",
                            &[&value, &format!("{name}.weight"), &format!("{name}.bias")],
                            &[&name],
                        )
                        .with_attribute("transB", Attribute::Int(1)),
                    );
                    shape = Shape::Flat(out);
                    name
                }
            };
            value = op_out;
        }
        let Shape::Flat(classes) = shape else {
            return Err(TrainError::config(
                "the last layer must produce [N, classes] (end with Flatten or Dense)",
            ));
        };
        // Name the final value `logits`.
        if let Some(last) = nodes.last_mut() {
            last.outputs = vec![OUTPUT.to_owned()];
        }
        let [c, h, w] = self.input;
        let batch = || Dim::Symbol("N".into());
        let input = ValueInfo::tensor(
            INPUT,
            DataType::F32,
            vec![batch(), Dim::Value(c as i64), Dim::Value(h as i64), Dim::Value(w as i64)],
        );
        let output =
            ValueInfo::tensor(OUTPUT, DataType::F32, vec![batch(), Dim::Value(classes as i64)]);
        let proto = pb::ModelProto {
            ir_version: 8,
            producer_name: "hone".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(pb::GraphProto {
                name: self.name.clone(),
                node: nodes.iter().map(Node::to_proto).collect(),
                initializer: inits.iter().map(|(n, t)| t.to_proto(n)).collect(),
                input: vec![input.to_proto()],
                output: vec![output.to_proto()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let graph = Graph::from_proto(proto)?;
        graph.validate()?;
        Ok(BuiltModel { graph, params, macs, classes })
    }
}

fn zeros(n: usize) -> Tensor {
    Tensor::new(vec![n], TensorData::F32(vec![0.0; n])).expect("length matches")
}

fn init(rng: &mut SplitMix64, dims: &[usize], fan_in: usize, relu_next: bool) -> Tensor {
    let bound = if relu_next { (6.0 / fan_in as f64).sqrt() } else { (1.0 / fan_in as f64).sqrt() };
    let n: usize = dims.iter().product();
    let v = (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
    Tensor::new(dims.to_vec(), TensorData::F32(v)).expect("length matches")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelSpec {
        ModelSpec {
            name: "small".into(),
            input: [1, 28, 28],
            layers: vec![
                Layer::Conv { out: 4, kernel: 3, pad: 1, stride: 1 },
                Layer::Relu,
                Layer::pool2(),
                Layer::Flatten,
                Layer::Dense { out: 10 },
            ],
            seed: 1,
        }
    }

    #[test]
    fn builds_a_valid_graph_with_counted_params_and_macs() {
        let m = small().build().unwrap();
        assert_eq!(m.params, 4 * 9 + 4 + 10 * 4 * 14 * 14 + 10);
        assert_eq!(m.macs, (4 * 28 * 28 * 9 + 10 * 4 * 14 * 14) as u64);
        assert_eq!(m.classes, 10);
        let ops: Vec<String> = m.graph.nodes().unwrap().into_iter().map(|n| n.op_type).collect();
        assert_eq!(ops, ["Conv", "Relu", "MaxPool", "Flatten", "Gemm"]);
        assert_eq!(m.graph.outputs()[0].name, OUTPUT);
        // The same seed gives the same weights; another seed does not.
        let again = small().build().unwrap();
        assert_eq!(m.graph.to_bytes(), again.graph.to_bytes());
        let other = ModelSpec { seed: 2, ..small() }.build().unwrap();
        assert_ne!(m.graph.to_bytes(), other.graph.to_bytes());
    }

    #[test]
    fn misfit_layers_are_refused() {
        let mut s = small();
        s.layers.insert(0, Layer::Dense { out: 3 });
        assert!(s.build().unwrap_err().to_string().contains("flat input"));
        let s = ModelSpec { layers: vec![Layer::Relu], ..small() };
        assert!(s.build().is_err());
        let s = ModelSpec { layers: vec![Layer::conv3(2)], ..small() };
        assert!(s.build().unwrap_err().to_string().contains("last layer"));
    }
}

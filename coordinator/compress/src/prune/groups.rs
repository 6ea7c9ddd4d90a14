//! Dependency groups: which dimensions of which tensors must shrink together.
//!
//! Every weight-bearing producer (a `Conv` with a constant weight, `Gemm`, a `MatMul` by a
//! constant matrix) opens a group over its output channels. Its output value carries a
//! [`Track`]: which axis holds those channels, and how channel `c` maps to positions on it.
//! Tracks flow forward, node by node in topological order, through the ops Hone understands:
//! element-wise ops and activations, batch normalisation, pooling, `Transpose`, `Reshape`,
//! `Flatten`, `Squeeze`/`Unsqueeze`, `Concat` (with offsets), `Split` and `Slice` on other axes,
//! depthwise convolutions, and `MatMul` between two activations (attention). Where two tracks
//! meet (a residual `Add`, `Q·Kᵀ` over heads, a shared initializer) their groups are united: all
//! branches are coupled. A track ends where a consumer contracts it (a convolution's input
//! channels, a matrix product's inner dimension): the consumer's weight slices are recorded.
//!
//! A group is *blocked* — reported with the reason and left alone, never guessed — when its
//! channels reach a graph output, an op Hone does not understand, a normalisation or reduction
//! over the channel axis (`LayerNormalization` of a transformer's hidden stream), or a runtime
//! tensor that would need slicing.
//!
//! Reshapes that split an axis into `[heads, head_dim]` coarsen the group: its *unit* becomes
//! `head_dim` channels, so attention heads are removed whole, with Q, K, V and the output
//! projection coupled per head and the reshape targets rewritten.

use std::collections::{BTreeMap, HashMap};

use hone_graph::{Attribute, Graph, GraphError, Node, Tensor, ValueShape};

/// How the channels of a group lie along one axis of one tensor: channel `c` occupies the
/// positions `offset + (c / div) * mul .. offset + (c / div + 1) * mul`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Track {
    /// The group (an index before unification; see [`Analysis::groups`]).
    pub group: usize,
    /// The producer whose channels these are ([`Member`]); set when groups are final.
    pub member: usize,
    /// The axis.
    pub axis: usize,
    /// First position of the group's span.
    pub offset: usize,
    /// Channels per position (> 1 after a split into heads).
    pub div: usize,
    /// Positions per channel block (> 1 after a flatten of spatial dims).
    pub mul: usize,
}

impl Track {
    fn direct(group: usize, axis: usize) -> Track {
        Track { group, member: group, axis, offset: 0, div: 1, mul: 1 }
    }

    /// The positions that the removed channels occupy, given the removed channel indices
    /// (whole units, so every `div`-block is removed entirely or not at all).
    pub fn removed_positions(&self, removed_channels: &[usize]) -> Vec<usize> {
        let mut out = Vec::new();
        for &c in removed_channels.iter().filter(|&&c| c % self.div == 0) {
            let start = self.offset + (c / self.div) * self.mul;
            out.extend(start..start + self.mul);
        }
        out
    }

    /// The positions of channel `c`.
    pub fn positions(&self, c: usize) -> std::ops::Range<usize> {
        let start = self.offset + (c / self.div) * self.mul;
        start..start + self.mul
    }
}

/// A slice to take of an initializer along one axis.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParamSlice {
    /// The initializer.
    pub init: String,
    /// Its axis.
    pub axis: usize,
    /// How the group's channels lie on that axis.
    pub track: Track,
    /// The reading node.
    pub node: String,
    /// `out`: the group's producer weights; `in`: a consumer contracting the channels;
    /// `elementwise`: a per-channel operand (bias, batch-norm statistics, scale).
    pub role: Role,
}

/// The part a sliced initializer plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Weights that produce the channels.
    Out,
    /// Weights that consume (contract) the channels.
    In,
    /// Per-channel operands.
    Elementwise,
}

/// A consumer that contracts the group's channels: its input activation and its weight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sink {
    /// The activation value read by the consumer.
    pub value: String,
    /// How the channels lie in that value.
    pub value_track: Track,
    /// The consumer's weight and the axis contracted.
    pub weight: String,
    /// Axis of `weight` holding the channels.
    pub weight_axis: usize,
}

/// A literal dimension in a `Reshape` target that counts the group's positions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShapeEdit {
    /// The node that reads the shape tensor (the `Reshape`, or the `Concat` building its target).
    pub node: usize,
    /// The input slot of that node holding the constant.
    pub slot: usize,
    /// Index of the element within the constant.
    pub element: usize,
    /// How the group lies on that output axis.
    pub track: Track,
}

/// One producer of a group: its channels and how many make one unit. Producers of one group
/// have the same number of units; their unit sizes may differ (grouped-query attention: a unit
/// is one KV head, `head_dim` channels of K and V, and the query heads sharing it,
/// `n_rep · head_dim` channels of Q).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Its id (the value of [`Track::member`]).
    pub id: usize,
    /// The producing node.
    pub producer: String,
    /// Output channels.
    pub channels: usize,
    /// Channels per unit.
    pub unit: usize,
}

/// One group of coupled channels, after unification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Group {
    /// Index in [`Analysis::groups`].
    pub id: usize,
    /// `heads`, `channels` (convolutions) or `neurons` (dense layers).
    pub kind: &'static str,
    /// Every producer, with its own channels and unit (never empty; by creation order).
    pub members: Vec<Member>,
    /// Initializer slices.
    pub params: Vec<ParamSlice>,
    /// Consumers contracting the channels.
    pub sinks: Vec<Sink>,
    /// `Reshape` targets to rewrite.
    pub shape_edits: Vec<ShapeEdit>,
    /// Depthwise convolutions whose `group` attribute follows the channel count: (member, node
    /// index).
    pub depthwise: Vec<(usize, usize)>,
    /// Values that carry the group's channels (for activation statistics), with their tracks.
    pub values: Vec<(String, Track)>,
    /// Why the group cannot be pruned, if it cannot.
    pub blocked: Option<String>,
}

impl Group {
    /// Channels of the first producer.
    pub fn channels(&self) -> usize {
        self.members.first().map_or(0, |m| m.channels)
    }

    /// Channels per unit of the first producer (1; the head width for attention).
    pub fn unit(&self) -> usize {
        self.members.first().map_or(1, |m| m.unit.max(1))
    }

    /// The producers' node names.
    pub fn producers(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.producer.as_str()).collect()
    }

    /// Number of units (the same for every producer).
    pub fn units(&self) -> usize {
        self.channels() / self.unit()
    }

    /// Whether pruning may touch it.
    pub fn prunable(&self) -> bool {
        self.blocked.is_none() && self.units() > 1
    }

    /// Channels per unit of producer `member`.
    pub fn member_unit(&self, member: usize) -> usize {
        self.members.iter().find(|m| m.id == member).map_or(self.unit(), |m| m.unit)
    }

    /// Channels of unit `u` of producer `member`.
    pub fn member_channels(&self, member: usize, u: usize) -> std::ops::Range<usize> {
        let k = self.member_unit(member);
        u * k..(u + 1) * k
    }
}

/// The result of the analysis.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Analysis {
    /// Every group, prunable or blocked.
    pub groups: Vec<Group>,
    /// Value shapes used (tract's inference at the analysis dims).
    #[serde(skip)]
    pub shapes: BTreeMap<String, ValueShape>,
}

impl Analysis {
    /// The prunable groups.
    pub fn prunable(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().filter(|g| g.prunable())
    }
}

/// Ops that map each element to one element, keeping the shape.
const UNARY: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Clip",
    "HardSigmoid",
    "HardSwish",
    "Neg",
    "Exp",
    "Sqrt",
    "Abs",
    "Cast",
    "Identity",
    "Dropout",
    "Elu",
    "Selu",
    "Softplus",
    "Gelu",
    "Not",
    "Sin",
    "Cos",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Log",
];

/// Broadcasting element-wise ops.
const BINARY: &[&str] = &[
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "PRelu",
];

/// Pooling over the spatial axes of NCHW tensors.
const POOL: &[&str] =
    &["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "LRN"];

struct State<'a> {
    graph: &'a Graph,
    nodes: Vec<Node>,
    inits: HashMap<String, Tensor>,
    shapes: &'a BTreeMap<String, ValueShape>,
    tracks: HashMap<String, Vec<Track>>,
    parent: Vec<usize>,
    channels: Vec<usize>,
    granularity: Vec<usize>,
    blocked: Vec<Option<String>>,
    params: Vec<ParamSlice>,
    /// (initializer, axis, first position) → the group that slices it there.
    param_owner: HashMap<(String, usize, usize), usize>,
    sinks: Vec<(usize, Sink)>,
    shape_edits: Vec<ShapeEdit>,
    depthwise: Vec<(usize, usize)>,
    kinds: Vec<&'static str>,
    /// Pairs of tracks that meet: their units must cover the same positions.
    couplings: Vec<(Track, Track)>,
    /// Producer of each pre-union group.
    names: Vec<String>,
}

/// Analyses `graph` with value shapes `shapes` (from [`Graph::infer_shapes`]). Constant nodes
/// must have been turned into initializers first ([`super::normalize`]).
pub fn analyse(
    graph: &Graph,
    shapes: BTreeMap<String, ValueShape>,
) -> Result<Analysis, GraphError> {
    let nodes = graph.nodes()?;
    let inits: HashMap<String, Tensor> = graph.initializers()?.into_iter().collect();
    let mut st = State {
        graph,
        nodes,
        inits,
        shapes: &shapes,
        tracks: HashMap::new(),
        parent: Vec::new(),
        channels: Vec::new(),
        granularity: Vec::new(),
        blocked: Vec::new(),
        params: Vec::new(),
        param_owner: HashMap::new(),
        sinks: Vec::new(),
        shape_edits: Vec::new(),
        depthwise: Vec::new(),
        kinds: Vec::new(),
        couplings: Vec::new(),
        names: Vec::new(),
    };
    for ix in 0..st.nodes.len() {
        st.visit(ix);
    }
    for out in graph.outputs() {
        for t in st.tracks.get(&out.name).cloned().unwrap_or_default() {
            st.block(t.group, format!("its channels reach the graph output `{}`", out.name));
        }
    }
    // A sliced initializer must have no reader that did not record its slice (a weight tied to
    // an embedding, a constant reused elsewhere): that reader would see the wrong shape.
    let mut readers: HashMap<&str, Vec<String>> = HashMap::new();
    for (ix, n) in graph.node_protos().iter().enumerate() {
        let label = if n.name.is_empty() { format!("#{ix}") } else { n.name.clone() };
        for i in &n.input {
            readers.entry(i.as_str()).or_default().push(label.clone());
        }
    }
    let outputs: Vec<String> = graph.outputs().into_iter().map(|o| o.name).collect();
    for p in st.params.clone() {
        let recorded: Vec<&str> = st
            .params
            .iter()
            .filter(|q| q.init == p.init && q.axis == p.axis)
            .map(|q| q.node.as_str())
            .collect();
        let stray = readers
            .get(p.init.as_str())
            .into_iter()
            .flatten()
            .find(|r| !recorded.contains(&r.as_str()))
            .cloned()
            .or_else(|| outputs.contains(&p.init).then(|| "the graph outputs".to_owned()));
        if let Some(r) = stray {
            st.block(
                p.track.group,
                format!("`{}` is also read by `{r}`, which would not follow the cut", p.init),
            );
        }
    }
    let groups = st.finish();
    Ok(Analysis { groups, shapes })
}

pub(super) fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

pub(super) fn lcm(a: usize, b: usize) -> usize {
    if a == 0 || b == 0 { a.max(b) } else { a / gcd(a, b) * b }
}

/// Maps a track on `input` dims through a reshape to `output` dims.
fn reshape_track(input: &[usize], output: &[usize], t: Track) -> Result<Track, String> {
    let d = input[t.axis];
    let outer: usize = input[..t.axis].iter().product();
    let inner: usize = input[t.axis + 1..].iter().product();
    // The output axis that starts where the tracked axis starts (skipping unit axes).
    let mut prefix = 1usize;
    let mut j = None;
    for (k, &o) in output.iter().enumerate() {
        if prefix == outer && o != 1 {
            j = Some(k);
            break;
        }
        prefix *= o;
        if prefix > outer {
            break;
        }
    }
    let Some(j) = j else {
        return Err(format!(
            "the reshape {input:?} → {output:?} interleaves the channel axis with outer axes"
        ));
    };
    let o = output[j];
    let out_inner: usize = output[j + 1..].iter().product();
    if o == d && out_inner == inner {
        return Ok(Track { axis: j, ..t });
    }
    if o < d && d.is_multiple_of(o) {
        // Split: the axis becomes [o, r].
        let r = d / o;
        if !t.offset.is_multiple_of(r) {
            return Err(format!("a split of the channel axis ({d} → {o}×{r}) cuts the group"));
        }
        if t.mul.is_multiple_of(r) {
            return Ok(Track { axis: j, offset: t.offset / r, mul: t.mul / r, ..t });
        }
        if r.is_multiple_of(t.mul) {
            return Ok(Track {
                axis: j,
                offset: t.offset / r,
                div: t.div * (r / t.mul),
                mul: 1,
                ..t
            });
        }
        return Err(format!("a split of the channel axis ({d} → {o}×{r}) cuts channel blocks"));
    }
    if o > d && o.is_multiple_of(d) {
        // Merge with the following axes.
        let r = o / d;
        let mut p = 1usize;
        for &x in &input[t.axis + 1..] {
            if p == r {
                break;
            }
            p *= x;
        }
        if p != r {
            return Err(format!("the reshape {input:?} → {output:?} does not merge whole axes"));
        }
        return Ok(Track { axis: j, offset: t.offset * r, mul: t.mul * r, ..t });
    }
    Err(format!("the reshape {input:?} → {output:?} is not a split or merge of the channel axis"))
}

impl State<'_> {
    fn new_group(&mut self, channels: usize, producer: &str, kind: &'static str) -> usize {
        let g = self.parent.len();
        self.parent.push(g);
        self.channels.push(channels);
        self.granularity.push(1);
        self.blocked.push(None);
        self.names.push(producer.to_owned());
        self.kinds.push(kind);
        g
    }

    fn find(&mut self, g: usize) -> usize {
        let mut r = g;
        while self.parent[r] != r {
            r = self.parent[r];
        }
        let mut x = g;
        while self.parent[x] != r {
            let next = self.parent[x];
            self.parent[x] = r;
            x = next;
        }
        r
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        self.parent[rb] = ra;
        if let Some(why) = self.blocked[rb].take() {
            self.blocked[ra].get_or_insert(why);
        }
        if self.kinds[rb] == "heads" {
            self.kinds[ra] = "heads";
        }
    }

    fn block(&mut self, g: usize, why: String) {
        let r = self.find(g);
        self.blocked[r].get_or_insert(why);
    }

    fn need_div(&mut self, t: &Track) {
        self.granularity[t.group] = lcm(self.granularity[t.group], t.div);
    }

    /// Two tracks meet on one axis: their groups unite, and a unit of each must cover the same
    /// positions (equal layouts: equal units; a KV head repeated for `n_rep` query heads: a KV
    /// unit of `head_dim` channels pairs with a query unit of `n_rep · head_dim`). Different
    /// offsets are different positions: not a coupling Hone understands.
    fn couple(&mut self, a: Track, b: Track, why: impl FnOnce() -> String) {
        if a.offset != b.offset {
            let why = why();
            self.block(a.group, why.clone());
            self.block(b.group, why);
            return;
        }
        self.couplings.push((a, b));
        self.union(a.group, b.group);
    }

    fn dims(&self, value: &str) -> Option<Vec<usize>> {
        if let Some(t) = self.inits.get(value) {
            return Some(t.dims.clone());
        }
        self.shapes.get(value).map(|s| s.dims.clone())
    }

    fn int_attr(&self, node: &Node, name: &str, default: i64) -> i64 {
        node.attribute(name).and_then(Attribute::as_int).unwrap_or(default)
    }

    fn const_ints(&self, value: &str) -> Option<Vec<i64>> {
        self.inits.get(value).and_then(Tensor::to_i64_vec)
    }

    fn add_param(&mut self, init: &str, axis: usize, track: Track, node: &str, role: Role) {
        if let Some(&owner) = self.param_owner.get(&(init.to_owned(), axis, track.offset)) {
            // An initializer sliced twice at the same place (tied weights) couples the two readers;
            // different offsets on one axis are the parts of a `Concat`.
            let first = self
                .params
                .iter()
                .find(|p| p.init == init && p.axis == axis && p.track.offset == track.offset)
                .map(|p| p.track);
            match first {
                Some(f) => self.couple(f, track, || format!("`{init}` is sliced two ways")),
                None => self.union(owner, track.group),
            }
        } else {
            self.param_owner.insert((init.to_owned(), axis, track.offset), track.group);
        }
        self.need_div(&track);
        self.params.push(ParamSlice {
            init: init.to_owned(),
            axis,
            track,
            node: node.to_owned(),
            role,
        });
    }

    fn set_tracks(&mut self, value: &str, tracks: Vec<Track>) {
        if tracks.is_empty() || value.is_empty() {
            return;
        }
        for t in &tracks {
            self.need_div(t);
        }
        self.tracks.insert(value.to_owned(), tracks);
    }

    fn block_all(&mut self, tracks: &[Track], why: &str) {
        for t in tracks {
            self.block(t.group, why.to_owned());
        }
    }

    fn visit(&mut self, ix: usize) {
        let node = self.nodes[ix].clone();
        let label = if node.name.is_empty() { format!("#{ix}") } else { node.name.clone() };
        let ins: Vec<Vec<Track>> =
            node.inputs.iter().map(|i| self.tracks.get(i).cloned().unwrap_or_default()).collect();
        let any_tracked = ins.iter().any(|t| !t.is_empty());
        let op = node.op_type.as_str();
        let out0 = node.outputs.first().cloned().unwrap_or_default();
        let why_unknown = |what: &str| format!("{op} `{label}` {what}");
        match op {
            "Conv" => self.conv(ix, &node, &label, &ins),
            "Gemm" => self.gemm(&node, &label, &ins),
            "MatMul" => self.matmul(&node, &label, &ins),
            _ if !any_tracked => {}
            _ if UNARY.contains(&op) => {
                let t = ins[0].clone();
                self.set_tracks(&out0, t);
            }
            _ if BINARY.contains(&op) => self.broadcast(&node, &label, &ins),
            _ if POOL.contains(&op) => {
                let t = ins[0].clone();
                if t.iter().any(|t| t.axis != 1) {
                    self.block_all(&t, &why_unknown("pools over the channel axis"));
                } else {
                    self.set_tracks(&out0, t);
                }
            }
            "BatchNormalization" | "InstanceNormalization" => {
                let t = ins[0].clone();
                if t.iter().any(|t| t.axis != 1) || ins[1..].iter().any(|t| !t.is_empty()) {
                    self.block_all(&t, &why_unknown("normalises over the channel axis"));
                    return;
                }
                for slot in 1..node.inputs.len() {
                    let name = node.inputs[slot].clone();
                    if !self.inits.contains_key(&name) {
                        self.block_all(&t, &why_unknown("has runtime statistics"));
                        return;
                    }
                    for tr in &t {
                        self.add_param(
                            &name,
                            0,
                            Track { axis: 0, ..*tr },
                            &label,
                            Role::Elementwise,
                        );
                    }
                }
                self.set_tracks(&out0, t);
            }
            "LayerNormalization" | "Softmax" | "LogSoftmax" => {
                let t = ins[0].clone();
                let rank = self.dims(&node.inputs[0]).map_or(0, |d| d.len()) as i64;
                let opset = self.graph.opset().unwrap_or(17);
                let default = if op == "LayerNormalization" || opset >= 13 { -1 } else { 1 };
                let mut axis = self.int_attr(&node, "axis", default);
                if axis < 0 {
                    axis += rank;
                }
                let whole_tail =
                    op == "LayerNormalization" || self.graph.opset().unwrap_or(17) < 13;
                let hit = |a: usize| {
                    if whole_tail { a as i64 >= axis } else { a as i64 == axis }
                };
                if t.iter().any(|tr| hit(tr.axis)) || ins[1..].iter().any(|x| !x.is_empty()) {
                    self.block_all(&t, &why_unknown("normalises over the channel axis"));
                } else {
                    self.set_tracks(&out0, t);
                }
            }
            "Transpose" => {
                let t = ins[0].clone();
                let rank = self.dims(&node.inputs[0]).map_or(0, |d| d.len());
                let perm: Vec<i64> = node
                    .attribute("perm")
                    .and_then(Attribute::as_ints)
                    .map(<[i64]>::to_vec)
                    .unwrap_or_else(|| (0..rank as i64).rev().collect());
                let mut out = Vec::new();
                for tr in &t {
                    match perm.iter().position(|&p| p == tr.axis as i64) {
                        Some(a) => out.push(Track { axis: a, ..*tr }),
                        None => {
                            self.block(tr.group, why_unknown("has a permutation Hone cannot read"))
                        }
                    }
                }
                self.set_tracks(&out0, out);
            }
            "Expand" => self.expand(ix, &node, &label, &ins),
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
                self.reshape(ix, &node, &label, &ins)
            }
            "Concat" => self.concat(&node, &label, &ins),
            "Split" => {
                let t = ins[0].clone();
                let rank = self.dims(&node.inputs[0]).map_or(0, |d| d.len()) as i64;
                let mut axis = self.int_attr(&node, "axis", 0);
                if axis < 0 {
                    axis += rank;
                }
                if t.iter().any(|tr| tr.axis as i64 == axis)
                    || ins[1..].iter().any(|x| !x.is_empty())
                {
                    self.block_all(&t, &why_unknown("splits the channel axis"));
                    return;
                }
                for o in node.outputs.clone() {
                    self.set_tracks(&o, t.clone());
                }
            }
            "Slice" => {
                let t = ins[0].clone();
                let rank = self.dims(&node.inputs[0]).map_or(0, |d| d.len()) as i64;
                let axes = match node.inputs.get(3).filter(|s| !s.is_empty()) {
                    Some(a) => self.const_ints(a),
                    None => node
                        .inputs
                        .get(1)
                        .and_then(|s| self.const_ints(s))
                        .map(|s| (0..s.len() as i64).collect()),
                };
                let Some(axes) = axes else {
                    self.block_all(&t, &why_unknown("slices with runtime axes"));
                    return;
                };
                let axes: Vec<i64> =
                    axes.iter().map(|&a| if a < 0 { a + rank } else { a }).collect();
                if t.iter().any(|tr| axes.contains(&(tr.axis as i64)))
                    || ins[1..].iter().any(|x| !x.is_empty())
                {
                    self.block_all(&t, &why_unknown("slices the channel axis"));
                } else {
                    self.set_tracks(&out0, t);
                }
            }
            "Shape" => {
                // Harmless when only the sizes of other axes are read (`Gather` of a constant).
                let t = ins[0].clone();
                let rank = self.dims(&node.inputs[0]).map_or(0, |d| d.len()) as i64;
                let consumers = self.graph.consumers(&out0);
                let safe = consumers.iter().all(|&c| {
                    let n = &self.nodes[c];
                    n.op_type == "Gather"
                        && n.inputs.first() == Some(&out0)
                        && n.inputs.get(1).and_then(|i| self.const_ints(i)).is_some_and(|idx| {
                            idx.iter().all(|&i| {
                                let i = if i < 0 { i + rank } else { i };
                                t.iter().all(|tr| tr.axis as i64 != i)
                            })
                        })
                });
                if !safe {
                    self.block_all(&t, &why_unknown("reads the channel count at run time"));
                }
            }
            "Gather" => {
                let t = ins[0].clone();
                if ins.get(1).is_some_and(|x| !x.is_empty()) {
                    self.block_all(&t, &why_unknown("gathers by channel"));
                    self.block_all(&ins[1].clone(), &why_unknown("gathers by channel"));
                    return;
                }
                let rank = self.dims(&node.inputs[0]).map_or(0, |d| d.len()) as i64;
                let idx_rank = node.inputs.get(1).and_then(|i| self.dims(i)).map_or(0, |d| d.len());
                let mut axis = self.int_attr(&node, "axis", 0);
                if axis < 0 {
                    axis += rank;
                }
                let mut out = Vec::new();
                for tr in &t {
                    let a = tr.axis as i64;
                    if a == axis {
                        self.block(tr.group, why_unknown("gathers along the channel axis"));
                    } else if a < axis {
                        out.push(*tr);
                    } else {
                        out.push(Track { axis: tr.axis + idx_rank - 1, ..*tr });
                    }
                }
                self.set_tracks(&out0, out);
            }
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceL2" | "ReduceProd" => {
                let t = ins[0].clone();
                let rank = self.dims(&node.inputs[0]).map_or(0, |d| d.len()) as i64;
                let axes = node
                    .attribute("axes")
                    .and_then(Attribute::as_ints)
                    .map(<[i64]>::to_vec)
                    .or_else(|| node.inputs.get(1).and_then(|a| self.const_ints(a)));
                let axes: Vec<i64> = match axes {
                    Some(a) => a.iter().map(|&x| if x < 0 { x + rank } else { x }).collect(),
                    None => (0..rank).collect(),
                };
                let keep = self.int_attr(&node, "keepdims", 1) == 1;
                let mut out = Vec::new();
                for tr in &t {
                    if axes.contains(&(tr.axis as i64)) {
                        self.block(tr.group, why_unknown("reduces over the channel axis"));
                    } else if keep {
                        out.push(*tr);
                    } else {
                        let before = axes.iter().filter(|&&a| a < tr.axis as i64).count();
                        out.push(Track { axis: tr.axis - before, ..*tr });
                    }
                }
                self.set_tracks(&out0, out);
            }
            "Pad" => {
                let t = ins[0].clone();
                let pads = node
                    .attribute("pads")
                    .and_then(Attribute::as_ints)
                    .map(<[i64]>::to_vec)
                    .or_else(|| node.inputs.get(1).and_then(|p| self.const_ints(p)));
                let rank = self.dims(&node.inputs[0]).map_or(0, |d| d.len());
                let ok = pads.is_some_and(|p| {
                    p.len() == 2 * rank
                        && t.iter().all(|tr| p[tr.axis] == 0 && p[tr.axis + rank] == 0)
                });
                if ok && node.inputs.len() <= 3 {
                    self.set_tracks(&out0, t);
                } else {
                    self.block_all(&t, &why_unknown("pads the channel axis"));
                }
            }
            _ => {
                let all: Vec<Track> = ins.into_iter().flatten().collect();
                self.block_all(&all, &why_unknown("is not an op Hone prunes through"));
            }
        }
    }

    fn conv(&mut self, ix: usize, node: &Node, label: &str, ins: &[Vec<Track>]) {
        let out0 = node.outputs[0].clone();
        let weight = node.inputs.get(1).cloned().unwrap_or_default();
        let group = self.int_attr(node, "group", 1);
        let Some(w) = self.inits.get(&weight).map(|t| t.dims.clone()) else {
            let all: Vec<Track> = ins.iter().flatten().copied().collect();
            self.block_all(&all, &format!("Conv `{label}` has a runtime weight"));
            return;
        };
        let bias = node.inputs.get(2).filter(|b| !b.is_empty()).cloned();
        if ins.iter().skip(1).any(|t| !t.is_empty()) {
            let all: Vec<Track> = ins.iter().flatten().copied().collect();
            self.block_all(&all, &format!("Conv `{label}` reads the channels as a weight"));
            return;
        }
        let x = ins.first().cloned().unwrap_or_default();
        if x.iter().any(|t| t.axis != 1) {
            self.block_all(&x, &format!("Conv `{label}` reads them on a spatial axis"));
            return;
        }
        let in_ch = self.dims(&node.inputs[0]).and_then(|d| d.get(1).copied()).unwrap_or(0);
        let out_ch = w[0];
        if group > 1 && group as usize == in_ch && out_ch == in_ch && w[1] == 1 {
            // Depthwise: channels pass through, weights and bias follow them.
            for t in &x {
                self.add_param(&weight, 0, Track { axis: 0, ..*t }, label, Role::Elementwise);
                if let Some(b) = &bias {
                    self.add_param(b, 0, Track { axis: 0, ..*t }, label, Role::Elementwise);
                }
                self.depthwise.push((t.group, ix));
            }
            self.set_tracks(&out0, x);
            return;
        }
        if group != 1 {
            self.block_all(
                &x,
                &format!("Conv `{label}` is a grouped convolution ({group} groups)"),
            );
            let g = self.new_group(out_ch, label, "channels");
            self.block(g, format!("Conv `{label}` is a grouped convolution ({group} groups)"));
            self.set_tracks(&out0, vec![Track::direct(g, 1)]);
            return;
        }
        for t in &x {
            self.add_param(&weight, 1, Track { axis: 1, ..*t }, label, Role::In);
            self.sinks.push((
                t.group,
                Sink {
                    value: node.inputs[0].clone(),
                    value_track: *t,
                    weight: weight.clone(),
                    weight_axis: 1,
                },
            ));
        }
        let g = self.new_group(out_ch, label, "channels");
        self.add_param(&weight, 0, Track::direct(g, 0), label, Role::Out);
        if let Some(b) = &bias {
            self.add_param(b, 0, Track::direct(g, 0), label, Role::Out);
        }
        self.set_tracks(&out0, vec![Track::direct(g, 1)]);
    }

    fn gemm(&mut self, node: &Node, label: &str, ins: &[Vec<Track>]) {
        let out0 = node.outputs[0].clone();
        let all: Vec<Track> = ins.iter().flatten().copied().collect();
        let b = node.inputs.get(1).cloned().unwrap_or_default();
        let trans_a = self.int_attr(node, "transA", 0);
        let trans_b = self.int_attr(node, "transB", 0);
        let Some(bd) = self.inits.get(&b).map(|t| t.dims.clone()) else {
            self.block_all(&all, &format!("Gemm `{label}` has a runtime weight"));
            return;
        };
        if trans_a != 0 || bd.len() != 2 || ins.iter().skip(1).any(|t| !t.is_empty()) {
            self.block_all(&all, &format!("Gemm `{label}` has a layout Hone does not prune"));
            return;
        }
        let (in_axis, out_axis) = if trans_b == 0 { (0, 1) } else { (1, 0) };
        for t in &ins[0] {
            if t.axis != 1 {
                self.block(t.group, format!("Gemm `{label}` reads them on the batch axis"));
                continue;
            }
            self.add_param(&b, in_axis, Track { axis: in_axis, ..*t }, label, Role::In);
            self.sinks.push((
                t.group,
                Sink {
                    value: node.inputs[0].clone(),
                    value_track: *t,
                    weight: b.clone(),
                    weight_axis: in_axis,
                },
            ));
        }
        let g = self.new_group(bd[out_axis], label, "neurons");
        self.add_param(&b, out_axis, Track::direct(g, out_axis), label, Role::Out);
        if let Some(c) = node.inputs.get(2).filter(|c| !c.is_empty()) {
            match self.inits.get(c).map(|t| t.dims.clone()) {
                Some(cd) if cd.last() == Some(&bd[out_axis]) => {
                    let axis = cd.len() - 1;
                    self.add_param(c, axis, Track::direct(g, axis), label, Role::Out);
                }
                Some(cd) if cd.iter().all(|&d| d == 1) => {}
                _ => self.block(g, format!("Gemm `{label}` has a bias Hone cannot slice")),
            }
        }
        self.set_tracks(&out0, vec![Track::direct(g, 1)]);
    }

    fn matmul(&mut self, node: &Node, label: &str, ins: &[Vec<Track>]) {
        let out0 = node.outputs[0].clone();
        let (a, b) = (node.inputs[0].clone(), node.inputs[1].clone());
        let (Some(ad), Some(bd), Some(od)) = (self.dims(&a), self.dims(&b), self.dims(&out0))
        else {
            let all: Vec<Track> = ins.iter().flatten().copied().collect();
            self.block_all(&all, &format!("MatMul `{label}` has shapes tract did not infer"));
            return;
        };
        let (ra, rb, ro) = (ad.len(), bd.len(), od.len());
        if self.inits.contains_key(&b) && rb == 2 && ra >= 2 {
            // x · W: W's rows contract the channels of x's last axis; its columns are produced.
            let mut out = Vec::new();
            for t in &ins[0] {
                if t.axis == ra - 1 {
                    self.add_param(&b, 0, Track { axis: 0, ..*t }, label, Role::In);
                    self.sinks.push((
                        t.group,
                        Sink {
                            value: a.clone(),
                            value_track: *t,
                            weight: b.clone(),
                            weight_axis: 0,
                        },
                    ));
                } else {
                    out.push(Track { axis: t.axis + ro - ra, ..*t });
                }
            }
            let g = self.new_group(bd[1], label, "neurons");
            self.add_param(&b, 1, Track::direct(g, 1), label, Role::Out);
            out.push(Track::direct(g, ro - 1));
            self.set_tracks(&out0, out);
            return;
        }
        if ra < 2 || rb < 2 {
            let all: Vec<Track> = ins.iter().flatten().copied().collect();
            self.block_all(&all, &format!("MatMul `{label}` multiplies vectors"));
            return;
        }
        // Two activations (attention): batch axes pass, the inner axes couple.
        let mut out: Vec<Track> = Vec::new();
        let mut inner: Vec<Track> = Vec::new();
        let mut ok = true;
        for (slot, (tracks, rank)) in [(&ins[0], ra), (&ins[1], rb)].into_iter().enumerate() {
            for t in tracks {
                let from_end = rank - t.axis;
                match (slot, from_end) {
                    (0, 1) | (1, 2) => inner.push(*t),
                    (_, e) if e > 2 => out.push(Track { axis: ro - e, ..*t }),
                    _ => ok = false,
                }
            }
        }
        if !ok {
            let all: Vec<Track> = ins.iter().flatten().copied().collect();
            self.block_all(&all, &format!("MatMul `{label}` produces from the channel axis"));
            return;
        }
        // The inner axis is contracted: both sides must be tracked alike.
        if !inner.is_empty() {
            let sides: Vec<usize> = [&ins[0], &ins[1]]
                .iter()
                .enumerate()
                .filter(|(s, tr)| {
                    let r = if *s == 0 { ra } else { rb };
                    tr.iter().any(|t| r - t.axis == if *s == 0 { 1 } else { 2 })
                })
                .map(|(s, _)| s)
                .collect();
            if sides.len() != 2 || inner.len() != 2 || inner[0].offset != inner[1].offset {
                self.block_all(
                    &inner,
                    &format!("MatMul `{label}` contracts them with a runtime tensor"),
                );
            } else {
                self.couple(inner[0], inner[1], || {
                    format!("MatMul `{label}` contracts them unevenly")
                });
            }
        }
        let mut merged: Vec<Track> = Vec::new();
        for t in out {
            if let Some(m) = merged.iter().find(|m| m.axis == t.axis).copied() {
                self.couple(m, t, || format!("MatMul `{label}` pairs mismatched layouts"));
            } else {
                merged.push(t);
            }
        }
        // A batch axis tracked on one side only is broadcast against a runtime tensor.
        for t in &merged {
            let other_dim = |dims: &[usize], rank: usize| {
                let e = ro - t.axis;
                if e > rank { 1 } else { dims[rank - e] }
            };
            let tracked_a = ins[0].iter().any(|x| ro - (x.axis + ro - ra) == ro - t.axis);
            let tracked_b = ins[1].iter().any(|x| ro - (x.axis + ro - rb) == ro - t.axis);
            if (!tracked_a && other_dim(&ad, ra) != 1) || (!tracked_b && other_dim(&bd, rb) != 1) {
                self.block(t.group, format!("MatMul `{label}` pairs them with a runtime tensor"));
            }
        }
        self.set_tracks(&out0, merged);
    }

    fn broadcast(&mut self, node: &Node, label: &str, ins: &[Vec<Track>]) {
        let out0 = node.outputs[0].clone();
        let Some(od) = self.dims(&out0) else {
            let all: Vec<Track> = ins.iter().flatten().copied().collect();
            self.block_all(
                &all,
                &format!("{} `{label}` has a shape tract did not infer", node.op_type),
            );
            return;
        };
        let ro = od.len();
        let mut out: Vec<Track> = Vec::new();
        for (slot, tracks) in ins.iter().enumerate() {
            let r = self.dims(&node.inputs[slot]).map_or(0, |d| d.len());
            for t in tracks {
                let t = Track { axis: t.axis + ro - r, ..*t };
                match out.iter().find(|m| m.axis == t.axis).copied() {
                    Some(m) => self.couple(m, t, || {
                        format!("{} `{label}` pairs mismatched layouts", node.op_type)
                    }),
                    None => out.push(t),
                }
            }
        }
        // Operands that do not carry the channels: broadcast (size 1) or constants to slice.
        for (slot, name) in node.inputs.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let dims = self.dims(name).unwrap_or_default();
            let r = dims.len();
            for t in out.clone() {
                if ins[slot].iter().any(|x| x.axis + ro - r == t.axis) {
                    continue;
                }
                if t.axis + r < ro {
                    continue; // the operand has no such axis: broadcast
                }
                let axis = t.axis + r - ro;
                if dims[axis] == 1 {
                    continue;
                }
                if self.inits.contains_key(name) {
                    self.add_param(name, axis, Track { axis, ..t }, label, Role::Elementwise);
                } else {
                    let why = format!(
                        "{} `{label}` combines them with `{name}`, a runtime tensor",
                        node.op_type
                    );
                    self.block(t.group, why);
                }
            }
        }
        self.set_tracks(&out0, out);
    }

    fn reshape(&mut self, ix: usize, node: &Node, label: &str, ins: &[Vec<Track>]) {
        let out0 = node.outputs[0].clone();
        let t = ins[0].clone();
        if ins.iter().skip(1).any(|x| !x.is_empty()) {
            let all: Vec<Track> = ins.iter().flatten().copied().collect();
            self.block_all(&all, &format!("{} `{label}` is shaped by the channels", node.op_type));
            return;
        }
        let (Some(id), Some(od)) = (self.dims(&node.inputs[0]), self.dims(&out0)) else {
            self.block_all(
                &t,
                &format!("{} `{label}` has shapes tract did not infer", node.op_type),
            );
            return;
        };
        let mut out = Vec::new();
        for tr in &t {
            match reshape_track(&id, &od, *tr) {
                Ok(n) => {
                    if node.op_type == "Reshape" && !self.shape_edit(ix, node, n, od[n.axis]) {
                        self.block(
                            tr.group,
                            format!("Reshape `{label}` has a target Hone cannot rewrite"),
                        );
                        continue;
                    }
                    if n.div > 1 {
                        let r = self.find(n.group);
                        self.kinds[r] = "heads";
                    }
                    out.push(n);
                }
                Err(why) => self.block(tr.group, format!("{} `{label}`: {why}", node.op_type)),
            }
        }
        self.set_tracks(&out0, out);
    }

    /// Records the edit of the reshape target's element for output axis `axis`. A `-1` or `0`
    /// there needs none. Returns false when the target is not made of constants.
    /// `Expand` broadcasts other axes (a KV head repeated for the query heads sharing it); the
    /// channel axis must keep its size, and its entry in the target shape is 1 or is rewritten.
    fn expand(&mut self, ix: usize, node: &Node, label: &str, ins: &[Vec<Track>]) {
        let out0 = node.outputs[0].clone();
        let t = ins[0].clone();
        let why = || format!("Expand `{label}` broadcasts along the channel axis");
        let (Some(id), Some(od)) = (self.dims(&node.inputs[0]), self.dims(&out0)) else {
            self.block_all(&t, &format!("Expand `{label}` has shapes tract did not infer"));
            return;
        };
        let shape = node.inputs.get(1).and_then(|s| self.const_ints(s));
        let (ri, ro) = (id.len(), od.len());
        let mut out = Vec::new();
        for tr in &t {
            let axis = tr.axis + ro - ri;
            let ok = id[tr.axis] == od[axis]
                && shape.as_ref().is_some_and(|v| {
                    let Some(k) = (axis + v.len()).checked_sub(ro) else { return true };
                    match v.get(k) {
                        Some(1) => true,
                        Some(&x) if x as usize == od[axis] => {
                            let n = Track { axis, ..*tr };
                            self.shape_edits.push(ShapeEdit {
                                node: ix,
                                slot: 1,
                                element: k,
                                track: n,
                            });
                            true
                        }
                        _ => false,
                    }
                });
            if ok && ins.get(1).is_none_or(Vec::is_empty) {
                out.push(Track { axis, ..*tr });
            } else {
                self.block(tr.group, why());
            }
        }
        self.set_tracks(&out0, out);
    }

    fn shape_edit(&mut self, ix: usize, node: &Node, track: Track, dim: usize) -> bool {
        let Some(shape) = node.inputs.get(1) else { return false };
        let axis = track.axis;
        if let Some(v) = self.const_ints(shape) {
            return match v.get(axis) {
                Some(&x) if x == -1 || x == 0 => true,
                Some(&x) if x as usize == dim => {
                    self.shape_edits.push(ShapeEdit { node: ix, slot: 1, element: axis, track });
                    true
                }
                _ => false,
            };
        }
        let Some(p) = self.graph.producer(shape) else { return false };
        let concat = &self.nodes[p];
        if concat.op_type != "Concat" {
            return false;
        }
        let mut at = 0usize;
        for (slot, part) in concat.inputs.iter().enumerate() {
            let len = self.dims(part).map_or(1, |d| d.iter().product::<usize>().max(1));
            if axis < at + len {
                let Some(v) = self.const_ints(part) else { return false };
                let element = axis - at;
                return match v.get(element) {
                    Some(&x) if x == -1 || x == 0 => true,
                    Some(&x) if x as usize == dim => {
                        self.shape_edits.push(ShapeEdit { node: p, slot, element, track });
                        true
                    }
                    _ => false,
                };
            }
            at += len;
        }
        false
    }

    fn concat(&mut self, node: &Node, label: &str, ins: &[Vec<Track>]) {
        let out0 = node.outputs[0].clone();
        let Some(od) = self.dims(&out0) else {
            let all: Vec<Track> = ins.iter().flatten().copied().collect();
            self.block_all(&all, &format!("Concat `{label}` has a shape tract did not infer"));
            return;
        };
        let rank = od.len() as i64;
        let mut axis = self.int_attr(node, "axis", 0);
        if axis < 0 {
            axis += rank;
        }
        let axis = axis as usize;
        let mut out: Vec<Track> = Vec::new();
        let mut at = 0usize;
        for (slot, tracks) in ins.iter().enumerate() {
            let d = self.dims(&node.inputs[slot]).unwrap_or_default();
            for t in tracks {
                if t.axis == axis {
                    out.push(Track { offset: t.offset + at, ..*t });
                } else {
                    match out.iter().find(|m| m.axis == t.axis).copied() {
                        Some(m) => self.couple(m, *t, || format!("Concat `{label}` mixes layouts")),
                        None => out.push(*t),
                    }
                }
            }
            at += d.get(axis).copied().unwrap_or(0);
        }
        // Inputs that do not carry a tracked non-concat axis would need slicing.
        for t in out.clone().iter().filter(|t| t.axis != axis) {
            for (slot, tracks) in ins.iter().enumerate() {
                if !tracks.iter().any(|x| x.axis == t.axis) {
                    self.block(
                        t.group,
                        format!("Concat `{label}` joins them with `{}`", node.inputs[slot]),
                    );
                }
            }
        }
        self.set_tracks(&out0, out);
    }

    fn finish(mut self) -> Vec<Group> {
        let n = self.parent.len();
        // Units of coupled tracks cover the same positions: a unit of `g` channels of a track
        // (div, mul) covers `g · mul / div` positions. Grow granularities to a fixpoint.
        for _ in 0..64 {
            let mut changed = false;
            for (a, b) in self.couplings.clone() {
                let pa = self.granularity[a.group] * a.mul / a.div;
                let pb = self.granularity[b.group] * b.mul / b.div;
                let p = lcm(pa, pb);
                for t in [a, b] {
                    let g = p * t.div / t.mul;
                    if g != self.granularity[t.group] {
                        self.granularity[t.group] = lcm(g, self.granularity[t.group]);
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut index: HashMap<usize, usize> = HashMap::new();
        let mut groups: Vec<Group> = Vec::new();
        for g in 0..n {
            let r = self.find(g);
            if index.contains_key(&r) {
                continue;
            }
            index.insert(r, groups.len());
            let ids: Vec<usize> = (0..n).filter(|&m| self.find(m) == r).collect();
            let members: Vec<Member> = ids
                .into_iter()
                .map(|m| Member {
                    id: m,
                    producer: self.names[m].clone(),
                    channels: self.channels[m],
                    unit: self.granularity[m].max(1),
                })
                .collect();
            let mut blocked = self.blocked[r].clone();
            if blocked.is_none() {
                if let Some(m) = members.iter().find(|m| !m.channels.is_multiple_of(m.unit)) {
                    blocked = Some(format!(
                        "{} channels of `{}` do not split into units of {}",
                        m.channels, m.producer, m.unit
                    ));
                } else if members
                    .iter()
                    .any(|m| m.channels / m.unit != members[0].channels / members[0].unit)
                {
                    let widths: Vec<String> =
                        members.iter().map(|m| format!("{}/{}", m.channels, m.unit)).collect();
                    blocked = Some(format!(
                        "it couples producers whose units do not pair up (channels/unit: {})",
                        widths.join(", ")
                    ));
                }
            }
            groups.push(Group {
                id: groups.len(),
                kind: self.kinds[r],
                members,
                params: Vec::new(),
                sinks: Vec::new(),
                shape_edits: Vec::new(),
                depthwise: Vec::new(),
                values: Vec::new(),
                blocked,
            });
        }
        let root = |s: &mut Self, g: usize| {
            let r = s.find(g);
            index[&r]
        };
        for mut p in std::mem::take(&mut self.params) {
            let gi = root(&mut self, p.track.group);
            p.track.member = p.track.group;
            p.track.group = gi;
            groups[gi].params.push(p);
        }
        for (g, mut s) in std::mem::take(&mut self.sinks) {
            let gi = root(&mut self, g);
            s.value_track.member = s.value_track.group;
            s.value_track.group = gi;
            groups[gi].sinks.push(s);
        }
        for mut e in std::mem::take(&mut self.shape_edits) {
            let gi = root(&mut self, e.track.group);
            e.track.member = e.track.group;
            e.track.group = gi;
            groups[gi].shape_edits.push(e);
        }
        for (g, node) in std::mem::take(&mut self.depthwise) {
            let gi = root(&mut self, g);
            groups[gi].depthwise.push((g, node));
        }
        let mut values: Vec<(String, Vec<Track>)> =
            std::mem::take(&mut self.tracks).into_iter().collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        for (v, tracks) in values {
            for mut t in tracks {
                let gi = root(&mut self, t.group);
                t.member = t.group;
                t.group = gi;
                groups[gi].values.push((v.clone(), t));
            }
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_tracks_split_and_merge_heads() {
        let t = Track::direct(0, 2);
        let heads = reshape_track(&[2, 16, 384], &[2, 16, 12, 32], t).unwrap();
        assert_eq!((heads.axis, heads.div, heads.mul), (2, 32, 1));
        let back = reshape_track(&[2, 16, 12, 32], &[2, 16, 384], heads).unwrap();
        assert_eq!((back.axis, back.div, back.mul), (2, 32, 32));
        assert_eq!(back.positions(64), 64..96);
        let flat = reshape_track(&[2, 256, 3, 3], &[2, 2304], Track::direct(0, 1)).unwrap();
        assert_eq!((flat.axis, flat.mul), (1, 9));
        assert_eq!(flat.positions(2), 18..27);
        let nhwc = reshape_track(&[2, 1024, 1, 1], &[2, 1, 1, 1024], Track::direct(0, 1)).unwrap();
        assert_eq!(nhwc.axis, 3);
        assert!(reshape_track(&[2, 4, 3], &[2, 3, 4], Track::direct(0, 1)).is_err());
        assert!(reshape_track(&[4, 6], &[24], Track::direct(0, 1)).is_err());
    }
}

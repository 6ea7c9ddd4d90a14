//! Input shapes: the concrete shape given for each named model input, and the one rule that turns
//! a model's declared input shapes (fixed sizes, named symbols, unnamed `-1`/`?` axes) into
//! concrete ones. Pure functions, no IO: the agent applies the result to the ONNX graph, and so can
//! any other consumer (pruning, registration).
//!
//! The text form is `NAME=1x3x48x320`, several separated by commas
//! (`images=1x3x320x320,mask=1x320x320`), in the style of trtexec's `--shapes`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Most axes an input shape may have.
pub const MAX_RANK: usize = 16;
/// Largest size of one axis.
pub const MAX_DIM: u64 = i32::MAX as u64;
/// Size of a named symbol on a non-leading axis when nothing gives its value.
pub const DEFAULT_DIM: u64 = 128;

/// Concrete shapes for named model inputs, validated: names are non-empty and unique, every shape
/// has 1 to [`MAX_RANK`] axes of 1 to [`MAX_DIM`] each, and the element count fits in a `u64`.
/// Ordered by name, so equal sets encode to equal bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, Vec<u64>>", into = "BTreeMap<String, Vec<u64>>")]
pub struct InputShapes(BTreeMap<String, Vec<u64>>);

/// Why a shape text or a set of input shapes is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputShapeError {
    /// An entry without `=`.
    #[error("`{entry}`: expected NAME=DIMS, e.g. images=1x3x224x224")]
    Syntax {
        /// The entry as written.
        entry: String,
    },
    /// `=1x3`.
    #[error("`{entry}`: the input name is empty (expected NAME=DIMS)")]
    EmptyName {
        /// The entry as written.
        entry: String,
    },
    /// Nothing after `=`.
    #[error(
        "input `{name}`: no shape after `=`; expected sizes separated by `x`, e.g. {name}=1x3x224x224"
    )]
    EmptyShape {
        /// Input name.
        name: String,
    },
    /// A size that is not a whole number in range.
    #[error(
        "input `{name}`: `{dim}` is not a size; each axis must be a whole number from 1 to {MAX_DIM}, separated by `x` (e.g. 1x3x224x224)"
    )]
    BadDim {
        /// Input name.
        name: String,
        /// The size as written.
        dim: String,
    },
    /// Too many axes.
    #[error("input `{name}` has {rank} axes; at most {MAX_RANK} are supported")]
    TooManyAxes {
        /// Input name.
        name: String,
        /// Axes given.
        rank: usize,
    },
    /// The element count overflows.
    #[error("input `{name}`: the shape has more elements than fit in 64 bits")]
    TooLarge {
        /// Input name.
        name: String,
    },
    /// The same input twice.
    #[error("input `{name}` is given more than once")]
    Duplicate {
        /// Input name.
        name: String,
    },
}

impl InputShapes {
    /// Validates `(name, dims)` pairs.
    pub fn new(
        entries: impl IntoIterator<Item = (String, Vec<u64>)>,
    ) -> Result<InputShapes, InputShapeError> {
        let mut map = BTreeMap::new();
        for (name, dims) in entries {
            check_entry(&name, &dims)?;
            if map.contains_key(&name) {
                return Err(InputShapeError::Duplicate { name });
            }
            map.insert(name, dims);
        }
        Ok(InputShapes(map))
    }

    /// Parses `NAME=DIMS[,NAME=DIMS...]`. Spaces around entries are ignored. An input name may
    /// contain `=` (the last `=` of an entry separates the shape) but not `,`.
    pub fn parse(text: &str) -> Result<InputShapes, InputShapeError> {
        let mut entries = Vec::new();
        for entry in text.split(',') {
            let entry = entry.trim();
            let (name, dims) = entry
                .rsplit_once('=')
                .ok_or_else(|| InputShapeError::Syntax { entry: entry.to_string() })?;
            let name = name.trim();
            if name.is_empty() {
                return Err(InputShapeError::EmptyName { entry: entry.to_string() });
            }
            let dims = dims.trim();
            if dims.is_empty() {
                return Err(InputShapeError::EmptyShape { name: name.to_string() });
            }
            let dims = dims
                .split('x')
                .map(|d| {
                    d.trim().parse::<u64>().ok().filter(|v| (1..=MAX_DIM).contains(v)).ok_or_else(
                        || InputShapeError::BadDim { name: name.to_string(), dim: d.to_string() },
                    )
                })
                .collect::<Result<Vec<u64>, _>>()?;
            entries.push((name.to_string(), dims));
        }
        InputShapes::new(entries)
    }

    /// Parses each text with [`InputShapes::parse`] and merges them (a repeated command-line
    /// flag); an input named twice, in one text or across texts, is an error.
    pub fn parse_all<S: AsRef<str>>(
        texts: impl IntoIterator<Item = S>,
    ) -> Result<InputShapes, InputShapeError> {
        let mut all = Vec::new();
        for text in texts {
            all.extend(InputShapes::parse(text.as_ref())?.0);
        }
        InputShapes::new(all)
    }

    /// The shape given for `name`.
    pub fn get(&self, name: &str) -> Option<&[u64]> {
        self.0.get(name).map(Vec::as_slice)
    }

    /// Whether no input is given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of inputs given.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The entries, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u64])> {
        self.0.iter().map(|(n, d)| (n.as_str(), d.as_slice()))
    }
}

fn check_entry(name: &str, dims: &[u64]) -> Result<(), InputShapeError> {
    if name.trim().is_empty() {
        return Err(InputShapeError::EmptyName { entry: format!("{name}=") });
    }
    if dims.is_empty() {
        return Err(InputShapeError::EmptyShape { name: name.to_string() });
    }
    if dims.len() > MAX_RANK {
        return Err(InputShapeError::TooManyAxes { name: name.to_string(), rank: dims.len() });
    }
    if let Some(d) = dims.iter().find(|d| !(1..=MAX_DIM).contains(*d)) {
        return Err(InputShapeError::BadDim { name: name.to_string(), dim: d.to_string() });
    }
    dims.iter()
        .try_fold(1u64, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| InputShapeError::TooLarge { name: name.to_string() })?;
    Ok(())
}

impl TryFrom<BTreeMap<String, Vec<u64>>> for InputShapes {
    type Error = InputShapeError;
    fn try_from(map: BTreeMap<String, Vec<u64>>) -> Result<Self, Self::Error> {
        InputShapes::new(map)
    }
}

impl From<InputShapes> for BTreeMap<String, Vec<u64>> {
    fn from(shapes: InputShapes) -> Self {
        shapes.0
    }
}

impl std::str::FromStr for InputShapes {
    type Err = InputShapeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InputShapes::parse(s)
    }
}

/// The text form, `a=1x3x8x8,b=1x4`; [`InputShapes::parse`] reads it back when no name holds a
/// comma.
impl fmt::Display for InputShapes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, dims)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={}", join_dims(dims))?;
        }
        Ok(())
    }
}

fn join_dims(dims: &[u64]) -> String {
    dims.iter().map(u64::to_string).collect::<Vec<_>>().join("x")
}

/// One axis of an input shape as a model file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredDim {
    /// A fixed size.
    Fixed(u64),
    /// A named symbol (`batch`, `sequence_length`, `unk__214`): one value wherever it appears.
    Named(String),
    /// A dynamic axis with no name: `-1`, `0`, `?`, an empty name or no value at all. Each such
    /// axis stands alone.
    Unnamed,
}

impl DeclaredDim {
    /// From an ONNX `TensorShapeProto.Dimension`: its `dim_value` or its `dim_param`. A
    /// non-positive value and the parameters ``, `?`, `-1` and `None` (what some exporters write
    /// for "unknown") are [`DeclaredDim::Unnamed`].
    pub fn from_onnx(value: Option<i64>, param: Option<&str>) -> DeclaredDim {
        match (value, param) {
            (Some(v), _) if v > 0 => DeclaredDim::Fixed(v as u64),
            (_, Some(p)) if !is_unnamed(p) => DeclaredDim::Named(p.trim().to_string()),
            _ => DeclaredDim::Unnamed,
        }
    }
}

/// Whether a `dim_param` is one of the spellings exporters use for "unknown, no name".
pub fn is_unnamed(param: &str) -> bool {
    matches!(param.trim(), "" | "?" | "-1" | "None")
}

impl fmt::Display for DeclaredDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeclaredDim::Fixed(v) => write!(f, "{v}"),
            DeclaredDim::Named(s) => f.write_str(s),
            DeclaredDim::Unnamed => f.write_str("?"),
        }
    }
}

/// A model input as declared: its name and its shape (`None` when the file gives no shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredInput {
    /// Input name.
    pub name: String,
    /// Declared axes; `None` when the rank is unknown.
    pub dims: Option<Vec<DeclaredDim>>,
}

impl DeclaredInput {
    /// `name [batch,3,?,?]`.
    pub fn describe(&self) -> String {
        match &self.dims {
            Some(dims) => format!(
                "`{}` [{}]",
                self.name,
                dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
            ),
            None => format!("`{}` (no declared shape)", self.name),
        }
    }
}

/// Concrete shapes for every input, and the value each named symbol took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedShapes {
    /// Every declared input, in declared order, with its concrete shape.
    pub inputs: Vec<(String, Vec<u64>)>,
    /// The value of every named symbol bound while resolving (from the inputs, `symbols` and
    /// the defaults): the same value wherever the symbol appears, `value_info` included.
    pub symbols: BTreeMap<String, u64>,
}

/// Why declared shapes cannot be made concrete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A shape given for an input the model does not have.
    #[error("the model has no input `{name}`; its inputs are {known}")]
    UnknownInput {
        /// Given name.
        name: String,
        /// The model's inputs, described.
        known: String,
    },
    /// A given shape of the wrong rank.
    #[error("input {declared} has {declared_rank} axes, but {given_rank} were given ({given})")]
    RankMismatch {
        /// The declared input, described.
        declared: String,
        /// Declared axes.
        declared_rank: usize,
        /// Given axes.
        given_rank: usize,
        /// The given shape.
        given: String,
    },
    /// A given size that contradicts a fixed declared one.
    #[error("input {declared}: axis {axis} is fixed at {fixed}, but {given} was given")]
    FixedMismatch {
        /// The declared input, described.
        declared: String,
        /// Axis.
        axis: usize,
        /// Declared size.
        fixed: u64,
        /// Given size.
        given: u64,
    },
    /// One symbol, two values.
    #[error(
        "symbol `{symbol}` would be {first} (from {first_from}) and {second} (from {second_from}); a named dimension has one value everywhere"
    )]
    SymbolConflict {
        /// Symbol.
        symbol: String,
        /// First value.
        first: u64,
        /// Where it came from.
        first_from: String,
        /// Second value.
        second: u64,
        /// Where it came from.
        second_from: String,
    },
    /// `--symbol ?=1`: unnamed axes are not one symbol.
    #[error(
        "`{name}` is not a symbol name: unnamed dimensions (`?`, `-1`) are separate per axis; give the input's whole shape instead (--input NAME=1x3x224x224)"
    )]
    UnnamedSymbol {
        /// The name as given.
        name: String,
    },
    /// A symbol value of 0.
    #[error("symbol `{symbol}` is 0: a dimension must be at least 1")]
    ZeroSymbol {
        /// Symbol.
        symbol: String,
    },
    /// A dynamic axis with no name and no default.
    #[error(
        "input {declared}: axis {axis} has neither a size nor a name; give the shape with --input {name}={example} (put a size in place of each ?)"
    )]
    NeedsShape {
        /// The declared input, described.
        declared: String,
        /// Input name.
        name: String,
        /// Axis.
        axis: usize,
        /// The shape as far as it is known, `?` where a size is missing.
        example: String,
    },
    /// No declared shape and none given.
    #[error("input {declared}: give its shape with --input {name}=DIMS (e.g. {name}=1x3x224x224)")]
    NoShape {
        /// The declared input, described.
        declared: String,
        /// Input name.
        name: String,
    },
    /// Throughput at a batch size the model cannot take.
    #[error(
        "input {declared} has a fixed batch of {fixed}: throughput at batch {batch} needs a dynamic first axis"
    )]
    FixedBatch {
        /// The declared input, described.
        declared: String,
        /// Declared batch.
        fixed: u64,
        /// Requested batch.
        batch: u64,
    },
}

/// Bound symbols, each with where its value came from (for conflict messages).
struct Bindings(BTreeMap<String, (u64, String)>);

impl Bindings {
    fn bind(&mut self, symbol: &str, value: u64, from: String) -> Result<(), ResolveError> {
        match self.0.get(symbol) {
            Some((v, _)) if *v == value => Ok(()),
            Some((v, f)) => Err(ResolveError::SymbolConflict {
                symbol: symbol.to_string(),
                first: *v,
                first_from: f.clone(),
                second: value,
                second_from: from,
            }),
            None => {
                self.0.insert(symbol.to_string(), (value, from));
                Ok(())
            }
        }
    }

    fn get(&self, symbol: &str) -> Option<u64> {
        self.0.get(symbol).map(|(v, _)| *v)
    }
}

/// The shape given for `input`, its first axis replaced by `batch` unless declared fixed.
fn given_shape(input: &DeclaredInput, given: &InputShapes, batch: Option<u64>) -> Option<Vec<u64>> {
    let mut shape = given.get(&input.name)?.to_vec();
    if let Some(b) = batch
        && !matches!(input.dims.as_deref().and_then(|d| d.first()), Some(DeclaredDim::Fixed(_)))
    {
        shape[0] = b;
    }
    Some(shape)
}

/// Turns declared input shapes into concrete ones.
///
/// In order of precedence:
/// 1. `batch` (throughput runs) sets the first axis of every input whose first axis is not fixed;
///    a named symbol there takes that value everywhere.
/// 2. `given` shapes, whole inputs at a time. They must name real inputs, have the declared rank
///    and agree with fixed sizes; a named axis binds its symbol.
/// 3. `symbols` give named symbols their value.
/// 4. Any other named symbol takes a default at its first appearance (inputs in declared order,
///    axes in order): 1 on the first axis of an input with two or more axes (a batch), else
///    [`DEFAULT_DIM`]; it keeps that value everywhere.
/// 5. An unnamed dynamic axis (`-1`, `?`) takes 1 only as the first axis of an input with two or
///    more axes (a batch); anywhere else it is an error that asks for `--input`.
///
/// A symbol bound twice to different values is an error, never a silent choice.
pub fn resolve(
    declared: &[DeclaredInput],
    given: &InputShapes,
    symbols: &[(String, u64)],
    batch: Option<u64>,
) -> Result<ResolvedShapes, ResolveError> {
    let known = || declared.iter().map(DeclaredInput::describe).collect::<Vec<_>>().join(", ");
    for (name, _) in given.iter() {
        if !declared.iter().any(|d| d.name == name) {
            return Err(ResolveError::UnknownInput { name: name.to_string(), known: known() });
        }
    }
    let mut bound = Bindings(BTreeMap::new());
    // 1. The throughput batch.
    if let Some(b) = batch {
        for input in declared {
            match input.dims.as_deref().and_then(|d| d.first()) {
                Some(DeclaredDim::Fixed(v)) if *v != b => {
                    return Err(ResolveError::FixedBatch {
                        declared: input.describe(),
                        fixed: *v,
                        batch: b,
                    });
                }
                Some(DeclaredDim::Named(s)) => bound.bind(s, b, "the batch size".into())?,
                _ => {}
            }
        }
    }
    // 2. Given shapes.
    for input in declared {
        let Some(shape) = given_shape(input, given, batch) else { continue };
        let Some(dims) = &input.dims else { continue };
        if dims.len() != shape.len() {
            return Err(ResolveError::RankMismatch {
                declared: input.describe(),
                declared_rank: dims.len(),
                given_rank: shape.len(),
                given: join_dims(&shape),
            });
        }
        for (axis, (dim, size)) in dims.iter().zip(&shape).enumerate() {
            match dim {
                DeclaredDim::Fixed(v) if v != size => {
                    return Err(ResolveError::FixedMismatch {
                        declared: input.describe(),
                        axis,
                        fixed: *v,
                        given: *size,
                    });
                }
                DeclaredDim::Named(s) => {
                    bound.bind(s, *size, format!("--input {}={}", input.name, join_dims(&shape)))?
                }
                _ => {}
            }
        }
    }
    // 3. Symbols.
    for (name, value) in symbols {
        if is_unnamed(name) {
            return Err(ResolveError::UnnamedSymbol { name: name.clone() });
        }
        if *value == 0 {
            return Err(ResolveError::ZeroSymbol { symbol: name.clone() });
        }
        if batch.is_some() && bound.0.get(name).is_some_and(|(_, f)| f == "the batch size") {
            continue;
        }
        bound.bind(name, *value, format!("--symbol {name}={value}"))?;
    }
    // 4 and 5. Defaults, and the concrete shapes.
    let mut inputs = Vec::with_capacity(declared.len());
    for input in declared {
        if let Some(shape) = given_shape(input, given, batch) {
            inputs.push((input.name.clone(), shape));
            continue;
        }
        let Some(dims) = &input.dims else {
            return Err(ResolveError::NoShape {
                declared: input.describe(),
                name: input.name.clone(),
            });
        };
        let leading_batch = |axis: usize| axis == 0 && dims.len() >= 2;
        let mut shape = Vec::with_capacity(dims.len());
        for (axis, dim) in dims.iter().enumerate() {
            let size = match dim {
                DeclaredDim::Fixed(v) => *v,
                DeclaredDim::Named(s) => match bound.get(s) {
                    Some(v) => v,
                    None => {
                        let v = if leading_batch(axis) { 1 } else { DEFAULT_DIM };
                        bound.bind(s, v, format!("the default for `{s}`"))?;
                        v
                    }
                },
                DeclaredDim::Unnamed if axis == 0 && batch.is_some() => batch.unwrap_or(1),
                DeclaredDim::Unnamed if leading_batch(axis) => 1,
                DeclaredDim::Unnamed => {
                    let example: Vec<String> = dims
                        .iter()
                        .enumerate()
                        .map(|(a, d)| match d {
                            DeclaredDim::Fixed(v) => v.to_string(),
                            DeclaredDim::Named(s) => {
                                bound.get(s).map_or_else(|| "?".to_string(), |v| v.to_string())
                            }
                            DeclaredDim::Unnamed if leading_batch(a) => "1".into(),
                            DeclaredDim::Unnamed => "?".into(),
                        })
                        .collect();
                    return Err(ResolveError::NeedsShape {
                        declared: input.describe(),
                        name: input.name.clone(),
                        axis,
                        example: example.join("x"),
                    });
                }
            };
            shape.push(size);
        }
        inputs.push((input.name.clone(), shape));
    }
    Ok(ResolvedShapes { inputs, symbols: bound.0.into_iter().map(|(k, (v, _))| (k, v)).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shapes(text: &str) -> InputShapes {
        InputShapes::parse(text).unwrap()
    }

    fn input(name: &str, dims: &[&str]) -> DeclaredInput {
        DeclaredInput {
            name: name.into(),
            dims: Some(
                dims.iter()
                    .map(|d| match d.parse::<i64>() {
                        Ok(v) => DeclaredDim::from_onnx(Some(v), None),
                        Err(_) => DeclaredDim::from_onnx(None, Some(d)),
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn parses_one_and_several_inputs() {
        let s = shapes("x=1x3x48x320");
        assert_eq!(s.get("x"), Some(&[1, 3, 48, 320][..]));
        let s = shapes(" images = 1x3x320x320 , mask=1x320 ");
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("images"), Some(&[1, 3, 320, 320][..]));
        assert_eq!(s.get("mask"), Some(&[1, 320][..]));
        // Names may hold `=`, `:` and `/` (tf2onnx writes `input:0`).
        let s = shapes("input:0=1x224x224x3,a=b=7");
        assert_eq!(s.get("input:0"), Some(&[1, 224, 224, 3][..]));
        assert_eq!(s.get("a=b"), Some(&[7][..]));
    }

    #[test]
    fn repeated_flags_merge_and_refuse_duplicates() {
        let s = InputShapes::parse_all(["a=1x2", "b=3,c=4x5"]).unwrap();
        assert_eq!(s.to_string(), "a=1x2,b=3,c=4x5");
        assert_eq!(
            InputShapes::parse_all(["a=1x2", "a=1x2"]),
            Err(InputShapeError::Duplicate { name: "a".into() })
        );
        assert_eq!(
            InputShapes::parse("a=1,a=2"),
            Err(InputShapeError::Duplicate { name: "a".into() })
        );
    }

    #[test]
    fn bad_text_gets_a_clear_error() {
        let err = |t: &str| InputShapes::parse(t).unwrap_err();
        assert_eq!(err("1x3x224x224"), InputShapeError::Syntax { entry: "1x3x224x224".into() });
        assert_eq!(err("=1x3"), InputShapeError::EmptyName { entry: "=1x3".into() });
        assert_eq!(err("x="), InputShapeError::EmptyShape { name: "x".into() });
        assert_eq!(err("x=1x0x3"), InputShapeError::BadDim { name: "x".into(), dim: "0".into() });
        assert_eq!(err("x=1x?x3"), InputShapeError::BadDim { name: "x".into(), dim: "?".into() });
        assert_eq!(err("x=1,3"), InputShapeError::Syntax { entry: "3".into() });
        assert_eq!(err("x=1X3"), InputShapeError::BadDim { name: "x".into(), dim: "1X3".into() });
        assert_eq!(err("x=-1x3"), InputShapeError::BadDim { name: "x".into(), dim: "-1".into() });
        assert_eq!(err("x=1xx3"), InputShapeError::BadDim { name: "x".into(), dim: "".into() });
        assert!(matches!(
            err(&format!("x={}", vec!["1"; 17].join("x"))),
            InputShapeError::TooManyAxes { rank: 17, .. }
        ));
        assert!(matches!(
            err("x=2147483647x2147483647x2147483647"),
            InputShapeError::TooLarge { .. }
        ));
        assert!(err("x=1x?x3").to_string().contains("whole number from 1"));
    }

    #[test]
    fn serde_refuses_what_the_parser_refuses() {
        let bad: BTreeMap<String, Vec<u64>> = [("x".to_string(), vec![1, 0])].into();
        assert!(InputShapes::try_from(bad).is_err());
        let good: BTreeMap<String, Vec<u64>> = [("x".to_string(), vec![1, 3])].into();
        assert_eq!(InputShapes::try_from(good).unwrap(), shapes("x=1x3"));
    }

    #[test]
    fn declared_dims_read_every_spelling_of_unknown() {
        assert_eq!(DeclaredDim::from_onnx(Some(3), None), DeclaredDim::Fixed(3));
        assert_eq!(DeclaredDim::from_onnx(None, Some("batch")), DeclaredDim::Named("batch".into()));
        for unknown in [
            (Some(-1), None),
            (Some(0), None),
            (None, Some("?")),
            (None, Some("")),
            (None, None),
            (None, Some("-1")),
            (None, Some("None")),
        ] {
            assert_eq!(
                DeclaredDim::from_onnx(unknown.0, unknown.1),
                DeclaredDim::Unnamed,
                "{unknown:?}"
            );
        }
    }

    #[test]
    fn given_shapes_bind_symbols_everywhere() {
        let declared = [input("a", &["batch", "3", "h", "w"]), input("b", &["batch", "h"])];
        let r = resolve(&declared, &shapes("a=2x3x48x320"), &[], None).unwrap();
        assert_eq!(r.inputs, vec![("a".into(), vec![2, 3, 48, 320]), ("b".into(), vec![2, 48])]);
        assert_eq!(r.symbols["batch"], 2);
        assert_eq!(r.symbols["w"], 320);
    }

    #[test]
    fn a_symbol_keeps_its_first_default_everywhere() {
        // `seq` first appears on axis 1 (default 128), then leads `b`: still 128 there.
        let declared = [input("a", &["batch", "seq"]), input("b", &["seq", "4"])];
        let r = resolve(&declared, &InputShapes::default(), &[], None).unwrap();
        assert_eq!(r.inputs[0].1, vec![1, DEFAULT_DIM]);
        assert_eq!(r.inputs[1].1, vec![DEFAULT_DIM, 4]);
    }

    #[test]
    fn unnamed_axes_default_only_as_a_batch() {
        let declared = [input("x", &["-1", "3", "?", "?"])];
        let err = resolve(&declared, &InputShapes::default(), &[], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input `x` [?,3,?,?]: axis 2 has neither a size nor a name; give the shape with \
             --input x=1x3x?x? (put a size in place of each ?)"
        );
        let r = resolve(&declared, &shapes("x=1x3x48x192"), &[], None).unwrap();
        assert_eq!(r.inputs[0].1, vec![1, 3, 48, 192]);
        // Each unnamed axis stands alone: no `?=1` forcing one value on all of them.
        let err = resolve(&declared, &InputShapes::default(), &[("?".into(), 1)], None);
        assert!(matches!(err, Err(ResolveError::UnnamedSymbol { .. })));
        // Leading unnamed axis of a rank-2 input: a batch of 1.
        let r = resolve(&[input("t", &["?", "2048"])], &InputShapes::default(), &[], None);
        assert_eq!(r.unwrap().inputs[0].1, vec![1, 2048]);
        // A rank-1 input has no batch axis.
        let r = resolve(&[input("t", &["?"])], &InputShapes::default(), &[], None);
        assert!(matches!(r, Err(ResolveError::NeedsShape { axis: 0, .. })));
    }

    #[test]
    fn given_shapes_must_match_the_declaration() {
        let declared = [input("x", &["batch", "3", "h", "w"])];
        let err = |t: &str| resolve(&declared, &shapes(t), &[], None).unwrap_err();
        assert!(matches!(err("y=1x3"), ResolveError::UnknownInput { .. }));
        assert!(err("y=1x3").to_string().contains("`x` [batch,3,h,w]"));
        assert!(matches!(err("x=1x3x8"), ResolveError::RankMismatch { .. }));
        assert!(matches!(
            err("x=1x4x8x8"),
            ResolveError::FixedMismatch { axis: 1, fixed: 3, given: 4, .. }
        ));
        let two = [input("a", &["batch", "3"]), input("b", &["batch", "5"])];
        let err = resolve(&two, &shapes("a=1x3,b=2x5"), &[], None).unwrap_err();
        assert!(matches!(err, ResolveError::SymbolConflict { first: 1, second: 2, .. }), "{err}");
        let err = resolve(&two, &shapes("a=1x3"), &[("batch".into(), 4)], None).unwrap_err();
        assert!(err.to_string().contains("--symbol batch=4"), "{err}");
    }

    #[test]
    fn symbols_fill_named_axes_and_no_shape_is_an_error() {
        let declared = [input("ids", &["batch", "sequence"])];
        let r = resolve(&declared, &InputShapes::default(), &[("sequence".into(), 16)], None);
        assert_eq!(r.unwrap().inputs[0].1, vec![1, 16]);
        let r = resolve(&declared, &InputShapes::default(), &[("sequence".into(), 0)], None);
        assert!(matches!(r, Err(ResolveError::ZeroSymbol { .. })));
        let shapeless = [DeclaredInput { name: "x".into(), dims: None }];
        let r = resolve(&shapeless, &InputShapes::default(), &[], None);
        assert!(matches!(r, Err(ResolveError::NoShape { .. })));
        assert_eq!(
            resolve(&shapeless, &shapes("x=2x2"), &[], None).unwrap().inputs[0].1,
            vec![2, 2]
        );
    }

    #[test]
    fn the_throughput_batch_overrides_the_first_axis() {
        let declared = [input("x", &["batch", "3", "?", "?"]), input("m", &["-1", "8"])];
        let r = resolve(&declared, &shapes("x=1x3x8x8"), &[("batch".into(), 2)], Some(4)).unwrap();
        assert_eq!(r.inputs, vec![("x".into(), vec![4, 3, 8, 8]), ("m".into(), vec![4, 8])]);
        assert_eq!(r.symbols["batch"], 4);
        let fixed = [input("x", &["1", "3"])];
        let r = resolve(&fixed, &InputShapes::default(), &[], Some(8));
        assert!(matches!(r, Err(ResolveError::FixedBatch { fixed: 1, batch: 8, .. })));
        assert!(resolve(&fixed, &InputShapes::default(), &[], Some(1)).is_ok());
    }

    fn any_shapes() -> impl Strategy<Value = InputShapes> {
        prop::collection::btree_map(
            "[a-zA-Z_][a-zA-Z0-9_:./=-]{0,10}",
            prop::collection::vec(1u64..5000, 1..6),
            0..4,
        )
        .prop_map(|m| InputShapes::new(m).unwrap())
    }

    proptest! {
        #[test]
        fn text_form_round_trips(s in any_shapes()) {
            prop_assume!(!s.is_empty());
            prop_assert_eq!(InputShapes::parse(&s.to_string()).unwrap(), s);
        }

        #[test]
        fn parse_never_panics(t in "\\PC{0,40}") {
            let _ = InputShapes::parse(&t);
        }

        #[test]
        fn given_shapes_are_used_as_given(s in any_shapes()) {
            // Declare every given input fully dynamic: the result is exactly what was given.
            let declared: Vec<DeclaredInput> = s
                .iter()
                .map(|(n, d)| DeclaredInput {
                    name: n.to_string(),
                    dims: Some(vec![DeclaredDim::Unnamed; d.len()]),
                })
                .collect();
            let r = resolve(&declared, &s, &[], None).unwrap();
            for ((name, dims), (gn, gd)) in r.inputs.iter().zip(s.iter()) {
                prop_assert_eq!(name.as_str(), gn);
                prop_assert_eq!(dims.as_slice(), gd);
            }
        }

        #[test]
        fn a_named_symbol_has_one_value(ranks in prop::collection::vec(1usize..5, 1..5), which in prop::collection::vec(0usize..3, 20)) {
            // Inputs built from three symbols at random axes: each resolves to one value.
            let names = ["s0", "s1", "s2"];
            let mut k = 0;
            let declared: Vec<DeclaredInput> = ranks.iter().enumerate().map(|(i, r)| DeclaredInput {
                name: format!("in{i}"),
                dims: Some((0..*r).map(|_| { k += 1; DeclaredDim::Named(names[which[k % which.len()]].into()) }).collect()),
            }).collect();
            let r = resolve(&declared, &InputShapes::default(), &[], None).unwrap();
            for (input, (_, shape)) in declared.iter().zip(&r.inputs) {
                for (d, v) in input.dims.as_ref().unwrap().iter().zip(shape) {
                    let DeclaredDim::Named(s) = d else { unreachable!() };
                    prop_assert_eq!(r.symbols[s], *v);
                }
            }
        }
    }
}

//! [`EvalData`]: the data sets Hone evaluates on, turned into batches named after a model's
//! inputs.

use std::collections::HashSet;

use anyhow::{Context as _, bail};
use candle_core::{Device, Tensor};

use super::photos::{PHOTO_SIDE, PhotoSet, photos};
use super::user::{
    DataFormat, DataSource, DataSpec, ImageFeed, UserImages, UserTensors, UserTexts,
};
use crate::data::{
    ImageDataset, Padding, Part, SPLIT_SEED, SentimentDataset, SplitMix64, Tokenizer,
    fashion_mnist, mnist, vader_movie_reviews,
};
use crate::eval::tract::true_inputs;
use hone_graph::{DataType, Dim, Graph, ValueInfo};

/// Longest tokenization of a sentence, `[CLS]` and `[SEP]` included (the longest VADER
/// sentence has 79 tokens).
pub const MAX_TOKENS: usize = 128;

/// The names [`EvalData::load`] accepts.
pub const DATA_NAMES: [&str; 5] = ["fashion-mnist", "mnist", "vader", "photos", "sotu"];

/// VADER's sentences with the tokenizer that turns them into MiniLM inputs.
#[derive(Debug, Clone)]
pub struct TextData {
    /// The sentences, labels and split.
    pub sentences: SentimentDataset,
    /// The MiniLM tokenizer.
    pub tokenizer: Tokenizer,
    /// Pad every batch to this many tokens (longer sentences are truncated); `None`: each batch
    /// to its longest sentence (at most [`MAX_TOKENS`]).
    pub seq_len: Option<usize>,
}

/// A data set to evaluate (or train) a model on.
#[derive(Debug, Clone)]
pub enum EvalData {
    /// Fashion-MNIST, 10 classes ([`crate::data::fashion_mnist`]).
    FashionMnist(ImageDataset),
    /// MNIST digits ([`crate::data::mnist`]).
    Mnist(ImageDataset),
    /// VADER movie-review sentences, 2 classes ([`crate::data::vader_movie_reviews`]).
    Vader(TextData),
    /// Crops of two photographs, no labels ([`super::photos`]).
    Photos(PhotoSet),
    /// The user's folder of images ([`EvalData::open`]).
    Images(UserImages),
    /// The user's texts, from a JSONL or CSV file ([`EvalData::open`]).
    Texts(UserTexts),
    /// The user's tensors keyed by input name ([`EvalData::open`]).
    Tensors(UserTensors),
    /// The State of the Union addresses ([`crate::data::sotu`]): a text corpus for language
    /// models, one example an address. It feeds no batches: language models read it as tokens
    /// (`hone_compress::distill::lm`).
    Sotu(crate::data::SotuDataset),
}

/// One batch: inputs named after the model's true inputs, and the labels when there are some.
#[derive(Debug, Clone)]
pub struct EvalBatch {
    /// `(input name, tensor)`, in the model's input order.
    pub inputs: Vec<(String, Tensor)>,
    /// Class of each example, in batch order; `None` for unlabelled data.
    pub labels: Option<Vec<u32>>,
    /// Which examples of the data set, in batch order.
    pub indices: Vec<usize>,
}

/// How a data set's examples become one model's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Feed {
    /// One f32 image input; `nhwc` when the model declares channels last.
    Image { input: String, nhwc: bool },
    /// Token inputs (int64); `types` is the model's `token_type_ids`, when it has one.
    Text { ids: String, mask: Option<String>, types: Option<String> },
    /// The user's images, resized and normalised for one input.
    Resized(ImageFeed),
    /// The user's tensors, by input name in model order.
    Tensors(Vec<String>),
}

/// `name type [d0, d1, …]` of a declared value, for error messages.
fn describe(v: &ValueInfo) -> String {
    let ty = v.data_type.map_or_else(|| "(untyped)".to_owned(), |t| t.to_string());
    let dims = v.dims.as_ref().map_or_else(
        || "[rank unknown]".to_owned(),
        |d| {
            let d: Vec<String> = d
                .iter()
                .map(|d| match d {
                    Dim::Value(v) => v.to_string(),
                    Dim::Symbol(s) => s.clone(),
                    Dim::Unknown => "?".into(),
                })
                .collect();
            format!("[{}]", d.join(", "))
        },
    );
    format!("`{}` {ty} {dims}", v.name)
}

/// Whether a declared dimension admits `n`.
fn fits(d: &Dim, n: usize) -> bool {
    match d {
        Dim::Value(v) => usize::try_from(*v) == Ok(n),
        _ => true,
    }
}

fn float_or_untyped(v: &ValueInfo) -> bool {
    matches!(v.data_type, None | Some(DataType::F32 | DataType::F64 | DataType::F16))
}

impl EvalData {
    /// Loads a data set by name: `fashion-mnist`, `mnist`, `vader` or `photos` (see
    /// [`DATA_NAMES`]). A missing asset names its package and `scripts/fetch-assets.sh`.
    pub fn load(name: &str) -> anyhow::Result<EvalData> {
        let context = || format!("loading data set `{name}`");
        Ok(match name {
            "fashion-mnist" => EvalData::FashionMnist(fashion_mnist().with_context(context)?),
            "mnist" => EvalData::Mnist(mnist().with_context(context)?),
            "vader" => EvalData::Vader(TextData {
                sentences: vader_movie_reviews().with_context(context)?,
                tokenizer: Tokenizer::minilm().with_context(context)?,
                seq_len: None,
            }),
            "photos" => EvalData::Photos(photos().with_context(context)?),
            "sotu" => EvalData::Sotu(crate::data::sotu().with_context(context)?),
            other => bail!("unknown data set `{other}`: one of {}", DATA_NAMES.join(", ")),
        })
    }

    /// Opens the data a [`DataSpec`] names: a built-in set (what [`EvalData::load`] does), a
    /// folder of images, a JSONL or CSV file of texts, or tensors (`.npz`, a folder of `.npy`
    /// files, `.safetensors`). See `docs/data.md` for the formats, the preprocessing and its
    /// defaults. Errors name the file at fault.
    ///
    /// A DVC source is resolved first into a verified copy under
    /// [`crate::data::dvc::default_dir`]; a path that is such a copy (its spec has a
    /// [`DataSpec::dataset`]) is hashed again and refused when it no longer matches.
    pub fn open(spec: &DataSpec) -> anyhow::Result<EvalData> {
        let path = match &spec.source {
            DataSource::Builtin(name) => return EvalData::load(name),
            DataSource::Dvc(_) => {
                return EvalData::open(&spec.resolve_dvc(&crate::data::dvc::default_dir())?);
            }
            DataSource::Path(p) => p,
        };
        if let Some(identity) = &spec.dataset {
            crate::data::dvc::verify_copy(path, identity)?;
        }
        if !path.exists() {
            bail!(
                "no data at `{}`: not a built-in data set ({}) and no such file or folder",
                path.display(),
                DATA_NAMES.join(", ")
            );
        }
        let format = spec.resolved_format()?.unwrap_or(DataFormat::Images);
        let context = || format!("opening {} ({})", path.display(), format.as_str());
        Ok(match format {
            DataFormat::Images => {
                EvalData::Images(UserImages::open(path, spec).with_context(context)?)
            }
            DataFormat::Jsonl | DataFormat::Csv => {
                EvalData::Texts(UserTexts::open(path, format, spec).with_context(context)?)
            }
            DataFormat::Npz | DataFormat::NpyDir | DataFormat::Safetensors => {
                EvalData::Tensors(UserTensors::open(path, format, spec).with_context(context)?)
            }
        })
    }

    /// The name [`EvalData::load`] takes, or the user's path.
    pub fn name(&self) -> &str {
        match self {
            EvalData::FashionMnist(_) => "fashion-mnist",
            EvalData::Mnist(_) => "mnist",
            EvalData::Vader(_) => "vader",
            EvalData::Photos(_) => "photos",
            EvalData::Images(d) => d.name(),
            EvalData::Texts(d) => d.name(),
            EvalData::Tensors(d) => d.name(),
            EvalData::Sotu(_) => "sotu",
        }
    }

    /// The data and its preprocessing, in one line (for reports and progress).
    pub fn describe(&self) -> String {
        let n = self.split().len();
        let labels = |classes: Option<usize>| {
            classes.map_or_else(|| "no labels".to_owned(), |c| format!("{c} classes"))
        };
        match self {
            EvalData::Images(d) => format!(
                "{n} images in {} ({}), {}",
                d.name(),
                if d.classes().is_empty() {
                    "no labels".to_owned()
                } else {
                    format!("classes {}", d.classes().join(", "))
                },
                d.spec().image_steps()
            ),
            EvalData::Texts(d) => format!(
                "{n} texts in {} ({}), {}",
                d.name(),
                labels(d.num_classes()),
                d.spec().describe()
            ),
            EvalData::Tensors(d) => {
                format!("{n} examples in {} ({}): {}", d.name(), labels(d.num_classes()), d.gives())
            }
            EvalData::Sotu(_) => {
                format!("built-in corpus `sotu`: {n} addresses, for language models")
            }
            _ => format!("built-in data set `{}`: {n} examples, {}", self.name(), self.gives()),
        }
    }

    /// Whether examples have class labels (photos and unlabelled user data have none).
    pub fn labelled(&self) -> bool {
        self.num_classes().is_some()
    }

    /// Number of classes of labelled data.
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            EvalData::FashionMnist(d) | EvalData::Mnist(d) => Some(d.num_classes()),
            EvalData::Vader(_) => Some(2),
            EvalData::Photos(_) | EvalData::Sotu(_) => None,
            EvalData::Images(d) => d.labels().map(|_| d.classes().len()),
            EvalData::Texts(d) => d.num_classes(),
            EvalData::Tensors(d) => d.num_classes(),
        }
    }

    fn split(&self) -> &crate::data::Split {
        match self {
            EvalData::FashionMnist(d) | EvalData::Mnist(d) => &d.split,
            EvalData::Vader(t) => &t.sentences.split,
            EvalData::Photos(p) => &p.split,
            EvalData::Images(d) => d.split(),
            EvalData::Texts(d) => d.split(),
            EvalData::Tensors(d) => d.split(),
            EvalData::Sotu(d) => &d.split,
        }
    }

    /// Number of examples in a part.
    pub fn part_len(&self, part: Part) -> usize {
        self.split().part(part).len()
    }

    /// The examples of a part that [`EvalData::batches`] uses, in batch order: the whole part
    /// in index order, or with a `limit`, a fixed pseudo-random subset of that many (drawn with
    /// [`SPLIT_SEED`], so every call and every model gets the same examples; several sources
    /// are sorted by class, so a prefix would not do), in index order; then shuffled when
    /// `shuffle` is a seed.
    pub fn examples(&self, part: Part, limit: Option<usize>, shuffle: Option<u64>) -> Vec<usize> {
        let mut idx = self.split().part(part).to_vec();
        if let Some(l) = limit.filter(|&l| l < idx.len()) {
            SplitMix64::new(SPLIT_SEED).shuffle(&mut idx);
            idx.truncate(l);
            idx.sort_unstable();
        }
        if let Some(seed) = shuffle {
            SplitMix64::new(seed).shuffle(&mut idx);
        }
        idx
    }

    /// Text only: pad every batch to `seq_len` tokens (truncating longer sentences), which
    /// gives every batch the same shape (tract plans are made for fixed shapes); `None` (the
    /// default) pads each batch to its longest sentence. No effect on images.
    pub fn set_seq_len(&mut self, seq_len: Option<usize>) {
        let seq_len = seq_len.map(|s| s.clamp(2, MAX_TOKENS));
        match self {
            EvalData::Vader(t) => t.seq_len = seq_len,
            EvalData::Texts(t) => t.seq_len = seq_len,
            _ => {}
        }
    }

    /// [`EvalData::set_seq_len`], by value.
    pub fn with_seq_len(mut self, seq_len: Option<usize>) -> EvalData {
        self.set_seq_len(seq_len);
        self
    }

    /// The fixed text length set by [`EvalData::set_seq_len`].
    pub fn seq_len(&self) -> Option<usize> {
        match self {
            EvalData::Vader(t) => t.seq_len,
            EvalData::Texts(t) => t.seq_len,
            _ => None,
        }
    }

    /// Text only: the longest tokenization (at most [`MAX_TOKENS`]) among `examples`, the
    /// length that keeps every sentence whole in one fixed shape.
    pub fn longest(&self, examples: &[usize]) -> Option<usize> {
        let (tokenizer, texts) = match self {
            EvalData::Vader(t) => (&t.tokenizer, &t.sentences.sentences[..]),
            EvalData::Texts(t) => (&t.tokenizer, t.texts()),
            _ => return None,
        };
        examples.iter().map(|&i| tokenizer.encode(&texts[i], MAX_TOKENS).len()).max()
    }

    /// What one example gives, for error messages.
    fn gives(&self) -> String {
        match self {
            EvalData::FashionMnist(d) | EvalData::Mnist(d) => {
                let [c, h, w] = d.shape;
                format!("one image input f32 [N, {c}, {h}, {w}] (or NHWC [N, {h}, {w}, {c}]), 0..1")
            }
            EvalData::Vader(_) | EvalData::Texts(_) => {
                "i64 token inputs `input_ids` and `attention_mask` [N, S] \
                 (and `token_type_ids` if the model has it)"
                    .into()
            }
            EvalData::Images(d) => d.gives(),
            EvalData::Tensors(d) => d.gives(),
            EvalData::Sotu(_) => {
                "token sequences for a language model (not example batches)".into()
            }
            EvalData::Photos(_) => format!(
                "one image input f32 NHWC [N, {PHOTO_SIDE}, {PHOTO_SIDE}, 3] (or NCHW \
                 [N, 3, {PHOTO_SIDE}, {PHOTO_SIDE}]), BGR minus the Caffe means"
            ),
        }
    }

    /// Checks that this data can feed `model` and says how.
    fn feed(&self, model: &Graph) -> anyhow::Result<Feed> {
        let names: HashSet<String> = true_inputs(model).into_iter().collect();
        let declared: Vec<ValueInfo> =
            model.inputs().into_iter().filter(|v| names.contains(&v.name)).collect();
        let mismatch = |why: &str| {
            let list: Vec<String> = declared.iter().map(describe).collect();
            anyhow::anyhow!(
                "the model's inputs do not match data set `{}`{why}: the model declares {}; \
                 `{}` gives {}",
                self.name(),
                if list.is_empty() { "no input".into() } else { list.join(", ") },
                self.name(),
                self.gives()
            )
        };
        let fit = |e: anyhow::Error| {
            anyhow::anyhow!("data `{}` does not fit the model: {e:#}", self.name())
        };
        match self {
            EvalData::Images(d) => return d.feed(&declared).map(Feed::Resized).map_err(fit),
            EvalData::Tensors(d) => return d.feed(&declared).map(Feed::Tensors).map_err(fit),
            _ => {}
        }
        match self {
            EvalData::Vader(_) | EvalData::Texts(_) => {
                let find = |n: &str| declared.iter().find(|v| v.name == n);
                let ids = find("input_ids").ok_or_else(|| mismatch(" (no `input_ids`)"))?;
                let known = ["input_ids", "attention_mask", "token_type_ids"];
                if let Some(v) = declared.iter().find(|v| !known.contains(&v.name.as_str())) {
                    return Err(mismatch(&format!(" (`{}` is not a token input)", v.name)));
                }
                if let Some(v) = declared.iter().find(|v| {
                    !matches!(v.data_type, None | Some(DataType::I64))
                        || v.dims.as_ref().is_some_and(|d| d.len() != 2)
                }) {
                    return Err(mismatch(&format!(" (`{}` is not i64 [N, S])", v.name)));
                }
                Ok(Feed::Text {
                    ids: ids.name.clone(),
                    mask: find("attention_mask").map(|v| v.name.clone()),
                    types: find("token_type_ids").map(|v| v.name.clone()),
                })
            }
            EvalData::Sotu(_) => Err(mismatch(
                " (a text corpus: it trains and scores language models, distilled with \
                 `coordinator distill --data sotu` or the pipeline's `distill`)",
            )),
            EvalData::FashionMnist(_)
            | EvalData::Mnist(_)
            | EvalData::Photos(_)
            | EvalData::Images(_)
            | EvalData::Tensors(_) => {
                let [c, h, w] = self.image_shape();
                let [v] = declared.as_slice() else {
                    return Err(mismatch(" (images feed exactly one input)"));
                };
                if !float_or_untyped(v) {
                    return Err(mismatch(" (the image input is not float)"));
                }
                // The data's own layout: channels last for photos, first for grey images.
                let native = matches!(self, EvalData::Photos(_));
                let Some(d) = &v.dims else {
                    return Ok(Feed::Image { input: v.name.clone(), nhwc: native });
                };
                let nchw = d.len() == 4 && fits(&d[1], c) && fits(&d[2], h) && fits(&d[3], w);
                let nhwc = d.len() == 4 && fits(&d[1], h) && fits(&d[2], w) && fits(&d[3], c);
                let input = v.name.clone();
                match (nchw, nhwc) {
                    // Both fit when sizes are symbolic: a fixed axis that fits says which one
                    // holds the channels; otherwise the data's own layout.
                    (true, true) => {
                        let nhwc = match (&d[1], &d[3]) {
                            (Dim::Value(_), Dim::Value(_)) => native,
                            (Dim::Value(_), _) => false,
                            (_, Dim::Value(_)) => true,
                            _ => native,
                        };
                        Ok(Feed::Image { input, nhwc })
                    }
                    (true, false) => Ok(Feed::Image { input, nhwc: false }),
                    (false, true) => Ok(Feed::Image { input, nhwc: true }),
                    (false, false) => Err(mismatch(" (image size or layout)")),
                }
            }
        }
    }

    /// `[C, H, W]` of image data.
    fn image_shape(&self) -> [usize; 3] {
        match self {
            EvalData::FashionMnist(d) | EvalData::Mnist(d) => d.shape,
            EvalData::Photos(_) => [3, PHOTO_SIDE, PHOTO_SIDE],
            _ => [0, 0, 0],
        }
    }

    /// Checks that the float inputs this data gives `model` have the `shapes` a device
    /// benchmarks (beyond the batch axis), so that figures measured on the data and on devices
    /// are about the same inputs. Token (integer) inputs vary in length and are not checked.
    pub fn check_measured_shapes(
        &self,
        model: &Graph,
        shapes: &hone_common::shapes::InputShapes,
    ) -> anyhow::Result<()> {
        let batch = self.batches(model, Part::Validation, 1, Some(1), None)?;
        let Some(first) = batch.first() else { return Ok(()) };
        for (name, t) in &first.inputs {
            if t.dtype() != candle_core::DType::F32 {
                continue;
            }
            let Some(want) = shapes.get(name) else { continue };
            let got = t.dims();
            let same = got.len() == want.len()
                && got.iter().zip(want).skip(1).all(|(&g, &w)| g as u64 == w);
            if !same {
                bail!(
                    "input `{name}` is measured on the devices as {}; the data gives {got:?} for \
                     one example: give the data at the measured size (e.g. size=HxW for images)",
                    want.iter().map(ToString::to_string).collect::<Vec<_>>().join("x")
                );
            }
        }
        Ok(())
    }

    /// Checks that this data can feed `model` (the error says what the model declares and what
    /// the data gives).
    pub fn check(&self, model: &Graph) -> anyhow::Result<()> {
        self.feed(model).map(|_| ())
    }

    /// Batches of one part, in a fixed order (see [`EvalData::examples`] for `limit` and
    /// `shuffle`), each named after `model`'s true inputs:
    /// - images feed the model's only true input, f32 `[N, 1, 28, 28]` in `0..=1`, or NHWC when
    ///   the model declares `[N, H, W, C]`;
    /// - text feeds `input_ids` and `attention_mask` (and `token_type_ids`, zeros, when the
    ///   model has it), int64, padded to the batch's longest sentence or to
    ///   [`EvalData::seq_len`];
    /// - photos feed the model's only true input NHWC `[N, 224, 224, 3]` f32 (or NCHW when the
    ///   model declares it), BGR minus the Caffe means.
    pub fn batches(
        &self,
        model: &Graph,
        part: Part,
        batch_size: usize,
        limit: Option<usize>,
        shuffle: Option<u64>,
    ) -> anyhow::Result<Vec<EvalBatch>> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let feed = self.feed(model)?;
        self.examples(part, limit, shuffle)
            .chunks(batch_size)
            .map(|chunk| self.gather(&feed, chunk, self.seq_len()))
            .collect()
    }

    /// One batch of the given examples for `model` (the layout of [`EvalData::batches`]); for
    /// training loops, which choose their own examples.
    pub fn batch(&self, model: &Graph, examples: &[usize]) -> anyhow::Result<EvalBatch> {
        let feed = self.feed(model)?;
        self.gather(&feed, examples, self.seq_len())
    }

    /// A reusable feeder for `model`: [`EvalData::batch`] without checking the model again.
    pub(crate) fn feeder(&self, model: &Graph) -> anyhow::Result<Feeder<'_>> {
        Ok(Feeder { data: self, feed: self.feed(model)? })
    }

    fn gather(
        &self,
        feed: &Feed,
        idx: &[usize],
        seq_len: Option<usize>,
    ) -> anyhow::Result<EvalBatch> {
        let n = idx.len();
        let cpu = &Device::Cpu;
        let (inputs, labels) = match (self, feed) {
            (EvalData::FashionMnist(d) | EvalData::Mnist(d), Feed::Image { input, nhwc }) => {
                let b = d.batch(idx);
                let [_, c, h, w] = b.shape;
                let x = Tensor::from_vec(b.pixels, (n, c, h, w), cpu)?;
                let x = if *nhwc { x.permute((0, 2, 3, 1))?.contiguous()? } else { x };
                (vec![(input.clone(), x)], Some(b.labels))
            }
            (EvalData::Photos(p), Feed::Image { input, nhwc }) => {
                let mut pixels = Vec::with_capacity(n * PHOTO_SIDE * PHOTO_SIDE * 3);
                for &i in idx {
                    p.push_crop(i, &mut pixels);
                }
                let x = Tensor::from_vec(pixels, (n, PHOTO_SIDE, PHOTO_SIDE, 3), cpu)?;
                let x = if *nhwc { x } else { x.permute((0, 3, 1, 2))?.contiguous()? };
                (vec![(input.clone(), x)], None)
            }
            (EvalData::Vader(t), Feed::Text { ids, mask, types }) => {
                let (max_len, padding) = match seq_len {
                    Some(s) => (s, Padding::Fixed),
                    None => (MAX_TOKENS, Padding::Longest),
                };
                let b = t.sentences.batch(idx, &t.tokenizer, max_len, padding);
                let e = b.encoding;
                let inputs = token_inputs(e, ids, mask.as_ref(), types.as_ref())?;
                (inputs, Some(b.labels))
            }
            (EvalData::Texts(t), Feed::Text { ids, mask, types }) => {
                let (max_len, padding) = match seq_len {
                    Some(s) => (s, Padding::Fixed),
                    None => (MAX_TOKENS, Padding::Longest),
                };
                let texts: Vec<&str> = idx
                    .iter()
                    .map(|&i| t.texts().get(i).map(String::as_str))
                    .collect::<Option<_>>()
                    .ok_or_else(|| anyhow::anyhow!("an example is out of range ({})", t.len()))?;
                let e = t.tokenizer.encode_batch(&texts, max_len, padding);
                let inputs = token_inputs(e, ids, mask.as_ref(), types.as_ref())?;
                let labels = t.labels().map(|l| idx.iter().map(|&i| l[i]).collect());
                (inputs, labels)
            }
            (EvalData::Images(d), Feed::Resized(f)) => {
                let labels = d.labels().map(|l| idx.iter().map(|&i| l[i]).collect());
                (vec![(f.input.clone(), d.gather(f, idx)?)], labels)
            }
            (EvalData::Tensors(d), Feed::Tensors(keys)) => {
                let labels = d.labels().map(|l| idx.iter().map(|&i| l[i]).collect());
                (d.gather(keys, idx)?, labels)
            }
            _ => bail!("internal: feed {feed:?} does not fit data set `{}`", self.name()),
        };
        Ok(EvalBatch { inputs, labels, indices: idx.to_vec() })
    }
}

/// Token tensors `[batch, seq_len]` named after the model's token inputs.
fn token_inputs(
    e: crate::data::Encoding,
    ids: &str,
    mask: Option<&String>,
    types: Option<&String>,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let (cpu, shape) = (&Device::Cpu, (e.batch, e.seq_len));
    let mut inputs = vec![(ids.to_owned(), Tensor::from_vec(e.input_ids, shape, cpu)?)];
    if let Some(m) = mask {
        inputs.push((m.clone(), Tensor::from_vec(e.attention_mask, shape, cpu)?));
    }
    if let Some(ty) = types {
        inputs.push((ty.clone(), Tensor::from_vec(e.token_type_ids, shape, cpu)?));
    }
    Ok(inputs)
}

/// A data set bound to one model's inputs (checked once), from [`EvalData::feeder`].
#[derive(Debug)]
pub(crate) struct Feeder<'a> {
    data: &'a EvalData,
    feed: Feed,
}

impl Feeder<'_> {
    /// One batch of `examples`, padded to `seq_len` tokens when it is given (text), else as the
    /// data set says.
    pub(crate) fn batch(
        &self,
        examples: &[usize],
        seq_len: Option<usize>,
    ) -> anyhow::Result<EvalBatch> {
        self.data.gather(&self.feed, examples, seq_len.or(self.data.seq_len()))
    }
}

//! The user's own data: a [`DataSpec`] names a built-in data set or a path (a folder of images,
//! a JSONL or CSV file of texts, or tensors in `.npz`, `.npy` files or `.safetensors`), with
//! the preprocessing it needs; [`crate::eval::EvalData::open`] reads it. A DVC-tracked data set
//! (`dvc://PATH[@REV]`) is resolved first into a verified copy ([`crate::data::dvc`]). The
//! formats, defaults and errors are documented in `docs/data.md`.
//!
//! Every source gets a fixed split drawn with [`SPLIT_SEED`] ([`user_split`]): 10 % test, 10 %
//! validation, the rest train, with at least one test and one validation example from 3
//! examples on.

mod images;
mod tensors;
mod texts;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::data::DATA_NAMES;
use crate::data::dvc::{self, DatasetIdentity, DvcRef};
use crate::data::{SPLIT_SEED, Split};

pub(crate) use images::ImageFeed;
pub use images::UserImages;
pub use tensors::{Array, ArrayData, ElementType, UserTensors};
pub use texts::UserTexts;

/// Most examples a folder of images may hold (the images are decoded once, at open).
pub const MAX_IMAGES: usize = 10_000;

/// Most bytes of pixels kept for a folder of images (decoded RGB, or the resized f32 pixels when
/// the spec gives a size), and most bytes of tensors read from a tensors file.
pub const MAX_DATA_BYTES: usize = 2 << 30;

/// Where the examples come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// A built-in data set, by the name [`crate::eval::EvalData::load`] takes.
    Builtin(String),
    /// A file or folder of the user's.
    Path(PathBuf),
    /// A DVC-tracked file or folder, `dvc://PATH[@REV]` (or a `.dvc` file): resolved by
    /// [`DataSpec::resolve_dvc`] into a verified copy (see [`crate::data::dvc`]).
    Dvc(String),
}

/// The format of a path; found from the path when the spec does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// A folder of PNG and JPEG images; class sub-folders give labels.
    Images,
    /// A JSON Lines file of `{"text": ..., "label": ...}` objects.
    Jsonl,
    /// A CSV file with a header row and `text` (and optional `label`) columns.
    Csv,
    /// A NumPy `.npz` archive of arrays keyed by input name.
    Npz,
    /// A folder of `INPUTNAME.npy` files.
    NpyDir,
    /// A `.safetensors` file of tensors keyed by input name.
    Safetensors,
}

impl DataFormat {
    /// The name the compact form and `docs/data.md` use.
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Images => "images",
            DataFormat::Jsonl => "jsonl",
            DataFormat::Csv => "csv",
            DataFormat::Npz => "npz",
            DataFormat::NpyDir => "npy-dir",
            DataFormat::Safetensors => "safetensors",
        }
    }

    fn parse(s: &str) -> anyhow::Result<DataFormat> {
        const ALL: [DataFormat; 6] = [
            DataFormat::Images,
            DataFormat::Jsonl,
            DataFormat::Csv,
            DataFormat::Npz,
            DataFormat::NpyDir,
            DataFormat::Safetensors,
        ];
        ALL.into_iter().find(|f| f.as_str() == s).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown data format `{s}`: one of {}",
                ALL.map(DataFormat::as_str).join(", ")
            )
        })
    }
}

/// Where the channel axis of an image input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    /// `[N, C, H, W]`.
    Nchw,
    /// `[N, H, W, C]`.
    Nhwc,
}

/// The channels an image input receives, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Channels {
    /// Red, green, blue (the default).
    Rgb,
    /// Blue, green, red (Caffe and OpenCV models).
    Bgr,
    /// One grey channel, `0.299 R + 0.587 G + 0.114 B`.
    Gray,
}

impl Channels {
    /// Number of channels fed.
    pub fn count(self) -> usize {
        if self == Channels::Gray { 1 } else { 3 }
    }
}

/// What to read and how to turn it into a model's inputs. Build one with [`DataSpec::parse`]
/// (or [`DataSpec::builtin`], [`DataSpec::path`]) and the `with_*` methods, or from JSON.
/// Fields left `None` take the defaults `docs/data.md` lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// A built-in data set or a path.
    pub source: DataSource,
    /// The path's format; `None`: from the path (a folder of `.npy` files or of images, or the
    /// file's extension).
    #[serde(default)]
    pub format: Option<DataFormat>,
    /// Images: resize every image to `[height, width]`; `None`: the model's fixed H and W.
    #[serde(default)]
    pub image_size: Option<[usize; 2]>,
    /// Images: the input's layout; `None`: the one the model declares (NCHW when it does not
    /// say).
    #[serde(default)]
    pub layout: Option<Layout>,
    /// Images: channel order; `None`: RGB.
    #[serde(default)]
    pub channels: Option<Channels>,
    /// Images: pixels (`0..=255`) are multiplied by this; `None`: `1/255`.
    #[serde(default)]
    pub scale: Option<f32>,
    /// Images: subtracted from each channel after scaling, in the order the model receives
    /// them; `None`: 0.
    #[serde(default)]
    pub mean: Option<[f32; 3]>,
    /// Images: each channel is divided by this after the mean; `None`: 1.
    #[serde(default)]
    pub std: Option<[f32; 3]>,
    /// Texts: the `tokenizer.json` to use; `None`: `tokenizer.json` in [`DataSpec::model_dir`].
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// The model's folder, where a `tokenizer.json` is looked for.
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// The DVC data set a path source is the verified copy of (set by
    /// [`DataSpec::resolve_dvc`]); [`crate::eval::EvalData::open`] checks the copy against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetIdentity>,
}

impl DataSpec {
    /// A built-in data set (no check that the name exists until [`crate::eval::EvalData::open`]).
    pub fn builtin(name: &str) -> DataSpec {
        DataSpec::with_source(DataSource::Builtin(name.to_owned()))
    }

    /// A file or folder, with every option at its default.
    pub fn path(path: impl Into<PathBuf>) -> DataSpec {
        DataSpec::with_source(DataSource::Path(path.into()))
    }

    fn with_source(source: DataSource) -> DataSpec {
        DataSpec {
            source,
            format: None,
            image_size: None,
            layout: None,
            channels: None,
            scale: None,
            mean: None,
            std: None,
            tokenizer: None,
            model_dir: None,
            dataset: None,
        }
    }

    /// A DVC data set, `dvc://PATH[@REV]` or a `.dvc` file (checked when given here; resolved
    /// by [`DataSpec::resolve_dvc`] or [`crate::eval::EvalData::open`]).
    pub fn dvc(reference: &str) -> anyhow::Result<DataSpec> {
        let r = DvcRef::parse(reference)?;
        Ok(DataSpec::with_source(DataSource::Dvc(r.to_string())))
    }

    /// For a DVC source: the spec with its source replaced by the verified copy under `dir`
    /// and [`DataSpec::dataset`] set to what it is ([`crate::data::dvc::resolve`]). Any other
    /// spec is returned as it is.
    pub fn resolve_dvc(&self, dir: &Path) -> anyhow::Result<DataSpec> {
        let DataSource::Dvc(r) = &self.source else { return Ok(self.clone()) };
        let resolved = crate::data::dvc::resolve(&DvcRef::parse(r)?, dir)?;
        let mut spec = self.clone();
        spec.source = DataSource::Path(resolved.path);
        spec.dataset = Some(resolved.identity);
        Ok(spec)
    }

    /// The compact command-line form: a built-in name (`fashion-mnist`, `mnist`, `vader`,
    /// `photos`), a DVC data set (`dvc://PATH[@REV]`, or a path ending in `.dvc`) or a path
    /// (write `./mnist` for a folder named like a built-in set), then
    /// optional `,key=value` options: `format=`, `size=HxW`, `layout=nchw|nhwc`,
    /// `channels=rgb|bgr|gray`, `scale=`, `mean=a:b:c` (or one value for all channels),
    /// `std=`, `tokenizer=PATH`, `model-dir=PATH`. Paths holding a comma cannot take options
    /// this way; use the JSON form or the fields.
    pub fn parse(s: &str) -> anyhow::Result<DataSpec> {
        let s = s.trim();
        if s.is_empty() {
            bail!("empty data spec: give a built-in name ({}) or a path", DATA_NAMES.join(", "));
        }
        if DATA_NAMES.contains(&s) {
            return Ok(DataSpec::builtin(s));
        }
        let head = s.split(',').next().unwrap_or_default();
        if dvc::is_dvc(head) {
            let mut spec = DataSpec::dvc(head).with_context(|| format!("data spec `{s}`"))?;
            for opt in s.split(',').skip(1) {
                spec.set(opt).with_context(|| format!("data spec `{s}`"))?;
            }
            return Ok(spec);
        }
        // A path that exists as given wins over options (a comma in a file name).
        if Path::new(s).exists() {
            return Ok(DataSpec::path(s));
        }
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        let mut spec =
            if DATA_NAMES.contains(&head) { DataSpec::builtin(head) } else { DataSpec::path(head) };
        for opt in parts {
            spec.set(opt).with_context(|| format!("data spec `{s}`"))?;
        }
        Ok(spec)
    }

    /// Sets one option of the compact form, `key=value` (see [`DataSpec::parse`]).
    pub fn set(&mut self, option: &str) -> anyhow::Result<()> {
        let Some((key, value)) = option.split_once('=') else {
            bail!("option `{option}` is not key=value");
        };
        let (key, value) = (key.trim(), value.trim());
        let float = |v: &str| -> anyhow::Result<f32> {
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| anyhow::anyhow!("`{key}`: `{v}` is not a finite number"))
        };
        let three = |v: &str| -> anyhow::Result<[f32; 3]> {
            let xs: Vec<f32> = v.split(':').map(float).collect::<anyhow::Result<_>>()?;
            match xs.as_slice() {
                [a] => Ok([*a; 3]),
                [a, b, c] => Ok([*a, *b, *c]),
                _ => bail!("`{key}`: give one value or three separated by `:`, not `{v}`"),
            }
        };
        match key {
            "format" => self.format = Some(DataFormat::parse(value)?),
            "size" => {
                let (h, w) = value
                    .split_once(['x', 'X'])
                    .ok_or_else(|| anyhow::anyhow!("`size`: `{value}` is not HxW"))?;
                let dim = |d: &str| -> anyhow::Result<usize> {
                    d.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&d| (1..=16_384).contains(&d))
                        .ok_or_else(|| anyhow::anyhow!("`size`: `{d}` is not a side in 1..=16384"))
                };
                self.image_size = Some([dim(h)?, dim(w)?]);
            }
            "layout" => {
                self.layout = Some(match value.to_ascii_lowercase().as_str() {
                    "nchw" => Layout::Nchw,
                    "nhwc" => Layout::Nhwc,
                    _ => bail!("`layout`: `{value}` is not nchw or nhwc"),
                })
            }
            "channels" => {
                self.channels = Some(match value.to_ascii_lowercase().as_str() {
                    "rgb" => Channels::Rgb,
                    "bgr" => Channels::Bgr,
                    "gray" | "grey" => Channels::Gray,
                    _ => bail!("`channels`: `{value}` is not rgb, bgr or gray"),
                })
            }
            "scale" => self.scale = Some(float(value)?),
            "mean" => self.mean = Some(three(value)?),
            "std" => self.std = Some(three(value)?),
            "tokenizer" => self.tokenizer = Some(value.into()),
            "model-dir" | "model_dir" => self.model_dir = Some(value.into()),
            _ => bail!(
                "unknown option `{key}`: one of format, size, layout, channels, scale, mean, \
                 std, tokenizer, model-dir"
            ),
        }
        Ok(())
    }

    /// Sets [`DataSpec::format`].
    pub fn with_format(mut self, format: DataFormat) -> DataSpec {
        self.format = Some(format);
        self
    }

    /// Sets [`DataSpec::image_size`], `[height, width]`.
    pub fn with_image_size(mut self, size: [usize; 2]) -> DataSpec {
        self.image_size = Some(size);
        self
    }

    /// Sets [`DataSpec::layout`].
    pub fn with_layout(mut self, layout: Layout) -> DataSpec {
        self.layout = Some(layout);
        self
    }

    /// Sets [`DataSpec::channels`].
    pub fn with_channels(mut self, channels: Channels) -> DataSpec {
        self.channels = Some(channels);
        self
    }

    /// Sets [`DataSpec::scale`].
    pub fn with_scale(mut self, scale: f32) -> DataSpec {
        self.scale = Some(scale);
        self
    }

    /// Sets [`DataSpec::mean`].
    pub fn with_mean(mut self, mean: [f32; 3]) -> DataSpec {
        self.mean = Some(mean);
        self
    }

    /// Sets [`DataSpec::std`].
    pub fn with_std(mut self, std: [f32; 3]) -> DataSpec {
        self.std = Some(std);
        self
    }

    /// Sets [`DataSpec::tokenizer`].
    pub fn with_tokenizer(mut self, path: impl Into<PathBuf>) -> DataSpec {
        self.tokenizer = Some(path.into());
        self
    }

    /// Sets [`DataSpec::model_dir`].
    pub fn with_model_dir(mut self, dir: impl Into<PathBuf>) -> DataSpec {
        self.model_dir = Some(dir.into());
        self
    }

    /// The format of a path source: the spec's, else found from the path. `None` for a
    /// built-in set and for a DVC source not resolved yet.
    pub fn resolved_format(&self) -> anyhow::Result<Option<DataFormat>> {
        let DataSource::Path(path) = &self.source else { return Ok(None) };
        if let Some(f) = self.format {
            return Ok(Some(f));
        }
        detect_format(path).map(Some)
    }

    /// The preprocessing, in one line (for reports and progress), with the defaults that apply
    /// spelled out.
    pub fn describe(&self) -> String {
        let path = match &self.source {
            DataSource::Builtin(name) => return format!("built-in data set `{name}`"),
            DataSource::Dvc(r) => return format!("DVC data set {r} (not resolved yet)"),
            DataSource::Path(p) => p.display().to_string(),
        };
        let what = self.describe_path(&path);
        match &self.dataset {
            Some(id) => format!("{what}; from {id}"),
            None => what,
        }
    }

    /// [`DataSpec::describe`] of a path source.
    fn describe_path(&self, path: &str) -> String {
        match self.resolved_format() {
            Ok(Some(DataFormat::Images)) => format!("images in {path}: {}", self.image_steps()),
            Ok(Some(f @ (DataFormat::Jsonl | DataFormat::Csv))) => format!(
                "texts in {path} ({}), tokenized by {}, at most {} tokens",
                f.as_str(),
                self.tokenizer_path()
                    .map_or_else(|_| "(no tokenizer given)".into(), |p| p.display().to_string()),
                super::MAX_TOKENS
            ),
            Ok(Some(f)) => format!(
                "tensors in {path} ({}), keyed by input name, first axis = examples; f64 cast \
                 to f32, i32 to i64",
                f.as_str()
            ),
            Ok(None) => unreachable!("a path source has a format"),
            Err(e) => format!("{path}: {e}"),
        }
    }

    /// The image steps of [`DataSpec::describe`].
    pub(crate) fn image_steps(&self) -> String {
        let size =
            self.image_size.map_or_else(|| "the model's H×W".into(), |[h, w]| format!("{h}×{w}"));
        let layout = match self.layout {
            Some(Layout::Nchw) => "NCHW",
            Some(Layout::Nhwc) => "NHWC",
            None => "layout from the model",
        };
        let channels = match self.channels.unwrap_or(Channels::Rgb) {
            Channels::Rgb => "RGB",
            Channels::Bgr => "BGR",
            Channels::Gray => "gray",
        };
        let scale = self.scale.map_or_else(|| "1/255".into(), |s| s.to_string());
        let fmt3 = |v: [f32; 3]| {
            if self.channels == Some(Channels::Gray) {
                v[0].to_string()
            } else {
                format!("[{}, {}, {}]", v[0], v[1], v[2])
            }
        };
        format!(
            "resized bilinear to {size}, {layout}, {channels}, pixels×{scale}, minus mean {}, \
             divided by std {}",
            fmt3(self.mean.unwrap_or([0.0; 3])),
            fmt3(self.std.unwrap_or([1.0; 3]))
        )
    }

    /// The tokenizer file: the spec's, else `tokenizer.json` in the model's folder.
    pub(crate) fn tokenizer_path(&self) -> anyhow::Result<PathBuf> {
        if let Some(t) = &self.tokenizer {
            return Ok(t.clone());
        }
        if let Some(dir) = &self.model_dir {
            let t = dir.join("tokenizer.json");
            if t.is_file() {
                return Ok(t);
            }
            bail!("no tokenizer: {} does not exist; give one (tokenizer=PATH)", t.display());
        }
        bail!(
            "no tokenizer: give a tokenizer.json (tokenizer=PATH) or the model's folder (model-dir=PATH)"
        )
    }

    /// Checks the image options that do not need a model.
    pub(crate) fn check_image_options(&self) -> anyhow::Result<()> {
        if let Some(s) = self.scale
            && !(s.is_finite() && s != 0.0)
        {
            bail!("image scale {s} must be a finite non-zero number");
        }
        if let Some(std) = self.std
            && std.iter().any(|s| !s.is_finite() || *s == 0.0)
        {
            bail!("image std {std:?} must be finite and non-zero");
        }
        if let Some(m) = self.mean
            && m.iter().any(|m| !m.is_finite())
        {
            bail!("image mean {m:?} must be finite");
        }
        if let Some([h, w]) = self.image_size
            && !((1..=16_384).contains(&h) && (1..=16_384).contains(&w))
        {
            bail!("image size {h}x{w}: each side must be in 1..=16384");
        }
        Ok(())
    }
}

impl fmt::Display for DataSpec {
    /// The compact form [`DataSpec::parse`] reads back (for paths without commas).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            DataSource::Builtin(n) => write!(f, "{n}")?,
            DataSource::Path(p) => write!(f, "{}", p.display())?,
            DataSource::Dvc(r) => write!(f, "{r}")?,
        }
        let three = |v: [f32; 3]| format!("{}:{}:{}", v[0], v[1], v[2]);
        if let Some(x) = self.format {
            write!(f, ",format={}", x.as_str())?;
        }
        if let Some([h, w]) = self.image_size {
            write!(f, ",size={h}x{w}")?;
        }
        if let Some(l) = self.layout {
            write!(f, ",layout={}", if l == Layout::Nchw { "nchw" } else { "nhwc" })?;
        }
        if let Some(c) = self.channels {
            let c = match c {
                Channels::Rgb => "rgb",
                Channels::Bgr => "bgr",
                Channels::Gray => "gray",
            };
            write!(f, ",channels={c}")?;
        }
        if let Some(s) = self.scale {
            write!(f, ",scale={s}")?;
        }
        if let Some(m) = self.mean {
            write!(f, ",mean={}", three(m))?;
        }
        if let Some(s) = self.std {
            write!(f, ",std={}", three(s))?;
        }
        if let Some(t) = &self.tokenizer {
            write!(f, ",tokenizer={}", t.display())?;
        }
        if let Some(d) = &self.model_dir {
            write!(f, ",model-dir={}", d.display())?;
        }
        Ok(())
    }
}

/// The format of a path: a folder of `.npy` files, a folder of images, or the file's extension.
fn detect_format(path: &Path) -> anyhow::Result<DataFormat> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect::<Vec<_>>();
        let npy = entries.iter().any(|p| has_ext(p, &["npy"]));
        return Ok(if npy { DataFormat::NpyDir } else { DataFormat::Images });
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    Ok(match ext.as_str() {
        "jsonl" | "ndjson" => DataFormat::Jsonl,
        "csv" => DataFormat::Csv,
        "npz" => DataFormat::Npz,
        "safetensors" => DataFormat::Safetensors,
        _ => bail!(
            "{}: cannot tell the format from the extension `{ext}`: a folder of images or of \
             .npy files, or a .jsonl, .csv, .npz or .safetensors file (or say format=...)",
            path.display()
        ),
    })
}

/// Whether `path` ends in one of `exts` (lower case, without the dot), ignoring case.
pub(crate) fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The fixed split of a user data set of `n` examples, drawn with [`SPLIT_SEED`]: `round(n / 10)`
/// test and validation examples, at least one each from `n = 3`; 2 examples give one train and
/// one validation; 1 example is train.
pub fn user_split(n: usize) -> Split {
    let part = |n: usize| match n {
        0..=1 => 0,
        2 => 0,
        _ => ((n as f64 * 0.1).round() as usize).max(1),
    };
    let n_test = part(n);
    let n_val = if n == 2 { 1 } else { part(n) };
    if n == 0 {
        return Split { train: Vec::new(), validation: Vec::new(), test: Vec::new() };
    }
    Split::seeded(n, n_val as f64 / n as f64, n_test as f64 / n as f64, SPLIT_SEED)
}

/// Class names sorted, and the index of each label.
pub(crate) fn index_labels(labels: &[String]) -> (Vec<String>, Vec<u32>) {
    let mut classes: Vec<String> = labels.to_vec();
    classes.sort();
    classes.dedup();
    let idx = labels.iter().map(|l| classes.binary_search(l).map_or(0, |i| i as u32)).collect();
    (classes, idx)
}

/// `f32 [N, 3, 48, 192]`: a declared input's type and dimensions, the first shown as `N`.
pub(crate) fn declared(v: &hone_graph::ValueInfo) -> String {
    use hone_graph::Dim;
    let ty = v.data_type.map_or_else(|| "(untyped)".to_owned(), |t| t.to_string());
    let dims = v.dims.as_ref().map_or_else(
        || "[rank unknown]".to_owned(),
        |d| {
            let d: Vec<String> = d
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    _ if i == 0 => "N".into(),
                    Dim::Value(v) if *v > 0 => v.to_string(),
                    Dim::Symbol(s) => s.clone(),
                    _ => "?".into(),
                })
                .collect();
            format!("[{}]", d.join(", "))
        },
    );
    format!("{ty} {dims}")
}

/// A declared dimension's fixed size (a positive value; `-1`, `0`, symbols and unknowns are
/// free).
pub(crate) fn fixed(d: &hone_graph::Dim) -> Option<usize> {
    match d {
        hone_graph::Dim::Value(v) if *v > 0 => usize::try_from(*v).ok(),
        _ => None,
    }
}

/// Whether a declared dimension admits `n`.
pub(crate) fn admits(d: &hone_graph::Dim, n: usize) -> bool {
    fixed(d).is_none_or(|f| f == n)
}

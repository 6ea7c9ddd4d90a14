//! A folder of PNG and JPEG images: class sub-folders (sorted names → classes `0..n`), or the
//! images directly in the folder (no labels). Decoded once, at open, to RGB; resized bilinearly
//! and normalised when batches are made, to the size the spec or the model gives.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use candle_core::{Device, Tensor};
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use super::{
    Channels, DataSpec, Layout, MAX_DATA_BYTES, MAX_IMAGES, admits, declared, fixed, has_ext,
    user_split,
};
use crate::data::Split;
use hone_graph::{DataType, ValueInfo};

/// File extensions read as images.
const IMAGE_EXTS: [&str; 3] = ["png", "jpg", "jpeg"];

/// One image's pixels, HWC, RGB.
#[derive(Debug, Clone)]
enum Pixels {
    /// As decoded, `0..=255`.
    Decoded { height: usize, width: usize, rgb: Vec<u8> },
    /// Already resized to the spec's size (bilinear, still `0..=255`).
    Resized { height: usize, width: usize, rgb: Vec<f32> },
}

/// A folder of images opened from a [`DataSpec`] (see [`crate::eval::EvalData::open`]).
#[derive(Debug, Clone)]
pub struct UserImages {
    name: String,
    spec: DataSpec,
    files: Vec<PathBuf>,
    pixels: Vec<Pixels>,
    labels: Option<Vec<u32>>,
    classes: Vec<String>,
    split: Split,
}

/// How a folder of images feeds one model input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageFeed {
    pub(crate) input: String,
    pub(crate) nhwc: bool,
    pub(crate) height: usize,
    pub(crate) width: usize,
}

impl UserImages {
    /// Lists, decodes and (when the spec gives a size) resizes every image under `dir`.
    pub(crate) fn open(dir: &Path, spec: &DataSpec) -> anyhow::Result<UserImages> {
        spec.check_image_options()?;
        let list = |d: &Path| -> anyhow::Result<Vec<PathBuf>> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(d)
                .with_context(|| format!("listing {}", d.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
                })
                .collect();
            v.sort();
            Ok(v)
        };
        let entries = list(dir)?;
        let loose: Vec<PathBuf> =
            entries.iter().filter(|p| p.is_file() && has_ext(p, &IMAGE_EXTS)).cloned().collect();
        let folders: Vec<PathBuf> = entries.iter().filter(|p| p.is_dir()).cloned().collect();
        let (files, labels, classes) = match (loose.is_empty(), folders.is_empty()) {
            (true, true) => {
                bail!("{}: no images (.png, .jpg, .jpeg) and no class folders", dir.display())
            }
            (false, false) => bail!(
                "{}: holds both images ({}) and class folders ({}): put every image in a class \
                 folder (labelled) or none (unlabelled)",
                dir.display(),
                loose.len(),
                folders.len()
            ),
            (false, true) => (loose, None, Vec::new()),
            (true, false) => {
                let mut files = Vec::new();
                let mut labels = Vec::new();
                let mut classes = Vec::new();
                for (class, folder) in folders.iter().enumerate() {
                    let images: Vec<PathBuf> = list(folder)?
                        .into_iter()
                        .filter(|p| p.is_file() && has_ext(p, &IMAGE_EXTS))
                        .collect();
                    if images.is_empty() {
                        bail!(
                            "class folder {} has no images (.png, .jpg, .jpeg)",
                            folder.display()
                        );
                    }
                    labels.extend(std::iter::repeat_n(class as u32, images.len()));
                    files.extend(images);
                    classes.push(folder.file_name().unwrap_or_default().to_string_lossy().into());
                }
                (files, Some(labels), classes)
            }
        };
        if files.len() > MAX_IMAGES {
            bail!(
                "{}: {} images, more than the {MAX_IMAGES} Hone decodes at once; use a subset",
                dir.display(),
                files.len()
            );
        }
        let mut budget = MAX_DATA_BYTES;
        let mut pixels = Vec::with_capacity(files.len());
        for f in &files {
            let (height, width, rgb) = decode(f, budget)?;
            let p = match spec.image_size {
                Some([h, w]) => {
                    let rgb = resize_bilinear(&rgb, height, width, h, w);
                    Pixels::Resized { height: h, width: w, rgb }
                }
                None => Pixels::Decoded { height, width, rgb },
            };
            let bytes = match &p {
                Pixels::Decoded { rgb, .. } => rgb.len(),
                Pixels::Resized { rgb, .. } => rgb.len() * 4,
            };
            budget = budget.checked_sub(bytes).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: the images need more than {} MiB of pixels; give a smaller size or \
                     fewer images",
                    dir.display(),
                    MAX_DATA_BYTES >> 20
                )
            })?;
            pixels.push(p);
        }
        Ok(UserImages {
            name: dir.display().to_string(),
            spec: spec.clone(),
            split: user_split(files.len()),
            files,
            pixels,
            labels,
            classes,
        })
    }

    /// The folder, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spec it was opened with.
    pub fn spec(&self) -> &DataSpec {
        &self.spec
    }

    /// The image files, in example order (class by class, then by name).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Class of each example, when the folder has class folders.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// The class folders' names, in class order (empty when unlabelled).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there are no images (never: an empty folder is an error at open).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The fixed split.
    pub fn split(&self) -> &Split {
        &self.split
    }

    /// What one example gives, for error messages.
    pub(crate) fn gives(&self) -> String {
        format!(
            "one image input f32 ({} channel{}), {}",
            self.channels().count(),
            if self.channels().count() == 1 { "" } else { "s" },
            self.spec.image_steps()
        )
    }

    fn channels(&self) -> Channels {
        self.spec.channels.unwrap_or(Channels::Rgb)
    }

    /// How these images feed `inputs` (the model's true inputs), or why they cannot.
    pub(crate) fn feed(&self, inputs: &[ValueInfo]) -> anyhow::Result<ImageFeed> {
        let [v] = inputs else {
            let list: Vec<String> =
                inputs.iter().map(|v| format!("`{}` {}", v.name, declared(v))).collect();
            bail!(
                "images feed exactly one input; the model has {}: {}",
                inputs.len(),
                if list.is_empty() { "none".into() } else { list.join(", ") }
            );
        };
        let name = &v.name;
        if !matches!(v.data_type, None | Some(DataType::F32)) {
            bail!("input `{name}` expects {}; images give f32", declared(v));
        }
        let c = self.channels().count();
        let Some(d) = v.dims.as_ref() else {
            // Rank undeclared: the spec must say everything.
            let Some([height, width]) = self.spec.image_size else {
                bail!("input `{name}` declares no shape: give an image size (size=HxW) for it");
            };
            let nhwc = self.spec.layout == Some(Layout::Nhwc);
            return Ok(ImageFeed { input: name.clone(), nhwc, height, width });
        };
        if d.len() != 4 {
            bail!("input `{name}` expects {}; images give a rank-4 batch", declared(v));
        }
        let nhwc = match self.spec.layout {
            Some(l) => l == Layout::Nhwc,
            // A fixed axis of `c` says where the channels are; NCHW when both or neither.
            None => match (fixed(&d[1]), fixed(&d[3])) {
                (Some(a), Some(b)) => a != c && b == c,
                (None, Some(b)) => b == c,
                _ => false,
            },
        };
        let (ch, hh, ww) = if nhwc { (&d[3], &d[1], &d[2]) } else { (&d[1], &d[2], &d[3]) };
        let (height, width) = match self.spec.image_size {
            Some([h, w]) => (h, w),
            None => match (fixed(hh), fixed(ww)) {
                (Some(h), Some(w)) => (h, w),
                _ => bail!(
                    "input `{name}` expects {}: its height and width are not fixed, so give an \
                     image size (size=HxW)",
                    declared(v)
                ),
            },
        };
        if !(admits(ch, c) && admits(hh, height) && admits(ww, width)) {
            let (shape, layout) = if nhwc {
                (format!("[N, {height}, {width}, {c}]"), "NHWC")
            } else {
                (format!("[N, {c}, {height}, {width}]"), "NCHW")
            };
            let from = if self.spec.image_size.is_some() { "the spec" } else { "the model" };
            bail!(
                "input `{name}` expects {}; the images give f32 {shape} ({layout}, {c} \
                 channel{}, size {height}×{width} from {from})",
                declared(v),
                if c == 1 { "" } else { "s" }
            );
        }
        Ok(ImageFeed { input: name.clone(), nhwc, height, width })
    }

    /// The input tensor of `idx` for `feed`.
    pub(crate) fn gather(&self, feed: &ImageFeed, idx: &[usize]) -> anyhow::Result<Tensor> {
        let (h, w) = (feed.height, feed.width);
        let channels = self.channels();
        let c = channels.count();
        let scale = self.spec.scale.unwrap_or(1.0 / 255.0);
        let mean = self.spec.mean.unwrap_or([0.0; 3]);
        let std = self.spec.std.unwrap_or([1.0; 3]);
        let mut out = Vec::with_capacity(idx.len() * h * w * c);
        for &i in idx {
            let p = self
                .pixels
                .get(i)
                .ok_or_else(|| anyhow::anyhow!("example {i} is out of range ({})", self.len()))?;
            let resized;
            let rgb: &[f32] = match p {
                Pixels::Resized { height, width, rgb } if (*height, *width) == (h, w) => rgb,
                Pixels::Resized { height, width, rgb } => {
                    resized = resize_bilinear(rgb, *height, *width, h, w);
                    &resized
                }
                Pixels::Decoded { height, width, rgb } => {
                    resized = resize_bilinear(rgb, *height, *width, h, w);
                    &resized
                }
            };
            for px in rgb.chunks_exact(3) {
                match channels {
                    Channels::Rgb => {
                        for ch in 0..3 {
                            out.push((px[ch] * scale - mean[ch]) / std[ch]);
                        }
                    }
                    Channels::Bgr => {
                        for ch in 0..3 {
                            out.push((px[2 - ch] * scale - mean[ch]) / std[ch]);
                        }
                    }
                    Channels::Gray => {
                        let y = 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2];
                        out.push((y * scale - mean[0]) / std[0]);
                    }
                }
            }
        }
        let x = Tensor::from_vec(out, (idx.len(), h, w, c), &Device::Cpu)?;
        Ok(if feed.nhwc { x } else { x.permute((0, 3, 1, 2))?.contiguous()? })
    }
}

/// A pixel value that [`resize_bilinear`] reads.
pub(crate) trait Sample: Copy {
    fn value(self) -> f32;
}

impl Sample for u8 {
    fn value(self) -> f32 {
        f32::from(self)
    }
}

impl Sample for f32 {
    fn value(self) -> f32 {
        self
    }
}

/// Bilinear resize of an RGB image (HWC, 3 channels) to `out_h × out_w`, half-pixel centres,
/// no antialiasing (the resize of [`crate::eval::photos`]); values are kept as they are.
pub(crate) fn resize_bilinear<T: Sample>(
    rgb: &[T],
    height: usize,
    width: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    let taps = |o: usize, out: usize, size: usize| -> (usize, usize, f32) {
        let scale = size as f64 / out as f64;
        let s = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (size - 1) as f64);
        let lo = s.floor() as usize;
        let hi = (lo + 1).min(size - 1);
        (lo, hi, (s - lo as f64) as f32)
    };
    let cols: Vec<(usize, usize, f32)> = (0..out_w).map(|o| taps(o, out_w, width)).collect();
    let px = |y: usize, x: usize, ch: usize| rgb[(y * width + x) * 3 + ch].value();
    let mut out = Vec::with_capacity(out_h * out_w * 3);
    for oy in 0..out_h {
        let (y0, y1, wy) = taps(oy, out_h, height);
        for &(x0, x1, wx) in &cols {
            for ch in 0..3 {
                let top = px(y0, x0, ch) * (1.0 - wx) + px(y0, x1, ch) * wx;
                let bottom = px(y1, x0, ch) * (1.0 - wx) + px(y1, x1, ch) * wx;
                out.push(top * (1.0 - wy) + bottom * wy);
            }
        }
    }
    out
}

/// Decodes a PNG or JPEG file to RGB (`height, width, pixels`), refusing images whose pixels
/// need more than `budget` bytes before decoding them.
fn decode(path: &Path, budget: usize) -> anyhow::Result<(usize, usize, Vec<u8>)> {
    let file = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("reading {file}"))?;
    let too_big = |h: usize, w: usize| {
        anyhow::anyhow!(
            "{file}: a {w}×{h} image is more than the {} MiB of pixels left to decode",
            budget >> 20
        )
    };
    if bytes.starts_with(b"\x89PNG") {
        let mut decoder =
            png::Decoder::new_with_limits(Cursor::new(&bytes), png::Limits { bytes: budget });
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader =
            decoder.read_info().map_err(|e| anyhow::anyhow!("{file}: not a readable PNG: {e}"))?;
        let (w, h) = (reader.info().width as usize, reader.info().height as usize);
        let size = reader.output_buffer_size().ok_or_else(|| too_big(h, w))?;
        if size > budget {
            return Err(too_big(h, w));
        }
        let mut buf = vec![0; size];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| anyhow::anyhow!("{file}: bad PNG data: {e}"))?;
        let channels = match info.color_type {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Indexed => bail!("{file}: indexed PNG was not expanded"),
        };
        let n = h * w;
        let data = &buf[..info.line_size * h];
        let mut rgb = Vec::with_capacity(n * 3);
        for row in data.chunks_exact(info.line_size) {
            for px in row[..w * channels].chunks_exact(channels) {
                match channels {
                    1 | 2 => rgb.extend([px[0]; 3]),
                    _ => rgb.extend(&px[..3]),
                }
            }
        }
        return Ok((h, w, rgb));
    }
    if bytes.starts_with(&[0xff, 0xd8]) {
        let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut decoder = JpegDecoder::new_with_options(Cursor::new(&bytes), options);
        decoder
            .decode_headers()
            .map_err(|e| anyhow::anyhow!("{file}: not a readable JPEG: {e:?}"))?;
        let info = decoder.info().ok_or_else(|| anyhow::anyhow!("{file}: no JPEG header"))?;
        let (w, h) = (usize::from(info.width), usize::from(info.height));
        if w * h * 3 > budget {
            return Err(too_big(h, w));
        }
        let rgb = decoder.decode().map_err(|e| anyhow::anyhow!("{file}: bad JPEG data: {e:?}"))?;
        if rgb.len() != w * h * 3 {
            bail!("{file}: decoded {} bytes for a {w}×{h} RGB image", rgb.len());
        }
        return Ok((h, w, rgb));
    }
    bail!("{file}: neither PNG nor JPEG (by its first bytes)")
}

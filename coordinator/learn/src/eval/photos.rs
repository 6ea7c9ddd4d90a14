//! Real photographs for image models without labels: the two photos of the scikit-learn wheel
//! (`china.jpg`, `flower.jpg`, 640×427 each), decoded in Rust and cut into a fixed set of square
//! crops, each resized to 224×224 the way open_nsfw (Caffe) expects its input.
//!
//! # The crops
//! Every crop is a square of side `round(s × 427)` (427 = the photos' short side) placed on an
//! even grid over the photo (offsets `round(k × free / (n − 1))` along an axis with `n`
//! positions, the middle when `n` = 1), resized bilinearly (half-pixel centres, no antialiasing)
//! to 224×224, and used twice: as is and flipped left-right. Per photo:
//!
//! | part | scales `s` and grids (rows × columns) | base crops | with flips |
//! |---|---|---|---|
//! | test | 1.0 (1×4), 0.75 (2×3), 0.5 (2×3): the even base crops | 8 | 16 |
//! | validation | the same grids: the odd base crops | 8 | 16 |
//! | train | 0.875 (1×4), 0.625 (2×2), a disjoint set | 8 | 16 |
//!
//! Base crops are numbered in the order of the table (scale, then row, then column), so the test
//! and validation crops alternate like a checkerboard over every scale. Two photos give **32 test,
//! 32 validation and 32 train crops (96 images)**; the examples are ordered photo by photo
//! (china first), base crop by base crop, plain before flipped.
//!
//! # Pixels
//! Crops are BGR in `0..=255` minus the Caffe means `[104, 117, 123]` (B, G, R), HWC
//! ([`PhotoSet::push_crop`]); [`crate::eval::EvalData`] transposes them when a model declares
//! NCHW.

use std::io::Cursor;
use std::path::Path;

use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use crate::data::{DataError, Part, Split};

/// Side of every crop fed to a model.
pub const PHOTO_SIDE: usize = 224;

/// The Caffe ImageNet means subtracted from each channel, in BGR order.
pub const CAFFE_BGR_MEAN: [f32; 3] = [104.0, 117.0, 123.0];

/// The photos, by asset name, in example order.
pub const PHOTO_ASSETS: [&str; 2] = ["photo-china", "photo-flower"];

/// A decoded RGB photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Photo {
    /// Asset name (for example `photo-china`).
    pub name: String,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// RGB, row-major, `height × width × 3`.
    pub rgb: Vec<u8>,
}

/// One crop of one photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Crop {
    /// Index of the photo in [`PhotoSet::photos`].
    pub photo: usize,
    /// Left edge, pixels.
    pub x: usize,
    /// Top edge, pixels.
    pub y: usize,
    /// Side of the square, pixels.
    pub side: usize,
    /// Flipped left-right.
    pub flip: bool,
    /// The part it belongs to.
    pub part: Part,
}

/// A grid of square crops at one scale.
struct Grid {
    scale: f64,
    rows: usize,
    cols: usize,
}

const EVAL_GRIDS: [Grid; 3] = [
    Grid { scale: 1.0, rows: 1, cols: 4 },
    Grid { scale: 0.75, rows: 2, cols: 3 },
    Grid { scale: 0.5, rows: 2, cols: 3 },
];

const TRAIN_GRIDS: [Grid; 2] =
    [Grid { scale: 0.875, rows: 1, cols: 4 }, Grid { scale: 0.625, rows: 2, cols: 2 }];

/// The photos and their crops, with the fixed split (see the [module](self) documentation).
#[derive(Debug, Clone)]
pub struct PhotoSet {
    /// The decoded photos.
    pub photos: Vec<Photo>,
    /// Every crop, in example order.
    pub crops: Vec<Crop>,
    /// Crop indices by part.
    pub split: Split,
}

/// Decodes a JPEG file to RGB. `file` names it in errors.
pub fn decode_jpeg(bytes: &[u8], file: &str) -> Result<Photo, DataError> {
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(Cursor::new(bytes), options);
    let rgb = decoder
        .decode()
        .map_err(|e| DataError::corrupt(file, format!("not a decodable JPEG: {e:?}")))?;
    let info = decoder.info().ok_or_else(|| DataError::corrupt(file, "no JPEG header"))?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    if rgb.len() != width * height * 3 {
        return Err(DataError::Length {
            file: file.to_owned(),
            what: format!("decoded RGB pixels of {width}x{height}"),
            expected: width * height * 3,
            actual: rgb.len(),
        });
    }
    Ok(Photo { name: file.to_owned(), width, height, rgb })
}

/// `n` evenly spaced offsets in `0..=free` (the middle when `n` is 1).
fn offsets(free: usize, n: usize) -> Vec<usize> {
    if n <= 1 {
        return vec![free / 2];
    }
    (0..n).map(|k| ((free * k) as f64 / (n - 1) as f64).round() as usize).collect()
}

/// The crops of one photo at the given grids; `part_of(base index)` says where each goes.
fn grid_crops(
    photo: usize,
    (width, height): (usize, usize),
    grids: &[Grid],
    part_of: impl Fn(usize) -> Part,
    out: &mut Vec<Crop>,
) {
    let short = width.min(height);
    let mut base = 0;
    for g in grids {
        let side = ((short as f64 * g.scale).round() as usize).clamp(1, short);
        for y in offsets(height - side, g.rows) {
            for x in offsets(width - side, g.cols) {
                let part = part_of(base);
                for flip in [false, true] {
                    out.push(Crop { photo, x, y, side, flip, part });
                }
                base += 1;
            }
        }
    }
}

impl PhotoSet {
    /// Builds the crop set over decoded photos (see the [module](self) documentation).
    pub fn new(photos: Vec<Photo>) -> PhotoSet {
        let mut crops = Vec::new();
        for (i, p) in photos.iter().enumerate() {
            let part =
                |base: usize| if base.is_multiple_of(2) { Part::Test } else { Part::Validation };
            grid_crops(i, (p.width, p.height), &EVAL_GRIDS, part, &mut crops);
        }
        for (i, p) in photos.iter().enumerate() {
            grid_crops(i, (p.width, p.height), &TRAIN_GRIDS, |_| Part::Train, &mut crops);
        }
        let of = |part: Part| -> Vec<usize> {
            crops.iter().enumerate().filter(|(_, c)| c.part == part).map(|(i, _)| i).collect()
        };
        let split = Split {
            train: of(Part::Train),
            validation: of(Part::Validation),
            test: of(Part::Test),
        };
        PhotoSet { photos, crops, split }
    }

    /// Number of crops (all parts).
    pub fn len(&self) -> usize {
        self.crops.len()
    }

    /// Whether there are no crops.
    pub fn is_empty(&self) -> bool {
        self.crops.is_empty()
    }

    /// Appends crop `i` to `out`: 224×224×3, HWC, BGR, Caffe means subtracted.
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn push_crop(&self, i: usize, out: &mut Vec<f32>) {
        let c = self.crops[i];
        let p = &self.photos[c.photo];
        let scale = c.side as f64 / PHOTO_SIDE as f64;
        // Source coordinate of an output pixel centre, clamped to the crop, then the two
        // neighbours and the weight of the second.
        let taps = |o: usize| -> (usize, usize, f32) {
            let s = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (c.side - 1) as f64);
            let lo = s.floor() as usize;
            let hi = (lo + 1).min(c.side - 1);
            (lo, hi, (s - lo as f64) as f32)
        };
        let cols: Vec<(usize, usize, f32)> =
            (0..PHOTO_SIDE).map(|ox| taps(if c.flip { PHOTO_SIDE - 1 - ox } else { ox })).collect();
        let px = |y: usize, x: usize, ch: usize| -> f32 {
            f32::from(p.rgb[((c.y + y) * p.width + c.x + x) * 3 + ch])
        };
        out.reserve(PHOTO_SIDE * PHOTO_SIDE * 3);
        for oy in 0..PHOTO_SIDE {
            let (y0, y1, wy) = taps(oy);
            for &(x0, x1, wx) in &cols {
                // BGR: channel 0 of the output is the photo's blue (RGB index 2).
                for (bgr, mean) in CAFFE_BGR_MEAN.iter().enumerate() {
                    let ch = 2 - bgr;
                    let top = px(y0, x0, ch) * (1.0 - wx) + px(y0, x1, ch) * wx;
                    let bottom = px(y1, x0, ch) * (1.0 - wx) + px(y1, x1, ch) * wx;
                    out.push(top * (1.0 - wy) + bottom * wy - mean);
                }
            }
        }
    }
}

/// The photos from the default asset cache.
pub fn photos() -> Result<PhotoSet, DataError> {
    photos_in(&hone_assets::cache_dir())
}

/// [`photos`] from the asset cache `cache`.
pub fn photos_in(cache: &Path) -> Result<PhotoSet, DataError> {
    let mut decoded = Vec::new();
    for name in PHOTO_ASSETS {
        let (file, bytes) = crate::data::read_asset(cache, name)?;
        let mut photo = decode_jpeg(&bytes, &file)?;
        photo.name = name.to_owned();
        decoded.push(photo);
    }
    Ok(PhotoSet::new(decoded))
}

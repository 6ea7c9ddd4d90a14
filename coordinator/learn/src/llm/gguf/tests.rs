use super::*;
use crate::llm::testing::{GgufBuilder, f16_bits, string_bytes};

/// A small file with metadata of every value type and one tensor of each supported type.
fn sample() -> GgufBuilder {
    let mut b = GgufBuilder::new();
    b.kv_raw("u8", 0, vec![200])
        .kv_raw("i8", 1, vec![0xfe])
        .kv_raw("u16", 2, 60000u16.to_le_bytes().to_vec())
        .kv_raw("i16", 3, (-300i16).to_le_bytes().to_vec())
        .kv_u32("u32", 4_000_000_000)
        .kv_raw("i32", 5, (-7i32).to_le_bytes().to_vec())
        .kv_f32("f32", 1.5)
        .kv_bool("bool", true)
        .kv_str("str", "héllo")
        .kv_raw("u64", 10, u64::MAX.to_le_bytes().to_vec())
        .kv_raw("i64", 11, (-9i64).to_le_bytes().to_vec())
        .kv_raw("f64", 12, 0.25f64.to_le_bytes().to_vec())
        .kv_strings("strings", &["a", "", "ß"])
        .kv_i32s("ints", &[3, -1]);
    // A nested array: [[1u8, 2u8], []].
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend(2u64.to_le_bytes());
    nested.extend(0u32.to_le_bytes());
    nested.extend(2u64.to_le_bytes());
    nested.extend([1u8, 2]);
    nested.extend(0u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    b.kv_raw("nested", 9, nested);

    b.tensor_f32("f32", &[3, 2], &[1.0, -2.0, 3.5, 0.0, 1e-3, -7.25]);
    let f16: Vec<u8> =
        [1.0f32, -0.5, 65504.0, 0.0].iter().flat_map(|&v| f16_bits(v).to_le_bytes()).collect();
    // A subnormal f16 (the smallest): 2^-24.
    let mut f16 = f16;
    f16.extend(1u16.to_le_bytes());
    f16.extend(0x8001u16.to_le_bytes());
    b.tensor("f16", &[6], 1, f16);
    b.tensor("q4_1", &[32, 2], 3, q4_1_blocks());
    b.tensor("q8_0", &[32], 8, q8_0_block());
    b
}

/// Two Q4_1 blocks: d = 0.5, m = -1 with quants 0..16 in the low nibbles and 15..0 in the high
/// ones; then d = 2, m = 3 with every quant 1.
fn q4_1_blocks() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(f16_bits(0.5).to_le_bytes());
    v.extend(f16_bits(-1.0).to_le_bytes());
    v.extend((0u8..16).map(|i| i | ((15 - i) << 4)));
    v.extend(f16_bits(2.0).to_le_bytes());
    v.extend(f16_bits(3.0).to_le_bytes());
    v.extend([0x11u8; 16]);
    v
}

/// One Q8_0 block: d = 0.25, quants -16..16.
fn q8_0_block() -> Vec<u8> {
    let mut v = f16_bits(0.25).to_le_bytes().to_vec();
    v.extend((-16i8..16).map(|q| q as u8));
    v
}

#[test]
fn metadata_of_every_type_is_read() {
    let g = Gguf::parse(sample().build()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    let m = g.metadata();
    assert_eq!(m["u8"], Value::U8(200));
    assert_eq!(m["i8"], Value::I8(-2));
    assert_eq!(m["u16"], Value::U16(60000));
    assert_eq!(m["i16"], Value::I16(-300));
    assert_eq!(g.get_u64("u32").unwrap(), 4_000_000_000);
    assert_eq!(m["i32"], Value::I32(-7));
    assert_eq!(g.get_f64("f32").unwrap(), 1.5);
    assert_eq!(m["bool"].as_bool(), Some(true));
    assert_eq!(g.get_str("str").unwrap(), "héllo");
    assert_eq!(g.get_u64("u64").unwrap(), u64::MAX);
    assert_eq!(m["i64"], Value::I64(-9));
    assert_eq!(g.get_f64("f64").unwrap(), 0.25);
    assert_eq!(g.get_strings("strings").unwrap(), ["a", "", "ß"]);
    assert_eq!(m["ints"].as_array().unwrap().as_i64s(), Some(vec![3, -1]));
    assert_eq!(
        m["nested"],
        Value::Array(Array::Array(vec![Array::U8(vec![1, 2]), Array::U8(vec![])]))
    );
    let e = g.get_u64("str").unwrap_err().to_string();
    assert!(e.contains("`str`") && e.contains("integer"), "{e}");
    let e = g.get_str("absent").unwrap_err().to_string();
    assert!(e.contains("absent"), "{e}");
}

#[test]
fn tensors_dequantise_to_the_values_worked_out_by_hand() {
    let g = Gguf::parse(sample().build()).unwrap();
    let (shape, v) = g.tensor_f32("f32").unwrap();
    assert_eq!(shape, [2, 3]);
    assert_eq!(v, [1.0, -2.0, 3.5, 0.0, 1e-3, -7.25]);

    let (shape, v) = g.tensor_f32("f16").unwrap();
    assert_eq!(shape, [6]);
    assert_eq!(v, [1.0, -0.5, 65504.0, 0.0, 2f32.powi(-24), -(2f32.powi(-24))]);

    let (shape, v) = g.tensor_f32("q4_1").unwrap();
    assert_eq!(shape, [2, 32]);
    // Block 1: element j < 16 is j·0.5 − 1; element 16 + j is (15 − j)·0.5 − 1.
    for j in 0..16 {
        assert_eq!(v[j], j as f32 * 0.5 - 1.0, "element {j}");
        assert_eq!(v[16 + j], (15 - j) as f32 * 0.5 - 1.0, "element {}", 16 + j);
    }
    // Block 2: every quant is 1, so 1·2 + 3.
    assert!(v[32..].iter().all(|&x| x == 5.0));

    let (shape, v) = g.tensor_f32("q8_0").unwrap();
    assert_eq!(shape, [32]);
    let want: Vec<f32> = (-16..16).map(|q| q as f32 * 0.25).collect();
    assert_eq!(v, want);

    let info = g.tensor("q4_1").unwrap();
    assert_eq!((info.ty, info.bytes, info.elements()), (GgmlType::Q4_1, Some(40), 64));
    assert!(matches!(g.tensor_f32("nope"), Err(GgufError::MissingTensor(_))));
}

#[test]
fn f16_conversion_covers_normals_subnormals_and_specials() {
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x7bff), 65504.0);
    assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
    assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
    assert!(f16_to_f32(0x7e00).is_nan());
    assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    let bytes = sample().build();
    for len in 0..bytes.len() {
        let Err(e) = Gguf::parse(bytes[..len].to_vec()) else {
            // Only the padding after the last tensor's data may be cut.
            let g = Gguf::parse(bytes[..len].to_vec()).unwrap();
            assert!(g.tensors().iter().all(|t| g.tensor_f32(&t.name).is_ok()));
            continue;
        };
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                GgufError::Truncated { .. }
                    | GgufError::BadMagic { .. }
                    | GgufError::DataOutOfBounds { .. }
            ),
            "{len}: {msg}"
        );
    }
    let e = Gguf::parse(bytes[..30].to_vec()).unwrap_err().to_string();
    assert!(e.starts_with("truncated file") && e.contains("at byte"), "{e}");
    let e = Gguf::parse(bytes[..bytes.len() - 5].to_vec()).unwrap_err().to_string();
    assert!(e.contains("tensor `q8_0`") && e.contains("beyond"), "{e}");
}

#[test]
fn corrupt_headers_and_impossible_counts_are_named() {
    let good = sample().build();
    let err = |bytes: Vec<u8>| Gguf::parse(bytes).unwrap_err().to_string();

    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGML");
    assert!(err(b).contains("not a GGUF file"));
    assert!(err(b"GG".to_vec()).contains("not a GGUF file"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(err(b).contains("version 1 is not supported"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(err(b).contains("big-endian"));

    // A metadata count far beyond the file: it fails at the first missing entry, having
    // allocated nothing in advance.
    let mut b = good.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = err(b);
    assert!(e.contains("truncated") || e.contains("corrupt"), "{e}");
    // A tensor count far beyond the file.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let e = err(b);
    assert!(e.contains("truncated") || e.contains("corrupt"), "{e}");

    // A key whose length is huge.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let e = err(b);
    assert!(e.contains("metadata key 0") && e.contains("4611686018427387904"), "{e}");

    // Arrays whose counts exceed the file, including one whose byte size overflows.
    for count in [1u64 << 40, u64::MAX / 3] {
        let mut g = GgufBuilder::new();
        let mut p = 6u32.to_le_bytes().to_vec();
        p.extend(count.to_le_bytes());
        g.kv_raw("floats", 9, p);
        let e = err(g.build());
        assert!(e.contains("`floats`") && e.contains("truncated"), "{e}");
        let mut g = GgufBuilder::new();
        let mut p = 8u32.to_le_bytes().to_vec();
        p.extend(count.to_le_bytes());
        g.kv_raw("strings", 9, p);
        assert!(err(g.build()).contains("truncated"));
    }

    let mut g = GgufBuilder::new();
    g.kv_raw("weird", 13, vec![]);
    assert!(err(g.build()).contains("value type 13"));
    let mut g = GgufBuilder::new();
    g.kv_raw("flag", 7, vec![2]);
    assert!(err(g.build()).contains("boolean byte 2"));
    let mut g = GgufBuilder::new();
    g.kv_raw("bad", 8, {
        let mut p = 2u64.to_le_bytes().to_vec();
        p.extend([0xff, 0xfe]);
        p
    });
    assert!(err(g.build()).contains("not UTF-8"));
    let mut g = GgufBuilder::new();
    g.kv_u32("k", 1).kv_u32("k", 2);
    assert!(err(g.build()).contains("appears twice"));
    let mut g = GgufBuilder::new();
    g.kv_u32("general.alignment", 24);
    assert!(err(g.build()).contains("power of two"));
    // Arrays nested too deep.
    let mut p = Vec::new();
    for _ in 0..6 {
        p.extend(9u32.to_le_bytes());
        p.extend(1u64.to_le_bytes());
    }
    p.extend(0u32.to_le_bytes());
    p.extend(0u64.to_le_bytes());
    let mut g = GgufBuilder::new();
    g.kv_raw("deep", 9, p);
    assert!(err(g.build()).contains("deeper"));
    let _ = string_bytes;
}

#[test]
fn impossible_tensors_are_refused() {
    let err = |g: &GgufBuilder| Gguf::parse(g.build()).unwrap_err().to_string();
    let mut g = GgufBuilder::new();
    g.tensor_f32("t", &[1, 1, 1, 1, 1], &[1.0]);
    assert!(err(&g).contains("5 dimensions"));
    let mut g = GgufBuilder::new();
    g.tensor_f32("t", &[1 << 32, 1 << 32], &[1.0]);
    assert!(err(&g).contains("overflow"));
    let mut g = GgufBuilder::new();
    g.tensor_f32("t", &[1 << 40], &[1.0]);
    assert!(err(&g).contains("beyond"), "{}", err(&g));
    let mut g = GgufBuilder::new();
    g.tensor("t", &[30], 3, vec![0; 20]);
    assert!(err(&g).contains("not a multiple of its block size 32"));
    let mut g = GgufBuilder::new();
    g.tensor_f32("t", &[1], &[1.0]).tensor_f32("t", &[1], &[2.0]);
    assert!(err(&g).contains("appears twice"));

    // A misaligned or far-away offset, patched into the tensor info.
    let mut g = GgufBuilder::new();
    g.tensor_f32("t", &[2], &[1.0, 2.0]);
    let bytes = g.build();
    let at = 24 + 8 + 1 + 4 + 8 + 4; // header, name, rank, one dim, type
    let mut b = bytes.clone();
    b[at..at + 8].copy_from_slice(&4u64.to_le_bytes());
    assert!(Gguf::parse(b).unwrap_err().to_string().contains("alignment"));
    let mut b = bytes.clone();
    b[at..at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(matches!(Gguf::parse(b), Err(GgufError::DataOutOfBounds { .. })));

    // A type this reader does not dequantise is described, then refused by name.
    let mut g = GgufBuilder::new();
    g.tensor("q4_0", &[32], 2, vec![0; 18]);
    let parsed = Gguf::parse(g.build()).unwrap();
    let e = parsed.tensor_f32("q4_0").unwrap_err().to_string();
    assert!(e.contains("`q4_0`") && e.contains("Q4_0") && e.contains("does not dequantise"), "{e}");
}

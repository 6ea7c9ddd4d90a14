//! Test helpers: a GGUF writer, so tests build their own small files.

/// A GGUF file under construction (version 3, little-endian).
#[derive(Debug, Clone)]
pub(crate) struct GgufBuilder {
    pub(crate) version: u32,
    pub(crate) alignment: u64,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

pub(crate) fn string_bytes(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

/// IEEE binary16 bits of an f32 that f16 represents exactly (tests use such values).
pub(crate) fn f16_bits(x: f32) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let b = x.to_bits();
    let sign = ((b >> 31) as u16) << 15;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&exp), "{x} is not a normal f16");
    let man = ((b >> 13) & 0x3ff) as u16;
    assert_eq!(b & 0x1fff, 0, "{x} is not exact in f16");
    sign | ((exp as u16) << 10) | man
}

impl GgufBuilder {
    pub(crate) fn new() -> Self {
        GgufBuilder { version: 3, alignment: 32, kv: Vec::new(), tensors: Vec::new() }
    }

    pub(crate) fn kv_raw(&mut self, key: &str, ty: u32, payload: Vec<u8>) -> &mut Self {
        self.kv.push((key.into(), ty, payload));
        self
    }

    pub(crate) fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv_raw(key, 4, v.to_le_bytes().to_vec())
    }

    pub(crate) fn kv_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv_raw(key, 6, v.to_le_bytes().to_vec())
    }

    pub(crate) fn kv_bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.kv_raw(key, 7, vec![u8::from(v)])
    }

    pub(crate) fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.kv_raw(key, 8, string_bytes(v))
    }

    pub(crate) fn kv_strings(&mut self, key: &str, v: &[&str]) -> &mut Self {
        let mut p = 8u32.to_le_bytes().to_vec();
        p.extend((v.len() as u64).to_le_bytes());
        for s in v {
            p.extend(string_bytes(s));
        }
        self.kv_raw(key, 9, p)
    }

    pub(crate) fn kv_i32s(&mut self, key: &str, v: &[i32]) -> &mut Self {
        let mut p = 5u32.to_le_bytes().to_vec();
        p.extend((v.len() as u64).to_le_bytes());
        for x in v {
            p.extend(x.to_le_bytes());
        }
        self.kv_raw(key, 9, p)
    }

    /// A tensor with `dims` in ggml order (fastest first) and raw data.
    pub(crate) fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
        self
    }

    pub(crate) fn tensor_f32(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
        self.tensor(name, dims, 0, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, ty, p) in &self.kv {
            out.extend(string_bytes(k));
            out.extend(ty.to_le_bytes());
            out.extend(p);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            out.extend(string_bytes(name));
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = align(offset + data.len() as u64);
        }
        let start = align(out.len() as u64);
        out.resize(start as usize, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize((start + off) as usize, 0);
            out.extend(data);
        }
        out
    }
}

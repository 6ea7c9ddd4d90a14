//! The `hone-bundle 1` format: several files stored as one asset, so that one sha256 pins a
//! whole folder (`scripts/fetch-assets.sh` writes it for a pattern such as `package/data/*.txt`).
//!
//! Layout: the line `hone-bundle 1`, then for each file, in byte order of its name, a line
//! `NAME<TAB>BYTES` followed by exactly `BYTES` bytes of content (no separator after them).

use super::DataError;

const HEADER: &[u8] = b"hone-bundle 1\n";

/// Splits a bundle into `(name, contents)` pairs, in stored order. `file` names the bundle in
/// errors: a wrong header, a malformed entry line, or contents shorter than declared.
pub fn parse_bundle<'a>(
    bytes: &'a [u8],
    file: &str,
) -> Result<Vec<(&'a str, &'a [u8])>, DataError> {
    let mut rest = bytes.strip_prefix(HEADER).ok_or_else(|| {
        DataError::corrupt(file, "not a bundle: missing the `hone-bundle 1` header")
    })?;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let offset = bytes.len() - rest.len();
        let bad =
            |why: &str| DataError::corrupt(file, format!("bundle entry at byte {offset}: {why}"));
        let eol = rest.iter().position(|&b| b == b'\n').ok_or_else(|| bad("no end of line"))?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| bad("name is not UTF-8"))?;
        let (name, len) = line.split_once('\t').ok_or_else(|| bad("expected NAME<TAB>BYTES"))?;
        let len: usize = len.parse().map_err(|_| bad("length is not a number"))?;
        let body = &rest[eol + 1..];
        if body.len() < len {
            return Err(DataError::Length {
                file: file.to_owned(),
                what: format!("bundle entry `{name}`"),
                expected: len,
                actual: body.len(),
            });
        }
        entries.push((name, &body[..len]));
        rest = &body[len..];
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_rejects_damage() {
        let b = b"hone-bundle 1\na.txt\t3\nabcb.txt\t0\nc\t2\n\n\n";
        let e = parse_bundle(b, "t").unwrap();
        assert_eq!(e, [("a.txt", &b"abc"[..]), ("b.txt", b""), ("c", b"\n\n")]);
        assert!(parse_bundle(b"hone-bundle 1\n", "t").unwrap().is_empty());
        let err = parse_bundle(b"tar", "x.bundle").unwrap_err().to_string();
        assert!(err.contains("x.bundle") && err.contains("header"), "{err}");
        let err = parse_bundle(b"hone-bundle 1\na\t9\nabc", "x.bundle").unwrap_err();
        assert!(matches!(err, DataError::Length { expected: 9, actual: 3, .. }), "{err}");
        let err = parse_bundle(b"hone-bundle 1\na 3\nabc", "x.bundle").unwrap_err().to_string();
        assert!(err.contains("byte 14") && err.contains("NAME<TAB>BYTES"), "{err}");
    }
}

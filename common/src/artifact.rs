//! What an artifact signature covers.
//!
//! The coordinator signs, with its ed25519 key, the canonical bytes returned by
//! [`signing_bytes`]; the agent rebuilds the same bytes from the job document and verifies them
//! *before* downloading or parsing anything. The encoding is fixed-width and length-prefixed so
//! that no two different manifests share the same bytes.

/// Domain-separation tag, so a Hone artifact signature can never be replayed as another message.
pub const SIGNING_DOMAIN: &[u8] = b"hone-artifact-v1\0";

/// The bytes signed for an artifact: domain tag, id (u32 length + UTF-8), sha256, size
/// (u64 big-endian) and expiry (Unix milliseconds, u64 big-endian).
pub fn signing_bytes(
    artifact_id: &str,
    sha256: &[u8; 32],
    size: u64,
    expires_at_ms: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + 4 + artifact_id.len() + 48);
    out.extend_from_slice(SIGNING_DOMAIN);
    out.extend_from_slice(&(artifact_id.len() as u32).to_be_bytes());
    out.extend_from_slice(artifact_id.as_bytes());
    out.extend_from_slice(sha256);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::signing_bytes;

    #[test]
    fn every_field_changes_the_signed_bytes() {
        let base = signing_bytes("m1", &[7; 32], 10, 20);
        assert_ne!(base, signing_bytes("m2", &[7; 32], 10, 20));
        assert_ne!(base, signing_bytes("m1", &[8; 32], 10, 20));
        assert_ne!(base, signing_bytes("m1", &[7; 32], 11, 20));
        assert_ne!(base, signing_bytes("m1", &[7; 32], 10, 21));
    }

    #[test]
    fn id_is_length_prefixed_so_fields_cannot_shift() {
        // Without the length prefix, "ab" + sha starting with 'c' could equal "abc" + ...
        assert_ne!(signing_bytes("ab", &[b'c'; 32], 1, 1), signing_bytes("abc", &[b'c'; 32], 1, 1));
    }
}

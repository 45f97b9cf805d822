//! sha256 digests as kruntimes writes them: `sha256:<64 lowercase hex>`.
//!
//! sha2 0.11 digests do not implement `LowerHex`, so bytes are hex-encoded
//! explicitly.

use sha2::{Digest as _, Sha256};

/// Prefix of every digest string.
pub const PREFIX: &str = "sha256:";

/// The sha256 of `bytes` as lowercase hex (64 characters).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The digest string `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("{PREFIX}{}", sha256_hex(bytes))
}

/// Parses `sha256:<hex>`, returning the hex part when it is well formed.
pub fn parse(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix(PREFIX)?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_the_known_sha256_of_abc() {
        assert_eq!(
            digest_of(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_accepts_only_well_formed_digests() {
        let d = digest_of(b"");
        assert_eq!(parse(&d).map(str::len), Some(64));
        assert_eq!(parse("sha256:ABC"), None);
        assert_eq!(parse("md5:0123"), None);
        assert_eq!(parse(&d.to_uppercase()), None);
    }
}

//! API key hashing. The config stores only `sha256:<hex>` of each key, so a leaked config file
//! does not leak working keys; a presented key is hashed and compared in constant time so the
//! comparison does not reveal how many leading bytes matched.

use sha2::{Digest, Sha256};

use crate::schema::ApiKey;

/// Prefix of a stored key hash.
pub const HASH_PREFIX: &str = "sha256:";

/// The stored form of an API key: `sha256:` and the lowercase hex SHA-256 of the key.
pub fn hash_api_key(key: &str) -> String {
    format!(
        "{HASH_PREFIX}{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

/// The 32 digest bytes of a `sha256:<64 hex>` string, or `None` when malformed.
pub(crate) fn parse_key_hash(hash: &str) -> Option<[u8; 32]> {
    let hex_digits = hash.strip_prefix(HASH_PREFIX)?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut digest).ok()?;
    Some(digest)
}

/// Equality whose running time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

impl ApiKey {
    /// Whether `presented` (the raw key from a request) is this key. A malformed stored hash
    /// matches nothing (validation reports it at start-up).
    pub fn matches(&self, presented: &str) -> bool {
        let Some(stored) = parse_key_hash(&self.hash) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        constant_time_eq(&stored, &presented)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_prefixed_lowercase_sha256_hex() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        assert_eq!(
            hash_api_key("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn matches_only_the_right_key() {
        let key = ApiKey {
            id: "ops".into(),
            hash: hash_api_key("s3cret-key"),
            ..ApiKey::default()
        };
        assert!(key.matches("s3cret-key"));
        assert!(!key.matches("s3cret-kez"));
        assert!(!key.matches(""));
        let upper = ApiKey {
            hash: key.hash.to_uppercase().replace("SHA256:", "sha256:"),
            ..key.clone()
        };
        assert!(upper.matches("s3cret-key"));
    }

    #[test]
    fn malformed_hashes_match_nothing() {
        for hash in [
            "",
            "sha256:",
            "sha256:abcd",
            "md5:00",
            &"sha256:zz".repeat(16),
        ] {
            let key = ApiKey {
                hash: hash.to_string(),
                ..ApiKey::default()
            };
            assert!(!key.matches(""), "{hash}");
            assert!(parse_key_hash(hash).is_none(), "{hash}");
        }
    }
}

//! API key checks in constant time.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable as _, ConstantTimeEq};

/// The configured API keys, kept as SHA-256 digests so that comparing a presented key takes
/// the same time whatever its length and whichever key (if any) it matches.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

impl ApiKeys {
    #[must_use]
    pub fn new(keys: &[String]) -> Self {
        Self {
            digests: keys.iter().map(|key| digest(key.as_bytes())).collect(),
        }
    }

    /// Whether no key is configured (then `/v1/*` is loopback-only).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Which key `presented` is (its index in the configuration), if any. Every key is
    /// compared, and the index chosen, without branching on the comparison.
    #[must_use]
    pub fn position(&self, presented: &[u8]) -> Option<usize> {
        let presented = digest(presented);
        let mut matched = subtle::Choice::from(0);
        let mut position = 0_u64;
        for (index, key) in (0_u64..).zip(&self.digests) {
            let equal = key.ct_eq(&presented);
            position = u64::conditional_select(&position, &index, equal);
            matched |= equal;
        }
        bool::from(matched).then(|| usize::try_from(position).unwrap_or(usize::MAX))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_configured_keys() {
        let keys = ApiKeys::new(&[
            "first-key-0123456789".to_owned(),
            "second-key-0123456789".to_owned(),
        ]);
        assert_eq!(keys.position(b"first-key-0123456789"), Some(0));
        assert_eq!(keys.position(b"second-key-0123456789"), Some(1));
        assert_eq!(keys.position(b"first-key-012345678"), None);
        assert_eq!(keys.position(b""), None);
        assert_eq!(keys.position(b"third-key-0123456789"), None);
        assert!(ApiKeys::new(&[]).is_empty());
    }
}

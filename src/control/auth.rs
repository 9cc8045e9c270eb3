//! API key checks in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

    /// Whether `presented` is one of the keys. Every key is compared, with no early exit.
    #[must_use]
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut matched = subtle::Choice::from(0);
        for key in &self.digests {
            matched |= key.ct_eq(&presented);
        }
        matched.into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_keys() {
        let keys = ApiKeys::new(&[
            "first-key-0123456789".to_owned(),
            "second-key-0123456789".to_owned(),
        ]);
        assert!(keys.accepts(b"first-key-0123456789"));
        assert!(keys.accepts(b"second-key-0123456789"));
        assert!(!keys.accepts(b"first-key-012345678"));
        assert!(!keys.accepts(b""));
        assert!(ApiKeys::new(&[]).is_empty());
    }
}

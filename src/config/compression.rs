//! `[compression]`: permessage-deflate (RFC 7692) with browsers and other clients.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// permessage-deflate. A message of a channel is compressed once, and the same compressed
/// frame goes to every subscriber that negotiated it (`protocol::deflate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Accept a client's permessage-deflate offer. Off: no client negotiates it, and every
    /// frame goes out as it is. Default true.
    pub enabled: bool,
    /// Messages smaller than this (JSON bytes) are sent uncompressed: below a few hundred
    /// bytes deflate saves little and costs the same per message. Default 256; 0 to 65535.
    pub min_bytes: usize,
    /// zlib compression level, 1 (fastest) to 9 (smallest). Default 3: each message is
    /// compressed once whatever its number of subscribers. Level 1 is zlib-rs's quick
    /// strategy (fixed Huffman codes only), which on a 2 KiB reply saves a third where 3
    /// saves half; above 3 a few bytes more at more CPU.
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_bytes: 256,
            level: 3,
        }
    }
}

impl CompressionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=9).contains(&self.level) {
            return Err(invalid("compression.level", "must be between 1 and 9"));
        }
        if self.min_bytes > usize::from(u16::MAX) {
            return Err(invalid("compression.min_bytes", "must be at most 65535"));
        }
        Ok(())
    }
}

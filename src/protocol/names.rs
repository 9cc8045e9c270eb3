//! Channel names and offsets.

use std::{fmt, str::FromStr, sync::Arc};

/// A validated channel name: 1 to `max_len` bytes of `A-Z a-z 0-9 _ - . : @ / =`.
///
/// The grammar needs no JSON escaping, is safe in URL paths (percent-decoding aside) and leaves
/// room for namespaces such as `chat:room-1` or `user/42`. Cloning is a reference-count bump.
///
/// ```
/// use switchboard::protocol::{ChannelName, ChannelNameError};
///
/// assert_eq!(ChannelName::parse("chat:room-1", 128).unwrap().as_str(), "chat:room-1");
/// assert_eq!(ChannelName::parse("no spaces", 128), Err(ChannelNameError::BadCharacter));
/// assert_eq!(ChannelName::parse("toolong", 3), Err(ChannelNameError::TooLong(3)));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a channel name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// The name is empty: send a non-empty name.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than the configured limit: shorten it.
    #[error("channel name is longer than {0} bytes")]
    TooLong(usize),
    /// The name holds a character outside the grammar: use only A-Z a-z 0-9 _ - . : @ / =.
    #[error("channel name may contain only A-Z a-z 0-9 _ - . : @ / =")]
    BadCharacter,
}

impl ChannelName {
    /// Validates `name` against the grammar and `max_len` (in bytes).
    ///
    /// # Errors
    /// [`ChannelNameError`] saying which rule failed.
    pub fn parse(name: &str, max_len: usize) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > max_len {
            return Err(ChannelNameError::TooLong(max_len));
        }
        if !name.bytes().all(is_channel_byte) {
            return Err(ChannelNameError::BadCharacter);
        }
        Ok(Self(Arc::from(name)))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// FNV-1a of the name: the same on every node and in every release, unlike std's
    /// hasher (a channel's bus partition, its presence refresh slice). Nodes of two
    /// releases share a cluster, so it must never change:
    ///
    /// ```
    /// # use switchboard::protocol::ChannelName;
    /// assert_eq!(ChannelName::parse("news", 128).unwrap().stable_hash(), 1_271_381_062);
    /// ```
    #[must_use]
    pub fn stable_hash(&self) -> u32 {
        self.0.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        })
    }
}

pub(super) const fn is_channel_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.' | b':' | b'@' | b'/' | b'=')
}

/// Lets maps keyed by `ChannelName` be searched with a `&str` (the hash and equality of a
/// `ChannelName` are those of its text), so a lookup needs no allocation.
impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A position in a channel: the epoch of the channel's history and a sequence number.
///
/// Sequence numbers start at 1 for the first message of an epoch; `seq` 0 is the position
/// before any message. A channel's epoch changes whenever its history is lost (node
/// restart, channel state dropped after its history expired), so an offset from another
/// epoch is known to be stale. On the wire it is the opaque string
/// `"<epoch as 16 hex digits>-<seq>"`:
///
/// ```
/// use switchboard::protocol::Offset;
///
/// let offset: Offset = "00000000deadbeef-42".parse().unwrap();
/// assert_eq!(offset, Offset { epoch: 0xdead_beef, seq: 42 });
/// assert_eq!(offset.to_string(), "00000000deadbeef-42");
/// assert!("42".parse::<Offset>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Offset {
    pub epoch: u64,
    pub seq: u64,
}

impl Offset {
    /// Whether every message after `self` can still be given, from a channel now at
    /// `position` whose oldest message held has the seq `first_held` (`None`: none held):
    /// `self` is of `position`'s epoch, not ahead of it, and no message between them is
    /// gone. The one rule of every resume and history read ("recovered").
    #[must_use]
    pub fn recoverable_from(self, position: Offset, first_held: Option<u64>) -> bool {
        self.epoch == position.epoch
            && self.seq <= position.seq
            && (self.seq == position.seq || first_held.is_some_and(|first| first <= self.seq + 1))
    }
}

/// Why an offset string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("offset must look like \"<16 hex digits>-<decimal>\", as the server sent it")]
pub struct OffsetParseError;

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.epoch, self.seq)
    }
}

impl FromStr for Offset {
    type Err = OffsetParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (epoch, seq) = text.split_once('-').ok_or(OffsetParseError)?;
        // 19 digits: every one is a u64 (sequences never come near), and `from_str_radix`
        // would take a sign.
        if epoch.len() != 16 || seq.is_empty() || seq.len() > 19 {
            return Err(OffsetParseError);
        }
        if !epoch.bytes().all(|b| b.is_ascii_hexdigit()) || !seq.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(OffsetParseError);
        }
        Ok(Offset {
            epoch: u64::from_str_radix(epoch, 16).map_err(|_| OffsetParseError)?,
            seq: seq.parse().map_err(|_| OffsetParseError)?,
        })
    }
}

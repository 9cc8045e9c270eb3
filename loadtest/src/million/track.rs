//! Where one subscriber is in one channel, and what each frame says about loss.
//!
//! Offsets are `EPOCH-SEQ` (`docs/protocol.md`, "Offsets"): within an epoch the seq of
//! successive messages goes up by one. A subscriber checks every message against the last
//! offset it holds: a seq that jumps is that many messages lost, one that does not go up is a
//! duplicate. An epoch that changes is fine only from seq 0 (a channel nobody had published to
//! yet answers seq 0 of an *absent epoch*; its first message starts a real one at seq 1);
//! otherwise the history was lost, which the server announces with a `reset` frame or a
//! resume answered `recovered:false`, and the run counts as a loss (at least one message, or
//! the gap when the epoch is the same). At the end the last offset each subscriber holds is
//! compared with the last one the publisher had acknowledged: a subscriber short of it lost
//! its channel's tail.

use serde::{Deserialize, Serialize};

/// An offset: the channel's epoch and the message's seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Offset {
    pub epoch: u64,
    pub seq: u64,
}

impl Offset {
    /// `"3f9a2c4e1b7d8e60-42"`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, seq) = text.split_once('-')?;
        Some(Self {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// Losses and duplicates, by how they were seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Losses {
    /// Messages skipped: seqs a message jumped over.
    pub gaps: u64,
    /// Messages whose seq did not go up.
    pub duplicates: u64,
    /// Resumes answered `recovered:false`.
    pub unrecovered: u64,
    /// What those resumes skipped (at least one each; the gap when the epoch was the same).
    pub unrecovered_messages: u64,
    /// `reset` frames: the channel's history was lost while subscribed.
    pub resets: u64,
    /// A message in another epoch without a `reset` first (each counted as one loss).
    pub epoch_jumps: u64,
    /// At the end, messages the publisher had acknowledged that never arrived.
    pub tail: u64,
    /// At the end, a subscriber in another epoch than the publisher's last acknowledgement
    /// (each counted as one loss beside `tail`).
    pub tail_epoch_mismatch: u64,
    /// Messages that arrived before any position was known (never expected).
    pub unanchored: u64,
}

impl Losses {
    /// Every message counted lost.
    pub fn lost(&self) -> u64 {
        self.gaps
            + self.unrecovered_messages
            + self.resets
            + self.epoch_jumps
            + self.tail
            + self.tail_epoch_mismatch
    }

    pub fn add(&mut self, other: &Self) {
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.unrecovered += other.unrecovered;
        self.unrecovered_messages += other.unrecovered_messages;
        self.resets += other.resets;
        self.epoch_jumps += other.epoch_jumps;
        self.tail += other.tail;
        self.tail_epoch_mismatch += other.tail_epoch_mismatch;
        self.unanchored += other.unanchored;
    }
}

/// One subscriber's position in one channel: unknown until its first `subscribed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position(Option<Offset>);

impl Position {
    pub fn get(self) -> Option<Offset> {
        self.0
    }

    /// A `subscribed` reply: without `since` (`recovered` absent) it sets the start; a
    /// resume answered `recovered:true` changes nothing (what was missed follows), one
    /// answered `false` is a loss and moves to the reply's offset.
    pub fn subscribed(&mut self, at: Offset, recovered: Option<bool>, losses: &mut Losses) {
        match (self.0, recovered) {
            (Some(_), Some(true)) => {}
            (Some(held), Some(false)) => {
                losses.unrecovered += 1;
                let gap = if held.epoch == at.epoch {
                    at.seq.saturating_sub(held.seq)
                } else {
                    0
                };
                losses.unrecovered_messages += gap.max(1);
                self.0 = Some(at);
            }
            (None, _) | (Some(_), None) => self.0 = Some(at),
        }
    }

    /// A `reset`: the channel goes on in a new epoch; what was missed is gone.
    pub fn reset(&mut self, at: Offset, losses: &mut Losses) {
        losses.resets += 1;
        self.0 = Some(at);
    }

    /// A `message`: true when it is the next one (or after a counted gap), false for a
    /// duplicate.
    pub fn message(&mut self, at: Offset, losses: &mut Losses) -> bool {
        let Some(held) = self.0 else {
            losses.unanchored += 1;
            self.0 = Some(at);
            return true;
        };
        if held.epoch == at.epoch {
            if at.seq <= held.seq {
                losses.duplicates += 1;
                return false;
            }
            losses.gaps += at.seq - held.seq - 1;
        } else if held.seq == 0 {
            // The channel's first epoch began (or this one after a counted loss).
            losses.gaps += at.seq.saturating_sub(1);
        } else {
            losses.epoch_jumps += 1;
        }
        self.0 = Some(at);
        true
    }

    /// The end of the run: the publisher's last acknowledged offset must have arrived.
    pub fn tail(self, acked: Offset, losses: &mut Losses) {
        match self.0 {
            None => losses.tail += acked.seq,
            Some(held) if held.epoch == acked.epoch => {
                losses.tail += acked.seq.saturating_sub(held.seq);
            }
            Some(held) if held.seq == 0 => losses.tail += acked.seq,
            Some(_) => losses.tail_epoch_mismatch += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn at(epoch: u64, seq: u64) -> Offset {
        Offset { epoch, seq }
    }

    #[test]
    fn offsets_parse_as_the_server_writes_them() {
        assert_eq!(
            Offset::parse("3f9a2c4e1b7d8e60-42"),
            Some(at(0x3f9a_2c4e_1b7d_8e60, 42))
        );
        assert_eq!(
            Offset::parse("0000018c2b3d4e5f-0"),
            Some(at(0x018c_2b3d_4e5f, 0))
        );
        assert_eq!(Offset::parse("nope"), None);
        assert_eq!(Offset::parse("zz-1"), None);
    }

    #[test]
    fn in_order_messages_lose_nothing_from_an_absent_epoch_on() {
        let mut losses = Losses::default();
        let mut position = Position::default();
        position.subscribed(at(7, 0), None, &mut losses);
        for seq in 1..=3 {
            assert!(position.message(at(99, seq), &mut losses));
        }
        position.tail(at(99, 3), &mut losses);
        assert_eq!(losses, Losses::default());
    }

    #[test]
    fn gaps_duplicates_and_tails_are_counted() {
        let mut losses = Losses::default();
        let mut position = Position::default();
        position.subscribed(at(5, 10), None, &mut losses);
        assert!(position.message(at(5, 11), &mut losses));
        assert!(position.message(at(5, 14), &mut losses));
        assert!(!position.message(at(5, 14), &mut losses));
        assert!(!position.message(at(5, 12), &mut losses));
        position.tail(at(5, 20), &mut losses);
        assert_eq!(losses.gaps, 2);
        assert_eq!(losses.duplicates, 2);
        assert_eq!(losses.tail, 6);
        assert_eq!(losses.lost(), 8);
    }

    #[test]
    fn resumes_keep_the_position_unless_unrecovered() {
        let mut losses = Losses::default();
        let mut position = Position::default();
        position.subscribed(at(5, 10), None, &mut losses);
        position.subscribed(at(5, 12), Some(true), &mut losses);
        assert_eq!(position.get(), Some(at(5, 10)), "11 and 12 are replayed");
        assert!(position.message(at(5, 11), &mut losses));
        position.subscribed(at(5, 15), Some(false), &mut losses);
        assert_eq!(losses.unrecovered, 1);
        assert_eq!(losses.unrecovered_messages, 4);
        position.subscribed(at(8, 0), Some(false), &mut losses);
        assert_eq!(
            losses.unrecovered_messages, 5,
            "another epoch: at least one"
        );
        assert_eq!(losses.lost(), 5);
    }

    #[test]
    fn epoch_changes_are_losses_unless_from_seq_zero() {
        let mut losses = Losses::default();
        let mut position = Position::default();
        position.subscribed(at(5, 3), None, &mut losses);
        assert!(position.message(at(6, 1), &mut losses));
        assert_eq!(losses.epoch_jumps, 1);
        position.reset(at(9, 0), &mut losses);
        assert!(position.message(at(9, 1), &mut losses));
        position.tail(at(10, 4), &mut losses);
        assert_eq!(losses.resets, 1);
        assert_eq!(losses.tail_epoch_mismatch, 1);
        assert_eq!(losses.lost(), 3);
        let mut never = Losses::default();
        Position::default().tail(at(1, 4), &mut never);
        assert_eq!(never.tail, 4);
    }
}

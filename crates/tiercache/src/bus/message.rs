//! What travels on the bus, where it sits in the change log, and what a
//! receiver does with each message given the log position it has applied.
//!
//! A message's body (`from`, `sent_ms`, `op`, `keys`, `gens`) is written by
//! the publisher; its envelope (`id`, `prev`, `epoch`) is added by the
//! publish script in Redis, which appends the body to the change log and
//! publishes it in one atomic step (see [`super::log`]). So every message
//! names its own log entry and the one before it, and a receiver that has
//! applied up to `prev` knows it missed nothing.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One bus message (and, without its envelope, one change-log entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Message {
    /// This message's change-log entry; for a heartbeat, the log's head.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) id: String,
    /// The entry before this one (`0-0` for the first of a log); for a
    /// heartbeat, the log's head again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) prev: String,
    /// The log's epoch: a new one whenever the log starts from nothing
    /// (Redis lost its data, or the log was deleted).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) epoch: String,
    pub(super) from: String,
    /// The publisher's wall clock, in ms since the Unix epoch.
    #[serde(default)]
    pub(super) sent_ms: u64,
    pub(super) op: Op,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) keys: Vec<String>,
    /// For `tags`: the generation of each tag in `keys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) gens: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Op {
    Keys,
    Tags,
    Clear,
    Heartbeat,
}

impl Message {
    /// A body to publish (the script adds the envelope).
    pub(super) fn body(
        from: &str,
        sent_ms: u64,
        op: Op,
        keys: Vec<String>,
        gens: Vec<u64>,
    ) -> Self {
        Self {
            id: String::new(),
            prev: String::new(),
            epoch: String::new(),
            from: from.to_owned(),
            sent_ms,
            op,
            keys,
            gens,
        }
    }

    /// The JSON the publisher hands to the script.
    pub(super) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a message of strings and integers always serializes")
    }
}

/// A Redis stream entry id, `<ms>-<seq>`; `0-0` stands for "before the
/// first entry".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(super) struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    pub(super) const ZERO: Self = Self { ms: 0, seq: 0 };

    pub(super) fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    pub(super) fn is_zero(self) -> bool {
        self == Self::ZERO
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// How far this instance has applied the change log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Position {
    /// Empty while the log had no entry when this position was taken.
    pub(super) epoch: String,
    pub(super) id: EntryId,
}

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The next entry after the position: apply it and move on to it.
    Apply(EntryId),
    /// Already applied (seen during a catch-up), or a heartbeat that
    /// confirms the position.
    Skip,
    /// Something was missed: read the log from the position.
    CatchUp,
}

impl Position {
    /// What `message` means at this position.
    pub(super) fn step(&self, message: &Message) -> Step {
        let (Some(id), Some(prev)) = (EntryId::parse(&message.id), EntryId::parse(&message.prev))
        else {
            // Not from a publish script: it says nothing about the log.
            return Step::CatchUp;
        };
        let same_epoch = message.epoch == self.epoch;
        if message.op == Op::Heartbeat {
            return match (same_epoch, id.cmp(&self.id)) {
                (true, Ordering::Less | Ordering::Equal) => Step::Skip,
                _ => Step::CatchUp,
            };
        }
        // A position taken on an empty log accepts the log's first entry,
        // whatever epoch it starts.
        let first_of_log = self.id.is_zero() && self.epoch.is_empty() && prev.is_zero();
        let continues = (same_epoch && prev == self.id) || first_of_log;
        if continues && id > prev {
            Step::Apply(id)
        } else if same_epoch && id <= self.id {
            Step::Skip
        } else {
            Step::CatchUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(op: Op, epoch: &str, prev: &str, id: &str) -> Message {
        Message {
            id: id.to_owned(),
            prev: prev.to_owned(),
            epoch: epoch.to_owned(),
            ..Message::body("a", 0, op, Vec::new(), Vec::new())
        }
    }

    fn at(epoch: &str, id: &str) -> Position {
        Position {
            epoch: epoch.to_owned(),
            id: EntryId::parse(id).unwrap(),
        }
    }

    #[test]
    fn bodies_are_small_json_without_an_envelope() {
        let keys = Message::body("ab", 10, Op::Keys, vec!["1".into(), "2".into()], Vec::new());
        assert_eq!(
            String::from_utf8(keys.to_json()).unwrap(),
            r#"{"from":"ab","sent_ms":10,"op":"keys","keys":["1","2"]}"#
        );
        let tags = Message::body("ab", 0, Op::Tags, vec!["tools".into()], vec![7]);
        assert_eq!(
            String::from_utf8(tags.to_json()).unwrap(),
            r#"{"from":"ab","sent_ms":0,"op":"tags","keys":["tools"],"gens":[7]}"#
        );
        let published: Message = serde_json::from_str(
            r#"{"id":"5-1","prev":"5-0","epoch":"e","from":"a","sent_ms":0,"op":"clear"}"#,
        )
        .unwrap();
        assert_eq!(published, message(Op::Clear, "e", "5-0", "5-1"));
    }

    #[test]
    fn entry_ids_parse_print_and_order_numerically() {
        let id = EntryId::parse("1764020000000-12").unwrap();
        assert_eq!(id.to_string(), "1764020000000-12");
        assert!(EntryId::parse("9-2").unwrap() < EntryId::parse("10-1").unwrap());
        assert!(EntryId::parse("0-0").unwrap().is_zero());
        for bad in ["", "5", "a-1", "1-", "-1"] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_next_entry_applies_an_old_one_is_skipped_a_later_one_catches_up() {
        let position = at("e", "5-0");
        let next = message(Op::Keys, "e", "5-0", "6-0");
        assert_eq!(
            position.step(&next),
            Step::Apply(EntryId::parse("6-0").unwrap())
        );
        assert_eq!(
            position.step(&message(Op::Keys, "e", "4-0", "5-0")),
            Step::Skip
        );
        assert_eq!(
            position.step(&message(Op::Keys, "e", "6-0", "7-0")),
            Step::CatchUp
        );
        assert_eq!(
            position.step(&message(Op::Keys, "f", "5-0", "6-0")),
            Step::CatchUp
        );
        // An entry before its predecessor is not one the script wrote.
        assert_eq!(
            position.step(&message(Op::Keys, "e", "5-0", "4-0")),
            Step::Skip
        );
        assert_eq!(
            position.step(&message(Op::Keys, "e", "5-0", "5-0")),
            Step::Skip
        );
    }

    #[test]
    fn heartbeats_confirm_the_head_or_reveal_a_miss() {
        let position = at("e", "5-0");
        assert_eq!(
            position.step(&message(Op::Heartbeat, "e", "5-0", "5-0")),
            Step::Skip
        );
        assert_eq!(
            position.step(&message(Op::Heartbeat, "e", "4-0", "4-0")),
            Step::Skip
        );
        assert_eq!(
            position.step(&message(Op::Heartbeat, "e", "6-0", "6-0")),
            Step::CatchUp
        );
        assert_eq!(
            position.step(&message(Op::Heartbeat, "", "0-0", "0-0")),
            Step::CatchUp
        );
        let empty = Position::default();
        assert_eq!(
            empty.step(&message(Op::Heartbeat, "", "0-0", "0-0")),
            Step::Skip
        );
    }

    #[test]
    fn an_empty_log_position_takes_the_first_entry_of_any_epoch() {
        let empty = Position::default();
        let first = message(Op::Keys, "new", "0-0", "9-0");
        assert_eq!(
            empty.step(&first),
            Step::Apply(EntryId::parse("9-0").unwrap())
        );
        assert_eq!(
            empty.step(&message(Op::Keys, "new", "9-0", "10-0")),
            Step::CatchUp
        );
    }

    #[test]
    fn messages_without_an_envelope_catch_up() {
        let legacy: Message =
            serde_json::from_str(r#"{"from":"x","seq":3,"op":"heartbeat"}"#).unwrap();
        assert_eq!(at("e", "5-0").step(&legacy), Step::CatchUp);
    }
}

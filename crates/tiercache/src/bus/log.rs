//! The change log: a capped Redis stream per cache, `{key_prefix}{namespace}:bus:log`,
//! holding every bus message but heartbeats, so that an instance that
//! missed messages drops exactly the keys they named instead of its whole
//! L1.
//!
//! Each entry has three fields: `e`, the log's epoch (a random id chosen
//! when the log starts from nothing, so that a log lost with Redis's data
//! and started again is never mistaken for the old one), `p`, the id of the
//! entry before it (so a reader can tell that nothing between was trimmed),
//! and `m`, the message body's JSON. The stream is trimmed to about [`LogConfig::max_len`]
//! entries (`MAXLEN ~`); an instance whose position fell off its start
//! clears its L1.
//!
//! Appending and publishing are one script ([`PUBLISH`](crate::remote::scripts::PUBLISH)), so the log and
//! the channel carry the same messages in the same order.

use redis::Cmd;

use crate::remote::scripts::PUBLISH;

use super::message::{EntryId, Message, Position};

/// Entries read per `XRANGE` during a catch-up.
pub(super) const READ_BATCH: usize = 200;

/// Where the log lives and how long it is kept.
#[derive(Debug, Clone)]
pub(crate) struct LogConfig {
    /// The stream's key.
    pub(crate) key: String,
    /// Entries kept (about: trimming is by whole stream nodes).
    pub(crate) max_len: usize,
    /// Publish with `SPUBLISH` (a cluster's sharded pub/sub) rather than
    /// `PUBLISH`.
    pub(crate) sharded: bool,
}

impl LogConfig {
    /// The script call that appends `body` (unless it is a heartbeat) and
    /// publishes it on `channel`.
    pub(super) fn publish(&self, channel: &str, body: &Message) -> Cmd {
        let append = body.op != super::message::Op::Heartbeat;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUBLISH)
            .arg(1)
            .arg(&self.key)
            .arg(channel)
            .arg(body.to_json())
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg(self.max_len)
            .arg(if append { "1" } else { "0" })
            .arg(if self.sharded { "SPUBLISH" } else { "PUBLISH" });
        cmd
    }

    /// `XREVRANGE key + - COUNT 1`: the last entry.
    pub(super) fn head(&self) -> Cmd {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(&self.key).arg("+").arg("-").arg("COUNT").arg(1);
        cmd
    }

    /// `XRANGE key (<after> + COUNT n`: the entries after `after`.
    pub(super) fn after(&self, after: EntryId) -> Cmd {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.key)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(READ_BATCH);
        cmd
    }
}

/// One entry as `XRANGE` returns it: id, then field/value pairs.
pub(super) type RawEntry = (String, Vec<Vec<u8>>);

/// One decoded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) id: EntryId,
    pub(super) epoch: String,
    /// The entry before this one.
    pub(super) prev: EntryId,
    /// `None` when the body does not decode (written by something else).
    pub(super) message: Option<Message>,
}

impl Entry {
    /// Decodes a raw entry; `None` when its id is not a stream id.
    pub(super) fn decode((id, fields): RawEntry) -> Option<Self> {
        let id = EntryId::parse(&id)?;
        let mut epoch = String::new();
        let mut prev = None;
        let mut message = None;
        for pair in fields.chunks_exact(2) {
            match pair[0].as_slice() {
                b"e" => epoch = String::from_utf8_lossy(&pair[1]).into_owned(),
                b"p" => prev = std::str::from_utf8(&pair[1]).ok().and_then(EntryId::parse),
                b"m" => message = serde_json::from_slice(&pair[1]).ok(),
                _ => {}
            }
        }
        Some(Self {
            id,
            epoch,
            // Unknown: never taken as continuing any position.
            prev: prev.unwrap_or(id),
            message,
        })
    }

    /// The position just after applying this entry.
    pub(super) fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            id: self.id,
        }
    }
}

/// Why a catch-up could not replay and cleared L1 instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The entries after the position were trimmed off the log.
    Truncated,
    /// The log is gone or started again: Redis lost its data (a restart
    /// without persistence, `FLUSHALL`) or the log was deleted.
    Restarted,
}

/// Whether the log still reaches back to `position`, judged by the first
/// entry after it or, when there is none, by the log's last entry.
pub(super) fn continuity(
    position: &Position,
    first_after: Option<&Entry>,
    head: Option<&Entry>,
) -> Result<(), Lost> {
    let empty_log = position.epoch.is_empty() && position.id.is_zero();
    match (first_after, head) {
        (Some(entry), _) => {
            let same_log = entry.epoch == position.epoch || empty_log;
            if !same_log {
                Err(Lost::Restarted)
            } else if entry.prev == position.id {
                Ok(())
            } else {
                Err(Lost::Truncated)
            }
        }
        (None, None) if empty_log => Ok(()),
        (None, Some(head)) if head.epoch == position.epoch && head.id == position.id => Ok(()),
        // Nothing after the position and the head is not it: the log is
        // gone or is a new one.
        (None, _) => Err(Lost::Restarted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::message::Op;

    fn raw(id: &str, epoch: &str, prev: &str, body: &str) -> RawEntry {
        let fields = [("e", epoch), ("p", prev), ("m", body)];
        (
            id.to_owned(),
            fields
                .iter()
                .flat_map(|(name, value)| [name.as_bytes().to_vec(), value.as_bytes().to_vec()])
                .collect(),
        )
    }

    fn entry(id: &str, epoch: &str, prev: &str) -> Entry {
        Entry::decode(raw(id, epoch, prev, "{}")).unwrap()
    }

    fn position(epoch: &str, id: &str) -> Position {
        Position {
            epoch: epoch.to_owned(),
            id: EntryId::parse(id).unwrap(),
        }
    }

    #[test]
    fn entries_decode_their_epoch_predecessor_and_body() {
        let decoded = Entry::decode(raw(
            "7-1",
            "ep",
            "7-0",
            r#"{"from":"a","op":"keys","keys":["1"]}"#,
        ))
        .unwrap();
        assert_eq!(decoded.position(), position("ep", "7-1"));
        assert_eq!(decoded.prev, EntryId::parse("7-0").unwrap());
        let message = decoded.message.unwrap();
        assert_eq!((message.op, message.keys), (Op::Keys, vec!["1".to_owned()]));
        assert_eq!(
            Entry::decode(raw("7-2", "ep", "7-1", "not json"))
                .unwrap()
                .message,
            None
        );
        assert_eq!(Entry::decode(raw("x", "ep", "7-1", "{}")), None);
        let foreign =
            Entry::decode(("8-0".to_owned(), vec![b"m".to_vec(), b"{}".to_vec()])).unwrap();
        assert_eq!(foreign.prev, foreign.id);
    }

    #[test]
    fn a_log_continues_a_position_when_the_next_entry_follows_it() {
        let at = position("ep", "7-1");
        assert_eq!(
            continuity(&at, Some(&entry("8-0", "ep", "7-1")), None),
            Ok(())
        );
        assert_eq!(
            continuity(&at, Some(&entry("9-0", "ep", "8-0")), None),
            Err(Lost::Truncated)
        );
        assert_eq!(
            continuity(&at, Some(&entry("8-0", "new", "0-0")), None),
            Err(Lost::Restarted)
        );
    }

    #[test]
    fn with_nothing_after_the_position_the_head_must_be_it() {
        let at = position("ep", "7-1");
        assert_eq!(
            continuity(&at, None, Some(&entry("7-1", "ep", "7-0"))),
            Ok(())
        );
        assert_eq!(continuity(&at, None, None), Err(Lost::Restarted));
        assert_eq!(
            continuity(&at, None, Some(&entry("3-0", "new", "0-0"))),
            Err(Lost::Restarted)
        );
    }

    #[test]
    fn a_position_on_an_empty_log_continues_into_its_first_entry_only() {
        let empty = Position::default();
        assert_eq!(continuity(&empty, None, None), Ok(()));
        assert_eq!(
            continuity(&empty, Some(&entry("3-0", "new", "0-0")), None),
            Ok(())
        );
        assert_eq!(
            continuity(&empty, Some(&entry("4-0", "new", "3-0")), None),
            Err(Lost::Truncated)
        );
    }

    #[test]
    fn reads_start_after_an_entry() {
        let config = LogConfig {
            key: "p:n:bus:log".into(),
            max_len: 10,
            sharded: false,
        };
        let packed = String::from_utf8_lossy(
            &config
                .after(EntryId::parse("5-2").unwrap())
                .get_packed_command(),
        )
        .into_owned();
        assert!(packed.contains("\r\n(5-2\r\n"), "{packed}");
    }
}

//! The stream's wire format: an entry's fields (`k` key, `v` version,
//! `op` put/del, `d` the codec's payload) to and from a [`Queued`] change,
//! and `XREADGROUP` replies (RESP2 or RESP3) to entries.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use redis::Value;

use super::{Change, Queued};
use crate::codec::Codec;

/// One entry of the stream.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) fields: HashMap<String, Vec<u8>>,
}

/// The change an entry of the stream records, or why it cannot be read.
pub(super) fn decode<K: FromStr, V: 'static>(
    entry: &Entry,
    codec: &dyn Codec<V>,
) -> Result<Queued<K, V>, String> {
    let text = |name: &str| {
        entry
            .fields
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or_else(|| format!("field {name:?} missing"))
    };
    let key = text("k")?
        .parse::<K>()
        .map_err(|_| "key does not parse".to_owned())?;
    let version = text("v")?
        .parse::<u64>()
        .map_err(|_| "version does not parse".to_owned())?;
    let change = match text("op")? {
        "del" => Change::Delete,
        "put" => {
            let payload = entry.fields.get("d").map_or(&[][..], Vec::as_slice);
            Change::Put(codec.decode(payload).map_err(|e| e.to_string())?)
        }
        other => return Err(format!("unknown op {other:?}")),
    };
    Ok(Queued {
        key,
        version,
        change,
    })
}

/// The fields of an entry recording `queued` (for a dead letter).
pub(super) fn encode_fields<K: fmt::Display, V: 'static>(
    queued: &Queued<K, V>,
    codec: &dyn Codec<V>,
) -> HashMap<String, Vec<u8>> {
    let mut fields = HashMap::new();
    fields.insert("k".to_owned(), queued.key.to_string().into_bytes());
    fields.insert("v".to_owned(), queued.version.to_string().into_bytes());
    let (op, payload) = match &queued.change {
        Change::Put(value) => ("put", codec.encode(value).unwrap_or_default()),
        Change::Delete => ("del", Vec::new()),
    };
    fields.insert("op".to_owned(), op.as_bytes().to_vec());
    fields.insert("d".to_owned(), payload);
    fields
}

/// The entries of an `XREADGROUP` reply (one stream), in RESP2 or RESP3 form.
pub(super) fn parse_read(reply: Value) -> Vec<Entry> {
    let streams = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .flat_map(|entries| match entries {
            Value::Array(entries) => entries,
            _ => Vec::new(),
        })
        .filter_map(parse_entry)
        .collect()
}

fn parse_entry(entry: Value) -> Option<Entry> {
    let Value::Array(mut parts) = entry else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = bytes(parts.pop()?)?;
    let values: Vec<Vec<u8>> = match fields {
        Value::Array(values) => values.into_iter().filter_map(bytes).collect(),
        Value::Map(pairs) => pairs
            .into_iter()
            .flat_map(|(k, v)| [k, v])
            .filter_map(bytes)
            .collect(),
        // An entry deleted while pending comes back with no fields.
        _ => return None,
    };
    let fields = values
        .chunks_exact(2)
        .map(|pair| {
            (
                String::from_utf8_lossy(&pair[0]).into_owned(),
                pair[1].clone(),
            )
        })
        .collect();
    Some(Entry {
        id: String::from_utf8(id).ok()?,
        fields,
    })
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn read_replies_parse_in_resp2_form() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("k"), bulk("7"), bulk("op"), bulk("del")]),
                ]),
                // Deleted while pending: no fields.
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);

        let entries = parse_read(reply);

        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].fields["k"], b"7");
        assert_eq!(entries[0].fields["op"], b"del");
        assert!(parse_read(Value::Nil).is_empty());
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// Reply trees of the shapes Redis sends (arrays, maps, bulk
        /// strings, integers, nil) nested a few levels deep.
        fn reply() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Nil),
                any::<i64>().prop_map(Value::Int),
                prop::collection::vec(any::<u8>(), 0..12).prop_map(Value::BulkString),
                prop::sample::select(vec!["k", "v", "op", "d", "put", "del", "1-0", "7"])
                    .prop_map(|text| Value::BulkString(text.as_bytes().to_vec())),
            ];
            leaf.prop_recursive(4, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
                ]
            })
        }

        proptest! {
            #![proptest_config(testkit::fuzz_config())]

            /// Any reply parses without panicking, and garbage next to a
            /// well-formed entry does not hide it.
            #[test]
            fn garbage_in_a_read_reply_hides_no_entry(
                before in prop::collection::vec(reply(), 0..4),
                after in prop::collection::vec(reply(), 0..4),
                anything in reply(),
            ) {
                let _ = parse_read(anything);
                let good = Value::Array(vec![
                    Value::BulkString(b"9-9".to_vec()),
                    Value::Array(vec![
                        Value::BulkString(b"k".to_vec()),
                        Value::BulkString(b"42".to_vec()),
                    ]),
                ]);
                let entries: Vec<Value> = before.into_iter().chain([good]).chain(after).collect();
                let reply = Value::Array(vec![Value::Array(vec![
                    Value::BulkString(b"stream".to_vec()),
                    Value::Array(entries),
                ])]);
                let parsed = parse_read(reply);
                prop_assert!(
                    parsed.iter().any(|e| e.id == "9-9" && e.fields.get("k").map(Vec::as_slice) == Some(&b"42"[..])),
                    "{:?}", parsed
                );
            }
        }
    }
}

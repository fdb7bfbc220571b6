//! How values are turned into Redis strings and back.
//!
//! Two layers:
//!
//! - a [`Codec`] turns a value into bytes: [`JsonCodec`] (the default, plain
//!   JSON any client can read) or [`PostcardCodec`] (compact binary);
//! - the *envelope* (this module's `seal`/`open`) adds what the cache itself
//!   needs: negative entries and optional LZ4 compression.
//!
//! # Stored format
//!
//! | first byte | meaning |
//! |---|---|
//! | (empty string) | negative entry: the loader said "not found" |
//! | `0x01` | [`PostcardCodec`] value: `0x01` + postcard bytes |
//! | `0x02` | LZ4 block: `0x02` + uncompressed length (u32 LE) + block; the block holds a codec output |
//! | `0x03` | versioned value: `0x03` + version in ASCII digits + `:` + one of the rows above |
//! | `0x04` | tombstone: `0x04` + version in ASCII digits; "copies older than this are stale" (a miss) |
//! | `0x05` | deleted: `0x05` + version in ASCII digits; a write-behind delete not yet in the store (answered "absent") |
//! | anything else | a codec output; for [`JsonCodec`], JSON text |
//!
//! Versioned caches (see the builder's `versioned`) guard their Redis
//! writes with a script that must read the version of what is stored. It
//! reads plain JSON's version field itself (so JSON values stay plain JSON
//! for other clients), and needs the `0x03` header only for values that do
//! not start as JSON (binary codecs, compressed values). Tombstones are
//! what an invalidation with a version leaves behind; reads treat them as
//! misses.
//!
//! JSON text starts with whitespace, `{`, `[`, `"`, a digit, `-`, `t`, `f`
//! or `n` (or a UTF-8 BOM), never with a byte below `0x09`, so the markers
//! cannot be mistaken for JSON and a change of codec turns old entries into
//! decode errors (misses), never into wrong values. No codec output is empty,
//! so the empty string is free to mean "negative".
//!
//! Decoding never panics and never allocates more than [`MAX_DECOMPRESSED`]
//! on behalf of a corrupt length header.

use std::error::Error as StdError;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First byte of a [`PostcardCodec`] value.
pub(crate) const POSTCARD_MARKER: u8 = 0x01;
/// First byte of an LZ4-compressed value.
pub(crate) const LZ4_MARKER: u8 = 0x02;
/// First byte of a value carrying its version in a header.
pub(crate) const VERSIONED_MARKER: u8 = 0x03;
/// First byte of a tombstone.
pub(crate) const TOMBSTONE_MARKER: u8 = 0x04;
/// First byte of a write-behind delete.
pub(crate) const DELETED_MARKER: u8 = 0x05;
/// Largest decompressed value accepted, whatever a length header claims.
pub(crate) const MAX_DECOMPRESSED: usize = 512 * 1024 * 1024;
/// LZ4's best case is about 255:1; a header claiming more is corrupt.
const MAX_LZ4_RATIO: usize = 255;

/// Turns values into bytes for Redis and back.
///
/// Implementations must produce non-empty output that does not start with
/// `0x02` to `0x05` (reserved, see the module docs); a binary format
/// should start with its own marker byte in `0x06..=0x08` so that it can
/// never be confused with JSON or with another codec's output.
///
/// `decode` must return an error, never panic, on bytes it did not produce:
/// a cache can meet values written by an older version or another codec.
pub trait Codec<V>: Send + Sync + fmt::Debug + 'static {
    /// Encodes `value`.
    ///
    /// # Errors
    ///
    /// When the value cannot be represented (e.g. a map with non-string keys
    /// in JSON).
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError>;

    /// Decodes bytes produced by [`encode`](Codec::encode).
    ///
    /// # Errors
    ///
    /// When the bytes are not a valid encoding of `V` in this format.
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError>;
}

/// A value could not be encoded or decoded.
#[derive(Debug)]
pub struct CodecError {
    message: &'static str,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl CodecError {
    /// An error with a fixed description and no underlying cause.
    pub fn new(message: &'static str) -> Self {
        Self {
            message,
            source: None,
        }
    }

    /// An error with a fixed description caused by `source`.
    pub fn with_source(
        message: &'static str,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self {
            message,
            source: Some(Box::new(source)),
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

impl StdError for CodecError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Plain JSON (`serde_json`): the default codec.
///
/// The stored string is exactly the value's JSON, so `redis-cli GET` and any
/// other client can read it (SPEC §1).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl<V: Serialize + DeserializeOwned> Codec<V> for JsonCodec {
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError::with_source("JSON encoding failed", e))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        serde_json::from_slice(bytes)
            .map_err(|e| CodecError::with_source("not valid JSON for this type", e))
    }
}

/// Compact binary encoding (`postcard`), marked with a leading `0x01`.
///
/// Typically 2–4× smaller and faster than JSON. Postcard is not
/// self-describing: it cannot encode `#[serde(flatten)]`, untagged enums or
/// `skip_serializing_if`, and a change to `V`'s fields makes old entries
/// undecodable (they then count as misses). Change the cache namespace when
/// the type changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostcardCodec;

impl<V: Serialize + DeserializeOwned> Codec<V> for PostcardCodec {
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        postcard::to_extend(value, vec![POSTCARD_MARKER])
            .map_err(|e| CodecError::with_source("postcard encoding failed", e))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        let Some((&POSTCARD_MARKER, body)) = bytes.split_first() else {
            return Err(CodecError::new(
                "not a postcard value (marker byte missing)",
            ));
        };
        match postcard::take_from_bytes(body) {
            Ok((value, [])) => Ok(value),
            Ok(_) => Err(CodecError::new("trailing bytes after postcard value")),
            Err(e) => Err(CodecError::with_source(
                "not valid postcard for this type",
                e,
            )),
        }
    }
}

/// A decoded envelope.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened<'a> {
    /// A negative entry.
    Absent,
    /// A tombstone left by a versioned invalidation: a miss.
    Tombstone,
    /// A write-behind delete: "absent", like a negative entry.
    Deleted,
    /// A codec output, decompressed if it was compressed.
    Value(std::borrow::Cow<'a, [u8]>),
}

/// Wraps a codec output for storage: compresses it when it is at least
/// `compress_from` bytes long and compression actually saves space.
///
/// # Errors
///
/// When the codec output is empty or starts with the compression marker,
/// which would make it ambiguous.
pub(crate) fn seal(encoded: Vec<u8>, compress_from: Option<usize>) -> Result<Vec<u8>, CodecError> {
    match encoded.first() {
        None => return Err(CodecError::new("codec produced an empty value")),
        Some(&(LZ4_MARKER | VERSIONED_MARKER | TOMBSTONE_MARKER | DELETED_MARKER)) => {
            return Err(CodecError::new(
                "codec output starts with a reserved byte (0x02..=0x05)",
            ));
        }
        Some(_) => {}
    }
    let Some(threshold) = compress_from else {
        return Ok(encoded);
    };
    if encoded.len() < threshold || encoded.len() > MAX_DECOMPRESSED {
        return Ok(encoded);
    }
    let Ok(len) = u32::try_from(encoded.len()) else {
        return Ok(encoded);
    };
    let block = lz4_flex::block::compress(&encoded);
    if block.len() + 5 >= encoded.len() {
        return Ok(encoded);
    }
    let mut sealed = Vec::with_capacity(block.len() + 5);
    sealed.push(LZ4_MARKER);
    sealed.extend_from_slice(&len.to_le_bytes());
    sealed.extend_from_slice(&block);
    Ok(sealed)
}

/// Unwraps a stored value: recognizes negative entries and decompresses.
///
/// # Errors
///
/// When a compressed value is truncated, corrupt or claims an implausible size.
pub(crate) fn open(stored: &[u8]) -> Result<Opened<'_>, CodecError> {
    let Some((&first, rest)) = stored.split_first() else {
        return Ok(Opened::Absent);
    };
    match first {
        TOMBSTONE_MARKER => return Ok(Opened::Tombstone),
        DELETED_MARKER => return Ok(Opened::Deleted),
        VERSIONED_MARKER => {
            let Some(colon) = rest.iter().position(|&b| b == b':') else {
                return Err(CodecError::new("versioned value has no header end"));
            };
            let inner = &rest[colon + 1..];
            if inner.is_empty()
                || matches!(
                    inner[0],
                    VERSIONED_MARKER | TOMBSTONE_MARKER | DELETED_MARKER
                )
            {
                return Err(CodecError::new("versioned value wraps no value"));
            }
            return open(inner);
        }
        LZ4_MARKER => {}
        _ => return Ok(Opened::Value(std::borrow::Cow::Borrowed(stored))),
    }
    let Some((len_bytes, block)) = rest.split_first_chunk::<4>() else {
        return Err(CodecError::new("compressed value is truncated"));
    };
    let len = usize::try_from(u32::from_le_bytes(*len_bytes))
        .map_err(|_| CodecError::new("compressed value is too large"))?;
    if len == 0 || len > MAX_DECOMPRESSED || len > block.len().saturating_mul(MAX_LZ4_RATIO) + 16 {
        return Err(CodecError::new(
            "compressed value claims an implausible size",
        ));
    }
    let mut out = vec![0u8; len];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(written) if written == len => Ok(Opened::Value(std::borrow::Cow::Owned(out))),
        Ok(_) => Err(CodecError::new(
            "compressed value is shorter than its header says",
        )),
        Err(e) => Err(CodecError::with_source("compressed value is corrupt", e)),
    }
}

/// Marks a sealed value with its version where the guard script needs it:
/// values that do not start as JSON text get the `0x03` header; JSON text
/// (whose version the script reads itself) and negative entries (which
/// have none) stay as they are.
pub(crate) fn with_version(sealed: Vec<u8>, version: u64) -> Vec<u8> {
    match sealed.first() {
        Some(&first) if first < 0x09 => {
            let mut marked = Vec::with_capacity(sealed.len() + 22);
            marked.push(VERSIONED_MARKER);
            marked.extend_from_slice(version.to_string().as_bytes());
            marked.push(b':');
            marked.extend_from_slice(&sealed);
            marked
        }
        _ => sealed,
    }
}

/// The stored form of "copies older than `version` are stale".
pub(crate) fn tombstone(version: u64) -> Vec<u8> {
    marker_with_version(TOMBSTONE_MARKER, version)
}

/// The stored form of "deleted at `version`, not yet in the store".
pub(crate) fn deleted(version: u64) -> Vec<u8> {
    marker_with_version(DELETED_MARKER, version)
}

/// The version of a tombstone (see [`tombstone`]); `None` for anything else.
pub(crate) fn tombstone_version(stored: &[u8]) -> Option<u64> {
    let (&TOMBSTONE_MARKER, digits) = stored.split_first()? else {
        return None;
    };
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn marker_with_version(marker: u8, version: u64) -> Vec<u8> {
    let mut stored = vec![marker];
    stored.extend_from_slice(version.to_string().as_bytes());
    stored
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn tombstones_tell_their_version() {
        assert_eq!(tombstone_version(&tombstone(42)), Some(42));
        assert_eq!(tombstone_version(&deleted(42)), None);
        assert_eq!(tombstone_version(b"{}"), None);
        assert_eq!(tombstone_version(b""), None);
    }
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Product {
        id: i64,
        name: String,
        price: f64,
        tags: Vec<String>,
        note: Option<String>,
    }

    fn product(name_len: usize) -> Product {
        Product {
            id: -42,
            name: "x".repeat(name_len),
            price: 19.99,
            tags: vec!["a".into(), "ünïcödé".into()],
            note: None,
        }
    }

    fn round_trip<C: Codec<Product>>(codec: &C, compress_from: Option<usize>, value: &Product) {
        let sealed = seal(codec.encode(value).unwrap(), compress_from).unwrap();
        let Opened::Value(bytes) = open(&sealed).unwrap() else {
            panic!("a value opened as a negative entry");
        };
        assert_eq!(&codec.decode(&bytes).unwrap(), value);
    }

    #[test]
    fn every_codec_round_trips_with_and_without_compression() {
        let values = [product(0), product(10), product(5_000), product(200_000)];
        for value in &values {
            for compress_from in [None, Some(0), Some(1), Some(1_024), Some(usize::MAX)] {
                round_trip(&JsonCodec, compress_from, value);
                round_trip(&PostcardCodec, compress_from, value);
            }
        }
    }

    #[test]
    fn versioned_values_and_tombstones_open_as_values_and_misses() {
        let value = product(3);
        for compress_from in [None, Some(0)] {
            for codec in [&JsonCodec as &dyn Codec<Product>, &PostcardCodec] {
                let sealed = seal(codec.encode(&value).unwrap(), compress_from).unwrap();
                let marked = with_version(sealed.clone(), 17);
                if sealed[0] < 0x09 {
                    assert!(marked.starts_with(b"\x0317:"), "{marked:?}");
                } else {
                    assert_eq!(marked, sealed, "JSON text stays plain");
                }
                let Opened::Value(bytes) = open(&marked).unwrap() else {
                    panic!("a versioned value did not open as a value");
                };
                assert_eq!(codec.decode(&bytes).unwrap(), value);
            }
        }
        assert_eq!(with_version(Vec::new(), 3), Vec::<u8>::new());
        assert_eq!(open(&tombstone(9)).unwrap(), Opened::Tombstone);
        assert_eq!(open(&deleted(9)).unwrap(), Opened::Deleted);
        assert_eq!(tombstone(9), b"\x049");
        assert!(open(b"\x0312").is_err());
        assert!(open(b"\x0312:").is_err());
        assert!(open(b"\x0312:\x049").is_err());
    }

    #[test]
    fn json_codec_stores_plain_json() {
        let encoded = JsonCodec.encode(&product(3)).unwrap();
        let sealed = seal(encoded, None).unwrap();
        let text = std::str::from_utf8(&sealed).unwrap();
        assert!(text.starts_with(r#"{"id":-42,"name":"xxx""#), "{text}");
    }

    #[test]
    fn large_values_are_compressed_and_marked() {
        let encoded = JsonCodec.encode(&product(10_000)).unwrap();
        let plain_len = encoded.len();
        let sealed = seal(encoded, Some(1_024)).unwrap();
        assert_eq!(sealed[0], LZ4_MARKER);
        assert!(sealed.len() < plain_len / 10);
    }

    #[test]
    fn small_or_incompressible_values_stay_plain() {
        let small = seal(b"{\"a\":1}".to_vec(), Some(1_024)).unwrap();
        assert_eq!(small, b"{\"a\":1}");
        let noise: Vec<u8> = (0..4_096u32)
            .map(|i| u8::try_from(i.wrapping_mul(2_654_435_761) >> 24).unwrap())
            .map(|b| b.max(0x20))
            .collect();
        let sealed = seal(noise.clone(), Some(16)).unwrap();
        assert!(sealed == noise || sealed[0] == LZ4_MARKER);
    }

    #[test]
    fn markers_never_start_json() {
        let samples: Vec<Vec<u8>> = vec![
            JsonCodec.encode(&serde_json::json!({"a": 1})).unwrap(),
            JsonCodec.encode(&serde_json::json!([1, 2])).unwrap(),
            JsonCodec.encode(&serde_json::json!("s")).unwrap(),
            JsonCodec.encode(&serde_json::json!(-1)).unwrap(),
            JsonCodec.encode(&serde_json::json!(null)).unwrap(),
            JsonCodec.encode(&serde_json::json!(true)).unwrap(),
        ];
        for sample in samples {
            assert!(sample[0] > 0x08, "{sample:?}");
        }
    }

    #[test]
    fn empty_string_is_the_negative_marker() {
        assert_eq!(open(b"").unwrap(), Opened::Absent);
    }

    #[test]
    fn ambiguous_codec_output_is_refused() {
        assert!(seal(Vec::new(), None).is_err());
        assert!(seal(vec![LZ4_MARKER, 1, 2], None).is_err());
    }

    #[test]
    fn foreign_and_corrupt_values_are_errors_not_panics() {
        let json = JsonCodec.encode(&product(3)).unwrap();
        let postcard = PostcardCodec.encode(&product(3)).unwrap();
        let compressed = seal(JsonCodec.encode(&product(5_000)).unwrap(), Some(1)).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("json read as postcard", json.clone()),
            ("postcard read as json", postcard.clone()),
            (
                "truncated postcard",
                postcard[..postcard.len() / 2].to_vec(),
            ),
            (
                "postcard with trailing bytes",
                [postcard.clone(), vec![0]].concat(),
            ),
            ("plain text", b"hello world".to_vec()),
            ("truncated json", json[..json.len() - 1].to_vec()),
            ("lone marker", vec![POSTCARD_MARKER]),
            (
                "huge varint length",
                vec![POSTCARD_MARKER, 0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            ),
            ("invalid utf-8", vec![0xff, 0xfe, 0xfd]),
        ];
        for (what, bytes) in &cases {
            let Ok(Opened::Value(opened)) = open(bytes) else {
                panic!("{what}: should open as a plain value");
            };
            let as_json: Result<Product, _> = JsonCodec.decode(&opened);
            let as_postcard: Result<Product, _> = PostcardCodec.decode(&opened);
            let expected_ok = match *what {
                "json read as postcard" => (true, false),
                "postcard read as json" => (false, true),
                _ => (false, false),
            };
            assert_eq!(
                (as_json.is_ok(), as_postcard.is_ok()),
                expected_ok,
                "{what}"
            );
        }

        let envelopes: Vec<(&str, Vec<u8>)> = vec![
            ("lz4 marker only", vec![LZ4_MARKER]),
            ("lz4 short header", vec![LZ4_MARKER, 1, 0]),
            ("lz4 zero length", vec![LZ4_MARKER, 0, 0, 0, 0, 1]),
            (
                "lz4 absurd length",
                vec![LZ4_MARKER, 0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            ),
            (
                "lz4 truncated block",
                compressed[..compressed.len() / 2].to_vec(),
            ),
            (
                "lz4 garbage block",
                [&compressed[..5], &[0xff; 64][..]].concat(),
            ),
        ];
        for (what, bytes) in &envelopes {
            assert!(open(bytes).is_err(), "{what}");
        }
    }

    #[test]
    fn every_prefix_of_a_valid_value_fails_cleanly() {
        let values: BTreeMap<&str, Vec<u8>> = BTreeMap::from([
            (
                "json",
                seal(JsonCodec.encode(&product(300)).unwrap(), None).unwrap(),
            ),
            (
                "postcard",
                seal(PostcardCodec.encode(&product(300)).unwrap(), None).unwrap(),
            ),
            (
                "lz4",
                seal(JsonCodec.encode(&product(3_000)).unwrap(), Some(1)).unwrap(),
            ),
        ]);
        for (what, full) in &values {
            for cut in 1..full.len() {
                let decoded = open(&full[..cut]).ok().and_then(|opened| match opened {
                    Opened::Absent | Opened::Tombstone | Opened::Deleted => None,
                    Opened::Value(b) => {
                        let json: Option<Product> = JsonCodec.decode(&b).ok();
                        let postcard: Option<Product> = PostcardCodec.decode(&b).ok();
                        json.or(postcard)
                    }
                });
                assert!(decoded.is_none(), "{what} cut at {cut} decoded");
            }
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(testkit::fuzz_config())]

            /// Whatever Redis holds, opening and decoding it is a value or
            /// an error, never a panic; a value that decodes as JSON
            /// survives sealing and opening again unchanged.
            #[test]
            fn stored_bytes_open_and_decode_or_fail_cleanly(stored in testkit::corpus_input(env!("CARGO_MANIFEST_DIR"), "codec")) {
                let Ok(Opened::Value(bytes)) = open(&stored) else {
                    return Ok(());
                };
                let _ = <PostcardCodec as Codec<Product>>::decode(&PostcardCodec, &bytes);
                if let Ok(value) = <JsonCodec as Codec<serde_json::Value>>::decode(&JsonCodec, &bytes) {
                    let encoded = JsonCodec.encode(&value).unwrap();
                    for compress_from in [None, Some(1)] {
                        let Ok(sealed) = seal(encoded.clone(), compress_from) else {
                            continue; // a JSON text starting with a reserved byte
                        };
                        let Opened::Value(again) = open(&sealed).unwrap() else {
                            panic!("a sealed value opened as a marker");
                        };
                        let decoded: serde_json::Value = JsonCodec.decode(&again).unwrap();
                        prop_assert_eq!(&decoded, &value);
                    }
                }
            }

            /// Any value of the test type round-trips through both codecs,
            /// compressed or not, versioned or not.
            #[test]
            fn any_value_round_trips(
                id in any::<i64>(),
                name in any::<String>(),
                tags in prop::collection::vec(any::<String>(), 0..4),
                note in any::<Option<String>>(),
                version in any::<u64>(),
                compress_from in prop::option::of(0usize..64),
            ) {
                let value = Product { id, name, price: 19.99, tags, note };
                for codec in [&JsonCodec as &dyn Codec<Product>, &PostcardCodec] {
                    let sealed = seal(codec.encode(&value).unwrap(), compress_from).unwrap();
                    let stored = with_version(sealed, version);
                    let Opened::Value(bytes) = open(&stored).unwrap() else {
                        panic!("a value opened as a marker");
                    };
                    prop_assert_eq!(&codec.decode(&bytes).unwrap(), &value);
                }
            }
        }
    }
}

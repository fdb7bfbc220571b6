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
//! Decoding never panics and never allocates more than `lz4::MAX_DECOMPRESSED`
//! on behalf of a corrupt length header.

use std::error::Error as StdError;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First byte of a [`PostcardCodec`] value.
#[cfg(feature = "postcard")]
pub(crate) const POSTCARD_MARKER: u8 = 0x01;
/// First byte of an LZ4-compressed value.
pub(crate) const LZ4_MARKER: u8 = 0x02;
/// First byte of a value carrying its version in a header.
pub(crate) const VERSIONED_MARKER: u8 = 0x03;
/// First byte of a tombstone.
pub(crate) const TOMBSTONE_MARKER: u8 = 0x04;
/// First byte of a write-behind delete.
pub(crate) const DELETED_MARKER: u8 = 0x05;

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

    /// Bytes `value` takes in memory, for L1's byte bound; `encoded_len` is
    /// the length of its encoding.
    ///
    /// The default is `encoded_len`, a fair stand-in for most values. A
    /// codec whose values have a known layout (a rendered response kept in
    /// one allocation, say) can return their real size, so that
    /// `l1_max_bytes` bounds memory closely. L1 adds its own cost per entry
    /// on top.
    fn weigh(&self, _value: &V, encoded_len: usize) -> usize {
        encoded_len
    }
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
/// other client can read it.
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

#[cfg(feature = "redis")]
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
#[cfg_attr(not(feature = "compression"), expect(unused_variables))]
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
    #[cfg(feature = "compression")]
    if let Some(threshold) = compress_from {
        return Ok(lz4::compress(encoded, threshold));
    }
    Ok(encoded)
}

#[cfg(feature = "redis")]
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
        TOMBSTONE_MARKER => Ok(Opened::Tombstone),
        DELETED_MARKER => Ok(Opened::Deleted),
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
            open(inner)
        }
        #[cfg(feature = "compression")]
        LZ4_MARKER => {
            lz4::decompress(rest).map(|value| Opened::Value(std::borrow::Cow::Owned(value)))
        }
        #[cfg(not(feature = "compression"))]
        LZ4_MARKER => Err(CodecError::new(
            "compressed value, and tiercache was built without its `compression` feature",
        )),
        _ => Ok(Opened::Value(std::borrow::Cow::Borrowed(stored))),
    }
}

#[cfg(feature = "redis")]
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

#[cfg(feature = "redis")]
/// The stored form of "copies older than `version` are stale".
pub(crate) fn tombstone(version: u64) -> Vec<u8> {
    marker_with_version(TOMBSTONE_MARKER, version)
}

#[cfg(feature = "redis")]
/// The stored form of "deleted at `version`, not yet in the store".
pub(crate) fn deleted(version: u64) -> Vec<u8> {
    marker_with_version(DELETED_MARKER, version)
}

#[cfg(feature = "redis")]
/// The version of a tombstone (see [`tombstone`]); `None` for anything else.
pub(crate) fn tombstone_version(stored: &[u8]) -> Option<u64> {
    let (&TOMBSTONE_MARKER, digits) = stored.split_first()? else {
        return None;
    };
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(feature = "redis")]
fn marker_with_version(marker: u8, version: u64) -> Vec<u8> {
    let mut stored = vec![marker];
    stored.extend_from_slice(version.to_string().as_bytes());
    stored
}

#[cfg(feature = "compression")]
mod lz4;
#[cfg(feature = "postcard")]
mod postcard;
#[cfg(feature = "postcard")]
pub use postcard::PostcardCodec;

// The tests cover every codec and compression.
#[cfg(test)]
#[cfg(all(feature = "compression", feature = "postcard"))]
mod tests;

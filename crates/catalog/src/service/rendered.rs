//! [`RenderedProduct`]: a product's response body and ETag, rendered once
//! when it enters the cache so that a cache hit only clones a
//! reference-counted buffer; and [`RenderedCodec`], which stores that body
//! in Redis as it is.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use tiercache::{Codec, CodecError};

use crate::domain::{Etag, Price, Product};

/// A product's `ETag` and JSON body, ready to send; nothing else.
///
/// This is what L1 holds per product, so it holds only the bytes a response
/// needs: the parsed [`Product`] is rebuilt from the body on the rare paths
/// that want fields ([`product`](Self::product): writes, batches), and the
/// version is read back from the ETag. Keeping the parsed product beside the
/// body tripled the memory per entry (its three strings are three more
/// allocations, and the struct doubled the buffer's).
///
/// ETag and body are one buffer. Up to [`INLINE`] bytes (every seed product
/// but the longest) it lives inside the struct, so inside the `Arc`'s
/// allocation: the hit path touches one allocation, whose reference count
/// it has just incremented, and the ETag sits in that cache line. A
/// response takes the bytes through [`response_parts`](Self::response_parts),
/// which shares them with the `Arc` rather than copying them.
#[derive(Clone)]
pub struct RenderedProduct {
    rendered: Buffer,
}

/// The most ETag and body bytes kept inline: the struct is then 296 bytes
/// and the `Arc`'s allocation (two counts and the struct) 312, which
/// mimalloc serves from its 320-byte size class. Not 320 exactly: the
/// `mimalloc` crate allocates through `mi_malloc_aligned`, which, when the
/// class's current page has no free block, asks for `size + align - 1`
/// bytes, so a 320-byte allocation aligned to 8 mostly lands in the 384-byte
/// class (measured: 394 B of RSS per 320-byte allocation aligned to 8, 329 B
/// per 304-byte one).
/// Larger renderings go to the heap: 0.6 % of the seed's products (ETag and
/// body are 233–307 bytes, median 266).
const INLINE: usize = 292;
/// The size class the `Arc` of a [`RenderedProduct`] is served from.
const ARC_SIZE_CLASS: usize = 320;

/// ETag and body bytes: inline when they fit, else on the heap. `body_start`
/// (where the body starts, after the ETag) lives in each variant so that it
/// shares the padding of the tag.
#[derive(Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "inline is the point: the bytes share the Arc's allocation"
)]
enum Buffer {
    Inline {
        body_start: u8,
        len: u16,
        bytes: [u8; INLINE],
    },
    Heap {
        body_start: u8,
        bytes: Box<[u8]>,
    },
}

impl Buffer {
    /// `etag` then `body`. An ETag is two integers, quoted: at most 43 bytes.
    fn new(etag: &[u8], body: &[u8]) -> Self {
        let body_start = u8::try_from(etag.len()).expect("an ETag is two quoted integers");
        let len = etag.len() + body.len();
        if len <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..etag.len()].copy_from_slice(etag);
            bytes[etag.len()..len].copy_from_slice(body);
            let len = u16::try_from(len).expect("INLINE fits in a u16");
            Self::Inline {
                body_start,
                len,
                bytes,
            }
        } else {
            Self::Heap {
                body_start,
                bytes: [etag, body].concat().into_boxed_slice(),
            }
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes, .. } => &bytes[..usize::from(*len)],
            Self::Heap { bytes, .. } => bytes,
        }
    }

    fn body_start(&self) -> usize {
        match self {
            Self::Inline { body_start, .. } | Self::Heap { body_start, .. } => {
                usize::from(*body_start)
            }
        }
    }

    /// Bytes this buffer holds beyond the struct itself.
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Inline { .. } => 0,
            Self::Heap { bytes, .. } => bytes.len(),
        }
    }
}

impl RenderedProduct {
    /// Renders `product`'s body and ETag.
    pub fn new(product: &Product) -> Self {
        let body = serde_json::to_vec(product).expect("a product always serialises");
        Self::with_etag(&product.etag(), &body)
    }

    /// Pairs a product's `etag` with `body`, which must be its JSON.
    fn with_etag(etag: &Etag, body: &[u8]) -> Self {
        Self {
            rendered: Buffer::new(etag.as_bytes(), body),
        }
    }

    /// The product, parsed back from its body: an allocation per string
    /// field, so for writes and batches, not for the hit path.
    pub fn product(&self) -> Product {
        serde_json::from_slice(self.body()).expect("a rendered body is a product's JSON")
    }

    /// The JSON body as a raw JSON value, to embed in a larger response
    /// without parsing it into a product (a scan of the bytes, no copy).
    pub fn json(&self) -> &RawValue {
        serde_json::from_slice(self.body()).expect("a rendered body is a product's JSON")
    }

    /// The product's version, read back from the ETag (`"id-version"`).
    pub fn version(&self) -> i64 {
        let etag = self.etag();
        let inner = &etag[1..etag.len() - 1];
        let dash = inner
            .iter()
            .rposition(|&b| b == b'-')
            .expect("an ETag is \"id-version\"");
        std::str::from_utf8(&inner[dash + 1..])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .expect("an ETag's version is an integer")
    }

    /// The JSON body.
    pub fn body(&self) -> &[u8] {
        &self.rendered.as_slice()[self.rendered.body_start()..]
    }

    /// The quoted `ETag`.
    pub fn etag(&self) -> &[u8] {
        &self.rendered.as_slice()[..self.rendered.body_start()]
    }

    /// Bytes one cached product takes in memory: the `Arc`'s allocation as
    /// mimalloc serves it (the 320-byte class, see [`INLINE`]) and any heap
    /// buffer. What L1's byte bound counts, through [`RenderedCodec`].
    pub fn memory_bytes(&self) -> usize {
        ARC_SIZE_CLASS + self.rendered.heap_bytes()
    }

    /// The quoted ETag and the JSON body of a response, both sharing
    /// `this` (no copy; one allocation, the `Bytes` owner's).
    ///
    /// Plain bytes rather than an HTTP header: the service hands out data
    /// and `http/` builds the `ETag` header from them with `from_maybe_shared`,
    /// which keeps sharing this buffer. That costs what building the header
    /// here did (one check of the ETag's few bytes per response), so the hit
    /// path does no more work for it.
    pub fn response_parts(this: Arc<Self>) -> (Bytes, Bytes) {
        let body_start = this.rendered.body_start();
        let mut body = Bytes::from_owner(Rendered(this));
        let etag = body.split_to(body_start);
        (etag, body)
    }
}

/// A shared [`RenderedProduct`] as the owner of a response's bytes.
struct Rendered(Arc<RenderedProduct>);

impl AsRef<[u8]> for Rendered {
    fn as_ref(&self) -> &[u8] {
        self.0.rendered.as_slice()
    }
}

impl fmt::Debug for RenderedProduct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedProduct")
            .field("etag", &String::from_utf8_lossy(self.etag()))
            .finish_non_exhaustive()
    }
}

impl Serialize for RenderedProduct {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.product().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RenderedProduct {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Product::deserialize(deserializer).map(|product| Self::new(&product))
    }
}

/// The product cache's L2 codec: plain product JSON, like `JsonCodec`
/// (any client can read it), but without serialising twice: it stores the
/// rendered body as it is, and keeps the stored bytes as the body when it
/// reads one back (after checking that they are a valid product). It weighs
/// a product by what it takes in memory, so L1's byte bound is a bound on
/// memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderedCodec;

impl Codec<RenderedProduct> for RenderedCodec {
    fn encode(&self, value: &RenderedProduct) -> Result<Vec<u8>, CodecError> {
        Ok(value.body().to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> Result<RenderedProduct, CodecError> {
        let stored: StoredProduct<'_> = serde_json::from_slice(bytes)
            .map_err(|e| CodecError::with_source("not a product's JSON", e))?;
        Ok(RenderedProduct::with_etag(
            &Etag::new(stored.id, stored.version),
            bytes,
        ))
    }

    fn weigh(&self, value: &RenderedProduct, _encoded_len: usize) -> usize {
        value.memory_bytes()
    }
}

/// A [`Product`] as [`RenderedCodec::decode`] checks it: the same fields,
/// types and rules (unknown fields refused), with the strings borrowed from
/// the bytes read rather than copied into three `String`s that would be
/// dropped at once. The fuzz test below holds the two to accepting the same
/// bytes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "fields other than id and version are only checked"
)]
struct StoredProduct<'a> {
    id: i64,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    description: Cow<'a, str>,
    price: Price,
    #[serde(borrow)]
    category: Cow<'a, str>,
    in_stock: bool,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::Price;

    fn product() -> Product {
        Product {
            id: 7,
            name: "Widget".into(),
            description: String::new(),
            price: Price::from_cents(1999).unwrap(),
            category: "tools".into(),
            in_stock: true,
            version: 3,
            created_at: Utc::now(),
            updated_at: None,
        }
    }

    #[test]
    fn body_is_the_product_json_and_etag_its_revision() {
        let product = product();

        let rendered = RenderedProduct::new(&product);

        assert_eq!(rendered.body(), &serde_json::to_vec(&product).unwrap()[..]);
        assert_eq!(rendered.etag(), b"\"7-3\"");
    }

    #[test]
    fn serialises_as_the_plain_product_and_back() {
        let rendered = RenderedProduct::new(&product());

        let json = serde_json::to_vec(&rendered).unwrap();
        let back: RenderedProduct = serde_json::from_slice(&json).unwrap();

        assert_eq!(json, rendered.body());
        assert_eq!(back.product(), rendered.product());
        assert_eq!(back.body(), rendered.body());
    }

    #[test]
    fn the_codec_stores_the_body_and_reads_it_back() {
        let rendered = RenderedProduct::new(&product());

        let stored = RenderedCodec.encode(&rendered).unwrap();
        let back = RenderedCodec.decode(&stored).unwrap();

        assert_eq!(stored, rendered.body());
        assert_eq!(back.product(), rendered.product());
        assert_eq!(back.etag(), rendered.etag());
    }

    #[test]
    fn response_parts_are_the_etag_and_the_body() {
        let rendered = Arc::new(RenderedProduct::new(&product()));

        let (etag, body) = RenderedProduct::response_parts(Arc::clone(&rendered));

        assert_eq!(etag, "\"7-3\"");
        assert_eq!(body, rendered.body());
    }

    #[test]
    fn an_arc_of_a_rendered_product_fits_mimallocs_320_byte_class() {
        // The reference counts, then the struct, then the slack of an
        // aligned allocation: see `INLINE`.
        let arc = 2 * size_of::<usize>() + size_of::<RenderedProduct>();
        assert!(
            arc + align_of::<RenderedProduct>() - 1 <= ARC_SIZE_CLASS,
            "{arc}"
        );
        assert!(
            arc + align_of::<RenderedProduct>() - 1 > 256,
            "{arc}: a smaller class"
        );
        assert_eq!(
            RenderedProduct::new(&product()).memory_bytes(),
            ARC_SIZE_CLASS
        );
    }

    #[test]
    fn the_version_is_read_back_from_the_etag() {
        let mut product = product();
        for (id, version) in [(7, 3), (1, 1), (i64::MAX, i64::MAX)] {
            (product.id, product.version) = (id, version);
            assert_eq!(RenderedProduct::new(&product).version(), version);
        }
    }

    #[test]
    fn a_body_too_large_to_keep_inline_is_kept_whole() {
        let mut product = product();
        product.description = "long ".repeat(200);
        let json = serde_json::to_vec(&product).unwrap();
        assert!(json.len() > INLINE);

        let rendered = Arc::new(RenderedProduct::new(&product));
        let (etag, body) = RenderedProduct::response_parts(Arc::clone(&rendered));

        assert_eq!(rendered.body(), &json[..]);
        assert_eq!(rendered.memory_bytes(), ARC_SIZE_CLASS + 5 + json.len());
        assert_eq!(rendered.product(), product);
        assert_eq!(body, json);
        assert_eq!(etag, "\"7-3\"");
    }

    #[test]
    fn the_codec_rejects_what_is_not_a_product() {
        for bad in [
            &b"{not json"[..],
            b"[1,2]",
            b"{\"id\":1}",
            &[0x01, 0xff][..],
        ] {
            assert!(RenderedCodec.decode(bad).is_err(), "{bad:?}");
        }
        let mut extra = serde_json::to_value(product()).unwrap();
        extra["secret"] = serde_json::json!("x");
        assert!(RenderedCodec.decode(extra.to_string().as_bytes()).is_err());
    }

    mod fuzz {
        use std::path::Path;

        use proptest::prelude::*;

        use super::*;

        /// Product bodies: what Redis holds for a product.
        fn corpus() -> Vec<Vec<u8>> {
            let mut corpus = vec![serde_json::to_vec(&product()).unwrap()];
            corpus.extend(testkit::corpus(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/product_body"),
            ));
            corpus
        }

        proptest! {
            #![proptest_config(testkit::fuzz_config())]

            /// Whatever Redis holds under a product key decodes to a product
            /// served with exactly those bytes, or is refused; and it is
            /// refused exactly when it is not a [`Product`]'s JSON.
            #[test]
            fn stored_bytes_decode_to_a_product_served_as_stored_or_fail(
                stored in testkit::fuzz_input(corpus()),
            ) {
                let as_product = serde_json::from_slice::<Product>(&stored);
                let decoded = RenderedCodec.decode(&stored);
                prop_assert_eq!(decoded.is_ok(), as_product.is_ok());
                if let Ok(rendered) = decoded {
                    prop_assert_eq!(rendered.body(), stored.as_slice());
                    let product = rendered.product();
                    prop_assert_eq!(rendered.version(), product.version);
                    let etag = product.etag();
                    prop_assert_eq!(rendered.etag(), etag.as_bytes());
                }
            }
        }
    }
}

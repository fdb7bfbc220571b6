//! [`RenderedProduct`]: a product together with its response body and ETag,
//! rendered once when it enters the cache so that a cache hit only clones
//! reference-counted buffers; and [`RenderedCodec`], which stores that body
//! in Redis as it is.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tiercache::{Codec, CodecError};

use crate::domain::Product;

/// A product with its `ETag` and JSON body, ready to send.
///
/// ETag and body are one buffer, and the buffer is the first field
/// (`repr(C)`). Up to `INLINE` bytes (a product with a short description;
/// the seed's products are 235 to 307 bytes) the buffer is stored inside the
/// struct, so inside the allocation of the `Arc` that L1 hands out: on the
/// hit path the ETag sits in the cache line of the reference count the hit
/// has just incremented, and the body follows it. A separate buffer would
/// be one more memory location to fetch per hit, and with 100,000 products
/// in L1 each one is a likely cache miss. A response takes the bytes
/// through [`response_parts`](Self::response_parts), which shares them with
/// the `Arc` rather than copying them.
#[derive(Clone)]
#[repr(C)]
pub struct RenderedProduct {
    /// The quoted ETag, then the JSON body.
    rendered: Buffer,
    /// Where the body starts in `rendered`.
    body_start: usize,
    product: Product,
}

/// The largest ETag and body kept inline: with the product beside it, the
/// `Arc`'s allocation (472 bytes) stays within mimalloc's 512-byte size
/// class. A smaller product still takes the whole array; a seed product
/// took two allocations before, in the 192-byte class and the 256- or
/// 320-byte one, so memory per entry is about the same.
const INLINE: usize = 312;

/// ETag and body bytes: inline when they fit, else on the heap.
#[derive(Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "inline is the point: the bytes share the Arc's allocation"
)]
enum Buffer {
    Inline { len: u16, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Buffer {
    fn new(parts: [&[u8]; 2]) -> Self {
        let len = parts[0].len() + parts[1].len();
        if len <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..parts[0].len()].copy_from_slice(parts[0]);
            bytes[parts[0].len()..len].copy_from_slice(parts[1]);
            let len = u16::try_from(len).expect("INLINE fits in a u16");
            Self::Inline { len, bytes }
        } else {
            Self::Heap(parts.concat().into_boxed_slice())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(bytes) => bytes,
        }
    }
}

impl RenderedProduct {
    /// Renders `product`'s body and ETag.
    pub fn new(product: Product) -> Self {
        let body = serde_json::to_vec(&product).expect("a product always serialises");
        Self::with_body(product, &body)
    }

    /// Pairs `product` with `body`, which must be its JSON.
    fn with_body(product: Product, body: &[u8]) -> Self {
        let etag = product.etag();
        Self {
            rendered: Buffer::new([etag.as_bytes(), body]),
            body_start: etag.len(),
            product,
        }
    }

    pub fn product(&self) -> &Product {
        &self.product
    }

    /// The JSON body.
    pub fn body(&self) -> &[u8] {
        &self.rendered.as_slice()[self.body_start..]
    }

    /// The quoted `ETag`.
    pub fn etag(&self) -> &[u8] {
        &self.rendered.as_slice()[..self.body_start]
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
        let body_start = this.body_start;
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
            .field("id", &self.product.id)
            .field("version", &self.product.version)
            .finish_non_exhaustive()
    }
}

impl Serialize for RenderedProduct {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.product.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RenderedProduct {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Product::deserialize(deserializer).map(Self::new)
    }
}

/// The product cache's L2 codec: plain product JSON, like `JsonCodec`
/// (any client can read it), but without serialising twice: it stores the
/// rendered body as it is, and keeps the stored bytes as the body when it
/// reads one back (after checking that they are a valid product).
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderedCodec;

impl Codec<RenderedProduct> for RenderedCodec {
    fn encode(&self, value: &RenderedProduct) -> Result<Vec<u8>, CodecError> {
        Ok(value.body().to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> Result<RenderedProduct, CodecError> {
        let product: Product = serde_json::from_slice(bytes)
            .map_err(|e| CodecError::with_source("not a product's JSON", e))?;
        Ok(RenderedProduct::with_body(product, bytes))
    }
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

        let rendered = RenderedProduct::new(product.clone());

        assert_eq!(rendered.body(), &serde_json::to_vec(&product).unwrap()[..]);
        assert_eq!(rendered.etag(), b"\"7-3\"");
    }

    #[test]
    fn serialises_as_the_plain_product_and_back() {
        let rendered = RenderedProduct::new(product());

        let json = serde_json::to_vec(&rendered).unwrap();
        let back: RenderedProduct = serde_json::from_slice(&json).unwrap();

        assert_eq!(json, rendered.body());
        assert_eq!(back.product(), rendered.product());
        assert_eq!(back.body(), rendered.body());
    }

    #[test]
    fn the_codec_stores_the_body_and_reads_it_back() {
        let rendered = RenderedProduct::new(product());

        let stored = RenderedCodec.encode(&rendered).unwrap();
        let back = RenderedCodec.decode(&stored).unwrap();

        assert_eq!(stored, rendered.body());
        assert_eq!(back.product(), rendered.product());
        assert_eq!(back.etag(), rendered.etag());
    }

    #[test]
    fn response_parts_are_the_etag_and_the_body() {
        let rendered = Arc::new(RenderedProduct::new(product()));

        let (etag, body) = RenderedProduct::response_parts(Arc::clone(&rendered));

        assert_eq!(etag, "\"7-3\"");
        assert_eq!(body, rendered.body());
    }

    #[test]
    fn an_arc_of_a_rendered_product_fits_in_512_bytes() {
        // The reference counts, then the struct: see `INLINE`.
        assert!(2 * size_of::<usize>() + size_of::<RenderedProduct>() <= 512);
    }

    #[test]
    fn a_body_too_large_to_keep_inline_is_kept_whole() {
        let mut product = product();
        product.description = "long ".repeat(200);
        let json = serde_json::to_vec(&product).unwrap();
        assert!(json.len() > INLINE);

        let rendered = Arc::new(RenderedProduct::new(product));
        let (etag, body) = RenderedProduct::response_parts(Arc::clone(&rendered));

        assert_eq!(rendered.body(), &json[..]);
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
            /// served with exactly those bytes, or is refused.
            #[test]
            fn stored_bytes_decode_to_a_product_served_as_stored_or_fail(
                stored in testkit::fuzz_input(corpus()),
            ) {
                if let Ok(rendered) = RenderedCodec.decode(&stored) {
                    prop_assert_eq!(rendered.body(), stored.as_slice());
                    let product = rendered.product();
                    let etag = crate::domain::etag_for(product.id, product.version);
                    prop_assert_eq!(rendered.etag(), etag.as_bytes());
                }
            }
        }
    }
}

//! [`RenderedProduct`]: a product together with its response body and ETag,
//! rendered once when it enters the cache so that a cache hit only clones
//! reference-counted buffers; and [`RenderedCodec`], which stores that body
//! in Redis as it is.

use std::fmt;

use axum::http::HeaderValue;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tiercache::{Codec, CodecError};

use crate::domain::Product;

/// A product with its JSON body and `ETag` header, ready to send.
///
/// Body and ETag share one buffer (`ETag` then body), so that a cache hit
/// touches one reference count instead of two: on the hit path each
/// separate allocation is a likely cache miss. Both are kept as the values
/// a response needs, so a hit neither slices nor validates anything.
#[derive(Clone)]
pub struct RenderedProduct {
    /// The JSON body.
    body: Bytes,
    /// The quoted ETag, a slice of the same buffer.
    etag: HeaderValue,
    product: Product,
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
        let mut rendered = BytesMut::with_capacity(etag.len() + body.len());
        rendered.put_slice(etag.as_bytes());
        rendered.put_slice(body);
        let mut body = rendered.freeze();
        let etag = HeaderValue::from_maybe_shared(body.split_to(etag.len()))
            .expect("an ETag built from two integers is a valid header");
        Self {
            body,
            etag,
            product,
        }
    }

    pub fn product(&self) -> &Product {
        &self.product
    }

    /// The JSON body, sharing this product's buffer.
    pub fn body(&self) -> Bytes {
        self.body.clone()
    }

    /// The quoted `ETag`, sharing this product's buffer.
    pub fn etag(&self) -> HeaderValue {
        self.etag.clone()
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
        Ok(value.body.to_vec())
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
        assert_eq!(rendered.etag(), "\"7-3\"");
    }

    #[test]
    fn serialises_as_the_plain_product_and_back() {
        let rendered = RenderedProduct::new(product());

        let json = serde_json::to_vec(&rendered).unwrap();
        let back: RenderedProduct = serde_json::from_slice(&json).unwrap();

        assert_eq!(json, rendered.body().to_vec());
        assert_eq!(back.product(), rendered.product());
        assert_eq!(back.body(), rendered.body());
    }

    #[test]
    fn the_codec_stores_the_body_and_reads_it_back() {
        let rendered = RenderedProduct::new(product());

        let stored = RenderedCodec.encode(&rendered).unwrap();
        let back = RenderedCodec.decode(&stored).unwrap();

        assert_eq!(stored, rendered.body().to_vec());
        assert_eq!(back.product(), rendered.product());
        assert_eq!(back.etag(), rendered.etag());
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
}

//! [`RenderedProduct`]: a product together with its response body and ETag,
//! rendered once when it enters the cache so that a cache hit only clones
//! two reference-counted buffers.

use std::fmt;

use axum::http::HeaderValue;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::Product;

/// A product with its JSON body and `ETag` header, ready to send.
///
/// It serialises as the plain product (so L2 holds the same JSON any client
/// can read) and renders body and ETag again when deserialised from L2.
#[derive(Clone)]
pub struct RenderedProduct {
    product: Product,
    body: Bytes,
    etag: HeaderValue,
}

impl RenderedProduct {
    /// Renders `product`'s body and ETag.
    pub fn new(product: Product) -> Self {
        let body = Bytes::from(serde_json::to_vec(&product).expect("a product always serialises"));
        let etag = HeaderValue::from_str(&product.etag())
            .expect("an ETag built from two integers is a valid header");
        Self {
            product,
            body,
            etag,
        }
    }

    pub fn product(&self) -> &Product {
        &self.product
    }

    /// The JSON body; cloning it shares the buffer.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The quoted `ETag`; cloning it shares the buffer.
    pub fn etag(&self) -> &HeaderValue {
        &self.etag
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
}

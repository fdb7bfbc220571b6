//! [`RenderedProduct`]: a product as L1 holds it, the JSON text of its
//! values rendered once when it enters the cache; and [`RenderedCodec`],
//! which stores its body in Redis as plain product JSON.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use tiercache::{Codec, CodecError};

use crate::domain::{Price, Product};

/// A product's JSON body and `ETag`, as the text of its values without the
/// field names.
///
/// This is what L1 holds per product, so it holds as little as a response
/// can be built from. The field names and punctuation of a body are the
/// same for every product: 102 of a seed product's 257 bytes on average.
/// Leaving them out (and building the ETag from the id and version) puts a
/// cached product in one allocation of mimalloc's 224-byte class rather
/// than its 320-byte one, which is what L1 memory per product is made of
/// (`bench/memory.sh`). The price is paid on a hit: body and ETag are
/// written out (18 and 5 copies of a few bytes, into two exact-size
/// buffers) instead of sharing a stored buffer, 400–750 instructions of a
/// request's ~20,500 (`bench/instructions.sh`).
///
/// The parsed [`Product`] is rebuilt from the body on the rare paths that
/// want fields ([`product`](Self::product): writes and write-behind).
#[derive(Clone)]
pub struct RenderedProduct {
    values: Values,
}

/// How many fields a product's JSON has.
const FIELDS: usize = 9;
/// What comes before each value in a product's JSON body, in [`Product`]'s
/// field order and as serde_json writes it (no spaces). The body ends with
/// `}`.
const KEYS: [&[u8]; FIELDS] = [
    b"{\"id\":",
    b",\"name\":",
    b",\"description\":",
    b",\"price\":",
    b",\"category\":",
    b",\"in_stock\":",
    b",\"version\":",
    b",\"created_at\":",
    b",\"updated_at\":",
];
/// Where the id is in [`KEYS`].
const ID: usize = 0;
/// Where the version is in [`KEYS`].
const VERSION: usize = 6;
/// The bytes of a body other than its values: [`KEYS`] and the closing `}`.
const KEYS_LEN: usize = {
    let mut len = 1;
    let mut i = 0;
    while i < FIELDS {
        len += KEYS[i].len();
        i += 1;
    }
    len
};

/// The most value bytes kept inline: the struct is then 200 bytes and the
/// `Arc`'s allocation (two counts and the struct) 216, which mimalloc
/// serves from its 224-byte size class. Not 224 exactly: the `mimalloc`
/// crate allocates through `mi_malloc_aligned`, which, when the class's
/// current page has no free block, asks for `size + align - 1` bytes, so a
/// full-class allocation aligned to 8 mostly lands in the next class
/// (measured: 394 B of RSS per 320-byte allocation aligned to 8, 329 B per
/// 304-byte one). Larger values go to the heap: products whose body is over
/// 292 bytes (under 0.1 % of the seed's, by L1's reported bytes).
const INLINE: usize = 190;
/// The size class the `Arc` of a [`RenderedProduct`] is served from.
const ARC_SIZE_CLASS: usize = 224;

/// The values' JSON text, one after another, and where each but the last
/// ends: inline when they fit, else on the heap.
#[derive(Clone)]
enum Values {
    Inline {
        len: u8,
        ends: [u8; FIELDS - 1],
        bytes: [u8; INLINE],
    },
    Heap {
        ends: [u32; FIELDS - 1],
        bytes: Box<[u8]>,
    },
}

impl Values {
    fn new(values: [&[u8]; FIELDS]) -> Self {
        let mut ends = [0; FIELDS - 1];
        let mut len = 0;
        for (end, value) in ends.iter_mut().zip(&values) {
            len += value.len();
            *end = len;
        }
        len += values[FIELDS - 1].len();
        if len <= INLINE {
            let mut bytes = [0; INLINE];
            let mut at = 0;
            for value in values {
                bytes[at..at + value.len()].copy_from_slice(value);
                at += value.len();
            }
            Self::Inline {
                len: u8::try_from(len).expect("INLINE fits in a u8"),
                ends: ends.map(|end| u8::try_from(end).expect("INLINE fits in a u8")),
                bytes,
            }
        } else {
            Self::Heap {
                ends: ends.map(|end| u32::try_from(end).expect("a product is under 4 GiB")),
                bytes: values.concat().into_boxed_slice(),
            }
        }
    }

    /// Each value's JSON text, in [`KEYS`]' order.
    fn get(&self) -> [&[u8]; FIELDS] {
        match self {
            Self::Inline { len, ends, bytes } => {
                split(&bytes[..usize::from(*len)], ends.map(usize::from))
            }
            Self::Heap { ends, bytes } => split(bytes, ends.map(|end| end as usize)),
        }
    }

    /// Bytes held beyond the struct itself.
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Inline { .. } => 0,
            Self::Heap { bytes, .. } => bytes.len(),
        }
    }
}

/// A value's JSON text as written.
fn text(value: &RawValue) -> &[u8] {
    value.get().as_bytes()
}

fn split(bytes: &[u8], ends: [usize; FIELDS - 1]) -> [&[u8]; FIELDS] {
    std::array::from_fn(|i| {
        let start = if i == 0 { 0 } else { ends[i - 1] };
        let end = ends.get(i).copied().unwrap_or(bytes.len());
        &bytes[start..end]
    })
}

impl RenderedProduct {
    /// Renders `product`'s values.
    pub fn new(product: &Product) -> Self {
        let json = serde_json::to_vec(product).expect("a product always serialises");
        let fields: Fields<'_> =
            serde_json::from_slice(&json).expect("a product's JSON has a product's fields");
        Self::from_fields(&fields, product.id, product.version)
    }

    /// Keeps the values of `fields` as written, except the id and version,
    /// which are written out again from `id` and `version`, so that the ETag
    /// built from their text is always [`Etag::new`](crate::domain::Etag::new)'s.
    fn from_fields(fields: &Fields<'_>, id: i64, version: i64) -> Self {
        let mut id_digits = itoa::Buffer::new();
        let mut version_digits = itoa::Buffer::new();
        let values = [
            id_digits.format(id).as_bytes(),
            text(fields.name),
            text(fields.description),
            text(fields.price),
            text(fields.category),
            text(fields.in_stock),
            version_digits.format(version).as_bytes(),
            text(fields.created_at),
            fields.updated_at.map_or(b"null", text),
        ];
        Self {
            values: Values::new(values),
        }
    }

    /// The product, parsed back from its body: an allocation per string
    /// field, so for writes, not for the hit path.
    pub fn product(&self) -> Product {
        serde_json::from_slice(&self.render()).expect("a rendered body is a product's JSON")
    }

    /// The JSON body as a raw JSON value, to embed in a larger response
    /// without parsing it into a product.
    pub fn json(&self) -> Box<RawValue> {
        let body = String::from_utf8(self.render()).expect("JSON values are UTF-8");
        RawValue::from_string(body).expect("a rendered body is JSON")
    }

    /// The product's version.
    pub fn version(&self) -> i64 {
        std::str::from_utf8(self.values.get()[VERSION])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .expect("the version is kept as an integer's digits")
    }

    /// The JSON body of a response.
    pub fn body(&self) -> Bytes {
        // Exactly as long as its capacity, so `Bytes` takes it over as it is.
        Bytes::from(self.render())
    }

    /// The quoted `ETag`, `"id-version"`: plain bytes rather than an HTTP
    /// header, so that `http/` makes the header from them without a copy.
    pub fn etag(&self) -> Bytes {
        let values = self.values.get();
        let (id, version) = (values[ID], values[VERSION]);
        let mut etag = Vec::with_capacity(id.len() + version.len() + 3);
        etag.push(b'"');
        etag.extend_from_slice(id);
        etag.push(b'-');
        etag.extend_from_slice(version);
        etag.push(b'"');
        Bytes::from(etag)
    }

    /// Bytes one cached product takes in memory: the `Arc`'s allocation as
    /// mimalloc serves it (the 224-byte class, see [`INLINE`]) and any heap
    /// buffer. What L1's byte bound counts, through [`RenderedCodec`].
    pub fn memory_bytes(&self) -> usize {
        ARC_SIZE_CLASS + self.values.heap_bytes()
    }

    /// The product's JSON: each value after its key, in one buffer of
    /// exactly the body's length.
    fn render(&self) -> Vec<u8> {
        let values = self.values.get();
        let len = KEYS_LEN + values.iter().map(|value| value.len()).sum::<usize>();
        let mut body = Vec::with_capacity(len);
        for (key, value) in KEYS.iter().zip(values) {
            body.extend_from_slice(key);
            body.extend_from_slice(value);
        }
        body.push(b'}');
        body
    }
}

impl fmt::Debug for RenderedProduct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedProduct")
            .field("etag", &String::from_utf8_lossy(&self.etag()))
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
/// (any client can read it), written straight from the kept values; what
/// it reads back is checked to be a valid product and kept as its values.
/// It weighs a product by what it takes in memory, so L1's byte bound is a
/// bound on memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderedCodec;

impl Codec<RenderedProduct> for RenderedCodec {
    fn encode(&self, value: &RenderedProduct) -> Result<Vec<u8>, CodecError> {
        Ok(value.render())
    }

    fn decode(&self, bytes: &[u8]) -> Result<RenderedProduct, CodecError> {
        let not_a_product = |e| CodecError::with_source("not a product's JSON", e);
        let fields: Fields<'_> = serde_json::from_slice(bytes).map_err(not_a_product)?;
        let (id, version) = fields.check().map_err(not_a_product)?;
        Ok(RenderedProduct::from_fields(&fields, id, version))
    }

    fn weigh(&self, value: &RenderedProduct, _encoded_len: usize) -> usize {
        value.memory_bytes()
    }
}

/// A product's JSON split into the text of its values, as written (a scan
/// of the bytes, no copy). Unknown fields are refused, as [`Product`]
/// refuses them; a missing `updated_at` is `null`, as it is to [`Product`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    name: &'a RawValue,
    #[serde(borrow)]
    description: &'a RawValue,
    #[serde(borrow)]
    price: &'a RawValue,
    #[serde(borrow)]
    category: &'a RawValue,
    #[serde(borrow)]
    in_stock: &'a RawValue,
    #[serde(borrow)]
    version: &'a RawValue,
    #[serde(borrow)]
    created_at: &'a RawValue,
    #[serde(borrow)]
    updated_at: Option<&'a RawValue>,
}

impl Fields<'_> {
    /// Checks each value against its field's type in [`Product`] (strings
    /// without copying them); returns the id and the version. The fuzz test
    /// below holds this to accepting exactly what [`Product`] accepts.
    fn check(&self) -> serde_json::Result<(i64, i64)> {
        let id = serde_json::from_str(self.id.get())?;
        for text in [self.name, self.description, self.category] {
            serde_json::from_str::<AnyString>(text.get())?;
        }
        serde_json::from_str::<Price>(self.price.get())?;
        serde_json::from_str::<bool>(self.in_stock.get())?;
        let version = serde_json::from_str(self.version.get())?;
        serde_json::from_str::<DateTime<Utc>>(self.created_at.get())?;
        if let Some(updated_at) = self.updated_at {
            serde_json::from_str::<DateTime<Utc>>(updated_at.get())?;
        }
        Ok((id, version))
    }
}

/// Any JSON string, checked (escapes, UTF-8) and not kept.
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnyStringVisitor;

        impl Visitor<'_> for AnyStringVisitor {
            type Value = AnyString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<AnyString, E> {
                Ok(AnyString)
            }
        }

        deserializer.deserialize_str(AnyStringVisitor)
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

    /// Products whose JSON has escapes, non-ASCII text and every field set.
    fn products() -> Vec<Product> {
        let mut updated = product();
        updated.name = "Wid\"get\\ \u{e9}\u{1F600}\n".into();
        updated.description = "tab\there".into();
        updated.updated_at = Some(Utc::now());
        updated.in_stock = false;
        (updated.id, updated.version) = (i64::MAX, i64::MAX);
        vec![product(), updated]
    }

    #[test]
    fn the_id_and_version_are_where_their_keys_say() {
        assert_eq!(KEYS[ID], b"{\"id\":");
        assert_eq!(KEYS[VERSION], b",\"version\":");
        assert_eq!(KEYS_LEN, 102, "the figure the docs give");
    }

    #[test]
    fn body_is_the_product_json_and_etag_its_revision() {
        for product in products() {
            let rendered = RenderedProduct::new(&product);

            assert_eq!(rendered.body(), serde_json::to_vec(&product).unwrap());
            assert_eq!(rendered.etag(), product.etag().as_bytes());
            assert_eq!(rendered.version(), product.version);
            assert_eq!(rendered.product(), product);
            assert_eq!(rendered.json().get().as_bytes(), &rendered.body()[..]);
        }
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
    fn the_codec_stores_the_body_and_reads_it_back_as_it_was() {
        for product in products() {
            let rendered = RenderedProduct::new(&product);

            let stored = RenderedCodec.encode(&rendered).unwrap();
            let back = RenderedCodec.decode(&stored).unwrap();

            assert_eq!(stored, rendered.body());
            assert_eq!(back.body(), stored);
            assert_eq!(back.etag(), rendered.etag());
        }
    }

    #[test]
    fn a_foreign_writers_product_is_served_in_the_product_order() {
        let product = product();
        let expected = serde_json::to_vec(&product).unwrap();
        let mut foreign = serde_json::to_value(&product).unwrap();
        foreign.as_object_mut().unwrap().remove("updated_at");
        let reordered: serde_json::Map<_, _> = foreign
            .as_object()
            .unwrap()
            .iter()
            .rev()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let stored = serde_json::to_vec_pretty(&reordered).unwrap();

        let back = RenderedCodec.decode(&stored).unwrap();

        assert_eq!(back.body(), expected);
        assert_eq!(back.etag(), "\"7-3\"");
    }

    #[test]
    fn an_arc_of_a_rendered_product_fits_mimallocs_224_byte_class() {
        // The reference counts, then the struct, then the slack of an
        // aligned allocation: see `INLINE`.
        let arc = 2 * size_of::<usize>() + size_of::<RenderedProduct>();
        assert!(
            arc + align_of::<RenderedProduct>() - 1 <= ARC_SIZE_CLASS,
            "{arc}"
        );
        assert!(
            arc + align_of::<RenderedProduct>() - 1 > 192,
            "{arc}: a smaller class"
        );
        assert_eq!(
            RenderedProduct::new(&product()).memory_bytes(),
            ARC_SIZE_CLASS
        );
    }

    #[test]
    fn values_too_large_to_keep_inline_are_kept_whole() {
        let mut product = product();
        product.description = "long ".repeat(200);
        let json = serde_json::to_vec(&product).unwrap();
        assert!(json.len() - KEYS_LEN > INLINE);

        let rendered = RenderedProduct::new(&product);

        assert_eq!(rendered.body(), json);
        assert_eq!(
            rendered.memory_bytes(),
            ARC_SIZE_CLASS + json.len() - KEYS_LEN
        );
        assert_eq!(rendered.product(), product);
        assert_eq!(rendered.etag(), "\"7-3\"");
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
        let mut wrong_type = serde_json::to_value(product()).unwrap();
        wrong_type["name"] = serde_json::json!(5);
        assert!(
            RenderedCodec
                .decode(wrong_type.to_string().as_bytes())
                .is_err()
        );
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
            /// served as that product, or is refused; and it is refused
            /// exactly when it is not a [`Product`]'s JSON.
            #[test]
            fn stored_bytes_decode_to_the_stored_product_or_fail(
                stored in testkit::fuzz_input(corpus()),
            ) {
                let as_product = serde_json::from_slice::<Product>(&stored);
                let decoded = RenderedCodec.decode(&stored);
                prop_assert_eq!(decoded.is_ok(), as_product.is_ok());
                if let (Ok(rendered), Ok(product)) = (decoded, as_product) {
                    let served: Product = serde_json::from_slice(&rendered.body()).unwrap();
                    prop_assert_eq!(&served, &product);
                    prop_assert_eq!(rendered.version(), product.version);
                    let etag = product.etag();
                    prop_assert_eq!(&rendered.etag()[..], etag.as_bytes());
                }
            }
        }
    }
}

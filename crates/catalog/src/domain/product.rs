//! Products and their validated inputs.
//!
//! Inputs are validated while they are deserialised: every field type below
//! rejects bad values in its `Deserialize` impl, so a JSON body that parses
//! into a [`NewProduct`] or [`ProductPatch`] is valid, and the error a caller
//! sees names the offending field (the HTTP layer tracks the path).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Most characters a name may have after trimming.
pub(crate) const NAME_MAX_CHARS: usize = 200;
/// Most characters a description may have.
pub(crate) const DESCRIPTION_MAX_CHARS: usize = 10_000;
/// Most characters a category may have after trimming.
pub(crate) const CATEGORY_MAX_CHARS: usize = 100;
/// Highest accepted price, in cents (1,000,000,000.00).
pub(crate) const PRICE_MAX_CENTS: i64 = 100_000_000_000;
/// Why a text with a NUL character is refused: PostgreSQL cannot store one
/// in `text`, so it is refused on both databases alike rather than SQLite
/// keeping it.
const NO_NUL: &str = "must not contain NUL (U+0000) characters";

/// A product as stored and as returned by the API.
///
/// Unknown fields are rejected when reading one back (from Redis), so that a
/// foreign value is a cache miss rather than served as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Store-assigned identifier, positive.
    pub id: i64,
    pub name: String,
    pub description: String,
    pub price: Price,
    pub category: String,
    pub in_stock: bool,
    /// Starts at 1 and grows by one on every update; the ETag is built from it.
    pub version: i64,
    /// Microsecond precision, so what a write returns equals what a read returns.
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Product {
    /// Strong entity tag for this revision: changes exactly when `version` does.
    pub fn etag(&self) -> Etag {
        Etag::new(self.id, self.version)
    }

    /// The next version of this product after a full replace by `new`,
    /// made at `now`.
    pub fn replaced(&self, new: &NewProduct, now: DateTime<Utc>) -> Self {
        Self {
            id: self.id,
            name: new.name.as_str().to_owned(),
            description: new.description.as_str().to_owned(),
            price: new.price,
            category: new.category.as_str().to_owned(),
            in_stock: new.in_stock,
            version: self.version + 1,
            created_at: self.created_at,
            updated_at: Some(now),
        }
    }

    /// The next version of this product after `patch`, made at `now`: the
    /// fields the patch names change, the others stay.
    pub fn patched(&self, patch: &ProductPatch, now: DateTime<Utc>) -> Self {
        Self {
            id: self.id,
            name: patch
                .name
                .as_ref()
                .map_or_else(|| self.name.clone(), |n| n.as_str().to_owned()),
            description: patch
                .description
                .as_ref()
                .map_or_else(|| self.description.clone(), |d| d.as_str().to_owned()),
            price: patch.price.unwrap_or(self.price),
            category: patch
                .category
                .as_ref()
                .map_or_else(|| self.category.clone(), |c| c.as_str().to_owned()),
            in_stock: patch.in_stock.unwrap_or(self.in_stock),
            version: self.version + 1,
            created_at: self.created_at,
            updated_at: Some(now),
        }
    }
}

/// The entity tag of a product at a version: `"id-version"`, quoted as HTTP
/// wants it.
///
/// Written into a buffer of its own rather than a `String`: every value the
/// product cache reads from Redis gets one, and an allocation there is a
/// measurable share of an L2 hit.
#[derive(Clone, Copy)]
pub struct Etag {
    bytes: [u8; Etag::MAX_LEN],
    len: u8,
}

impl Etag {
    /// Two quotes, a dash and two `i64`s of up to 20 characters each.
    const MAX_LEN: usize = 43;

    /// The tag of product `id` at `version`.
    pub fn new(id: i64, version: i64) -> Self {
        let mut bytes = [0; Self::MAX_LEN];
        let mut len = 0;
        let mut push = |part: &[u8]| {
            bytes[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        };
        let mut digits = itoa::Buffer::new();
        push(b"\"");
        push(digits.format(id).as_bytes());
        push(b"-");
        push(digits.format(version).as_bytes());
        push(b"\"");
        Self {
            bytes,
            len: u8::try_from(len).expect("MAX_LEN fits in a u8"),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("quotes, digits and dashes are UTF-8")
    }
}

impl fmt::Debug for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A price in exact cents. JSON carries it as a number with at most two decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(i64);

impl Price {
    /// A price from cents; `None` when out of the accepted range.
    pub fn from_cents(cents: i64) -> Option<Self> {
        (0..=PRICE_MAX_CENTS)
            .contains(&cents)
            .then_some(Self(cents))
    }

    /// The price in cents.
    pub fn cents(self) -> i64 {
        self.0
    }

    /// Validates a JSON number: finite, within range, at most two decimals.
    ///
    /// A decimal with at most two places is exactly `cents / 100`, and both the
    /// JSON parser and this division round to the nearest `f64`, so the
    /// round-trip comparison below accepts exactly those inputs.
    pub fn parse(value: f64) -> Result<Self, &'static str> {
        if !value.is_finite() {
            return Err("must be a finite number");
        }
        if !(0.0..=(PRICE_MAX_CENTS / 100) as f64).contains(&value) {
            return Err("must be between 0 and 1000000000");
        }
        let cents = (value * 100.0).round();
        if cents / 100.0 != value {
            return Err("must have at most 2 decimal places");
        }
        Ok(Self(cents as i64))
    }

    fn as_f64(self) -> f64 {
        // Exact for every value in range: cents < 2^53.
        self.0 as f64 / 100.0
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PriceVisitor;

        impl de::Visitor<'_> for PriceVisitor {
            type Value = Price;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number with at most 2 decimal places")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Price, E> {
                Price::parse(v).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Price, E> {
                self.visit_f64(v as f64)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Price, E> {
                self.visit_f64(v as f64)
            }
        }

        deserializer.deserialize_f64(PriceVisitor)
    }
}

/// Generates a trimmed, length-checked string field type.
macro_rules! text_field {
    ($(#[$doc:meta])* $name:ident, min = $min:expr, max = $max:expr, trim = $trim:expr, rule = $rule:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// Validates (and, where the rule says so, trims) the text.
            pub fn parse(raw: &str) -> Result<Self, &'static str> {
                if raw.contains('\0') {
                    return Err(NO_NUL);
                }
                let text = if $trim { raw.trim() } else { raw };
                let chars = text.chars().count();
                if !($min..=$max).contains(&chars) {
                    return Err($rule);
                }
                Ok(Self(text.to_owned()))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::parse(&raw).map_err(de::Error::custom)
            }
        }
    };
}

text_field!(
    /// A product name: 1–200 characters after trimming.
    ProductName, min = 1, max = NAME_MAX_CHARS, trim = true,
    rule = "must be 1-200 characters after trimming"
);
text_field!(
    /// A description: at most 10,000 characters, kept as given.
    #[derive(Default)]
    Description, min = 0, max = DESCRIPTION_MAX_CHARS, trim = false,
    rule = "must be at most 10000 characters"
);
text_field!(
    /// A category: 1–100 characters after trimming.
    Category, min = 1, max = CATEGORY_MAX_CHARS, trim = true,
    rule = "must be 1-100 characters after trimming"
);

fn default_in_stock() -> bool {
    true
}

/// A complete, valid product without its store-assigned fields: the body of
/// `POST /products` and `PUT /products/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    pub name: ProductName,
    #[serde(default)]
    pub description: Description,
    pub price: Price,
    pub category: Category,
    /// Defaults to `true`.
    #[serde(default = "default_in_stock")]
    pub in_stock: bool,
}

/// Any subset of a product's fields: the body of `PATCH /products/{id}`.
///
/// A field that is present must be valid; `null` is rejected rather than
/// read as "unchanged", so a client cannot think it cleared a field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<ProductName>,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<Description>,
    #[serde(default, deserialize_with = "present")]
    pub price: Option<Price>,
    #[serde(default, deserialize_with = "present")]
    pub category: Option<Category>,
    #[serde(default, deserialize_with = "present")]
    pub in_stock: Option<bool>,
}

impl ProductPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Deserialises a field that, when present, must hold a value (not `null`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_accepts_up_to_two_decimals() {
        assert_eq!(Price::parse(19.99).unwrap().cents(), 1999);
        assert_eq!(Price::parse(0.1).unwrap().cents(), 10);
        assert_eq!(Price::parse(0.0).unwrap().cents(), 0);
        assert_eq!(Price::parse(1e9).unwrap().cents(), PRICE_MAX_CENTS);
        assert_eq!(
            Price::parse(999_999_999.99).unwrap().cents(),
            99_999_999_999
        );
        assert!(Price::parse(19.999).is_err());
        assert!(Price::parse(0.001).is_err());
        assert!(Price::parse(-0.01).is_err());
        assert!(Price::parse(1e9 + 0.01).is_err());
        assert!(Price::parse(f64::NAN).is_err());
        assert!(Price::parse(f64::INFINITY).is_err());
    }

    #[test]
    fn price_round_trips_through_json_exactly() {
        for cents in [0, 1, 10, 99, 1999, 123_456, 99_999_999_999, PRICE_MAX_CENTS] {
            let price = Price::from_cents(cents).unwrap();
            let json = serde_json::to_string(&price).unwrap();
            let back: Price = serde_json::from_str(&json).unwrap();
            assert_eq!(back, price, "{json}");
        }
        assert_eq!(serde_json::to_string(&Price(1999)).unwrap(), "19.99");
    }

    #[test]
    fn price_display_is_two_decimals() {
        assert_eq!(Price(1999).to_string(), "19.99");
        assert_eq!(Price(5).to_string(), "0.05");
    }

    #[test]
    fn price_rejects_strings() {
        assert!(serde_json::from_str::<Price>("\"19.99\"").is_err());
    }

    #[test]
    fn name_is_trimmed_and_bounded() {
        assert_eq!(ProductName::parse("  Widget ").unwrap().as_str(), "Widget");
        assert!(ProductName::parse("   ").is_err());
        assert!(ProductName::parse(&"x".repeat(201)).is_err());
        assert!(ProductName::parse(&"é".repeat(200)).is_ok());
    }

    #[test]
    fn no_text_field_takes_a_nul_character() {
        assert_eq!(ProductName::parse("a\0b"), Err(NO_NUL));
        assert_eq!(Description::parse("\0"), Err(NO_NUL));
        assert_eq!(Category::parse("tools\0"), Err(NO_NUL));
        assert!(Description::parse("tab\tand newline\n").is_ok());
    }

    #[test]
    fn description_allows_empty_and_bounds_length() {
        assert!(Description::parse("").is_ok());
        assert!(Description::parse(&"d".repeat(10_000)).is_ok());
        assert!(Description::parse(&"d".repeat(10_001)).is_err());
    }

    #[test]
    fn new_product_applies_defaults_and_rejects_unknown_fields() {
        let p: NewProduct =
            serde_json::from_str(r#"{"name":"W","price":1,"category":"tools"}"#).unwrap();
        assert!(p.in_stock);
        assert_eq!(p.description.as_str(), "");
        assert!(
            serde_json::from_str::<NewProduct>(
                r#"{"name":"W","price":1,"category":"t","colour":"red"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn patch_rejects_null_and_detects_empty() {
        assert!(serde_json::from_str::<ProductPatch>(r#"{"name":null}"#).is_err());
        assert!(
            serde_json::from_str::<ProductPatch>("{}")
                .unwrap()
                .is_empty()
        );
        let patch: ProductPatch = serde_json::from_str(r#"{"price":2.5}"#).unwrap();
        assert_eq!(patch.price, Price::from_cents(250));
    }

    #[test]
    fn the_next_version_keeps_identity_and_creation_and_takes_the_changes() {
        let created_at = Utc::now();
        let current = Product {
            id: 7,
            name: "Widget".into(),
            description: "old".into(),
            price: Price(1999),
            category: "tools".into(),
            in_stock: true,
            version: 3,
            created_at,
            updated_at: None,
        };
        let now = created_at + chrono::Duration::seconds(5);
        let new: NewProduct =
            serde_json::from_str(r#"{"name":"Gadget","price":5,"category":"toys"}"#).unwrap();
        let patch: ProductPatch = serde_json::from_str(r#"{"in_stock":false}"#).unwrap();

        let replaced = current.replaced(&new, now);
        let patched = current.patched(&patch, now);

        assert_eq!(
            (replaced.id, replaced.version, replaced.created_at),
            (7, 4, created_at)
        );
        assert_eq!(
            (replaced.name.as_str(), replaced.description.as_str()),
            ("Gadget", "")
        );
        assert_eq!(replaced.updated_at, Some(now));
        assert_eq!(
            patched,
            Product {
                in_stock: false,
                version: 4,
                updated_at: Some(now),
                ..current
            }
        );
    }

    #[test]
    fn etag_depends_on_id_and_version() {
        assert_eq!(Etag::new(7, 3).as_str(), "\"7-3\"");
        assert_ne!(Etag::new(7, 3).as_str(), Etag::new(7, 4).as_str());
        let widest = Etag::new(i64::MIN, i64::MIN);
        assert_eq!(widest.as_str(), format!("\"{}-{}\"", i64::MIN, i64::MIN));
    }
}

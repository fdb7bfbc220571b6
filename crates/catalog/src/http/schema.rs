//! The OpenAPI schemas of the domain's types ([`Product`], [`NewProduct`],
//! [`ProductPatch`]) and of their fields, written to accept exactly what
//! the rules in [`domain`](crate::domain) accept, so that a client
//! generated from `/openapi.json` (or schemathesis) and the service agree
//! on every input. The domain itself knows nothing of OpenAPI.
//!
//! JSON Schema cannot say "1–200 characters after trimming", so the text
//! rules are regular expressions: optional white space, a core that starts
//! and ends with a character that is not white space, optional white
//! space. "White space" is the set `str::trim` removes (Unicode
//! `White_Space`), spelled out as `\uXXXX` escapes because `\s` differs
//! between regex dialects (ECMA-262, Python, Rust). A price is a
//! `multipleOf: 0.01`, which JSON Schema validators check on the decimal
//! value, as [`Price::parse`](crate::domain::Price::parse) does.
//!
//! The types' schemas are written out here rather than derived: a derive
//! would put OpenAPI into the domain. Their descriptions are the API's
//! documentation of each type; a test checks that every schema lists
//! exactly the fields its type reads or writes.

use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Object, RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::domain::{
    CATEGORY_MAX_CHARS, DESCRIPTION_MAX_CHARS, NAME_MAX_CHARS, NewProduct, PRICE_MAX_CENTS,
    Product, ProductPatch,
};

/// The characters `str::trim` removes, as the body of a regex class.
const WHITE_SPACE: &str =
    r"\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// Matches exactly the texts of 1 to `max` characters after trimming, with
/// no NUL anywhere (see the module documentation).
pub(super) fn trimmed_text_pattern(max: usize) -> String {
    let ws = WHITE_SPACE;
    // The core: one such character, or two to `max` with any in between.
    let longer = match max {
        0 | 1 => String::new(),
        _ => format!(r"(?:[^\u0000]{{0,{}}}[^{ws}\u0000])?", max - 2),
    };
    format!(r"^[{ws}]*[^{ws}\u0000]{longer}[{ws}]*$")
}

/// Matches exactly the texts of at most `max` characters with no NUL.
pub(super) fn text_pattern(max: usize) -> String {
    format!(r"^[^\u0000]{{0,{max}}}$")
}

fn text(pattern: String, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .build()
}

/// `name`: 1–200 characters after trimming, no NUL.
pub(super) fn name() -> impl Into<RefOr<Schema>> {
    text(
        trimmed_text_pattern(NAME_MAX_CHARS),
        "1–200 characters after trimming white space (stored trimmed); no NUL.",
    )
}

/// `description`: at most 10,000 characters, no NUL.
pub(super) fn description() -> impl Into<RefOr<Schema>> {
    text(
        text_pattern(DESCRIPTION_MAX_CHARS),
        "At most 10,000 characters, kept as given; no NUL. Defaults to \"\".",
    )
}

/// `category`: 1–100 characters after trimming, no NUL.
pub(super) fn category() -> impl Into<RefOr<Schema>> {
    text(
        trimmed_text_pattern(CATEGORY_MAX_CHARS),
        "1–100 characters after trimming white space (stored trimmed); no NUL.",
    )
}

/// `price`: 0 to 1,000,000,000 with at most two decimals.
pub(super) fn price() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
        .minimum(Some(0))
        .maximum(Some(PRICE_MAX_CENTS / 100))
        .multiple_of(Some(0.01))
        .examples([serde_json::json!(19.99)])
        .description(Some("0 to 1,000,000,000 with at most 2 decimals."))
        .build()
}

/// An object that takes no other properties than the ones it lists (the
/// domain's types are all `deny_unknown_fields`).
fn closed_object(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

fn plain(schema_type: impl Into<SchemaType>) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(schema_type)
}

fn int64(description: &str) -> ObjectBuilder {
    plain(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .description(Some(description))
}

fn date_time(schema_type: impl Into<SchemaType>) -> ObjectBuilder {
    plain(schema_type).format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
}

impl PartialSchema for Product {
    fn schema() -> RefOr<Schema> {
        closed_object(
            "A product as stored and as returned by the API.\n\n\
             Unknown fields are rejected when reading one back (from Redis), so that a\n\
             foreign value is a cache miss rather than served as it is.",
        )
        .property("id", int64("Store-assigned identifier, positive."))
        .property("name", plain(Type::String))
        .property("description", plain(Type::String))
        .property("price", price())
        .property("category", plain(Type::String))
        .property("in_stock", plain(Type::Boolean))
        .property(
            "version",
            int64("Starts at 1 and grows by one on every update; the ETag is built from it."),
        )
        .property(
            "created_at",
            date_time(Type::String).description(Some(
                "Microsecond precision, so what a write returns equals what a read returns.",
            )),
        )
        .property(
            "updated_at",
            date_time(SchemaType::from_iter([Type::String, Type::Null])),
        )
        .required("id")
        .required("name")
        .required("description")
        .required("price")
        .required("category")
        .required("in_stock")
        .required("version")
        .required("created_at")
        .into()
    }
}

impl ToSchema for Product {}

impl PartialSchema for NewProduct {
    fn schema() -> RefOr<Schema> {
        closed_object(
            "A complete, valid product without its store-assigned fields: the body of\n\
             `POST /products` and `PUT /products/{id}`.",
        )
        .property("name", name())
        .property("description", description())
        .property("price", price())
        .property("category", category())
        .property(
            "in_stock",
            plain(Type::Boolean).description(Some("Defaults to `true`.")),
        )
        .required("name")
        .required("price")
        .required("category")
        .into()
    }
}

impl ToSchema for NewProduct {}

impl PartialSchema for ProductPatch {
    fn schema() -> RefOr<Schema> {
        closed_object(
            "Any subset of a product's fields: the body of `PATCH /products/{id}`.\n\n\
             A field that is present must be valid; `null` is rejected rather than\n\
             read as \"unchanged\", so a client cannot think it cleared a field.",
        )
        .property("name", name())
        .property("description", description())
        .property("price", price())
        .property("category", category())
        .property("in_stock", plain(Type::Boolean))
        .min_properties(Some(1))
        .into()
    }
}

impl ToSchema for ProductPatch {}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use regex::Regex;

    use serde_json::{Value, json};
    use utoipa::openapi::Object;

    use super::*;
    use crate::domain::{Category, Description, ProductName};

    fn object<T: PartialSchema>() -> Object {
        match T::schema() {
            RefOr::T(Schema::Object(object)) => object,
            _ => panic!("not an object schema"),
        }
    }

    fn properties(object: &Object) -> Vec<&str> {
        object.properties.keys().map(String::as_str).collect()
    }

    #[test]
    fn the_product_schema_lists_exactly_the_fields_a_product_has() {
        let product: Product = serde_json::from_value(json!({
            "id": 1, "name": "W", "description": "", "price": 1.5, "category": "c",
            "in_stock": true, "version": 1, "created_at": "2025-01-01T00:00:00Z",
            "updated_at": null
        }))
        .unwrap();
        let Value::Object(fields) = serde_json::to_value(&product).unwrap() else {
            panic!("a product serialises as an object");
        };

        let schema = object::<Product>();

        let fields: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(properties(&schema), fields);
    }

    #[test]
    fn the_input_schemas_list_exactly_the_fields_the_inputs_take() {
        let full = json!({"name": "W", "description": "d", "price": 1, "category": "c",
                          "in_stock": false});
        let required = json!({"name": "W", "price": 1, "category": "c"});

        let new = object::<NewProduct>();
        let patch = object::<ProductPatch>();

        let Value::Object(fields) = &full else {
            unreachable!()
        };
        let fields: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(properties(&new), fields);
        assert_eq!(properties(&patch), fields);
        assert!(serde_json::from_value::<NewProduct>(full.clone()).is_ok());
        assert!(serde_json::from_value::<NewProduct>(required).is_ok());
        assert_eq!(new.required, ["name", "price", "category"]);
        for field in &fields {
            let one = json!({ *field: full[field] });
            assert!(
                serde_json::from_value::<ProductPatch>(one).is_ok(),
                "{field}"
            );
        }
        assert!(patch.required.is_empty());
    }

    /// Characters that exercise every part of the patterns.
    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            Just('a'),
            Just('é'),
            Just('😀'),
            Just(' '),
            Just('\t'),
            Just('\u{85}'),
            Just('\u{3000}'),
            Just('\u{200B}'),
            Just('\u{FEFF}'),
            Just('\0'),
        ]
    }

    fn tricky_text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(tricky_char(), 0..max + 6).prop_map(String::from_iter)
    }

    static NAME: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(&trimmed_text_pattern(NAME_MAX_CHARS)).unwrap());
    static CATEGORY: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(&trimmed_text_pattern(CATEGORY_MAX_CHARS)).unwrap());
    static SHORT_TEXT: LazyLock<Regex> = LazyLock::new(|| Regex::new(&text_pattern(20)).unwrap());

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn the_name_pattern_accepts_what_the_rule_accepts(raw in tricky_text(NAME_MAX_CHARS)) {
            prop_assert_eq!(NAME.is_match(&raw), ProductName::parse(&raw).is_ok(), "{:?}", raw);
        }

        #[test]
        fn the_category_pattern_accepts_what_the_rule_accepts(raw in tricky_text(CATEGORY_MAX_CHARS)) {
            prop_assert_eq!(CATEGORY.is_match(&raw), Category::parse(&raw).is_ok(), "{:?}", raw);
        }

        #[test]
        fn the_description_pattern_accepts_what_the_rule_accepts(raw in tricky_text(20)) {
            // The same rule at a length the strategy reaches.
            let pattern = &*SHORT_TEXT;
            let rule = !raw.contains('\0') && raw.chars().count() <= 20;
            prop_assert_eq!(pattern.is_match(&raw), rule, "{:?}", raw);
        }
    }

    #[test]
    fn the_description_pattern_is_the_description_rule() {
        let pattern = Regex::new(&text_pattern(DESCRIPTION_MAX_CHARS)).unwrap();
        for raw in ["", "x", &"d".repeat(10_000), &"d".repeat(10_001), "a\0"] {
            assert_eq!(
                pattern.is_match(raw),
                Description::parse(raw).is_ok(),
                "{} chars",
                raw.len()
            );
        }
    }
}

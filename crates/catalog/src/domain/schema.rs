//! The OpenAPI schemas of the product fields, written to accept exactly
//! what the rules in [`product`](super::product) accept, so that a client
//! generated from `/openapi.json` (or schemathesis) and the service agree
//! on every input.
//!
//! JSON Schema cannot say "1–200 characters after trimming", so the text
//! rules are regular expressions: optional white space, a core that starts
//! and ends with a character that is not white space, optional white
//! space. "White space" is the set `str::trim` removes (Unicode
//! `White_Space`), spelled out as `\uXXXX` escapes because `\s` differs
//! between regex dialects (ECMA-262, Python, Rust). A price is a
//! `multipleOf: 0.01`, which JSON Schema validators check on the decimal
//! value, as [`Price::parse`](super::Price::parse) does.

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{Object, RefOr, Schema};

use super::product::{CATEGORY_MAX_CHARS, DESCRIPTION_MAX_CHARS, NAME_MAX_CHARS, PRICE_MAX_CENTS};

/// The characters `str::trim` removes, as the body of a regex class.
const WHITE_SPACE: &str =
    r"\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// Matches exactly the texts of 1 to `max` characters after trimming, with
/// no NUL anywhere (see the module documentation).
pub fn trimmed_text_pattern(max: usize) -> String {
    let ws = WHITE_SPACE;
    // The core: one such character, or two to `max` with any in between.
    let longer = match max {
        0 | 1 => String::new(),
        _ => format!(r"(?:[^\u0000]{{0,{}}}[^{ws}\u0000])?", max - 2),
    };
    format!(r"^[{ws}]*[^{ws}\u0000]{longer}[{ws}]*$")
}

/// Matches exactly the texts of at most `max` characters with no NUL.
pub fn text_pattern(max: usize) -> String {
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
pub fn name() -> impl Into<RefOr<Schema>> {
    text(
        trimmed_text_pattern(NAME_MAX_CHARS),
        "1–200 characters after trimming white space (stored trimmed); no NUL.",
    )
}

/// `description`: at most 10,000 characters, no NUL.
pub fn description() -> impl Into<RefOr<Schema>> {
    text(
        text_pattern(DESCRIPTION_MAX_CHARS),
        "At most 10,000 characters, kept as given; no NUL. Defaults to \"\".",
    )
}

/// `category`: 1–100 characters after trimming, no NUL.
pub fn category() -> impl Into<RefOr<Schema>> {
    text(
        trimmed_text_pattern(CATEGORY_MAX_CHARS),
        "1–100 characters after trimming white space (stored trimmed); no NUL.",
    )
}

/// `price`: 0 to 1,000,000,000 with at most two decimals.
pub fn price() -> impl Into<RefOr<Schema>> {
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

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use regex::Regex;

    use super::*;
    use crate::domain::{Category, Description, ProductName};

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

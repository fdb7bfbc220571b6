//! Request extractors that fail with [`ApiError`] (problem+json) instead of
//! axum's plain-text rejections: JSON bodies, product ids, the bearer token,
//! and the conditional-request headers.

use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::HeaderValue;
use axum::http::header::{self, HeaderMap};
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::store::Expected;

/// A JSON body, validated while it is parsed: malformed JSON is a 400, a
/// field that breaks a rule is a 422 naming the field, a body that is not
/// JSON is a 415. The body has been read whole (and bounded) before
/// routing: see [`ReadBody`](super::body::ReadBody).
#[derive(Debug)]
pub(super) struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON (Content-Type: application/json)".into(),
            ));
        }
        let bytes = req
            .into_body()
            .collect()
            .await
            .map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?
            .to_bytes();
        parse_json(&bytes).map(Self)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as `T`, mapping serde's errors to 400 (syntax) or 422 (data).
pub(super) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        // A data error can surface before a later syntax error (`{} x`):
        // malformed JSON is a 400 whatever the fields, so check the syntax
        // of the whole body on this (rare) path.
        if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            return classify(&syntax, ".".to_owned());
        }
        let path = err.path().to_string();
        classify(&err.into_inner(), path)
    })?;
    // The streaming deserializer accepts trailing data unless told to check.
    deserializer
        .end()
        .map_err(|err| classify(&err, ".".to_owned()))?;
    Ok(value)
}

fn classify(err: &serde_json::Error, path: String) -> ApiError {
    let message = without_position(&err.to_string());
    match err.classify() {
        Category::Data => {
            let field = if path == "." {
                backticked(&message).unwrap_or_else(|| "body".to_owned())
            } else {
                path
            };
            ApiError::Validation {
                field,
                reason: message,
            }
        }
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::BadRequest(format!("malformed JSON: {message}"))
        }
    }
}

/// serde_json appends " at line L column C"; a client gets the field instead.
fn without_position(message: &str) -> String {
    match message.rsplit_once(" at line ") {
        Some((head, _)) => head.to_owned(),
        None => message.to_owned(),
    }
}

/// The field named in serde's "missing field `x`" / "unknown field `x`".
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// Parses a positive 64-bit id: ASCII digits only, so `+1`, `1.5`, ` 1`,
/// `0` and `-1` are all rejected.
pub(super) fn parse_id(raw: &str) -> Option<i64> {
    parse_digits(raw).filter(|id| *id > 0)
}

/// Parses a non-negative 64-bit integer written in ASCII digits only.
pub(super) fn parse_digits(raw: &str) -> Option<i64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<i64>().ok()
}

/// A regex (JSON Schema `pattern`) matching exactly what [`parse_id`]
/// accepts: leading zeros, then 1 to 9,223,372,036,854,775,807.
pub(super) fn id_pattern() -> String {
    let max = i64::MAX.to_string();
    let width = max.len();
    // Shorter numbers, then numbers of `max`'s width that are below it
    // from some digit on, then `max` itself.
    let mut ranges = vec![format!("[1-9][0-9]{{0,{}}}", width - 2)];
    for (i, digit) in max.bytes().enumerate() {
        let low = if i == 0 { b'1' } else { b'0' };
        if digit > low {
            let rest = width - i - 1;
            ranges.push(format!(
                "{}[{}-{}][0-9]{{{rest}}}",
                &max[..i],
                char::from(low),
                char::from(digit - 1)
            ));
        }
    }
    ranges.push(max);
    format!("0*(?:{})", ranges.join("|"))
}

/// The `{id}` of a `/products/{id}` path; 400 unless a positive 64-bit integer.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProductId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for ProductId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Raw params borrow the matched path: no String per request.
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("the path is missing a product id".into()))?;
        let raw = params
            .iter()
            .find_map(|(name, value)| (name == "id").then_some(value))
            .ok_or_else(|| ApiError::BadRequest("the path is missing a product id".into()))?;
        parse_id(raw).map(Self).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "product id must be a positive 64-bit integer, got {raw:?}"
            ))
        })
    }
}

/// Proof that the request carries the API's bearer token. Put it first in a
/// handler's arguments so that auth is checked before anything else.
#[derive(Debug, Clone, Copy)]
pub(super) struct Authenticated;

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .ok_or(ApiError::Unauthorized)?;
        // Constant time over the bytes: timing does not reveal how much of a
        // guess was right (only the length, which is not secret).
        if bool::from(presented.as_bytes().ct_eq(state.token_bytes())) {
            Ok(Self)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// The entity tags listed in a conditional header's values, trimmed, `W/`
/// prefixes kept, `*` included; borrowed from the headers, no allocation.
fn listed_tags<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> impl Iterator<Item = &'a str> {
    values
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
}

/// The `If-None-Match` header, taken without copying the rest of the headers
/// (this extractor is on the cache-hit path).
#[derive(Debug, Default)]
pub(super) struct IfNoneMatch(Vec<HeaderValue>);

impl IfNoneMatch {
    /// Whether the header matches `etag` (weak comparison, as `If-None-Match`
    /// asks), so that a GET answers 304.
    pub(super) fn matches(&self, etag: &HeaderValue) -> bool {
        listed_tags(self.0.iter())
            .any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == etag.as_bytes())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .cloned()
                .collect(),
        ))
    }
}

/// The revision an `If-Match` header allows a write to replace.
///
/// Absent or `*` → any revision. Otherwise the ETag must be one this API
/// issued for product `id` (`"id-version"`); a tag that cannot match (another
/// product, a weak or foreign tag) makes the precondition fail with 412.
pub(super) fn if_match(headers: &HeaderMap, id: i64) -> Result<Expected, ApiError> {
    let mut tags = listed_tags(headers.get_all(header::IF_MATCH).iter()).peekable();
    if tags.peek().is_none() {
        return Ok(Expected::Any);
    }
    let mut version = None;
    for tag in tags {
        if tag == "*" {
            return Ok(Expected::Any);
        }
        // Strong comparison: a weak tag (`W/"…"`) never matches.
        version = version.or_else(|| {
            let (tag_id, version) = tag.strip_prefix('"')?.strip_suffix('"')?.split_once('-')?;
            (tag_id.parse::<i64>().ok()? == id).then(|| version.parse::<i64>().ok())?
        });
    }
    version
        .map(Expected::Version)
        .ok_or(ApiError::PreconditionFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn ids_must_be_positive_64_bit_integers() {
        assert_eq!(parse_id("1"), Some(1));
        assert_eq!(parse_id("9223372036854775807"), Some(i64::MAX));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1.5",
            "abc",
            " 1",
            "9223372036854775808",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    /// Ids and near-ids: numbers in and out of range, with leading zeros,
    /// and short strings of the characters a bad id is made of.
    fn id_like() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let digits = prop::collection::vec(prop::sample::select(vec!['0', '1', '9']), 1..=21);
        let junk = prop::collection::vec(
            prop::sample::select(vec!['-', '+', ' ', '.', '0', '7', 'a']),
            0..=4,
        );
        prop_oneof![
            Just(i64::MAX.to_string()),
            Just("9223372036854775808".to_owned()),
            (1..=i64::MAX).prop_map(|id| id.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (0..4usize, 1..=i64::MAX).prop_map(|(zeros, id)| format!("{}{id}", "0".repeat(zeros))),
            digits.prop_map(String::from_iter),
            junk.prop_map(String::from_iter),
        ]
    }

    proptest::proptest! {
        #[test]
        fn the_id_pattern_accepts_what_parse_id_accepts(raw in id_like()) {
            let pattern = regex::Regex::new(&format!("^(?:{})$", id_pattern())).unwrap();
            proptest::prop_assert_eq!(pattern.is_match(&raw), parse_id(&raw).is_some(), "{:?}", raw);
        }
    }

    #[tokio::test]
    async fn a_bad_product_id_is_a_400_that_names_it() {
        use axum::body::Body;
        use axum::http::StatusCode;
        use tower::ServiceExt;

        let app = axum::Router::new().route(
            "/products/{id}",
            axum::routing::get(|ProductId(id): ProductId| async move { id.to_string() }),
        );
        let get = |path: String| {
            let app = app.clone();
            async move {
                let response = app
                    .oneshot(Request::get(path).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                (status, String::from_utf8(body.to_vec()).unwrap())
            }
        };

        assert_eq!(
            get("/products/7".into()).await,
            (StatusCode::OK, "7".into())
        );
        for bad in ["abc", "0", "-1", "99999999999999999999"] {
            let (status, body) = get(format!("/products/{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                body.contains(&format!("got \\\"{bad}\\\"")),
                "{bad}: {body}"
            );
        }
    }

    #[test]
    fn json_errors_are_classified_and_name_the_field() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[expect(dead_code, reason = "fields exist to be deserialised")]
        struct Body {
            name: String,
            price: f64,
        }
        assert!(matches!(
            parse_json::<Body>(b"{\"name\":"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"{\"name\":\"a\",\"price\":1} x"),
            Err(ApiError::BadRequest(_))
        ));
        match parse_json::<Body>(br#"{"name":"a","price":"x"}"#) {
            Err(ApiError::Validation { field, .. }) => assert_eq!(field, "price"),
            other => panic!("expected a validation error, got {other:?}"),
        }
        match parse_json::<Body>(br#"{"price":1}"#) {
            Err(ApiError::Validation { field, reason }) => {
                assert_eq!(field, "name");
                assert!(!reason.contains("line"), "{reason}");
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
        match parse_json::<Body>(br#"{"name":"a","price":1,"colour":"red"}"#) {
            Err(ApiError::Validation { field, .. }) => assert_eq!(field, "colour"),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn content_type_must_be_json() {
        assert!(is_json(&headers(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8"
        )));
        assert!(is_json(&headers(
            header::CONTENT_TYPE,
            "application/merge-patch+json"
        )));
        assert!(!is_json(&headers(header::CONTENT_TYPE, "text/plain")));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_lists() {
        let etag = &HeaderValue::from_static("\"3-2\"");
        let header = |value: &'static str| IfNoneMatch(vec![HeaderValue::from_static(value)]);

        assert!(header("\"1-1\", W/\"3-2\"").matches(etag));
        assert!(header("*").matches(etag));
        assert!(!header("\"3-1\"").matches(etag));
        assert!(!IfNoneMatch::default().matches(etag));
    }

    #[test]
    fn if_match_yields_the_expected_version_or_fails() {
        assert_eq!(if_match(&HeaderMap::new(), 3).unwrap(), Expected::Any);
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "*"), 3).unwrap(),
            Expected::Any
        );
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "\"3-7\""), 3).unwrap(),
            Expected::Version(7)
        );
        for bad in ["\"4-7\"", "W/\"3-7\"", "\"garbage\"", "3-7"] {
            assert!(
                matches!(
                    if_match(&headers(header::IF_MATCH, bad), 3),
                    Err(ApiError::PreconditionFailed)
                ),
                "{bad}"
            );
        }
    }

    mod fuzz {
        use std::sync::LazyLock;

        use proptest::prelude::*;
        use regex::Regex;
        use serde_json::Value;

        use super::*;
        use crate::domain::{NewProduct, ProductPatch};
        use crate::http::schema::{text_pattern, trimmed_text_pattern};

        static NAME: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(&trimmed_text_pattern(200)).unwrap());
        static CATEGORY: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(&trimmed_text_pattern(100)).unwrap());
        static DESCRIPTION: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(&text_pattern(10_000)).unwrap());

        /// Whether `value` is what the OpenAPI schema says `field` takes,
        /// decided without the domain's parsers.
        fn schema_accepts(field: &str, value: &Value) -> bool {
            let text = |pattern: &Regex| value.as_str().is_some_and(|s| pattern.is_match(s));
            match field {
                "name" => text(&NAME),
                "category" => text(&CATEGORY),
                "description" => text(&DESCRIPTION),
                "in_stock" => value.is_boolean(),
                "price" => value.as_f64().is_some_and(|price| {
                    // At most two decimals in its shortest decimal form.
                    let decimals = price.to_string().split('.').nth(1).map_or(0, str::len);
                    (0.0..=1e9).contains(&price) && decimals <= 2
                }),
                _ => false,
            }
        }

        proptest! {
            #![proptest_config(testkit::fuzz_config())]

            /// Any body is a product, a 400 or a 422; and a JSON object is
            /// accepted exactly when the OpenAPI schema accepts it.
            #[test]
            fn a_product_body_is_accepted_exactly_when_the_schema_accepts_it(
                body in testkit::corpus_input(env!("CARGO_MANIFEST_DIR"), "product_body"),
            ) {
                let new = parse_json::<NewProduct>(&body);
                let patch = parse_json::<ProductPatch>(&body);
                for error in [new.as_ref().err(), patch.as_ref().err()].into_iter().flatten() {
                    prop_assert!(
                        matches!(error, ApiError::BadRequest(_) | ApiError::Validation { .. }),
                        "{:?}", error
                    );
                }
                let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&body) else {
                    return Ok(());
                };
                let fields_valid = object.iter().all(|(field, value)| schema_accepts(field, value));
                let has = |field: &str| object.contains_key(field);
                prop_assert_eq!(
                    new.is_ok(),
                    fields_valid && has("name") && has("price") && has("category"),
                    "POST/PUT {}", String::from_utf8_lossy(&body)
                );
                prop_assert_eq!(
                    patch.as_ref().is_ok_and(|p| !p.is_empty()),
                    fields_valid && !object.is_empty(),
                    "PATCH {}", String::from_utf8_lossy(&body)
                );
            }
        }
    }
}

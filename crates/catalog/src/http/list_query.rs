//! The query of `GET /products`: a batch (`ids`) or a keyset page
//! (`category`, `limit`, `after`), validated into a [`ListRequest`], and
//! its OpenAPI form, which says exactly that.

use serde::Deserialize;
use utoipa::IntoParams;
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn, ParameterStyle};
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
};

use super::error::ApiError;
use super::extract::{id_pattern, parse_digits, parse_id};
use super::schema;
use crate::domain::Category;
use crate::service::{DEFAULT_PAGE_LIMIT, MAX_BATCH_IDS, MAX_PAGE_LIMIT};

/// Query of `GET /products`: either `ids` (a batch) or a page. Its OpenAPI
/// form is written by hand below: one query object that is one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    /// Comma-separated product ids (at most 100) for a batch read.
    ids: Option<String>,
    /// Only products of this category.
    category: Option<String>,
    /// Page size, 1–100 (default 20).
    limit: Option<String>,
    /// Return products with an id greater than this one (the previous
    /// page's `next_after`).
    after: Option<String>,
}

/// What a `GET /products` query asks for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ListRequest {
    /// Distinct ids, in first-seen order (1 to 100).
    Batch(Vec<i64>),
    /// A keyset page: products with `id > after`, at most `limit`.
    Page {
        category: Option<String>,
        after: i64,
        limit: u32,
    },
}

impl ListParams {
    /// The request, or a 400 saying what is wrong with the query.
    pub(super) fn into_request(self) -> Result<ListRequest, ApiError> {
        if let Some(ids) = &self.ids {
            if self.category.is_some() || self.limit.is_some() || self.after.is_some() {
                return Err(ApiError::BadRequest(
                    "`ids` cannot be combined with `category`, `limit` or `after`".into(),
                ));
            }
            return parse_ids(ids).map(ListRequest::Batch);
        }
        let category = self
            .category
            .as_deref()
            .map(|raw| {
                Category::parse(raw)
                    .map(|c| c.as_str().to_owned())
                    .map_err(|reason| ApiError::BadRequest(format!("category: {reason}")))
            })
            .transpose()?;
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE_LIMIT,
            Some(raw) => parse_digits(raw)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=MAX_PAGE_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "limit must be an integer from 1 to {MAX_PAGE_LIMIT}, got {raw:?}"
                    ))
                })?,
        };
        let after = match self.after.as_deref() {
            None => 0,
            Some(raw) => parse_id(raw).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "after must be a positive 64-bit integer, got {raw:?}"
                ))
            })?,
        };
        Ok(ListRequest::Page {
            category,
            after,
            limit,
        })
    }
}

/// The query as one exploded object that is either a batch (`ids` alone)
/// or a page (any of `category`, `limit`, `after`), so that the document
/// says what the handler accepts: `ids` with a page parameter is a 400.
impl IntoParams for ListParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let closed = |object: ObjectBuilder| {
            object.additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        let batch = closed(
            ObjectBuilder::new()
                .title(Some("batch"))
                .property(
                    "ids",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(format!(
                            "^{id}(?:,{id}){{0,{}}}$",
                            MAX_BATCH_IDS - 1,
                            id = id_pattern()
                        )))
                        .description(Some(
                            "Comma-separated product ids, at most 100 (repeats are answered once).",
                        )),
                )
                .required("ids"),
        );
        let page = closed(
            ObjectBuilder::new()
                .title(Some("page"))
                .property("category", schema::category())
                .property(
                    "limit",
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(MAX_PAGE_LIMIT))
                        .description(Some("Page size (default 20).")),
                )
                .property(
                    "after",
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                        .minimum(Some(1))
                        .description(Some(
                            "Products with a greater id (the previous page's `next_after`).",
                        )),
                ),
        );
        vec![
            ParameterBuilder::new()
                .name("query")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .style(Some(ParameterStyle::Form))
                .explode(Some(true))
                .description(Some(
                    "Either `ids` (a batch) or any of `category`, `limit`, `after` (a page).",
                ))
                .schema(Some(OneOfBuilder::new().item(batch).item(page)))
                .build(),
        ]
    }
}

/// Parses `1,2,3` (at most 100 items) into distinct ids in first-seen order.
fn parse_ids(raw: &str) -> Result<Vec<i64>, ApiError> {
    let mut ids = Vec::new();
    for (count, item) in raw.split(',').enumerate() {
        if count == MAX_BATCH_IDS {
            return Err(ApiError::BadRequest(format!(
                "at most {MAX_BATCH_IDS} ids per request"
            )));
        }
        let id = parse_id(item).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "ids must be positive 64-bit integers separated by commas, got {item:?}"
            ))
        })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deduplicated_in_order_and_bounded() {
        assert_eq!(parse_ids("3,1,3,2").unwrap(), vec![3, 1, 2]);
        for bad in ["", "1,,2", "1,abc", "0", "-1", "1.5", "1,"] {
            assert!(parse_ids(bad).is_err(), "{bad:?}");
        }
        let hundred: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
        assert_eq!(parse_ids(&hundred.join(",")).unwrap().len(), 100);
        let too_many: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
        assert!(parse_ids(&too_many.join(",")).is_err());
        let repeated = vec!["7"; 101];
        assert!(
            parse_ids(&repeated.join(",")).is_err(),
            "items count, not distinct ids"
        );
    }

    mod fuzz {

        use axum::extract::Query;
        use axum::http::Uri;
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(testkit::fuzz_config())]

            /// Any query string is a valid request or a 400, and a valid
            /// one keeps every bound.
            #[test]
            fn any_list_query_is_a_bounded_request_or_a_400(query in testkit::corpus_input(env!("CARGO_MANIFEST_DIR"), "list_query")) {
                // As a client would send it: every byte outside the
                // unreserved set percent-encoded, `&` and `=` kept.
                let encoded: String = query
                    .iter()
                    .map(|&b| match b {
                        b'&' | b'=' | b',' => char::from(b).to_string(),
                        b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => char::from(b).to_string(),
                        b => format!("%{b:02X}"),
                    })
                    .collect();
                let uri: Uri = format!("/products?{encoded}").parse().unwrap();
                let Ok(Query(params)) = Query::<ListParams>::try_from_uri(&uri) else {
                    return Ok(());
                };
                match params.into_request() {
                    Ok(ListRequest::Batch(ids)) => {
                        prop_assert!((1..=MAX_BATCH_IDS).contains(&ids.len()));
                        prop_assert!(ids.iter().all(|id| *id > 0));
                    }
                    Ok(ListRequest::Page { category, after, limit }) => {
                        prop_assert!((1..=MAX_PAGE_LIMIT).contains(&limit));
                        prop_assert!(after >= 0);
                        if let Some(category) = category {
                            prop_assert_eq!(category.trim(), category.as_str());
                            prop_assert!(!category.is_empty() && !category.contains('\0'));
                        }
                    }
                    Err(error) => prop_assert!(matches!(error, ApiError::BadRequest(_)), "{:?}", error),
                }
            }
        }
    }
}

//! `/products` handlers: thin — extract, call the service, shape the response.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn, ParameterStyle};
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, Problem};
use super::extract::{
    Authenticated, IfNoneMatch, JsonBody, ProductId, id_pattern, if_match, parse_digits, parse_id,
};
use super::schema;
use crate::domain::{Category, NewProduct, Product, ProductPatch};
use crate::service::{DEFAULT_PAGE_LIMIT, MAX_BATCH_IDS, MAX_PAGE_LIMIT, RenderedProduct};

/// `X-Cache` names the level that answered a product read.
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

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
enum ListRequest {
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
    fn into_request(self) -> Result<ListRequest, ApiError> {
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

/// Answer to a batch read.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BatchResponse<'a> {
    /// Found products, in the order requested.
    items: Vec<&'a Product>,
    /// Requested ids that do not exist.
    missing: Vec<i64>,
}

/// One keyset page.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PageResponse {
    items: Vec<Product>,
    /// Pass as `after` to get the next page; `null` on the last page.
    next_after: Option<i64>,
}

/// A product response with its `ETag`.
fn product_response(status: StatusCode, product: &Product) -> Response {
    let mut response = (status, Json(product)).into_response();
    set_etag(response.headers_mut(), &product.etag());
    response
}

fn set_etag(headers: &mut HeaderMap, etag: &str) {
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("an ETag built from two integers is a valid header"),
    );
}

/// Get one product.
#[utoipa::path(
    get, path = "/products/{id}", tag = "products",
    params(("id" = i64, Path, minimum = 1, description = "Product id (positive)"),
           ("If-None-Match" = Option<String>, Header, description = "ETag of a cached copy")),
    responses(
        (status = 200, description = "The product; `X-Cache` says which level answered", body = Product,
         headers(("ETag" = String), ("X-Cache" = String, description = "HIT-L1, HIT-L2, MISS or STALE"))),
        (status = 304, description = "The client's copy is current"),
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable; retry after `Retry-After` seconds", body = Problem,
         headers(("Retry-After" = u32)), content_type = "application/problem+json"),
    )
)]
pub(super) async fn get_product(
    State(state): State<AppState>,
    ProductId(id): ProductId,
    if_none_match: IfNoneMatch,
) -> Result<Response, ApiError> {
    let read = state.products.get(id).await?;
    let x_cache = HeaderValue::from_static(read.served.as_str());
    let Some(product) = read.product else {
        let mut response = ApiError::product_not_found(id).into_response();
        response.headers_mut().insert(X_CACHE, x_cache);
        return Ok(response);
    };
    // The hit path: body and ETag were rendered when the product entered the
    // cache; here they only share its buffer.
    let (etag, body) = RenderedProduct::response_parts(product);
    let etag = HeaderValue::from_maybe_shared(etag)
        .expect("an ETag built from two integers is a valid header");
    let mut response = if if_none_match.matches(&etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Response::new(Body::from(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag);
    headers.insert(X_CACHE, x_cache);
    Ok(response)
}

/// List products: a batch by `ids`, or a keyset page (optionally of one category).
#[utoipa::path(
    get, path = "/products", tag = "products",
    params(ListParams),
    responses(
        (status = 200, description = "With `ids`: a batch; otherwise a page", body = PageResponse),
        (status = 400, description = "Bad `ids`, `limit`, `after` or `category`, or `ids` with a page parameter",
         body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable; retry after `Retry-After` seconds", body = Problem,
         headers(("Retry-After" = u32)), content_type = "application/problem+json"),
    )
)]
pub(super) async fn list_products(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let (category, after, limit) = match params.into_request()? {
        ListRequest::Batch(ids) => {
            let batch = state.products.get_many(&ids).await?;
            return Ok(Json(BatchResponse {
                items: batch.items.iter().map(|p| p.product()).collect(),
                missing: batch.missing,
            })
            .into_response());
        }
        ListRequest::Page {
            category,
            after,
            limit,
        } => (category, after, limit),
    };
    let read = state.products.page(category, after, limit).await?;
    let mut response = Json(&*read.page).into_response();
    if let Some(served) = read.served {
        response
            .headers_mut()
            .insert(X_CACHE, HeaderValue::from_static(served.as_str()));
    }
    Ok(response)
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

/// Create a product.
#[utoipa::path(
    post, path = "/products", tag = "products", request_body = NewProduct,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Product, headers(("Location" = String), ("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks a rule", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable; retry after `Retry-After` seconds", body = Problem,
         headers(("Retry-After" = u32)), content_type = "application/problem+json"),
    )
)]
pub(super) async fn create_product(
    _: Authenticated,
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewProduct>,
) -> Result<Response, ApiError> {
    let product = state.products.create(&new).await?;
    let mut response = product_response(StatusCode::CREATED, &product);
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/products/{}", product.id))
            .expect("a path built from an integer is a valid header"),
    );
    Ok(response)
}

/// Replace a product.
#[utoipa::path(
    put, path = "/products/{id}", tag = "products", request_body = NewProduct,
    security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1, description = "Product id (positive)"),
           ("If-Match" = Option<String>, Header, description = "Only replace this revision")),
    responses(
        (status = 200, description = "Replaced", body = Product, headers(("ETag" = String))),
        (status = 400, description = "Bad id or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON (or missing)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks a rule", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable; retry after `Retry-After` seconds", body = Problem,
         headers(("Retry-After" = u32)), content_type = "application/problem+json"),
    )
)]
pub(super) async fn replace_product(
    _: Authenticated,
    State(state): State<AppState>,
    ProductId(id): ProductId,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewProduct>,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers, id)?;
    let product = state.products.replace(id, &new, expected).await?;
    Ok(product_response(StatusCode::OK, &product))
}

/// Change some fields of a product.
#[utoipa::path(
    patch, path = "/products/{id}", tag = "products", request_body = ProductPatch,
    security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1, description = "Product id (positive)"),
           ("If-Match" = Option<String>, Header, description = "Only change this revision")),
    responses(
        (status = 200, description = "Updated", body = Product, headers(("ETag" = String))),
        (status = 400, description = "Bad id or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON (or missing)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks a rule, or no field given", body = Problem,
         content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable; retry after `Retry-After` seconds", body = Problem,
         headers(("Retry-After" = u32)), content_type = "application/problem+json"),
    )
)]
pub(super) async fn patch_product(
    _: Authenticated,
    State(state): State<AppState>,
    ProductId(id): ProductId,
    headers: HeaderMap,
    JsonBody(patch): JsonBody<ProductPatch>,
) -> Result<Response, ApiError> {
    if patch.is_empty() {
        return Err(ApiError::Validation {
            field: "body".into(),
            reason: "give at least one of name, description, price, category, in_stock".into(),
        });
    }
    let expected = if_match(&headers, id)?;
    let product = state.products.patch(id, &patch, expected).await?;
    Ok(product_response(StatusCode::OK, &product))
}

/// Delete a product.
#[utoipa::path(
    delete, path = "/products/{id}", tag = "products",
    security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1, description = "Product id (positive)"),
           ("If-Match" = Option<String>, Header, description = "Only delete this revision")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` is stale", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable; retry after `Retry-After` seconds", body = Problem,
         headers(("Retry-After" = u32)), content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete_product(
    _: Authenticated,
    State(state): State<AppState>,
    ProductId(id): ProductId,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let expected = if_match(&headers, id)?;
    state.products.delete(id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
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

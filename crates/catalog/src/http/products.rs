//! `/products` handlers: thin — extract, call the service, shape the response.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, Problem};
use super::extract::{Authenticated, IfNoneMatch, JsonBody, ProductId, if_match};
use super::list_query::{ListParams, ListRequest};
use crate::domain::{NewProduct, Product, ProductPatch};

/// `X-Cache` names the level that answered a product read.
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Answer to a batch read.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BatchResponse {
    /// Found products, in the order requested: their cached bodies, not
    /// parsed and serialised again.
    #[schema(value_type = Vec<Product>)]
    items: Vec<Box<RawValue>>,
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
    set_etag(response.headers_mut(), product.etag().as_str());
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
    // The hit path: the product's values were rendered when it entered the
    // cache; here they are only written out, the body not at all for a 304.
    let etag = HeaderValue::from_maybe_shared(product.etag())
        .expect("an ETag built from two integers is a valid header");
    let mut response = if if_none_match.matches(&etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Response::new(Body::from(product.body()));
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
                items: batch.items.iter().map(|p| p.json()).collect(),
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

//! The OpenAPI 3.1 document: paths come from the handlers' annotations (via
//! `utoipa-axum`'s router, so a route cannot be served but undocumented);
//! this adds the title and the bearer security scheme.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "catalog",
        description = "Product catalog on a multi-level cache. Writes and cache \
                       administration need `Authorization: Bearer <token>`. Errors are \
                       RFC 9457 problem details."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "products", description = "Products"),
        (name = "cache", description = "Cache statistics and administration"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub(super) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

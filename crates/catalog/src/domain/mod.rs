//! The catalog's domain: products and the rules their inputs obey. No I/O,
//! and no framework: the HTTP layer documents these types
//! (`http/schema.rs`), the stores persist them.

mod product;

pub(crate) use product::{
    CATEGORY_MAX_CHARS, DESCRIPTION_MAX_CHARS, NAME_MAX_CHARS, PRICE_MAX_CENTS,
};
pub use product::{
    Category, Description, Etag, NewProduct, Price, Product, ProductName, ProductPatch,
};

//! The catalog's domain: products and the rules their inputs obey. No I/O.

mod product;
pub mod schema;

pub use product::{
    Category, Description, NewProduct, Price, Product, ProductName, ProductPatch, etag_for,
};

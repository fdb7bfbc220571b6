//! The catalog's domain: products and the rules their inputs obey. No I/O.

mod product;

pub use product::{
    Category, Description, NewProduct, Price, Product, ProductName, ProductPatch, etag_for,
};

//! Every op of graph/src/op.rs against a naive f64 implementation written here, on seeded random
//! inputs with sizes that are not multiples of anything, through the real executor.

#[path = "../common/mod.rs"]
mod common;

mod attention;
mod conv;
mod elementwise;
mod layout;
mod linear;
mod norm;
mod rope;

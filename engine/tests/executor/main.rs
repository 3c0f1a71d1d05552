//! The executor as a whole: hand-built graphs, arena placement and reuse, weights, and bad input.

#[path = "../common/mod.rs"]
mod common;

mod errors;
mod graph;
mod states;
mod weights;

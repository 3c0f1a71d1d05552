//! GPU tests of kernels/cuda/elementwise.cu (being written).
use super::common;
#[test] fn placeholder() { let _ = common::gpu("elementwise"); }

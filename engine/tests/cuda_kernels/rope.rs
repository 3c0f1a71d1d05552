//! GPU tests of kernels/cuda/rope.cu (being written).
use super::common;
#[test] fn placeholder() { let _ = common::gpu("rope"); }

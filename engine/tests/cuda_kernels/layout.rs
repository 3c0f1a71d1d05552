//! GPU tests of kernels/cuda/layout.cu (being written).
use super::common;
#[test] fn placeholder() { let _ = common::gpu("layout"); }

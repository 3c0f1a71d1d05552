//! GPU tests of kernels/cuda/attention.cu (being written).
use super::common;
#[test] fn placeholder() { let _ = common::gpu("attention"); }

//! GPU tests of kernels/cuda/bridge.cu (being written).
use super::common;
#[test] fn placeholder() { let _ = common::gpu("bridge"); }

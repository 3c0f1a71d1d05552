//! GPU tests of kernels/cuda/timestep.cu (being written).
use super::common;
#[test] fn placeholder() { let _ = common::gpu("timestep"); }

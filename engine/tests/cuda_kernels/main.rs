//! Every CUDA kernel against an f64 CPU reference on fresh random inputs (the seed is printed), at sizes
//! that are not multiples of the kernels' tiles, with outputs poisoned before each run. Without a GPU
//! (CI) each test says SKIPPED and passes; on the GPU machine `scripts/gpu-check.sh` runs them with
//! `HBRIDGE_REQUIRE_GPU=1`, which turns a skip into a failure.

mod common;

mod attention;
mod attention_sm90;
mod bridge;
mod device_memory;
mod elementwise;
mod gemv;
mod layout;
mod norm;
mod rope;
mod timestep;

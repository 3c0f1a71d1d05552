//! The CUDA backend: bf16 weights and activations, f32 accumulation and statistics, GEMMs through
//! cuBLASLt and the hand-written kernels of `kernels/cuda/` for everything else. Every cudarc call that
//! could panic on a machine without a GPU sits behind `Gpu::new`, which probes for libcuda first.

pub mod buffer;
mod context;
mod error;
pub mod ops;

pub use context::{dev_ptr, DevPtr, Gpu};
pub use error::{CudaError, CudaResult};

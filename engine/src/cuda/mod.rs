//! The CUDA backend: bf16 weights and activations, f32 accumulation and statistics, GEMMs through
//! cuBLASLt and the hand-written kernels of `kernels/cuda/` for everything else. Every cudarc call that
//! could panic on a machine without a GPU sits behind `Gpu::new`, which probes for libcuda first.

mod bind;
pub mod blas;
mod blas_algo;
pub mod buffer;
mod capture;
pub mod ceilings;
mod context;
mod dispatch;
mod error;
mod exec;
mod fuse;
mod launch;
pub mod ops;
pub mod prepare;
mod profile;
mod staging;
mod state;
mod timing;
mod weights;

pub use blas_algo::TUNE_ENV as GEMM_TUNE_ENV;
pub use capture::CaptureKey;
pub use context::{dev_ptr, DevPtr, Gpu};
pub use error::{CudaError, CudaResult};
pub use exec::{CudaExecutor, ExecStats, MAX_CAPTURES};
pub use launch::PDL_ENV;
pub use state::CudaStates;
pub use timing::{median, ReplayTiming};
pub use weights::{CudaWeight, CudaWeights, UploadProgress, UploadReport};

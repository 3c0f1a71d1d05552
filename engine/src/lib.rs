//! hbridge's execution backends. `cpu` runs a static graph (hbridge-graph) in f32 on the host: it is the
//! numerical reference the other backends are checked against, and the fallback when no GPU is present.
//! `cuda` runs the same graphs in bf16 on an NVIDIA GPU (cuBLASLt GEMMs, NVRTC-compiled kernels, CUDA
//! graphs); every CUDA entry point returns an error, never panics, on a machine without one.

pub mod ceilings;
pub mod cpu;
pub mod cuda;
pub mod derived;
pub mod device;
pub mod profile;
pub mod weight_table;

pub use cpu::{
    execute, CpuCompute, CpuComputeFixed, CpuWeights, EngineError, Executor, HostData, HostTensor,
    LoadReport, MatmulMode, WeightData, WeightStorage, WeightTensor,
};
pub use cuda::{CudaError, CudaExecutor, CudaWeights, Gpu};

//! hbridge's execution backends. `cpu` runs a static graph (hbridge-graph) in f32 on the host: it is the
//! numerical reference the other backends are checked against, and the fallback when no GPU is present.
//! No CUDA code lives here.

pub mod cpu;
pub mod cuda;
pub mod device;

pub use cpu::{execute, CpuWeights, EngineError, Executor, HostData, HostTensor, WeightTensor};

//! The f32 CPU backend: weights converted once per engine (to f32, or the large matrices to bf16 that
//! kernels widen as they read them), and an executor that runs a graph's nodes in order over one
//! activation arena placed by the graph's memory plan.

mod arena;
pub mod ceilings;
mod dispatch;
mod error;
mod exec;
mod fused;
pub mod host_memory;
mod matmul_mode;
pub(crate) mod ops;
mod tensor;
pub(crate) mod validate;
mod weight_data;
mod weights;

pub use error::EngineError;
pub use exec::{execute, Executor};
pub use matmul_mode::{CpuCompute, CpuComputeFixed, MatmulMode};
pub use ops::fast_exp::exp_shifted_sum;
pub use tensor::{state_rows, HostData, HostTensor};
pub use weight_data::{WeightData, WeightStorage};
pub use weights::{CpuWeights, LoadReport, WeightTensor};

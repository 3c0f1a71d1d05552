//! The f32 CPU backend: weights converted to f32 once per engine, and an executor that runs a graph's
//! nodes in order over one activation arena placed by the graph's memory plan.

mod arena;
mod dispatch;
mod error;
mod exec;
pub(crate) mod ops;
mod tensor;
pub(crate) mod validate;
mod weights;

pub use error::EngineError;
pub use exec::{execute, Executor};
pub use tensor::{HostData, HostTensor};
pub use weights::{CpuWeights, WeightTensor};

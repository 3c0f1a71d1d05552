//! Per-node time profiles of one graph run on either backend (see `hbridge_engine::profile`), with the
//! element sizes the backend keeps activations and weights in, so the work per node is counted as the
//! backend moves it.

use super::{Backend, States};
use crate::model::{Outputs, RunError};
use hbridge_engine::profile::NodeTimes;
use hbridge_graph::plan::MemoryPlan;
use hbridge_graph::Graph;

/// Bytes per element of activations and of weights on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElemBytes {
    /// Activations, inputs and states: 4 (f32) on the CPU, 2 (bf16) on CUDA.
    pub activation: usize,
    /// Weights: 2 where they are held as bf16 (CUDA; on the CPU bf16 storage, or `auto` on a bf16
    /// checkpoint; their small tensors stay f32), else 4.
    pub weight: usize,
}

impl Backend {
    /// The element sizes this backend runs with.
    pub fn elem_bytes(&self) -> ElemBytes {
        match self {
            Backend::Cpu { weights, .. } => {
                let weights = weights.read().unwrap_or_else(|e| e.into_inner());
                ElemBytes {
                    activation: 4,
                    weight: weights.elem_bytes(),
                }
            }
            Backend::Cuda { .. } => ElemBytes {
                activation: 2,
                weight: 2,
            },
        }
    }

    /// The time of each node of one run of `graph` over `states` (updated as by a run): wall time per
    /// node on the CPU, device time per node of an eager run on CUDA (never a replay: a CUDA graph runs
    /// as one unit).
    pub fn profile_with_states(
        &self,
        graph: &Graph,
        plan: &MemoryPlan,
        inputs: &Outputs,
        states: &mut States,
    ) -> Result<NodeTimes, RunError> {
        self.with_executor(
            states,
            |exec, w, map| exec.profile(graph, plan, w, inputs, map),
            |exec, w, s| exec.profile(graph, plan, w, inputs, s),
        )
    }
}

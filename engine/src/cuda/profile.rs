//! Per-node device time of one eager run: a CUDA event recorded between every two nodes' launches (and
//! after the state writes), one synchronization at the end, then the time between consecutive events.
//! Where the GPU runs ahead of the host (tiny kernels) a node's time includes the wait for its launch;
//! where the host runs ahead (a large model's step) it is the node's kernels alone.

use super::context::Gpu;
use super::dispatch::{launch_all, launch_all_marked};
use super::error::CudaError;
use super::exec::CudaExecutor;
use super::state::CudaStates;
use super::weights::CudaWeights;
use crate::cpu::{EngineError, HostTensor};
use crate::profile::NodeTimes;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;
use hbridge_graph::plan::MemoryPlan;
use hbridge_graph::Graph;
use std::collections::HashMap;

fn event(gpu: &Gpu) -> Result<CudaEvent, CudaError> {
    gpu.context()
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| CudaError::driver("creating a profile event", e))
}

impl CudaExecutor {
    /// Device time of each node of `graph` (and of its state writes) in one eager run over `inputs`
    /// and `states`, with the checks and bindings of [`run_with_states`](Self::run_with_states); the
    /// states are updated as by a run. The graph is launched once untimed first on the same bindings:
    /// a first launch compiles kernels and plans cuBLASLt shapes on the host, which would otherwise be
    /// counted as the device waiting. Its state writes land before the timed launches read the states:
    /// the same values for the K/V-cache graphs, whose cache segments mask the rows they write.
    pub fn profile(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &mut CudaStates,
    ) -> Result<NodeTimes, EngineError> {
        let gpu = self.gpu().clone();
        let events = (0..graph.nodes.len() + 2)
            .map(|_| event(&gpu))
            .collect::<Result<Vec<_>, _>>()?;
        self.eager(
            graph,
            plan,
            weights,
            inputs,
            states,
            |gpu, bindings| {
                launch_all(gpu, graph, bindings)?;
                launch_all_marked(gpu, graph, bindings, &mut |k| {
                    events[k]
                        .record(gpu.stream())
                        .map_err(|e| CudaError::driver("recording a profile event", e))
                })
            },
            |_, _, _| {
                gpu.synchronize()?;
                let marks = events
                    .iter()
                    .map(|e| events[0].elapsed_ms(e).map(f64::from))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| CudaError::driver("reading a profile event", e))?;
                let mut times = NodeTimes::from_marks(&marks);
                // The span of no launches is the event overhead: zero it, as the CPU does, so the
                // kinds of `NodeTimes::by_kind` add up to the total.
                if graph.state_writes.is_empty() {
                    times.state_writes_ms = 0.0;
                }
                Ok(times)
            },
        )
    }
}

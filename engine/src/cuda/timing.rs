//! Replay vs eager: the same graph on the same device buffers, launched node by node and replayed as one
//! CUDA graph, each timed with CUDA events around the launches only (no uploads or downloads), so the
//! difference is launch overhead and the gaps between kernels.

use super::context::Gpu;
use super::dispatch::launch_all;
use super::error::CudaError;
use super::exec::CudaExecutor;
use super::state::CudaStates;
use super::weights::CudaWeights;
use crate::cpu::{EngineError, HostTensor};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;
use hbridge_graph::plan::MemoryPlan;
use hbridge_graph::Graph;
use std::collections::HashMap;

/// Per-run device times in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayTiming {
    pub nodes: usize,
    pub eager_ms: Vec<f32>,
    /// Empty when the graph could not be captured (see `CudaExecutor::capture_failure`).
    pub replay_ms: Vec<f32>,
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f32]) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

impl ReplayTiming {
    pub fn eager_median_ms(&self) -> f32 {
        median(&self.eager_ms)
    }

    pub fn replay_median_ms(&self) -> f32 {
        median(&self.replay_ms)
    }

    /// Eager median over replay median (NaN without a capture).
    pub fn speedup(&self) -> f32 {
        self.eager_median_ms() / self.replay_median_ms()
    }

    pub fn captured(&self) -> bool {
        !self.replay_ms.is_empty()
    }
}

fn event(gpu: &Gpu) -> Result<CudaEvent, CudaError> {
    gpu.context()
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| CudaError::driver("creating a timing event", e))
}

/// Device time of `f`'s launches, in milliseconds.
fn timed(
    gpu: &Gpu,
    start: &CudaEvent,
    stop: &CudaEvent,
    f: impl FnOnce() -> Result<(), EngineError>,
) -> Result<f32, EngineError> {
    start
        .record(gpu.stream())
        .map_err(|e| CudaError::driver("recording a timing event", e))?;
    f()?;
    stop.record(gpu.stream())
        .map_err(|e| CudaError::driver("recording a timing event", e))?;
    Ok(start
        .elapsed_ms(stop)
        .map_err(|e| CudaError::driver("reading a timing event", e))?)
}

impl CudaExecutor {
    /// Times `iters` eager runs and `iters` replays of `graph` on `inputs` (after the first
    /// `run_captured` call, which warms up and captures, whatever eager-only says). Each iteration is
    /// timed alone (events, then a wait), so the numbers include the launch gaps a single request sees.
    pub fn time_replay_vs_eager(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
        iters: usize,
    ) -> Result<ReplayTiming, EngineError> {
        self.time_replay_vs_eager_with_states(
            graph,
            plan,
            weights,
            inputs,
            &mut CudaStates::new(),
            iters,
        )
    }

    /// [`time_replay_vs_eager`](Self::time_replay_vs_eager) of a graph over state tensors (a decode
    /// step over its K/V cache; every iteration writes the same cache rows).
    pub fn time_replay_vs_eager_with_states(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &mut CudaStates,
        iters: usize,
    ) -> Result<ReplayTiming, EngineError> {
        let (gpu, captured) = self.captured_parts(graph, plan, weights, inputs, states)?;
        let mut t = ReplayTiming {
            nodes: graph.nodes.len(),
            ..Default::default()
        };
        match captured {
            Some((bindings, key)) => {
                let _exclusive = gpu.exclusive();
                let (start, stop) = (event(&gpu)?, event(&gpu)?);
                for _ in 0..iters {
                    t.eager_ms.push(timed(&gpu, &start, &stop, || {
                        Ok(launch_all(&gpu, graph, &bindings)?)
                    })?);
                }
                for _ in 0..iters {
                    t.replay_ms
                        .push(timed(&gpu, &start, &stop, || self.replay(&key))?);
                }
            }
            None => {
                // No capture, so no fixed buffers to launch on: host wall time of whole eager runs
                // (uploads and downloads included).
                for _ in 0..iters {
                    let s = std::time::Instant::now();
                    self.run_with_states(graph, plan, weights, inputs, states)?;
                    t.eager_ms.push(s.elapsed().as_secs_f32() * 1e3);
                }
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        let t = ReplayTiming {
            nodes: 1,
            eager_ms: vec![2.0],
            replay_ms: vec![0.5],
        };
        assert_eq!(t.speedup(), 4.0);
        assert!(t.captured());
    }
}

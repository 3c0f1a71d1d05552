//! The CUDA executor: the CPU executor's contract (same validation, same inputs and outputs) on the GPU.
//! Activations are bf16 in one device arena laid out by the graph's memory plan (offsets in elements),
//! kept across runs; inputs go to their own device buffers; outputs come back as f32.
//!
//! [`CudaExecutor::run_captured`] also records a run as a CUDA graph the first time it sees a graph
//! (eager warm-up first: it compiles kernels, plans cuBLASLt shapes and produces that call's outputs),
//! then replays it: the host only copies the new input values in, launches one graph and downloads.

use super::bind::{Bindings, InputBuffers, Scratch};
use super::buffer::{download_bf16, poison_bf16};
use super::capture::{capture, CaptureKey, Captured, Lru};
use super::context::{DevPtr, Gpu};
use super::dispatch::launch_all;
use super::error::CudaError;
use super::prepare::Needs;
use super::state::CudaStates;
use super::weights::CudaWeights;
use crate::cpu::validate::{check, Place};
use crate::cpu::{EngineError, HostTensor};
use hbridge_graph::plan::MemoryPlan;
use hbridge_graph::{Graph, Source};
use std::collections::HashMap;
use std::sync::Arc;

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Captures kept per executor (each holds its input buffers).
pub const MAX_CAPTURES: usize = 16;

/// How runs were executed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecStats {
    pub eager_runs: usize,
    pub captures: usize,
    pub replays: usize,
    /// Captures that failed (the graph then runs eagerly).
    pub capture_failures: usize,
    /// Times the shared buffers grew, dropping every capture.
    pub invalidations: usize,
}

/// Runs graphs on one GPU, owning the activation arena and the captures across runs. `Send`: pool it
/// like the CPU executor; runs on the same GPU from different executors are serialized by the GPU's
/// exclusive lock.
pub struct CudaExecutor {
    gpu: Arc<Gpu>,
    scratch: Scratch,
    captures: Lru<CaptureKey, Captured>,
    /// Graphs whose capture failed, with why: they run eagerly from then on.
    failed: Lru<CaptureKey, CudaError>,
    eager_only: bool,
    poison: bool,
    stats: ExecStats,
}

impl std::fmt::Debug for CudaExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaExecutor")
            .field("gpu", &self.gpu)
            .field("arena_len", &self.scratch.arena_len())
            .field("captures", &self.captures.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Drop for CudaExecutor {
    /// Frees the captures and the scratch buffers under `Gpu::exclusive` (cudarc frees on the stream,
    /// which another thread may be capturing).
    fn drop(&mut self) {
        let gpu = self.gpu.clone();
        let _exclusive = gpu.exclusive();
        self.captures.clear();
        self.scratch = Scratch::default();
    }
}

/// A capture's addresses and key, for launching its graph eagerly or replaying it.
pub(crate) type CaptureHandle = (Bindings, CaptureKey);

/// The validated graph with its device plan, ready to bind.
struct Checked {
    places: Vec<Place>,
    needs: Needs,
}

impl CudaExecutor {
    pub fn new(gpu: Arc<Gpu>) -> Self {
        CudaExecutor {
            gpu,
            scratch: Scratch::default(),
            captures: Lru::new(MAX_CAPTURES),
            failed: Lru::new(4 * MAX_CAPTURES),
            eager_only: std::env::var("HBRIDGE_CUDA_GRAPHS").is_ok_and(|v| v == "0"),
            poison: false,
            stats: ExecStats::default(),
        }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Forces eager launches in `run_captured` (also set by `HBRIDGE_CUDA_GRAPHS=0` at creation).
    pub fn set_eager_only(&mut self, eager: bool) {
        self.eager_only = eager;
    }

    pub fn eager_only(&self) -> bool {
        self.eager_only
    }

    /// Fills the arena with bf16 NaNs before every run (tests: an activation read before it is written
    /// shows up as NaN instead of a stale value).
    pub fn set_poison(&mut self, poison: bool) {
        self.poison = poison;
    }

    pub fn stats(&self) -> ExecStats {
        self.stats
    }

    /// Current arena size in bf16 values (grows to the largest plan seen, never shrinks).
    pub fn arena_len(&self) -> usize {
        self.scratch.arena_len()
    }

    /// Why capturing `graph` under `plan` failed, if it did (it then runs eagerly).
    pub fn capture_failure(
        &self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
    ) -> Option<&CudaError> {
        self.failed.get(&CaptureKey::new(graph, plan, weights.id()))
    }

    /// Drops every capture (their memory too, freed under `Gpu::exclusive`); the next `run_captured`
    /// of each graph captures again. Not to be called while holding that lock.
    pub fn clear_captures(&mut self) {
        let gpu = self.gpu.clone();
        let _exclusive = gpu.exclusive();
        self.captures.clear();
        self.failed.clear();
    }

    /// Validates like the CPU executor, then works out the device needs; nothing is launched if either
    /// fails.
    fn check(
        &self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &CudaStates,
    ) -> Result<Checked> {
        if !Arc::ptr_eq(&self.gpu, weights.gpu()) {
            return Err(CudaError::Unsupported {
                op: "executor",
                label: "weights".into(),
                problem: "the weights were uploaded to another Gpu than this executor's".into(),
            }
            .into());
        }
        let places = check(
            graph,
            plan,
            inputs,
            |part, name, shape| weights.require(part, name, shape).map(|_| ()),
            |name, shape| states.require(name, shape),
        )?;
        let needs = Needs::of(graph)?;
        Ok(Checked { places, needs })
    }

    /// Grows the shared buffers for `plan` and `needs`; a move drops every capture (they point at the
    /// old buffers). So does a failure: a buffer may have moved before another's allocation failed,
    /// and a capture replayed after that would write to freed memory.
    fn reserve(&mut self, plan: &MemoryPlan, needs: &Needs) -> Result<()> {
        let grown = self.scratch.reserve(&self.gpu, plan.arena_len, needs);
        if !matches!(grown, Ok(false)) {
            if !self.captures.is_empty() {
                self.stats.invalidations += 1;
            }
            self.captures.clear();
        }
        grown?;
        Ok(())
    }

    fn poison_arena(&self) -> Result<()> {
        if self.poison && self.scratch.arena_len() > 0 {
            poison_bf16(
                &self.gpu,
                self.scratch.arena_ptr(&self.gpu),
                self.scratch.arena_len(),
            )?;
        }
        Ok(())
    }

    /// Runs every node of `graph` with eager launches and returns every graph output by name, as f32.
    /// Inputs are looked up by the graph's input names (extra entries are ignored). Nothing is launched
    /// unless every input, weight, token id and plan offset checks out and every node is supported.
    pub fn run(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<HashMap<String, HostTensor>> {
        self.run_with_states(graph, plan, weights, inputs, &mut CudaStates::new())
    }

    /// [`run`](Self::run) for a graph with state tensors, read from `states` in place and updated by
    /// the graph's state writes on the device (the CPU executor's `run_with_states` contract).
    pub fn run_with_states(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &mut CudaStates,
    ) -> Result<HashMap<String, HostTensor>> {
        self.eager(
            graph,
            plan,
            weights,
            inputs,
            states,
            |gpu, bindings| launch_all(gpu, graph, bindings),
            |exec, places, bindings| exec.download(graph, places, bindings, inputs),
        )
    }

    /// One eager run: validates, binds `inputs` and `states`, enqueues `launch` on the bindings, then
    /// calls `finish` (which synchronizes before it reads anything back) while the run's input buffers
    /// are still alive. A normal run downloads its outputs there; a profile reads its events.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn eager<T>(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &CudaStates,
        launch: impl FnOnce(&Gpu, &Bindings) -> Result<(), CudaError>,
        finish: impl FnOnce(&Self, &[Place], &Bindings) -> Result<T>,
    ) -> Result<T> {
        let c = self.check(graph, plan, weights, inputs, states)?;
        let gpu = self.gpu.clone();
        let _exclusive = gpu.exclusive();
        self.reserve(plan, &c.needs)?;
        let (_buffers, bindings) = self.bind(graph, &c, weights, inputs, states)?;
        self.poison_arena()?;
        launch(&gpu, &bindings)?;
        self.stats.eager_runs += 1;
        // `_buffers` drops after `finish`, when no launch reads it any more.
        finish(self, &c.places, &bindings)
    }

    /// [`run`](Self::run), through a CUDA graph: the first call for a graph (same ops, shapes, plan and
    /// weights) runs eagerly, then captures; later calls copy the inputs into the capture's buffers and
    /// replay it. Falls back to eager launches when capture fails (see [`capture_failure`]) or when
    /// eager-only is set. Outputs are bit-identical to an eager run's.
    ///
    /// [`capture_failure`]: Self::capture_failure
    pub fn run_captured(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<HashMap<String, HostTensor>> {
        self.run_captured_with_states(graph, plan, weights, inputs, &mut CudaStates::new())
    }

    /// [`run_captured`](Self::run_captured) over state tensors. A capture bakes in the states'
    /// addresses, so it is keyed by them too: one capture per request (its K/V cache), replayed for
    /// every later step, with the state writes and the segment lengths reading their rows from the
    /// device input buffers the host refills.
    pub fn run_captured_with_states(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &mut CudaStates,
    ) -> Result<HashMap<String, HostTensor>> {
        let key = self.key(graph, plan, weights, states);
        if self.eager_only || graph.nodes.is_empty() || self.failed.contains(&key) {
            return self.run_with_states(graph, plan, weights, inputs, states);
        }
        let c = self.check(graph, plan, weights, inputs, states)?;
        let gpu = self.gpu.clone();
        let _exclusive = gpu.exclusive();
        self.reserve(plan, &c.needs)?;

        if let Some(cap) = self.captures.get_mut(&key) {
            cap.inputs.upload(&gpu, graph, inputs)?;
            let cap = self.captures.get(&key).expect("present");
            self.poison_arena()?;
            cap.exec.launch()?;
            self.stats.replays += 1;
            return self.download(graph, &c.places, &cap.bindings, inputs);
        }

        let (buffers, bindings) = self.bind(graph, &c, weights, inputs, states)?;
        self.poison_arena()?;
        // Warm-up: compiles and loads every kernel module, plans every cuBLASLt shape (none of which may
        // happen inside a capture) and computes this call's outputs.
        launch_all(&gpu, graph, &bindings)?;
        self.stats.eager_runs += 1;
        let out = self.download(graph, &c.places, &bindings, inputs)?;
        match capture(&gpu, graph, &bindings) {
            Ok(exec) => {
                self.stats.captures += 1;
                self.captures.insert(
                    key,
                    Captured {
                        inputs: buffers,
                        bindings,
                        exec,
                    },
                );
            }
            Err(e) => {
                self.stats.capture_failures += 1;
                self.failed.insert(key, e);
            }
        }
        Ok(out)
    }

    /// Fresh input buffers holding `inputs`, and every tensor's address for a run over them.
    fn bind(
        &self,
        graph: &Graph,
        c: &Checked,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &CudaStates,
    ) -> Result<(InputBuffers, Bindings)> {
        let mut buffers = InputBuffers::new(&self.gpu, graph, &c.needs)?;
        buffers.upload(&self.gpu, graph, inputs)?;
        let bindings = Bindings::new(
            &self.gpu,
            graph,
            &c.places,
            weights,
            &buffers,
            states,
            &self.scratch,
        )?;
        Ok((buffers, bindings))
    }

    fn key(
        &self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        states: &CudaStates,
    ) -> CaptureKey {
        let key = CaptureKey::new(graph, plan, weights.id());
        if graph.states().next().is_some() {
            key.with_states(states.fingerprint(&self.gpu, graph))
        } else {
            key
        }
    }

    /// Reads every graph output back as f32 (synchronizes the stream, so launch errors surface here).
    fn download(
        &self,
        graph: &Graph,
        places: &[Place],
        bindings: &Bindings,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<HashMap<String, HostTensor>> {
        self.gpu.synchronize()?;
        let mut outputs = HashMap::with_capacity(graph.outputs.len());
        for (name, id) in &graph.outputs {
            let t = graph.tensor(*id);
            let value = match (places[id.index()], &t.source) {
                // An input returned as an output: the caller's own values, exact (as on the CPU).
                (Place::Input, Source::Input(input)) => inputs[input].clone(),
                _ => {
                    let ptr: DevPtr = bindings.get(graph, *id)?;
                    HostTensor::f32(t.shape.clone(), download_bf16(&self.gpu, ptr, t.numel())?)
                }
            };
            outputs.insert(name.clone(), value);
        }
        Ok(outputs)
    }

    /// The pieces [`timing`](super::timing) needs: the capture of `graph` (made by a `run_captured`
    /// call if missing) and whether it exists.
    pub(crate) fn captured_parts(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CudaWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &mut CudaStates,
    ) -> Result<(Arc<Gpu>, Option<CaptureHandle>)> {
        let eager = self.eager_only;
        self.eager_only = false;
        let r = self.run_captured_with_states(graph, plan, weights, inputs, states);
        self.eager_only = eager;
        r?;
        let key = self.key(graph, plan, weights, states);
        Ok((
            self.gpu.clone(),
            self.captures.get(&key).map(|c| (c.bindings.clone(), key)),
        ))
    }

    pub(crate) fn replay(&self, key: &CaptureKey) -> Result<()> {
        match self.captures.get(key) {
            Some(c) => Ok(c.exec.launch()?),
            None => Err(CudaError::Unsupported {
                op: "replay",
                label: String::new(),
                problem: "the capture was dropped".into(),
            }
            .into()),
        }
    }
}

//! The backend a model runs on: its weights in the backend's form and a pool of executors, so that
//! concurrent requests each take an executor (and its arena) without allocating per run.

use crate::model::{Outputs, RunError};
use hbridge_engine::ceilings::Ceilings;
use hbridge_engine::cpu::{state_rows, HostTensor};
use hbridge_engine::cuda::{
    CudaExecutor, CudaStates, CudaWeights, Gpu, ReplayTiming, UploadProgress,
};
use hbridge_engine::device::Device;
use hbridge_engine::EngineError;
use hbridge_engine::{CpuWeights, Executor, WeightStorage};
use hbridge_graph::plan::MemoryPlan;
use hbridge_graph::Graph;
use hbridge_loader::Checkpoint;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

mod profile;

pub use profile::ElemBytes;

pub enum Backend {
    /// f32 weights converted once per tensor as graphs first need them.
    Cpu {
        weights: RwLock<CpuWeights>,
        executors: Mutex<Vec<Executor>>,
    },
    /// bf16 weights on the GPU; executors replay captured CUDA graphs for repeated shapes (the gen step).
    Cuda {
        gpu: Arc<Gpu>,
        weights: RwLock<CudaWeights>,
        executors: Mutex<Vec<CudaExecutor>>,
        /// Highest device memory in use seen after a weight upload or a run (bytes).
        peak: AtomicU64,
    },
}

impl Backend {
    pub fn new(device: Device, storage: WeightStorage) -> Result<Backend, RunError> {
        Ok(match device {
            Device::Cpu => Backend::Cpu {
                weights: RwLock::new(CpuWeights::with_storage(storage)),
                executors: Mutex::new(Vec::new()),
            },
            Device::Cuda => {
                let gpu = Gpu::new(0).map_err(hbridge_engine::EngineError::from)?;
                Backend::Cuda {
                    weights: RwLock::new(CudaWeights::new(gpu.clone())),
                    gpu,
                    executors: Mutex::new(Vec::new()),
                    peak: AtomicU64::new(0),
                }
            }
        })
    }

    pub fn device(&self) -> Device {
        match self {
            Backend::Cpu { .. } => Device::Cpu,
            Backend::Cuda { .. } => Device::Cuda,
        }
    }

    /// Peak device memory in use (CUDA; sampled with cuMemGetInfo after each upload and run, so it
    /// includes the arena, the weights and cuBLASLt's workspace), `None` on the CPU.
    pub fn peak_device_memory(&self) -> Option<u64> {
        match self {
            Backend::Cpu { .. } => None,
            Backend::Cuda { peak, .. } => Some(peak.load(Ordering::Relaxed)),
        }
    }

    /// Bytes of the weights made resident so far, in the backend's form.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Backend::Cpu { weights, .. } => {
                weights.read().unwrap_or_else(|e| e.into_inner()).bytes()
            }
            Backend::Cuda { weights, .. } => {
                weights.read().unwrap_or_else(|e| e.into_inner()).bytes()
            }
        }
    }

    fn sample_memory(gpu: &Gpu, peak: &AtomicU64) {
        if let Ok(used) = gpu.memory_in_use() {
            peak.fetch_max(used, Ordering::Relaxed);
        }
    }

    /// Makes every weight `graph` reads resident (converted or uploaded once, then reused); a
    /// gigabyte or more gets a line on stderr. Returns whether anything was made resident.
    pub fn load_weights(&self, checkpoint: &Checkpoint, graph: &Graph) -> Result<bool, RunError> {
        let mut loaded = false;
        match self {
            Backend::Cpu { weights, .. } => {
                let missing = {
                    let w = weights.read().unwrap_or_else(|e| e.into_inner());
                    graph
                        .weights()
                        .any(|(_, part, name)| w.get(part, name).is_none())
                };
                if missing {
                    loaded = true;
                    let mut w = weights.write().unwrap_or_else(|e| e.into_inner());
                    // Converting gigabytes takes seconds: say so before and after.
                    let report = w.load_graph_with(checkpoint, graph, |tensors, bytes| {
                        if bytes >= 1 << 30 {
                            eprintln!(
                                "converting weights: {tensors} tensors, {:.1} GB",
                                bytes as f64 / 1e9
                            );
                        }
                    })?;
                    say_done("converted", report.tensors, report.bytes, report.seconds);
                }
            }
            Backend::Cuda {
                gpu, weights, peak, ..
            } => {
                let missing = {
                    let w = weights.read().unwrap_or_else(|e| e.into_inner());
                    graph
                        .weights()
                        .any(|(_, part, name)| w.get(part, name).is_none())
                };
                if missing {
                    loaded = true;
                    let mut w = weights.write().unwrap_or_else(|e| e.into_inner());
                    // Large uploads take seconds: a line per GB so a user sees progress.
                    let mut last_gb = 0;
                    let report = w.load_graph(checkpoint, graph, |p: UploadProgress| {
                        let gb = p.bytes_done >> 30;
                        if gb > last_gb {
                            last_gb = gb;
                            eprintln!(
                                "uploading weights: {:.1} / {:.1} GB",
                                p.bytes_done as f64 / 1e9,
                                p.bytes_total as f64 / 1e9
                            );
                        }
                    })?;
                    say_done(
                        "uploaded",
                        report.tensors,
                        report.bytes as u64,
                        report.seconds,
                    );
                    Self::sample_memory(gpu, peak);
                }
            }
        }
        Ok(loaded)
    }

    /// The GEMM and copy ceilings measured now (`hbridge_engine::cuda::ceilings`,
    /// `hbridge_engine::cpu::ceilings`).
    pub fn ceilings(&self) -> Result<Ceilings, RunError> {
        match self {
            Backend::Cpu { .. } => Ok(hbridge_engine::cpu::ceilings::measure()),
            Backend::Cuda { gpu, .. } => {
                let _exclusive = gpu.exclusive();
                Ok(hbridge_engine::cuda::ceilings::measure(gpu).map_err(EngineError::from)?)
            }
        }
    }

    /// CUDA: eager launches vs CUDA graph replays of `graph`, device time per run; `None` on the CPU.
    pub fn time_replay_vs_eager(
        &self,
        graph: &Graph,
        plan: &MemoryPlan,
        inputs: &Outputs,
        iters: usize,
    ) -> Result<Option<ReplayTiming>, RunError> {
        self.time_replay_vs_eager_with_states(graph, plan, inputs, &mut self.new_states(), iters)
    }

    /// CUDA: [`time_replay_vs_eager`](Self::time_replay_vs_eager) of a graph over request states.
    pub fn time_replay_vs_eager_with_states(
        &self,
        graph: &Graph,
        plan: &MemoryPlan,
        inputs: &Outputs,
        states: &mut States,
        iters: usize,
    ) -> Result<Option<ReplayTiming>, RunError> {
        if matches!(self, Backend::Cpu { .. }) {
            return Ok(None);
        }
        self.with_executor(
            states,
            |_, _, _| Ok(None),
            |exec, w, s| {
                exec.time_replay_vs_eager_with_states(graph, plan, w, inputs, s, iters)
                    .map(Some)
            },
        )
    }

    /// Runs `graph` with an idle executor (a new one when all are busy). `replay`: capture the run as a
    /// CUDA graph and replay it on later calls of the same graph (the denoising loop); ignored on the CPU.
    pub fn execute(
        &self,
        graph: &Graph,
        plan: &MemoryPlan,
        inputs: &Outputs,
        replay: bool,
    ) -> Result<Outputs, RunError> {
        self.execute_with_states(graph, plan, inputs, &mut self.new_states(), replay)
    }

    /// Empty request states for this backend.
    pub fn new_states(&self) -> States {
        match self {
            Backend::Cpu { .. } => States::Cpu(HashMap::new()),
            Backend::Cuda { .. } => States::Cuda(CudaStates::new()),
        }
    }

    /// Adds zero-filled state `name` of `shape` to `states`.
    pub fn alloc_state(
        &self,
        states: &mut States,
        name: &str,
        shape: &[usize],
    ) -> Result<(), RunError> {
        match (self, states) {
            (Backend::Cpu { .. }, States::Cpu(map)) => {
                let n = shape.iter().product();
                map.insert(
                    name.to_string(),
                    HostTensor::f32(shape.to_vec(), vec![0.0; n]),
                );
            }
            (Backend::Cuda { gpu, peak, .. }, States::Cuda(s)) => {
                s.alloc(gpu, name, shape).map_err(EngineError::from)?;
                Self::sample_memory(gpu, peak);
            }
            _ => return Err(mismatch()),
        }
        Ok(())
    }

    /// Copies whole rows of `values` into state `name` from row `row` on.
    pub fn write_state_rows(
        &self,
        states: &mut States,
        name: &str,
        row: usize,
        values: &[f32],
    ) -> Result<(), RunError> {
        match (self, states) {
            (Backend::Cpu { .. }, States::Cpu(map)) => {
                let t = map.get_mut(name).ok_or_else(|| EngineError::MissingState {
                    name: name.to_string(),
                })?;
                let range = state_rows(name, &t.shape, row, values.len())?;
                let dst = t.as_f32_mut().ok_or_else(|| EngineError::InputDtype {
                    name: name.to_string(),
                    expected: hbridge_graph::DataType::F32,
                    found: hbridge_graph::DataType::I32,
                })?;
                dst[range].copy_from_slice(values);
            }
            (Backend::Cuda { gpu, .. }, States::Cuda(s)) => {
                s.write_rows(gpu, name, row, values)?;
            }
            _ => return Err(mismatch()),
        }
        Ok(())
    }

    /// Makes state `name` of `to` a copy of `from`'s (allocated as needed), on the backend: a device
    /// copy on CUDA, never through the host.
    pub fn copy_state(&self, from: &States, to: &mut States, name: &str) -> Result<(), RunError> {
        match (self, from, to) {
            (Backend::Cpu { .. }, States::Cpu(src), States::Cpu(dst)) => {
                let t = src.get(name).ok_or_else(|| EngineError::MissingState {
                    name: name.to_string(),
                })?;
                dst.insert(name.to_string(), t.clone());
            }
            (Backend::Cuda { gpu, peak, .. }, States::Cuda(src), States::Cuda(dst)) => {
                dst.copy_from(gpu, src, name)?;
                Self::sample_memory(gpu, peak);
            }
            _ => return Err(mismatch()),
        }
        Ok(())
    }

    /// State `name` as f32 on the host.
    pub fn read_state(&self, states: &States, name: &str) -> Result<HostTensor, RunError> {
        match (self, states) {
            (Backend::Cpu { .. }, States::Cpu(map)) => map.get(name).cloned().ok_or_else(|| {
                EngineError::MissingState {
                    name: name.to_string(),
                }
                .into()
            }),
            (Backend::Cuda { gpu, .. }, States::Cuda(s)) => Ok(s.read(gpu, name)?),
            _ => Err(mismatch()),
        }
    }

    /// [`execute`](Self::execute) for a graph with state tensors, read from and written into `states`.
    pub fn execute_with_states(
        &self,
        graph: &Graph,
        plan: &MemoryPlan,
        inputs: &Outputs,
        states: &mut States,
        replay: bool,
    ) -> Result<Outputs, RunError> {
        self.with_executor(
            states,
            |exec, w, map| exec.run_with_states(graph, plan, w, inputs, map),
            |exec, w, s| {
                if replay {
                    exec.run_captured_with_states(graph, plan, w, inputs, s)
                } else {
                    exec.run_with_states(graph, plan, w, inputs, s)
                }
            },
        )
    }

    /// [`execute_with_states`](Self::execute_with_states) for several graphs at once (a request's
    /// guidance branches), outputs in order. On the CPU they run side by side on the rayon pool under
    /// one read of the weights: a job never locks the weights inside another's rayon task, where a
    /// writer queued in between (another request loading weights) would deadlock it. On CUDA they run
    /// one after the other on the stream.
    pub fn execute_each_with_states(
        &self,
        jobs: Vec<StatesJob<'_>>,
        replay: bool,
    ) -> Result<Vec<Outputs>, RunError> {
        match self {
            Backend::Cpu { weights, executors } => {
                use rayon::prelude::*;
                let mut maps = Vec::with_capacity(jobs.len());
                for job in jobs {
                    match job.states {
                        States::Cpu(map) => maps.push((job.graph, job.plan, job.inputs, map)),
                        States::Cuda(_) => return Err(mismatch()),
                    }
                }
                let w = weights.read().unwrap_or_else(|e| e.into_inner());
                maps.into_par_iter()
                    .map(|(graph, plan, inputs, map)| {
                        let pooled = executors.lock().unwrap_or_else(|e| e.into_inner()).pop();
                        let mut exec = pooled.unwrap_or_default();
                        let out = exec.run_with_states(graph, plan, &w, inputs, map);
                        executors
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(exec);
                        Ok(out?)
                    })
                    .collect()
            }
            Backend::Cuda { .. } => jobs
                .into_iter()
                .map(|j| self.execute_with_states(j.graph, j.plan, j.inputs, j.states, replay))
                .collect(),
        }
    }

    /// Runs `cpu` or `cuda` (whichever this backend is) with a pooled executor, the weights and the
    /// matching request states; states made for the other backend are an error.
    fn with_executor<T>(
        &self,
        states: &mut States,
        cpu: impl FnOnce(
            &mut Executor,
            &CpuWeights,
            &mut HashMap<String, HostTensor>,
        ) -> Result<T, EngineError>,
        cuda: impl FnOnce(&mut CudaExecutor, &CudaWeights, &mut CudaStates) -> Result<T, EngineError>,
    ) -> Result<T, RunError> {
        match (self, states) {
            (Backend::Cpu { weights, executors }, States::Cpu(map)) => {
                Ok(with_cpu_executor(weights, executors, |exec, w| {
                    cpu(exec, w, map)
                })?)
            }
            (
                Backend::Cuda {
                    gpu,
                    weights,
                    executors,
                    peak,
                },
                States::Cuda(s),
            ) => Ok(with_cuda_executor(
                gpu,
                weights,
                executors,
                peak,
                |exec, w| cuda(exec, w, s),
            )?),
            _ => Err(mismatch()),
        }
    }
}

/// One graph run of [`Backend::execute_each_with_states`].
pub struct StatesJob<'a> {
    pub graph: &'a Graph,
    pub plan: &'a MemoryPlan,
    pub inputs: &'a Outputs,
    pub states: &'a mut States,
}

/// Tensors a request keeps on its model's backend across graph runs (a chat's und K/V cache), made by
/// [`Backend::new_states`]: host vectors on the CPU, device buffers on CUDA.
pub enum States {
    Cpu(HashMap<String, HostTensor>),
    Cuda(CudaStates),
}

impl States {
    /// The shape of state `name`, if it exists.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        match self {
            States::Cpu(map) => map.get(name).map(|t| t.shape.as_slice()),
            States::Cuda(s) => s.shape(name),
        }
    }
}

/// Runs `f` with an idle CPU executor (a new one when all are busy) and the weights, then pools the
/// executor again.
fn with_cpu_executor<T>(
    weights: &RwLock<CpuWeights>,
    executors: &Mutex<Vec<Executor>>,
    f: impl FnOnce(&mut Executor, &CpuWeights) -> T,
) -> T {
    let weights = weights.read().unwrap_or_else(|e| e.into_inner());
    let pooled = executors.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut exec = pooled.unwrap_or_default();
    let out = f(&mut exec, &weights);
    executors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(exec);
    out
}

/// Runs `f` with an idle CUDA executor (a new one when all are busy) and the weights, then pools the
/// executor again and samples the device memory in use.
fn with_cuda_executor<T>(
    gpu: &Arc<Gpu>,
    weights: &RwLock<CudaWeights>,
    executors: &Mutex<Vec<CudaExecutor>>,
    peak: &AtomicU64,
    f: impl FnOnce(&mut CudaExecutor, &CudaWeights) -> T,
) -> T {
    let weights = weights.read().unwrap_or_else(|e| e.into_inner());
    let pooled = executors.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut exec = pooled.unwrap_or_else(|| CudaExecutor::new(gpu.clone()));
    let out = f(&mut exec, &weights);
    executors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(exec);
    Backend::sample_memory(gpu, peak);
    out
}

fn mismatch() -> RunError {
    RunError::Request("request states were made for another backend".into())
}

/// The line after making a gigabyte or more of weights resident (`done`: what was done to them).
fn say_done(done: &str, tensors: usize, bytes: u64, seconds: f64) {
    if bytes >= 1 << 30 {
        eprintln!(
            "{done} {tensors} weights ({:.1} GB) in {seconds:.1} s",
            bytes as f64 / 1e9
        );
    }
}

//! A checkpoint ready to run on a backend (CPU or CUDA): validated tensors, their backend copies (made
//! once, as graphs first need them), and the runs of the three graph families.

use crate::backend::{Backend, States};
use hbridge_engine::cpu::{EngineError, HostTensor};
use hbridge_engine::device::Device;
use hbridge_graph::build::{self, names, UndPrefillSpec};
use hbridge_graph::plan::{plan_memory, MemoryPlan};
use hbridge_graph::{Graph, GraphError};
use hbridge_loader::{Checkpoint, LoadError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod branches;
mod gen_step;
mod profile;
mod resident;
mod state_bytes;

pub use crate::backend::ElemBytes;
pub use branches::SHARED_PREFIX_ENV;
pub(crate) use gen_step::StepGraph;
pub use profile::GraphProfile;
pub use resident::ResidentContext;

pub use hbridge_engine::WeightStorage;

/// Why a run (a prefill, a gen step, a whole image request) failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The checkpoint could not be read or is inconsistent.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The model's graph could not be built for this request.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The backend failed while running a graph.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A request argument the model cannot serve (checked in [`crate::validate`]).
    #[error(transparent)]
    Invalid(#[from] crate::validate::RequestError),
    /// The progress callback asked to stop; `step` denoising steps of `steps` had run.
    #[error("cancelled after step {step} of {steps}")]
    Cancelled {
        /// Denoising steps completed before the stop (1-based: the step whose callback broke).
        step: usize,
        /// The request's total number of steps.
        steps: usize,
    },
    /// The request state would not fit the engine's memory limit (see [`crate::budget`]).
    #[error(transparent)]
    Memory(#[from] crate::budget::BudgetError),
    /// Anything else about the request or the run's outputs, described.
    #[error("{0}")]
    Request(String),
}

/// Named tensors: a graph's inputs or outputs.
pub type Outputs = HashMap<String, HostTensor>;

/// A checkpoint opened on a backend: the runs of the und prefill, gen step and VAE graphs.
pub struct Model {
    /// The validated checkpoint (configs and memory-mapped tensors).
    pub checkpoint: Checkpoint,
    /// The weights in the backend's form and its idle executors (arenas reused across runs).
    backend: Backend,
    /// Built, pruned and planned graphs by request shape: a denoising loop builds its gen step once.
    prepared: Mutex<HashMap<String, Arc<(Graph, MemoryPlan)>>>,
    /// Whether gen steps are captured as CUDA graphs and replayed (CUDA only; on by default).
    cuda_graphs: AtomicBool,
    /// Nanoseconds spent making weights resident so far ([`Model::weights_time`]).
    weights_nanos: AtomicU64,
}

/// A stage of a request (a prefill, the denoising loop, a VAE pass), timed apart from the weights
/// made resident on the way: those are a first request's one-time cost, not the stage's. The count
/// is the model's, so with requests running at once a stage may be charged another's loading too.
pub(crate) struct Phase {
    start: std::time::Instant,
    weights: std::time::Duration,
}

impl Phase {
    pub(crate) fn start(model: &Model) -> Phase {
        Phase {
            start: std::time::Instant::now(),
            weights: model.weights_time(),
        }
    }

    /// `(the stage's own time, the time it spent making weights resident)` since [`Phase::start`].
    pub(crate) fn end(&self, model: &Model) -> (std::time::Duration, std::time::Duration) {
        let weights = model.weights_time().saturating_sub(self.weights);
        (self.start.elapsed().saturating_sub(weights), weights)
    }
}

/// One branch's und cache for the gen expert: for the bridge (hbridge topology), K/V `[L, K_u*D_u]` per
/// bridged und layer and `s0`; for the omnigen2 topology, the caption features `[L, hidden_u]` (the und
/// expert's post-norm last hidden states of the context) and no K/V.
#[derive(Debug, Clone)]
pub struct UndContext {
    /// Context length in tokens (text and image tokens of the templated prompt).
    pub len: usize,
    /// First shared position after the context (its largest M-RoPE position id + 1); SRT token i sits at
    /// `s0 + i` in the bridge's shared space.
    pub s0: usize,
    /// Per bridged und layer (by index): its K (post-RoPE) and V over the context, reused by every
    /// denoising step. Empty for the omnigen2 topology.
    pub kv: HashMap<usize, (HostTensor, HostTensor)>,
    /// `und.final_hidden` of the context, omnigen2 topology only.
    pub caption: Option<HostTensor>,
}

impl Model {
    /// Opens `dir` on the CPU backend.
    pub fn open(dir: &Path) -> Result<Self, RunError> {
        Self::open_on(dir, Device::Cpu)
    }

    /// Opens `dir` on `device` (a CUDA device that cannot be opened is an error, never a panic), with
    /// the backend's own weight storage (on the CPU [`WeightStorage::Exact`]: the f32 results, bf16
    /// matrices of a bf16 checkpoint kept as bf16).
    pub fn open_on(dir: &Path, device: Device) -> Result<Self, RunError> {
        Self::open_with(dir, device, WeightStorage::Exact)
    }

    /// [`Model::open_on`] with the CPU backend keeping its weights as `storage` (ignored on CUDA, whose
    /// weights are bf16).
    pub fn open_with(dir: &Path, device: Device, storage: WeightStorage) -> Result<Self, RunError> {
        let checkpoint = Checkpoint::open(dir)?;
        Ok(Model {
            checkpoint,
            backend: Backend::new(device, storage)?,
            prepared: Mutex::new(HashMap::new()),
            cuda_graphs: AtomicBool::new(true),
            weights_nanos: AtomicU64::new(0),
        })
    }

    /// Turns CUDA graph capture and replay of gen steps on or off (off: every step launches its kernels
    /// one by one; for measuring what replay saves). No effect on the CPU.
    pub fn set_cuda_graphs(&self, on: bool) {
        self.cuda_graphs.store(on, Ordering::Relaxed);
    }

    /// The backend this model runs on.
    pub fn device(&self) -> Device {
        self.backend.device()
    }

    /// Peak device memory of the run so far in bytes (CUDA), `None` on the CPU.
    pub fn peak_device_memory(&self) -> Option<u64> {
        self.backend.peak_device_memory()
    }

    /// Bytes of the weights resident on the backend so far (they become resident as requests first need
    /// them), in the backend's form: f32 or bf16 on the CPU ([`WeightStorage`]), bf16 on CUDA.
    pub fn resident_weight_bytes(&self) -> usize {
        self.backend.weight_bytes()
    }

    /// The GEMM and copy ceilings of this backend's device, measured now.
    pub fn measure_ceilings(&self) -> Result<hbridge_engine::ceilings::Ceilings, RunError> {
        self.backend.ceilings()
    }

    /// Makes every weight `graph` reads resident on the backend (uploaded or converted once).
    pub fn make_resident(&self, graph: &Graph) -> Result<(), RunError> {
        let start = std::time::Instant::now();
        if self.backend.load_weights(&self.checkpoint, graph)? {
            let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.weights_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The time spent so far making weights resident (converting them on the CPU, uploading them to
    /// the GPU), which a request pays the first time it needs them: requests report it apart from
    /// their compute ([`crate::chat::ChatTimings::weights`]).
    pub fn weights_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.weights_nanos.load(Ordering::Relaxed))
    }

    /// Runs `graph` on `inputs`, making resident any weight it needs that is not yet.
    pub fn run(&self, graph: &Graph, inputs: &Outputs) -> Result<Outputs, RunError> {
        self.make_resident(graph)?;
        self.backend
            .execute(graph, &plan_memory(graph), inputs, false)
    }

    /// Empty request states on this model's backend (see [`crate::backend::States`]).
    pub(crate) fn new_states(&self) -> States {
        self.backend.new_states()
    }

    pub(crate) fn alloc_state(
        &self,
        states: &mut States,
        name: &str,
        shape: &[usize],
    ) -> Result<(), RunError> {
        self.backend.alloc_state(states, name, shape)
    }

    pub(crate) fn write_state_rows(
        &self,
        states: &mut States,
        name: &str,
        row: usize,
        values: &[f32],
    ) -> Result<(), RunError> {
        self.backend.write_state_rows(states, name, row, values)
    }

    pub(crate) fn read_state(&self, states: &States, name: &str) -> Result<HostTensor, RunError> {
        self.backend.read_state(states, name)
    }

    /// One und decode step against a K/V cache of `capacity` rows in `states` (graph
    /// [`build::und_decode_step`], built once per capacity). On CUDA it is captured as a CUDA graph on
    /// its first run over these states and replayed for every later token (unless CUDA graphs are off).
    pub(crate) fn und_decode_step(
        &self,
        capacity: usize,
        inputs: &Outputs,
        states: &mut States,
    ) -> Result<Outputs, RunError> {
        let p = self.und_decode_graph(capacity)?;
        let replay = self.cuda_graphs.load(Ordering::Relaxed);
        self.backend
            .execute_with_states(&p.0, &p.1, inputs, states, replay)
    }

    /// `n` tokens against a K/V cache of `capacity` rows in `states` (graph [`build::und_decode_chunk`],
    /// built once per capacity and length): a chat session's next turn. Run eagerly: a turn's length
    /// rarely repeats, so a CUDA graph capture would not be replayed.
    pub(crate) fn und_decode_chunk(
        &self,
        capacity: usize,
        n: usize,
        inputs: &Outputs,
        states: &mut States,
    ) -> Result<Outputs, RunError> {
        let c = &self.checkpoint.config.und;
        let p = self.prepared(format!("und_decode/{capacity}/{n}"), || {
            build::und_decode_chunk(c, &self.checkpoint.und_names, capacity, n)
        })?;
        self.backend
            .execute_with_states(&p.0, &p.1, inputs, states, false)
    }

    /// CUDA only: eager launches vs CUDA graph replays of the und decode step over `states` (see
    /// [`Model::time_gen_step`]); `None` on the CPU.
    pub(crate) fn time_und_decode_step(
        &self,
        capacity: usize,
        inputs: &Outputs,
        states: &mut States,
        iters: usize,
    ) -> Result<Option<hbridge_engine::cuda::ReplayTiming>, RunError> {
        let p = self.und_decode_graph(capacity)?;
        self.backend
            .time_replay_vs_eager_with_states(&p.0, &p.1, inputs, states, iters)
    }

    /// The und decode step over a cache of `capacity` rows, built and planned once per capacity.
    fn und_decode_graph(&self, capacity: usize) -> Result<Arc<(Graph, MemoryPlan)>, RunError> {
        let c = &self.checkpoint.config.und;
        self.prepared(format!("und_decode/{capacity}"), || {
            build::und_decode_step(c, &self.checkpoint.und_names, capacity)
        })
    }

    /// The graph of `key`, built by `build` (and its weights converted) the first time only.
    fn prepared(
        &self,
        key: String,
        build: impl FnOnce() -> Result<Graph, GraphError>,
    ) -> Result<Arc<(Graph, MemoryPlan)>, RunError> {
        if let Some(p) = self
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let graph = build()?;
        self.make_resident(&graph)?;
        let plan = plan_memory(&graph);
        let p = Arc::new((graph, plan));
        self.prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, p.clone());
        Ok(p)
    }

    /// The und layers the bridge reads, deduplicated and sorted.
    pub fn bridged_und_layers(&self) -> Vec<usize> {
        let mut layers: Vec<usize> = self
            .checkpoint
            .config
            .layout
            .bridge
            .iter()
            .flat_map(|b| b.pairs.iter().map(|p| p.1))
            .collect();
        layers.sort_unstable();
        layers.dedup();
        layers
    }

    /// Prefill of one context; `positions` `[3, L]`.
    pub fn und_prefill(
        &self,
        ids: &[i32],
        positions: Vec<i32>,
        spec: &UndPrefillSpec,
    ) -> Result<Outputs, RunError> {
        self.und_prefill_into(ids, positions, spec, None)
    }

    /// [`Model::und_prefill`] of a spec with a `kv_cache`: its K/V go into `cache`'s states from row
    /// `cache.1` on, on the backend.
    pub(crate) fn und_prefill_into(
        &self,
        ids: &[i32],
        positions: Vec<i32>,
        spec: &UndPrefillSpec,
        cache: Option<(&mut States, usize)>,
    ) -> Result<Outputs, RunError> {
        let (graph, inputs) = self.und_prefill_graph(ids, positions, spec)?;
        self.run_into(&graph, inputs, cache)
    }

    /// The graph of an und prefill of `spec` and its inputs, the ids checked against the vocabulary.
    fn und_prefill_graph(
        &self,
        ids: &[i32],
        positions: Vec<i32>,
        spec: &UndPrefillSpec,
    ) -> Result<(Graph, Outputs), RunError> {
        let c = &self.checkpoint.config.und;
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= c.vocab_size) {
            return Err(RunError::Request(format!(
                "token id {bad} is outside the vocabulary of {} entries",
                c.vocab_size
            )));
        }
        let graph = build::und_prefill(c, &self.checkpoint.und_names, spec)?;
        let inputs = HashMap::from([
            (
                names::UND_IDS.to_string(),
                HostTensor::i32(vec![ids.len()], ids.to_vec()),
            ),
            (
                names::UND_POSITIONS.to_string(),
                HostTensor::i32(vec![3, ids.len()], positions),
            ),
        ]);
        Ok((graph, inputs))
    }

    /// Runs `graph`; with `cache`, over its states, `und.cache_len` being `cache.1`.
    pub(crate) fn run_into(
        &self,
        graph: &Graph,
        mut inputs: Outputs,
        cache: Option<(&mut States, usize)>,
    ) -> Result<Outputs, RunError> {
        let Some((states, row)) = cache else {
            return self.run(graph, &inputs);
        };
        insert_cache_len(&mut inputs, row)?;
        self.make_resident(graph)?;
        self.backend
            .execute_with_states(graph, &plan_memory(graph), &inputs, states, false)
    }

    /// The gen expert's context of one branch: K/V of the bridged und layers (hbridge topology), or the
    /// caption features `und.final_hidden` (omnigen2 topology).
    pub fn und_context(&self, ids: &[i32], positions: Vec<i32>) -> Result<UndContext, RunError> {
        let s0 = next_position(&positions);
        let spec = self.context_spec(ids.len());
        let out = self.und_prefill(ids, positions, &spec)?;
        self.context_from_prefill(out, ids.len(), s0)
    }

    /// The spec of a prefill whose outputs [`Model::context_from_prefill`] turns into a context.
    pub fn context_spec(&self, len: usize) -> UndPrefillSpec {
        UndPrefillSpec {
            len,
            kv_layers: self.bridged_und_layers(),
            logits: false,
            hidden_states: false,
            final_hidden: self.is_omnigen2(),
            kv_cache: None,
        }
    }

    /// The gen expert's context from the outputs of a prefill made with [`Model::context_spec`] (text-only
    /// or with images): `len` context tokens, `s0` the position after the context's largest.
    pub fn context_from_prefill(
        &self,
        mut out: Outputs,
        len: usize,
        s0: usize,
    ) -> Result<UndContext, RunError> {
        let omnigen2 = self.is_omnigen2();
        let layers = self.bridged_und_layers();
        let caption =
            if omnigen2 {
                Some(out.remove("und.final_hidden").ok_or_else(|| {
                    RunError::Request("prefill produced no und.final_hidden".into())
                })?)
            } else {
                None
            };
        let mut kv = HashMap::new();
        for u in layers {
            let k = out.remove(&names::und_k(u)).ok_or_else(|| {
                RunError::Request(format!("prefill produced no K of und layer {u}"))
            })?;
            let v = out.remove(&names::und_v(u)).ok_or_else(|| {
                RunError::Request(format!("prefill produced no V of und layer {u}"))
            })?;
            kv.insert(u, (k, v));
        }
        Ok(UndContext {
            len,
            s0,
            kv,
            caption,
        })
    }

    /// Whether the checkpoint has the omnigen2 topology (caption features instead of the bridge).
    pub fn is_omnigen2(&self) -> bool {
        self.checkpoint.config.layout.topology == hbridge_loader::config::Topology::Omnigen2
    }

    /// VAE encode (posterior mean, then `(z - shift) * scale`) of pixels `[3, H, W]` in [-1, 1] to a
    /// model-space latent `[C, H/f, W/f]`. Needs the checkpoint's optional `encoder.*` tensors.
    pub fn vae_encode(&self, pixels: &HostTensor) -> Result<HostTensor, RunError> {
        let (h, w) = match pixels.shape.as_slice() {
            [_, h, w] => (*h, *w),
            s => {
                return Err(RunError::Request(format!(
                    "image must be [C, H, W], got {s:?}"
                )))
            }
        };
        let vae = &self.checkpoint.config.vae;
        let graph = self.prepared(format!("vae_encode {h}x{w}"), || {
            build::vae_encode(vae, (h, w))
        })?;
        let inputs = HashMap::from([(
            build::vae_encoder::VAE_ENCODER_INPUT.to_string(),
            pixels.clone(),
        )]);
        let mut out = self.backend.execute(&graph.0, &graph.1, &inputs, false)?;
        out.remove(build::vae_encoder::VAE_ENCODED)
            .ok_or_else(|| RunError::Request("VAE encoder graph produced no latent".into()))
    }

    /// VAE decode of a model-space latent `[C, h, w]` to pixels `[3, H, W]`.
    pub fn vae_decode(&self, latent: &HostTensor) -> Result<HostTensor, RunError> {
        let (graph, inputs) = self.vae_decode_graph(latent)?;
        let mut out = self.run(&graph, &inputs)?;
        out.remove("vae.pixels")
            .ok_or_else(|| RunError::Request("VAE graph produced no pixels".into()))
    }
}

impl Model {
    /// The VAE decode graph for `latent` `[C, h, w]` and its inputs.
    fn vae_decode_graph(&self, latent: &HostTensor) -> Result<(Graph, Outputs), RunError> {
        let (h, w) = match latent.shape.as_slice() {
            [_, h, w] => (*h, *w),
            s => {
                return Err(RunError::Request(format!(
                    "latent must be [C, H, W], got {s:?}"
                )))
            }
        };
        let graph = build::vae_decode(&self.checkpoint.config.vae, (h, w))?;
        let inputs = HashMap::from([(names::VAE_LATENT.to_string(), latent.clone())]);
        Ok((graph, inputs))
    }
}

/// Adds the `und.cache_len` input: a graph over a K/V cache writes its rows from `row` on.
fn insert_cache_len(inputs: &mut Outputs, row: usize) -> Result<(), RunError> {
    let row = i32::try_from(row)
        .map_err(|_| RunError::Request(format!("cache row {row} is out of range")))?;
    inputs.insert(
        names::UND_CACHE_LEN.to_string(),
        HostTensor::i32(vec![1], vec![row]),
    );
    Ok(())
}

/// The position after the largest of `positions` (where text after a context continues; 0 when empty).
pub fn next_position(positions: &[i32]) -> usize {
    positions
        .iter()
        .copied()
        .max()
        .map_or(0, |m| m as usize + 1)
}

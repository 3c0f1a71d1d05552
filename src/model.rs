//! A checkpoint ready to run on the CPU backend: validated tensors, their f32 copies (converted once, as
//! graphs first need them), and the runs of the three graph families.

use hbridge_engine::cpu::{CpuWeights, EngineError, Executor, HostTensor};
use hbridge_graph::build::{self, names, positions, GenStepSpec, UndPrefillSpec};
use hbridge_graph::plan::{plan_memory, MemoryPlan};
use hbridge_graph::{Graph, GraphError};
use hbridge_loader::{Checkpoint, LoadError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Request(String),
}

pub type Outputs = HashMap<String, HostTensor>;

pub struct CpuModel {
    pub checkpoint: Checkpoint,
    weights: RwLock<CpuWeights>,
    /// Built, pruned and planned graphs by request shape: a denoising loop builds its gen step once.
    prepared: Mutex<HashMap<String, Arc<(Graph, MemoryPlan)>>>,
    /// Idle executors: their arenas are reused by the next run instead of allocated per step.
    executors: Mutex<Vec<Executor>>,
}

/// One branch's und cache for the gen expert: for the bridge (hbridge topology), K/V `[L, K_u*D_u]` per
/// bridged und layer and `s0`; for the omnigen2 topology, the caption features `[L, hidden_u]` (the und
/// expert's post-norm last hidden states of the context) and no K/V.
#[derive(Debug, Clone)]
pub struct UndContext {
    pub len: usize,
    pub s0: usize,
    pub kv: HashMap<usize, (HostTensor, HostTensor)>,
    /// `und.final_hidden` of the context, omnigen2 topology only.
    pub caption: Option<HostTensor>,
}

impl CpuModel {
    pub fn open(dir: &Path) -> Result<Self, RunError> {
        let checkpoint = Checkpoint::open(dir)?;
        Ok(CpuModel {
            checkpoint,
            weights: RwLock::new(CpuWeights::new()),
            prepared: Mutex::new(HashMap::new()),
            executors: Mutex::new(Vec::new()),
        })
    }

    /// Runs `graph` on `inputs`, converting any weight it needs that is not yet in f32.
    pub fn run(&self, graph: &Graph, inputs: &Outputs) -> Result<Outputs, RunError> {
        self.load_weights(graph)?;
        self.execute(graph, &plan_memory(graph), inputs)
    }

    fn load_weights(&self, graph: &Graph) -> Result<(), RunError> {
        let missing = {
            let weights = self.weights.read().unwrap_or_else(|e| e.into_inner());
            graph
                .weights()
                .any(|(_, part, name)| weights.get(part, name).is_none())
        };
        if missing {
            let mut weights = self.weights.write().unwrap_or_else(|e| e.into_inner());
            weights.load_graph(&self.checkpoint, graph)?;
        }
        Ok(())
    }

    fn execute(
        &self,
        graph: &Graph,
        plan: &MemoryPlan,
        inputs: &Outputs,
    ) -> Result<Outputs, RunError> {
        let weights = self.weights.read().unwrap_or_else(|e| e.into_inner());
        let pooled = self
            .executors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut exec = pooled.unwrap_or_default();
        let out = exec.run(graph, plan, &weights, inputs);
        self.executors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(exec);
        Ok(out?)
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
        self.load_weights(&graph)?;
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
        self.run(&graph, &inputs)
    }

    /// The gen expert's context of one branch: K/V of the bridged und layers (hbridge topology), or the
    /// caption features `und.final_hidden` (omnigen2 topology).
    pub fn und_context(&self, ids: &[i32], positions: Vec<i32>) -> Result<UndContext, RunError> {
        let omnigen2 = self.is_omnigen2();
        let layers = self.bridged_und_layers();
        let s0 = positions
            .iter()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        let spec = UndPrefillSpec {
            len: ids.len(),
            kv_layers: layers.clone(),
            logits: false,
            hidden_states: false,
            final_hidden: omnigen2,
        };
        let mut out = self.und_prefill(ids, positions, &spec)?;
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
            len: ids.len(),
            s0,
            kv,
            caption,
        })
    }

    /// Whether the checkpoint has the omnigen2 topology (caption features instead of the bridge).
    pub fn is_omnigen2(&self) -> bool {
        self.checkpoint.config.layout.topology == hbridge_loader::config::Topology::Omnigen2
    }

    /// One gen step of one branch at latent `x` `[C, H, W]` and time `t`.
    pub fn gen_step(
        &self,
        x: &HostTensor,
        t: f32,
        ctx: &UndContext,
        trace: bool,
    ) -> Result<Outputs, RunError> {
        let config = &self.checkpoint.config;
        let [c, h, w] = match x.shape.as_slice() {
            [c, h, w] => [*c, *h, *w],
            s => {
                return Err(RunError::Request(format!(
                    "latent must be [C, H, W], got {s:?}"
                )))
            }
        };
        let spec = GenStepSpec {
            latent: [c, h, w],
            context_len: ctx.len,
            hidden_states: trace,
            srt: true,
        };
        let prepared = self.prepared(format!("gen_step {spec:?}"), || {
            build::gen_step(config, &spec)
        })?;
        let (graph, plan) = (&prepared.0, &prepared.1);
        let p = config.gen.patch_size;
        if self.is_omnigen2() {
            // omnigen2: [caption | noisy latent], caption i -> (i, i, i), the latent after it.
            let caption = ctx.caption.clone().ok_or_else(|| {
                RunError::Request("an omnigen2 gen step needs the caption features".into())
            })?;
            let n_cap = ctx.len;
            let gen_pos = positions::gen_positions(n_cap, &[(h / p, w / p)]);
            let n = gen_pos.len() / 3;
            let inputs = HashMap::from([
                (build::GEN_CAPTION.to_string(), caption),
                (names::GEN_X.to_string(), x.clone()),
                (names::GEN_T.to_string(), HostTensor::f32(vec![1], vec![t])),
                (
                    build::GEN_POSITIONS_CAPTION.to_string(),
                    HostTensor::i32(vec![n_cap, 3], gen_pos[..n_cap * 3].to_vec()),
                ),
                (
                    "gen.positions.latent".to_string(),
                    HostTensor::i32(vec![n - n_cap, 3], gen_pos[n_cap * 3..].to_vec()),
                ),
                (
                    names::GEN_POSITIONS.to_string(),
                    HostTensor::i32(vec![n, 3], gen_pos),
                ),
            ]);
            return self.execute(graph, plan, &inputs);
        }
        let n_srt = config
            .layout
            .bridge
            .as_ref()
            .map_or(0, |b| b.num_srt_tokens);
        let grid = (h / p, w / p);
        let gen_pos = positions::gen_positions(n_srt, &[grid]);
        let n = gen_pos.len() / 3;
        let lat_pos = gen_pos[n_srt * 3..].to_vec();
        let shared = positions::shared_positions(ctx.s0, n_srt, &[grid]);
        let mut inputs = HashMap::from([
            (names::GEN_X.to_string(), x.clone()),
            (names::GEN_T.to_string(), HostTensor::f32(vec![1], vec![t])),
            (
                names::GEN_POSITIONS.to_string(),
                HostTensor::i32(vec![n, 3], gen_pos),
            ),
            (
                "gen.positions.latent".to_string(),
                HostTensor::i32(vec![n - n_srt, 3], lat_pos),
            ),
            (
                names::SHARED_POSITIONS.to_string(),
                HostTensor::i32(vec![3, n], shared),
            ),
        ]);
        for (u, (k, v)) in &ctx.kv {
            inputs.insert(names::und_k(*u), k.clone());
            inputs.insert(names::und_v(*u), v.clone());
        }
        self.execute(graph, plan, &inputs)
    }

    /// VAE decode of a model-space latent `[C, h, w]` to pixels `[3, H, W]`.
    pub fn vae_decode(&self, latent: &HostTensor) -> Result<HostTensor, RunError> {
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
        let mut out = self.run(&graph, &inputs)?;
        out.remove("vae.pixels")
            .ok_or_else(|| RunError::Request("VAE graph produced no pixels".into()))
    }
}

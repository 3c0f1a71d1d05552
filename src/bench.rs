//! End-to-end benchmark of one model on one backend (issue 5): model load, und prefill, und decode,
//! one gen step with text guidance, and a whole text-to-image request, each with the work it did (from
//! the graph it ran: `hbridge_graph::cost`) and the percentage of the GEMM and copy ceilings measured
//! in the same run. Inputs are random token ids and latents, never zeros.
//!
//! Row names are shared with `reference/bench_torch.py` so the two can be printed side by side.
//! With `profile`, the prefill, the decode step, the gen step's cond branch and the VAE decode are also
//! profiled node by node ([`profile`]).

use crate::chat::ChatPipeline;
use crate::model::{Model, RunError};
use crate::noise::NormalRng;
use hbridge_engine::ceilings::Ceilings;
use hbridge_engine::device::Device;
use hbridge_graph::build::{self, GenStepSpec, UndPrefillSpec};
use hbridge_graph::Graph;
use std::path::Path;
use std::time::{Duration, Instant};

mod gen;
pub mod profile;
mod und;

pub use profile::StepProfile;

/// What to measure; the defaults are issue 5's hbridge-7b4b workloads.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Tokens of the und prefill (and of the cond branch's context in the gen step).
    pub prompt_len: usize,
    /// Tokens already in the K/V cache when decode is measured.
    pub context: usize,
    /// Tokens decoded for the decode throughput (default 32; at least 2 are run).
    pub decode_tokens: usize,
    /// Image width in pixels of the gen step and the time-to-image request (default 1024).
    pub width: usize,
    /// Image height in pixels (default 1024).
    pub height: usize,
    /// Denoising steps of the time-to-image request.
    pub steps: usize,
    /// Timed repetitions (after one warm-up) of the prefill and the gen step.
    pub runs: usize,
    /// Text guidance scale of the gen step and the image request (default 4.0: two branches; <= 1: one).
    pub guidance: f32,
    /// Also profile one run of the und prefill, the decode step, the gen step's cond branch and the VAE decode node by
    /// node (default off).
    pub profile: bool,
    /// The workloads to run, in their fixed order (default: all). The load and the ceilings always run.
    pub workloads: Vec<Workload>,
}

/// One of the timed workloads after the load; `--only` picks among them by [`Workload::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// The und prefill of `prompt_len` tokens into a K/V cache.
    Prefill,
    /// Decode throughput after `context` cached tokens, with the step's eager vs replay device time.
    Decode,
    /// One gen step with every guidance branch.
    GenStep,
    /// A whole text-to-image request (`steps` denoising steps + VAE decode).
    Image,
}

impl Workload {
    /// Every workload, in the order a run takes them.
    pub const ALL: [Workload; 4] = [
        Workload::Prefill,
        Workload::Decode,
        Workload::GenStep,
        Workload::Image,
    ];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Prefill => "prefill",
            Workload::Decode => "decode",
            Workload::GenStep => "gen-step",
            Workload::Image => "image",
        }
    }

    /// The workload called `name`, or `None`.
    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            prompt_len: 512,
            context: 4096,
            decode_tokens: 32,
            width: 1024,
            height: 1024,
            steps: 50,
            runs: 5,
            guidance: 4.0,
            profile: false,
            workloads: Workload::ALL.to_vec(),
        }
    }
}

/// One measured workload.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// Stable name (`und_prefill_ms`, ...), shared with the PyTorch baseline.
    pub name: &'static str,
    /// The measurement (a median over the timed runs for the prefill and the gen step), in `unit`.
    pub value: f64,
    /// Unit of `value`: `s`, `ms`, `tokens/s` or `bytes`.
    pub unit: &'static str,
    /// Achieved rate and its unit (`TFLOP/s`, `GB/s`), when the workload has a meaningful one.
    pub achieved: Option<(f64, &'static str)>,
    /// Achieved rate over the matching ceiling measured in this run.
    pub of_ceiling: Option<f64>,
    /// The workload's shape and how the rate was counted, for the printed table.
    pub note: String,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The backend the model ran on.
    pub device: Device,
    /// The GEMM and copy ceilings measured on the same device in the same run.
    pub ceilings: Ceilings,
    /// One row per workload, in the order they ran.
    pub rows: Vec<BenchRow>,
    /// Per-node profiles, with [`BenchOptions::profile`] (else empty).
    pub profiles: Vec<StepProfile>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// What every workload reads: the model, its resident graphs, the ceilings of this run, and where the
/// rows go.
struct Session<'a> {
    chat: &'a ChatPipeline,
    dir: &'a Path,
    opts: &'a BenchOptions,
    /// Timed repetitions (at least 1).
    runs: usize,
    ceilings: Ceilings,
    /// The random prompt of the prefill and of the gen step's cond branch.
    ids: Vec<i32>,
    rng: NormalRng,
    prefill_spec: UndPrefillSpec,
    prefill_graph: Graph,
    gen_spec: GenStepSpec,
    gen_graph: Graph,
    rows: Vec<BenchRow>,
    profiles: Vec<StepProfile>,
    progress: &'a mut dyn FnMut(&str),
}

impl Session<'_> {
    /// `rate` as a fraction of the ceiling `pick` chooses.
    fn of_ceiling(&self, rate: f64, pick: fn(&Ceilings) -> f64) -> Option<f64> {
        Some(rate / pick(&self.ceilings))
    }
}

/// Runs the load, the ceilings and the chosen workloads on the model in `dir`; `progress` receives a
/// line before each one.
pub fn run(
    dir: &Path,
    device: Device,
    opts: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, RunError> {
    progress("loading the model and making its weights resident");
    let t = Instant::now();
    // One model serves every workload (a chat pipeline owns it), so the weights are resident once and
    // the peak memory is this model's.
    let chat = ChatPipeline::new(Model::open_on(dir, device)?, None);
    let model = chat.model();
    let config = &model.checkpoint.config;
    let latent = [
        config.vae.latent_channels,
        opts.height / config.vae.downscale(),
        opts.width / config.vae.downscale(),
    ];
    let prefill_spec = UndPrefillSpec {
        len: opts.prompt_len,
        kv_layers: (0..config.und.num_layers).collect(),
        logits: false,
        hidden_states: false,
        final_hidden: model.is_omnigen2(),
        // As a chat prefills: every layer's K/V into a cache that stays on the backend.
        kv_cache: Some(opts.prompt_len),
    };
    let prefill_graph =
        build::und_prefill(&config.und, &model.checkpoint.und_names, &prefill_spec)?;
    let gen_spec = GenStepSpec {
        latent,
        context_len: opts.prompt_len,
        hidden_states: false,
        srt: true,
        und_kv_states: false,
    };
    let gen_graph = build::gen_step_with_refs(config, &gen_spec, &[])?;
    let vae_graph = build::vae_decode(&config.vae, (latent[1], latent[2]))?;
    for g in [&prefill_graph, &gen_graph, &vae_graph] {
        model.make_resident(g)?;
    }
    let load = t.elapsed().as_secs_f64();
    // As held on the backend (bf16 on CUDA; on the CPU as its storage keeps them).
    let weight_bytes = model.resident_weight_bytes() as f64;

    progress("measuring the GEMM and copy ceilings");
    let ceilings = model.measure_ceilings()?;
    let mut rng = NormalRng::new(0x5eed);
    let ids = und::random_ids(&mut rng, opts.prompt_len, config.und.vocab_size);
    let mut s = Session {
        chat: &chat,
        dir,
        opts,
        runs: opts.runs.max(1),
        ceilings,
        ids,
        rng,
        prefill_spec,
        prefill_graph,
        gen_spec,
        gen_graph,
        rows: Vec::new(),
        profiles: Vec::new(),
        progress: &mut progress,
    };
    s.rows.push(BenchRow {
        name: "load_s",
        value: load,
        unit: "s",
        achieved: Some((weight_bytes / load / 1e9, "GB/s")),
        of_ceiling: None,
        note: format!(
            "open + {:.2} GB of weights made resident",
            weight_bytes / 1e9
        ),
    });
    for w in Workload::ALL {
        if !opts.workloads.contains(&w) {
            continue;
        }
        match w {
            Workload::Prefill => und::prefill(&mut s)?,
            Workload::Decode => und::decode(&mut s)?,
            Workload::GenStep => gen::step(&mut s)?,
            Workload::Image => gen::image(&mut s)?,
        }
    }

    let mut rows = s.rows;
    if let Some(peak) = model.peak_device_memory() {
        rows.push(BenchRow {
            name: "peak_gpu_bytes",
            value: peak as f64,
            unit: "bytes",
            achieved: None,
            of_ceiling: None,
            note: format!(
                "{:.2} GiB in use at the highest sample (cuMemGetInfo after each upload and run)",
                peak as f64 / (1u64 << 30) as f64
            ),
        });
    }
    Ok(BenchReport {
        device,
        ceilings: s.ceilings,
        rows,
        profiles: s.profiles,
    })
}

//! End-to-end benchmark of one model on one backend (issue 5): model load, und prefill, und decode,
//! one gen step with text guidance, and a whole text-to-image request, each with the work it did (from
//! the graph it ran: `hbridge_graph::cost`) and, on CUDA, the percentage of the GEMM and copy ceilings
//! measured in the same run. Inputs are random token ids and latents, never zeros.
//!
//! Row names are shared with `reference/bench_torch.py` so the two can be printed side by side.
//! With `profile`, the prefill, the decode step and the gen step's cond branch are also profiled node by
//! node ([`profile`]).

use crate::chat::{ChatPipeline, ChatRequest};
use crate::model::{Model, RunError};
use crate::noise::{normal_noise, NormalRng};
use crate::t2i::{generate, ImageRequest};
use hbridge_engine::cpu::HostTensor;
use hbridge_engine::cuda::ceilings::Ceilings;
use hbridge_engine::device::Device;
use hbridge_graph::build::{self, names, positions, GenPart, GenStepSpec, UndPrefillSpec};
use hbridge_graph::cost::{cost, Cost};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

pub mod profile;

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
    /// Also profile one run of the und prefill, the decode step and the gen step's cond branch node by
    /// node (default off).
    pub profile: bool,
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
    /// Achieved rate over the matching ceiling measured in this run (CUDA only).
    pub of_ceiling: Option<f64>,
    /// The workload's shape and how the rate was counted, for the printed table.
    pub note: String,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The backend the model ran on.
    pub device: Device,
    /// The GEMM and copy ceilings measured on the same GPU in the same run (CUDA only).
    pub ceilings: Option<Ceilings>,
    /// One row per workload, in the order they ran.
    pub rows: Vec<BenchRow>,
    /// Per-node profiles, with [`BenchOptions::profile`] (else empty).
    pub profiles: Vec<StepProfile>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// `n` reproducible random token ids below `vocab`.
fn random_ids(rng: &mut NormalRng, n: usize, vocab: usize) -> Vec<i32> {
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as i32)
        .collect()
}

/// Runs every workload on the model in `dir`; `progress` receives a line before each one.
pub fn run(
    dir: &Path,
    device: Device,
    opts: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, RunError> {
    let runs = opts.runs.max(1);
    let mut rng = NormalRng::new(0x5eed);
    let mut rows = Vec::new();
    let mut profiles = Vec::new();
    let ceil = |rate: f64, pick: fn(&Ceilings) -> f64, c: &Option<Ceilings>| {
        c.as_ref().map(|c| rate / pick(c))
    };

    progress("loading the model and making its weights resident");
    let t = Instant::now();
    // One model serves every workload (a chat pipeline owns it), so the weights are resident once and
    // the peak memory is this model's.
    let chat = ChatPipeline::new(Model::open_on(dir, device)?, None);
    let model = chat.model();
    let config = &model.checkpoint.config;
    let (u, f) = (&config.und, config.vae.downscale());
    let latent = [config.vae.latent_channels, opts.height / f, opts.width / f];
    let prefill_spec = UndPrefillSpec {
        len: opts.prompt_len,
        kv_layers: (0..u.num_layers).collect(),
        logits: false,
        hidden_states: false,
        final_hidden: model.is_omnigen2(),
        // As a chat prefills: every layer's K/V into a cache that stays on the backend.
        kv_cache: Some(opts.prompt_len),
    };
    let prefill_graph = build::und_prefill(u, &model.checkpoint.und_names, &prefill_spec)?;
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
    let weight_bytes: f64 = [&prefill_graph, &gen_graph, &vae_graph]
        .iter()
        .map(|g| cost(g, 2).weight_bytes)
        .sum();

    progress("measuring the GEMM and copy ceilings");
    let ceilings = model.measure_ceilings()?;
    rows.push(BenchRow {
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

    progress(&format!("und prefill, {} tokens", opts.prompt_len));
    let ids = random_ids(&mut rng, opts.prompt_len, u.vocab_size);
    let pos = positions::text_positions(opts.prompt_len);
    let mut cache = model.new_states();
    for i in 0..u.num_layers {
        for name in [names::cache_k(i), names::cache_v(i)] {
            model.alloc_state(&mut cache, &name, &[opts.prompt_len, u.kv_dim()])?;
        }
    }
    let mut times = Vec::new();
    for i in 0..=runs {
        let t = Instant::now();
        model.und_prefill_into(&ids, pos.clone(), &prefill_spec, Some((&mut cache, 0)))?;
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    let prefill = median(times).as_secs_f64();
    if opts.profile {
        progress("profiling the und prefill");
        let p =
            model.profile_und_prefill(&ids, pos.clone(), &prefill_spec, Some((&mut cache, 0)))?;
        profiles.push(StepProfile::new("und_prefill", &p));
    }
    let c: Cost = cost(&prefill_graph, 2);
    let rate = c.flops() / prefill;
    rows.push(BenchRow {
        name: "und_prefill_ms",
        value: prefill * 1e3,
        unit: "ms",
        achieved: Some((rate / 1e12, "TFLOP/s")),
        of_ceiling: ceil(rate, |c| c.gemm_flops_per_s, &ceilings),
        note: format!(
            "K/V of all {} layers into a K/V cache on the backend, no logits; median of {runs}",
            u.num_layers
        ),
    });

    progress(&format!(
        "und decode, {} tokens after a {}-token context",
        opts.decode_tokens, opts.context
    ));
    let prompt: Vec<u32> = random_ids(&mut rng, opts.context.max(1), u.vocab_size)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let req = ChatRequest::new()
        .max_tokens(opts.decode_tokens.max(2))
        .no_stop();
    let answer = chat
        .generate_from_ids(&prompt, &req, |_, _| std::ops::ControlFlow::Continue(()))
        .map_err(|e| RunError::Request(e.to_string()))?;
    let tps = answer.timings.decode_tokens_per_s();
    let decode_graph = build::und_decode_step(u, &model.checkpoint.und_names, opts.context)?;
    let step_bytes = cost(&decode_graph, 2).weight_bytes
        + (opts.context * u.num_kv_heads * u.head_dim * 2 * 2 * u.num_layers) as f64;
    let rate = step_bytes * tps;
    let mut note = format!(
        "batch 1; {} steps; weights + K/V read per token {:.2} GB (bandwidth % against the copy ceiling's read half)",
        answer.timings.decode_steps,
        step_bytes / 1e9
    );
    if let Some(t) = crate::chat::time_decode_step(model, opts.context, runs.max(3) * 4)? {
        note += &format!(
            "; step device time at {} cached tokens: eager {:.3} ms, CUDA graph replay {:.3} ms ({} nodes)",
            opts.context,
            t.eager_median_ms(),
            t.replay_median_ms(),
            t.nodes
        );
    }
    if opts.profile {
        progress("profiling the und decode step");
        let p = crate::chat::profile_decode_step(model, opts.context)?;
        profiles.push(StepProfile::new("und_decode_step", &p));
    }
    rows.push(BenchRow {
        name: "und_decode_tokens_per_s",
        value: tps,
        unit: "tokens/s",
        achieved: Some((rate / 1e9, "GB/s")),
        of_ceiling: ceil(rate, |c| c.copy_bytes_per_s / 2.0, &ceilings),
        note,
    });

    let branches = if opts.guidance > 1.0 { 2 } else { 1 };
    progress(&format!(
        "gen step, {}x{} ({} latent tokens), {branches} branch(es)",
        opts.width,
        opts.height,
        latent[1] * latent[2] / (config.gen.patch_size * config.gen.patch_size)
    ));
    let cond = model.und_context(&ids, pos.clone())?;
    let short = random_ids(&mut rng, opts.prompt_len.clamp(1, 8), u.vocab_size);
    let uncond = model.und_context(&short, positions::text_positions(short.len()))?;
    let x = HostTensor::f32(
        latent.to_vec(),
        normal_noise(0x1a7e, latent.iter().product()),
    );
    // Per request, as a denoising loop does: the branches' K/V are made resident once.
    let contexts = if branches == 2 {
        vec![&cond, &uncond]
    } else {
        vec![&cond]
    };
    let mut resident = contexts
        .iter()
        .map(|ctx| model.resident_context(ctx))
        .collect::<Result<Vec<_>, _>>()?;
    let mut times = Vec::new();
    for i in 0..=runs {
        let t = Instant::now();
        model.gen_step_branches(&x, 0.5, &mut resident)?;
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    let step = median(times).as_secs_f64();
    if opts.profile {
        progress("profiling the gen step's cond branch");
        let p = model.profile_gen_step(&x, 0.5, &mut resident[0])?;
        profiles.push(StepProfile::new("gen_step_cond", &p));
    }
    // The work the step ran: with two branches on the hbridge topology, the shared prefix once and
    // each branch's suffix (see `Model::gen_step_branches`).
    let part = |context_len: usize, part: GenPart| {
        build::gen_step_part(
            config,
            &GenStepSpec {
                context_len,
                ..gen_spec.clone()
            },
            &[],
            part,
        )
        .map(|g| cost(&g, 2).flops())
    };
    let shared = model.shares_gen_prefix(branches);
    let flops = if shared {
        part(opts.prompt_len, GenPart::Prefix)?
            + part(opts.prompt_len, GenPart::Suffix)?
            + part(short.len(), GenPart::Suffix)?
    } else {
        cost(&gen_graph, 2).flops()
            + if branches == 2 {
                part(short.len(), GenPart::Whole)?
            } else {
                0.0
            }
    };
    let rate = flops / step;
    let mut note = format!(
        "cond context {} tokens, uncond {}; host wall time incl. transfers; median of {runs}",
        opts.prompt_len,
        short.len()
    );
    if shared {
        note += &format!(
            "; the branches share the first {} gen layers (run once)",
            build::prefix_layers(config)
        );
    }
    if let Some(t) = model.time_gen_step(&x, 0.5, &cond, runs.max(3))? {
        note += &format!(
            "; cond branch device time: eager {:.2} ms, CUDA graph replay {:.2} ms ({} nodes)",
            t.eager_median_ms(),
            t.replay_median_ms(),
            t.nodes
        );
    }
    rows.push(BenchRow {
        name: "gen_step_ms",
        value: step * 1e3,
        unit: "ms",
        achieved: Some((rate / 1e12, "TFLOP/s")),
        of_ceiling: ceil(rate, |c| c.gemm_flops_per_s, &ceilings),
        note,
    });

    progress(&format!("time to image, {} steps + VAE decode", opts.steps));
    let tokenizer = crate::prompt::load_tokenizer(dir, &config.layout.und_dir)
        .map_err(|e| RunError::Request(e.to_string()))?;
    let req = ImageRequest::new("a red fox in the snow")
        .steps(opts.steps)
        .guidance(opts.guidance)
        .size(opts.width, opts.height)
        .seed(1);
    let t = Instant::now();
    // The last workload: a failure here (an op the backend lacks) still leaves the rows above reported.
    let (value, note) = match generate(model, &tokenizer, &req, |_, _| ControlFlow::Continue(())) {
        Ok(out) => (
            t.elapsed().as_secs_f64() * 1e3,
            format!(
                "prefill {:.1} ms, denoising {:.1} ms, VAE decode {:.1} ms",
                out.timings.prefill.as_secs_f64() * 1e3,
                out.timings.denoise.as_secs_f64() * 1e3,
                out.timings.vae.as_secs_f64() * 1e3
            ),
        ),
        Err(e) => (
            f64::NAN,
            format!("FAILED after {:.1} s: {e}", t.elapsed().as_secs_f64()),
        ),
    };
    rows.push(BenchRow {
        name: "time_to_image_ms",
        value,
        unit: "ms",
        achieved: None,
        of_ceiling: None,
        note,
    });

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
        ceilings,
        rows,
        profiles,
    })
}

//! The gen expert's workloads: one denoising step with every guidance branch, and a whole
//! text-to-image request.

use super::{median, und::random_ids, BenchRow, Session, StepProfile};
use crate::model::RunError;
use crate::noise::normal_noise;
use crate::t2i::{generate, ImageRequest};
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::{self, positions, GenPart, GenStepSpec};
use hbridge_graph::cost::cost;
use std::ops::ControlFlow;
use std::time::Instant;

/// One gen step at the requested size: the cond branch over the session's prompt and, with text
/// guidance, the uncond branch over a short one; the work counted is the work the step ran.
pub(super) fn step(s: &mut Session) -> Result<(), RunError> {
    let (opts, runs) = (s.opts, s.runs);
    let model = s.chat.model();
    let config = &model.checkpoint.config;
    let latent = s.gen_spec.latent;
    let branches = if opts.guidance > 1.0 { 2 } else { 1 };
    (s.progress)(&format!(
        "gen step, {}x{} ({} latent tokens), {branches} branch(es)",
        opts.width,
        opts.height,
        latent[1] * latent[2] / (config.gen.patch_size * config.gen.patch_size)
    ));
    let cond = model.und_context(&s.ids, positions::text_positions(s.ids.len()))?;
    let short = random_ids(
        &mut s.rng,
        opts.prompt_len.clamp(1, 8),
        config.und.vocab_size,
    );
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
        let took = t.elapsed();
        if i > 0 {
            times.push(took);
        }
        // Seconds per step (the CPU at full size): a line per run.
        if took.as_secs_f64() >= 2.0 {
            let which = if i == 0 {
                "warm-up".to_string()
            } else {
                format!("run {i}/{runs}")
            };
            (s.progress)(&format!("gen step {which}: {:.1} s", took.as_secs_f64()));
        }
    }
    let step = median(times).as_secs_f64();
    if opts.profile {
        (s.progress)("profiling the gen step's cond branch");
        let p = model.profile_gen_step(&x, 0.5, &mut resident[0])?;
        s.profiles.push(StepProfile::new("gen_step_cond", &p));
    }
    // The work the step ran: with two branches on the hbridge topology, the shared prefix once and
    // each branch's suffix (see `Model::gen_step_branches`).
    let part = |context_len: usize, part: GenPart| {
        build::gen_step_part(
            config,
            &GenStepSpec {
                context_len,
                ..s.gen_spec.clone()
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
        cost(&s.gen_graph, 2).flops()
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
    let row = BenchRow {
        name: "gen_step_ms",
        value: step * 1e3,
        unit: "ms",
        achieved: Some((rate / 1e12, "TFLOP/s")),
        of_ceiling: s.of_ceiling(rate, |c| c.gemm_flops_per_s),
        note,
    };
    s.rows.push(row);
    Ok(())
}

/// A whole text-to-image request: prefill, `steps` denoising steps with the requested guidance, VAE
/// decode. A failure here is a row with its message, so the rows before it are still reported.
pub(super) fn image(s: &mut Session) -> Result<(), RunError> {
    let opts = s.opts;
    (s.progress)(&format!("time to image, {} steps + VAE decode", opts.steps));
    let model = s.chat.model();
    let tokenizer = crate::prompt::load_tokenizer(s.dir, &model.checkpoint.config.layout.und_dir)
        .map_err(|e| RunError::Request(e.to_string()))?;
    let req = ImageRequest::new("a red fox in the snow")
        .steps(opts.steps)
        .guidance(opts.guidance)
        .size(opts.width, opts.height)
        .seed(1);
    let t = Instant::now();
    // A long request (the CPU at full size) says where it is every few seconds.
    let mut said = Instant::now();
    let progress = &mut s.progress;
    let report = |step: usize, steps: usize| {
        let done = t.elapsed().as_secs_f64();
        if step == steps && done >= 5.0 {
            progress(&format!("denoised in {done:.1} s; decoding the image"));
        } else if said.elapsed().as_secs_f64() >= 5.0 {
            progress(&format!(
                "denoising step {step}/{steps}, {done:.1} s so far, about {:.0} s to go",
                done / step.max(1) as f64 * steps.saturating_sub(step) as f64
            ));
            said = Instant::now();
        }
        ControlFlow::Continue(())
    };
    let (value, note) = match generate(model, &tokenizer, &req, report) {
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
    s.rows.push(BenchRow {
        name: "time_to_image_ms",
        value,
        unit: "ms",
        achieved: None,
        of_ceiling: None,
        note,
    });
    if opts.profile && value.is_finite() {
        (s.progress)("profiling the VAE decode");
        let shape = s.gen_spec.latent;
        let latent = HostTensor::f32(shape.to_vec(), normal_noise(0x7ae, shape.iter().product()));
        let p = model.profile_vae_decode(&latent)?;
        s.profiles.push(StepProfile::new("vae_decode", &p));
    }
    Ok(())
}

//! `forward`: one und prefill per branch and one gen step (plus the fixture's short sampling run and the
//! VAE decode) on explicit inputs named as in docs/FIXTURES.md, returning every intermediate under the
//! fixture output names. For debugging and for checks against the reference.

use crate::model::{Model, Outputs, RunError};
use crate::sampler;
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::{names, positions, UndPrefillSpec};

fn input<'a>(inputs: &'a Outputs, name: &str) -> Result<&'a HostTensor, RunError> {
    inputs
        .get(name)
        .ok_or_else(|| RunError::Request(format!("inputs lack `{name}`")))
}

fn ids(inputs: &Outputs, name: &str) -> Result<Vec<i32>, RunError> {
    input(inputs, name)?
        .as_i32()
        .map(<[i32]>::to_vec)
        .ok_or_else(|| RunError::Request(format!("`{name}` must be integer token ids")))
}

fn f32s<'a>(inputs: &'a Outputs, name: &str) -> Result<&'a [f32], RunError> {
    input(inputs, name)?
        .as_f32()
        .ok_or_else(|| RunError::Request(format!("`{name}` must be f32")))
}

fn take(out: &mut Outputs, name: &str) -> Result<HostTensor, RunError> {
    out.remove(name)
        .ok_or_else(|| RunError::Request(format!("graph produced no `{name}`")))
}

/// Reshapes an und K/V `[L, K*D]` to the fixture layout `[L, K, D]` (same data).
fn heads(t: HostTensor, kv_heads: usize) -> HostTensor {
    let (l, c) = (t.shape[0], t.shape[1]);
    HostTensor {
        shape: vec![l, kv_heads, c / kv_heads],
        data: t.data,
    }
}

/// Greedy decoding of `n` tokens after `prompt` (no stop token), reusing the K/V cache: a thin call
/// into the chat pipeline ([`crate::chat::generate`]).
pub fn greedy(model: &Model, prompt: &[i32], n: usize) -> Result<Vec<i32>, RunError> {
    let ids: Vec<u32> = prompt
        .iter()
        .map(|&i| u32::try_from(i).map_err(|_| RunError::Request(format!("negative token id {i}"))))
        .collect::<Result<_, _>>()?;
    let request = crate::chat::ChatRequest::new()
        .max_tokens(n)
        .greedy()
        .no_stop();
    let out = crate::chat::generate(model, &ids, &request, &[], None, |_, _| {
        std::ops::ControlFlow::Continue(())
    })
    .map_err(|e| match e {
        crate::chat::ChatError::Model(e) => e,
        e => RunError::Request(e.to_string()),
    })?;
    Ok(out.tokens.into_iter().map(|t| t as i32).collect())
}

/// Runs everything docs/FIXTURES.md names on the fixture-named `inputs`.
pub fn forward(model: &Model, inputs: &Outputs) -> Result<Outputs, RunError> {
    let config = &model.checkpoint.config;
    let u = &config.und;
    let mut out = Outputs::new();

    if inputs.contains_key("chat.input_ids") {
        let chat = ids(inputs, "chat.input_ids")?;
        let spec = UndPrefillSpec {
            len: chat.len(),
            kv_layers: vec![],
            logits: true,
            hidden_states: false,
            final_hidden: false,
            kv_cache: None,
        };
        let mut o = model.und_prefill(&chat, positions::text_positions(chat.len()), &spec)?;
        out.insert("chat.logits".into(), take(&mut o, "und.logits")?);
        let greedy_ids = greedy(model, &chat, 8)?;
        out.insert(
            "chat.greedy_ids".into(),
            HostTensor::i32(vec![greedy_ids.len()], greedy_ids),
        );
    }

    // The cond context: full trace. Both branches: the bridge's K/V.
    let cond_ids = ids(inputs, "cond.input_ids")?;
    let cond_pos = ids(inputs, "cond.position_ids")?;
    let layers = model.bridged_und_layers();
    let spec = UndPrefillSpec {
        len: cond_ids.len(),
        kv_layers: layers.clone(),
        logits: true,
        hidden_states: true,
        // omnigen2: the caption features are an output too (no bridge K/V then: `layers` is empty)
        final_hidden: model.is_omnigen2(),
        kv_cache: None,
    };
    let mut o = model.und_prefill(&cond_ids, cond_pos.clone(), &spec)?;
    if model.is_omnigen2() {
        out.insert("und.final_hidden".into(), take(&mut o, "und.final_hidden")?);
    }
    for i in 0..=u.num_layers {
        let name = format!("und.hs.{i}");
        out.insert(name.clone(), take(&mut o, &name)?);
    }
    out.insert("und.logits".into(), take(&mut o, "und.logits")?);
    for &l in &layers {
        out.insert(
            format!("und.k.{l}"),
            heads(take(&mut o, &names::und_k(l))?, u.num_kv_heads),
        );
        out.insert(
            format!("und.v.{l}"),
            heads(take(&mut o, &names::und_v(l))?, u.num_kv_heads),
        );
    }
    let cond = model.und_context(&cond_ids, cond_pos)?;
    let uncond = model.und_context(
        &ids(inputs, "uncond.input_ids")?,
        ids(inputs, "uncond.position_ids")?,
    )?;
    for &l in &layers {
        let (k, v) = &uncond.kv[&l];
        out.insert(
            format!("uncond.und.k.{l}"),
            heads(k.clone(), u.num_kv_heads),
        );
        out.insert(
            format!("uncond.und.v.{l}"),
            heads(v.clone(), u.num_kv_heads),
        );
    }

    // One traced gen step of both branches, and the guided velocity.
    let scale = f32s(inputs, "gen.guidance_scale")?
        .first()
        .copied()
        .unwrap_or(1.0);
    let x = input(inputs, "step.x")?;
    let t = f32s(inputs, "step.t")?
        .first()
        .copied()
        .ok_or_else(|| RunError::Request("`step.t` is empty".into()))?;
    let mut c_out = model.gen_step(x, t, &cond, true)?;
    let mut u_out = model.gen_step(x, t, &uncond, false)?;
    for i in 0..=config.gen.num_layers {
        let name = format!("gen.hs.{i}");
        out.insert(name.clone(), take(&mut c_out, &name)?);
    }
    if config.layout.bridge.is_some() {
        // no SRT without a bridge (omnigen2 topology)
        out.insert("gen.srt".into(), take(&mut c_out, "gen.srt")?);
    }
    let vc = take(&mut c_out, "gen.velocity")?;
    let vu = take(&mut u_out, "gen.velocity")?;
    let mut guided = vc.as_f32().unwrap_or_default().to_vec();
    sampler::guide_text(&mut guided, vu.as_f32().unwrap_or_default(), scale);
    out.insert(
        "gen.velocity".into(),
        HostTensor::f32(vc.shape.clone(), guided),
    );
    out.insert("gen.velocity.cond".into(), vc);
    out.insert("gen.velocity.uncond".into(), vu);

    // The sampling run over the given schedule, then the VAE.
    let noise = input(inputs, "gen.noise")?;
    let ts = f32s(inputs, "gen.timesteps")?;
    let latent = sample(model, noise, ts, scale, &cond, &uncond)?;
    let pixels = model.vae_decode(&latent)?;
    out.insert("vae.image".into(), to_image(&pixels));
    out.insert("vae.pixels".into(), pixels);
    out.insert("sample.latent".into(), latent);
    Ok(out)
}

/// Euler over `timesteps` from `noise` with text guidance (only the cond branch when scale <= 1).
pub fn sample(
    model: &Model,
    noise: &HostTensor,
    timesteps: &[f32],
    scale: f32,
    cond: &crate::model::UndContext,
    uncond: &crate::model::UndContext,
) -> Result<HostTensor, RunError> {
    let mut x = noise.clone();
    for w in timesteps.windows(2) {
        let mut vc = take(&mut model.gen_step(&x, w[0], cond, false)?, "gen.velocity")?
            .into_f32()
            .unwrap_or_default();
        if scale > 1.0 {
            let vu = take(
                &mut model.gen_step(&x, w[0], uncond, false)?,
                "gen.velocity",
            )?;
            sampler::guide_text(&mut vc, vu.as_f32().unwrap_or_default(), scale);
        }
        let mut data = x.into_f32().unwrap_or_default();
        sampler::euler_step(&mut data, &vc, w[1] - w[0]);
        x = HostTensor::f32(noise.shape.clone(), data);
    }
    Ok(x)
}

/// Pixels `[3, H, W]` in about [-1, 1] -> u8 `[H, W, 3]`, `round(clamp((x+1)/2, 0, 1) * 255)`.
pub fn to_image(pixels: &HostTensor) -> HostTensor {
    let (c, h, w) = (pixels.shape[0], pixels.shape[1], pixels.shape[2]);
    let data = pixels.as_f32().unwrap_or_default();
    let mut out = vec![0i32; h * w * c];
    for ch in 0..c {
        for i in 0..h * w {
            let v = ((data[ch * h * w + i] + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0;
            out[i * c + ch] = v.round_ties_even() as i32;
        }
    }
    HostTensor::i32(vec![h, w, c], out)
}

//! Text-to-image: und prefill once per guidance branch (its K/V reused by every step), the shifted
//! schedule, Euler with text guidance, then the VAE decoder (DESIGN.md 4).

use crate::forward::to_image;
use crate::model::{Model, RunError, UndContext};
use crate::{noise, prompt, sampler};
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::positions;
use std::time::{Duration, Instant};

/// A text-to-image request; defaults are DESIGN.md 4's.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f32,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    /// Explicit initial noise `[C, H/f, W/f]` instead of the seeded one.
    pub noise: Option<HostTensor>,
    /// Keep the conditional branch's SRT output at this step.
    pub srt_at_step: Option<usize>,
    /// Largest accepted width or height, in pixels.
    pub max_side: usize,
}

impl ImageRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        ImageRequest {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            steps: 50,
            guidance: 4.0,
            seed: 0,
            width: 1024,
            height: 1024,
            noise: None,
            srt_at_step: None,
            max_side: 4096,
        }
    }
    pub fn negative(mut self, text: impl Into<String>) -> Self {
        self.negative_prompt = text.into();
        self
    }
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }
    pub fn guidance(mut self, scale: f32) -> Self {
        self.guidance = scale;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn size(mut self, width: usize, height: usize) -> Self {
        self.width = width;
        self.height = height;
        self
    }
}

#[derive(Debug, Clone)]
pub struct ImageOutput {
    pub width: usize,
    pub height: usize,
    /// Row-major RGB bytes, `height * width * 3`.
    pub rgb: Vec<u8>,
    pub latent: HostTensor,
    pub pixels: HostTensor,
    pub srt: Option<HostTensor>,
    pub timings: ImageTimings,
}

#[derive(Debug, Clone, Default)]
pub struct ImageTimings {
    pub prefill: Duration,
    pub denoise: Duration,
    pub vae: Duration,
}

/// Checks a request against the model before any compute; the message names the argument.
pub fn validate(model: &Model, req: &ImageRequest) -> Result<(), RunError> {
    let bad = |m: String| Err(RunError::Request(m));
    let c = &model.checkpoint.config;
    let multiple = c.vae.downscale() * c.gen.patch_size;
    if req.prompt.trim().is_empty() {
        return bad("prompt: empty; describe the image to generate".into());
    }
    if req.steps == 0 {
        return bad("steps: must be at least 1".into());
    }
    if !req.guidance.is_finite() || req.guidance < 0.0 {
        return bad(format!(
            "guidance: {} is not a non-negative number",
            req.guidance
        ));
    }
    for (name, v) in [("width", req.width), ("height", req.height)] {
        if v == 0 || v % multiple != 0 {
            return bad(format!(
                "{name}: {v} is not a positive multiple of {multiple} (VAE factor {} x patch {})",
                c.vae.downscale(),
                c.gen.patch_size
            ));
        }
        if v > req.max_side {
            return bad(format!(
                "{name}: {v} exceeds the maximum of {} pixels",
                req.max_side
            ));
        }
    }
    if let Some(n) = &req.noise {
        let want = [
            c.vae.latent_channels,
            req.height / c.vae.downscale(),
            req.width / c.vae.downscale(),
        ];
        if n.shape != want || n.as_f32().is_none() {
            return bad(format!(
                "noise: shape {:?}, expected f32 {want:?} for {}x{}",
                n.shape, req.width, req.height
            ));
        }
    }
    Ok(())
}

/// The und context of a text-only branch: the image-generation template around `text`, prefilled.
pub(crate) fn text_context(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
) -> Result<UndContext, RunError> {
    let ids = prompt::encode(tokenizer, &prompt::image_context(text))
        .map_err(|e| RunError::Request(e.to_string()))?;
    if let Some(max) = model.checkpoint.config.und.max_position_embeddings {
        if ids.len() > max {
            return Err(RunError::Request(format!(
                "prompt: {} tokens after templating exceed the und context of {max}",
                ids.len()
            )));
        }
    }
    model.und_context(&ids, positions::text_positions(ids.len()))
}

/// Generates an image. `progress(step, steps)` is called after every denoising step.
pub fn generate(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    req: &ImageRequest,
    mut progress: impl FnMut(usize, usize),
) -> Result<ImageOutput, RunError> {
    validate(model, req)?;
    let c = &model.checkpoint.config;
    let f = c.vae.downscale();
    let (lh, lw) = (req.height / f, req.width / f);
    let shape = vec![c.vae.latent_channels, lh, lw];

    let start = Instant::now();
    let cond = text_context(model, tokenizer, &req.prompt)?;
    let guided = req.guidance > 1.0;
    let uncond = if guided {
        Some(text_context(model, tokenizer, &req.negative_prompt)?)
    } else {
        None
    };
    let prefill = start.elapsed();

    let start = Instant::now();
    let mut x = match &req.noise {
        Some(n) => n.as_f32().unwrap_or_default().to_vec(),
        None => noise::normal_noise(req.seed, shape.iter().product()),
    };
    let ts = sampler::schedule(req.steps, lh, lw);
    let mut srt = None;
    for (i, w) in ts.windows(2).enumerate() {
        let xt = HostTensor::f32(shape.clone(), x.clone());
        let want_srt = req.srt_at_step == Some(i);
        let mut out = model.gen_step(&xt, w[0], &cond, false)?;
        if want_srt {
            srt = out.remove("gen.srt");
        }
        let mut v = out
            .remove("gen.velocity")
            .and_then(HostTensor::into_f32)
            .ok_or_else(|| RunError::Request("gen step produced no velocity".into()))?;
        if let Some(u) = &uncond {
            let vu = model
                .gen_step(&xt, w[0], u, false)?
                .remove("gen.velocity")
                .and_then(HostTensor::into_f32)
                .unwrap_or_default();
            sampler::guide_text(&mut v, &vu, req.guidance);
        }
        sampler::euler_step(&mut x, &v, w[1] - w[0]);
        progress(i + 1, req.steps);
    }
    let denoise = start.elapsed();

    let start = Instant::now();
    let latent = HostTensor::f32(shape, x);
    let pixels = model.vae_decode(&latent)?;
    let image = to_image(&pixels);
    let rgb = image
        .as_i32()
        .unwrap_or_default()
        .iter()
        .map(|&v| v as u8)
        .collect();
    let vae = start.elapsed();
    Ok(ImageOutput {
        width: req.width,
        height: req.height,
        rgb,
        latent,
        pixels,
        srt,
        timings: ImageTimings {
            prefill,
            denoise,
            vae,
        },
    })
}

/// Writes RGB bytes as an 8-bit PNG.
pub fn write_png(
    path: &std::path::Path,
    width: usize,
    height: usize,
    rgb: &[u8],
) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc
        .write_header()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    w.write_image_data(rgb)
        .map_err(|e| format!("{}: {e}", path.display()))
}

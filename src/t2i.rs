//! Text-to-image: und prefill once per guidance branch (its K/V reused by every step), the shifted
//! schedule, Euler with text guidance, then the VAE decoder (DESIGN.md 4).

use crate::forward::to_image;
use crate::model::{Model, RunError, UndContext};
use crate::{noise, prompt, sampler};
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::positions;
use std::ops::ControlFlow;
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

/// The und context of a text-only branch: the image-generation template around `text`, prefilled.
pub(crate) fn text_context(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
) -> Result<UndContext, RunError> {
    let ids = prompt::encode(tokenizer, &prompt::image_context(text))
        .map_err(|e| RunError::Request(e.to_string()))?;
    crate::validate::context_length(model, "prompt", ids.len())?;
    model.und_context(&ids, positions::text_positions(ids.len()))
}

/// Tokens of the und context that [`text_context`] builds around `text`.
pub fn context_tokens(tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<usize, RunError> {
    prompt::encode(tokenizer, &prompt::image_context(text))
        .map(|ids| ids.len())
        .map_err(|e| RunError::Request(e.to_string()))
}

/// The memory `req`'s state takes (its branches' und contexts and its largest arena; see
/// [`Model::image_state_bytes`]), for the engine's memory limit.
pub fn state_bytes(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    req: &ImageRequest,
) -> Result<u64, RunError> {
    let mut lens = vec![context_tokens(tokenizer, &req.prompt)?];
    if req.guidance > 1.0 {
        lens.push(context_tokens(tokenizer, &req.negative_prompt)?);
    }
    model.image_state_bytes(req.width, req.height, &lens, &[])
}

/// Generates an image. `progress(step, steps)` is called after every denoising step; returning
/// `ControlFlow::Break` from it cancels the request there ([`RunError::Cancelled`]).
pub fn generate(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    req: &ImageRequest,
    mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<ImageOutput, RunError> {
    crate::validate::image(model, req)?;
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
        if progress(i + 1, req.steps).is_break() {
            return Err(RunError::Cancelled {
                step: i + 1,
                steps: req.steps,
            });
        }
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

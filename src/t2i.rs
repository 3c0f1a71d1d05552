//! Text-to-image: und prefill once per guidance branch (its K/V reused by every step), the shifted
//! schedule, Euler with text guidance, then the VAE decoder (DESIGN.md 4).

use crate::forward::to_image;
use crate::model::{Model, Phase, RunError, UndContext};
use crate::{noise, prompt, sampler};
use hbridge_engine::cpu::HostTensor;
use hbridge_graph::build::positions;
use std::ops::ControlFlow;
use std::time::Duration;

/// A text-to-image request; defaults are DESIGN.md 4's.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use hbridge::engine::{Engine, EngineOptions};
/// use hbridge::t2i::ImageRequest;
/// # let dir = std::env::temp_dir().join(format!("hbridge-doc-t2i-{}", std::process::id()));
/// # let tiny = hbridge::presets::preset("tiny").unwrap();
/// # hbridge::init::write_checkpoint(&dir, &tiny, 0, hbridge::init::WeightDType::BF16, true)?;
/// // `dir` holds a checkpoint (here the built-in tiny model with random weights).
/// let engine = Engine::load(&dir, &EngineOptions::cpu())?;
/// let request = ImageRequest::new("a red cube on a table")
///     .negative("blurry")
///     .size(32, 32) // multiples of VAE factor x patch size (8 for tiny)
///     .steps(2)
///     .guidance(4.0)
///     .seed(7);
/// let mut steps_seen = 0;
/// let image = engine.generate_image(&request, |step, steps| {
///     steps_seen = step;
///     assert_eq!(steps, 2);
///     std::ops::ControlFlow::Continue(())
/// })?;
/// assert_eq!(steps_seen, 2);
/// assert_eq!((image.width, image.height), (32, 32));
/// assert_eq!(image.rgb.len(), 32 * 32 * 3);
/// assert_eq!(image.pixels.shape, [3, 32, 32]);
/// // Same seed, same image.
/// let again = engine.generate_image(&request, |_, _| std::ops::ControlFlow::Continue(()))?;
/// assert_eq!(image.rgb, again.rgb);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    /// What to draw; wrapped in the image-generation chat template for the und context of the
    /// conditional branch. Must not be empty.
    pub prompt: String,
    /// Text of the unconditional guidance branch (default `""`), in the same template; unused when
    /// `guidance <= 1`.
    pub negative_prompt: String,
    /// Denoising (Euler) steps over the shifted schedule; default 50, at least 1.
    pub steps: usize,
    /// Text guidance scale `s_txt` in `v = u + s_txt * (c - u)`; default 4.0. At or below 1 only the
    /// conditional branch runs (half the gen work and one und prefill fewer).
    pub guidance: f32,
    /// Seed of the initial Gaussian noise (ignored when `noise` is given); same seed, same image per
    /// backend.
    pub seed: u64,
    /// Output width in pixels (default 1024); a positive multiple of the VAE factor times the gen patch
    /// size (16 for the real model, 8 for the tiny preset), at most `max_side`.
    pub width: usize,
    /// Output height in pixels (default 1024); same constraints as `width`.
    pub height: usize,
    /// Explicit initial noise `[C, H/f, W/f]` instead of the seeded one.
    pub noise: Option<HostTensor>,
    /// Keep the conditional branch's SRT output at this step.
    pub srt_at_step: Option<usize>,
    /// Largest accepted width or height, in pixels.
    pub max_side: usize,
}

impl ImageRequest {
    /// A request for `prompt` with DESIGN.md section 4's defaults: 50 steps, guidance 4.0, empty negative
    /// prompt, seed 0, 1024x1024, seeded noise, no SRT output, sides up to 4096.
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
    /// Sets the negative prompt of the unconditional guidance branch.
    pub fn negative(mut self, text: impl Into<String>) -> Self {
        self.negative_prompt = text.into();
        self
    }
    /// Sets the number of denoising steps (at least 1).
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }
    /// Sets the text guidance scale; `<= 1` turns guidance off (conditional branch only).
    pub fn guidance(mut self, scale: f32) -> Self {
        self.guidance = scale;
        self
    }
    /// Sets the seed of the initial noise.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets the output size in pixels: width, then height (each a multiple of VAE factor x patch size).
    pub fn size(mut self, width: usize, height: usize) -> Self {
        self.width = width;
        self.height = height;
        self
    }
}

/// A generated image, with the tensors it came from and what each stage took.
#[derive(Debug, Clone)]
pub struct ImageOutput {
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Row-major RGB bytes, `height * width * 3`.
    pub rgb: Vec<u8>,
    /// The sampled latent after the last Euler step, f32 `[C_lat, H/f, W/f]`, in model space (the VAE
    /// decode first undoes `scaling_factor` / `shift_factor`).
    pub latent: HostTensor,
    /// The VAE decoder's output, f32 `[3, H, W]`, roughly in [-1, 1] and not clamped; `rgb` is
    /// `round(clamp((x + 1) / 2, 0, 1) * 255)` of it.
    pub pixels: HostTensor,
    /// The conditional branch's SRT output, f32 `[n_srt, out_hidden_size]`, at the step the request
    /// asked for (`srt_at_step`); `None` when none was asked for or the topology has no SRT (`omnigen2`).
    pub srt: Option<HostTensor>,
    /// Wall-clock time of each stage.
    pub timings: ImageTimings,
}

/// Wall-clock time of each stage of an image request.
#[derive(Debug, Clone, Default)]
pub struct ImageTimings {
    /// The und prefill of every guidance branch (run once per request, its K/V reused by every step).
    pub prefill: Duration,
    /// All denoising steps: the gen expert on every guidance branch, guidance and the Euler updates.
    pub denoise: Duration,
    /// The VAE decode of the final latent to pixels.
    pub vae: Duration,
    /// Making weights resident during the request (a first request's one-time cost), not counted in
    /// the stages above.
    pub weights: Duration,
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

/// Tokens of a text-only branch's und context: the image-generation template around `text`, tokenized
/// (for the memory estimate and context-length checks).
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

    let phase = Phase::start(model);
    let cond = text_context(model, tokenizer, &req.prompt)?;
    let guided = req.guidance > 1.0;
    let uncond = if guided {
        Some(text_context(model, tokenizer, &req.negative_prompt)?)
    } else {
        None
    };
    let (prefill, mut weights) = phase.end(model);

    let phase = Phase::start(model);
    let mut x = match &req.noise {
        Some(n) => n.as_f32().unwrap_or_default().to_vec(),
        None => noise::normal_noise(req.seed, shape.iter().product()),
    };
    let ts = sampler::schedule(req.steps, lh, lw);
    let mut srt = None;
    // The branches' und K/V go to the backend once; every step reads them there.
    let mut branches = std::iter::once(&cond)
        .chain(uncond.as_ref())
        .map(|ctx| model.resident_context(ctx))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, w) in ts.windows(2).enumerate() {
        let xt = HostTensor::f32(shape.clone(), x.clone());
        let mut outs = model
            .gen_step_branches(&xt, w[0], &mut branches)?
            .into_iter();
        // The conditional branch (the first) keeps its SRT output at the step asked for.
        let mut velocity = |out: Option<crate::model::Outputs>, cond: bool| {
            out.and_then(|mut o| {
                if cond && req.srt_at_step == Some(i) {
                    srt = o.remove("gen.srt");
                }
                o.remove("gen.velocity")
            })
            .and_then(HostTensor::into_f32)
            .ok_or_else(|| RunError::Request("gen step produced no velocity".into()))
        };
        let mut v = velocity(outs.next(), true)?;
        if uncond.is_some() {
            let vu = velocity(outs.next(), false)?;
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
    let (denoise, w) = phase.end(model);
    weights += w;

    let phase = Phase::start(model);
    let latent = HostTensor::f32(shape, x);
    let pixels = model.vae_decode(&latent)?;
    let image = to_image(&pixels);
    let rgb = image
        .as_i32()
        .unwrap_or_default()
        .iter()
        .map(|&v| v as u8)
        .collect();
    let (vae, w) = phase.end(model);
    weights += w;
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
            weights,
        },
    })
}

/// Writes RGB bytes as an 8-bit PNG: to a temporary file beside `path`, renamed over it once
/// complete, so that `path` never holds a partial image (a full disk, an interrupted write).
pub fn write_png(
    path: &std::path::Path,
    width: usize,
    height: usize,
    rgb: &[u8],
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    // Encoded in memory first (a few MB), so that every write error is seen, the last flush's too.
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| err(&e))?;
    w.write_image_data(rgb).map_err(|e| err(&e))?;
    w.finish().map_err(|e| err(&e))?;
    crate::atomic_file::write(path, &bytes).map_err(|e| err(&e))
}

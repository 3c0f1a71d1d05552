//! Image editing (DESIGN.md 3-6): reference images through the VAE encoder into the gen sequence
//! (`ref_image_patch_embedder`, `image_index_embedding`, `ref_image_refiner`, shifted positions), and
//! three-branch guidance over c = (prompt, refs), r = (negative prompt, refs), u = (negative prompt, no
//! refs).
//!
//! The reference images also enter the und context of the c and r branches (DESIGN.md 6): as given
//! (before OmniGen2's resize), through the Qwen2.5-VL image processor and vision tower, as image tokens
//! in the user turn before the text.

mod guidance;
mod refs;
pub mod resize;

pub use guidance::{sample, step_velocity, EditBranches, EditGuidance, StepVelocities};
pub use refs::{encode_reference, to_pixels, ReferenceLatent};

use crate::forward::to_image;
use crate::image::context::{encode_images, prefill_with_image_embeds};
use crate::image::preprocess::PreparedImage;
use crate::image::ImageSetup;
use crate::image::RgbImage;
use crate::model::{next_position, Model, Phase, RunError, UndContext};
use crate::{noise, sampler};
use hbridge_engine::cpu::HostTensor;
use std::path::Path;
use std::time::Duration;

/// An editing request; defaults are DESIGN.md 4's (50 steps, text 5.0, image 2.0) and OmniGen2's input
/// image limits.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use hbridge::edit::EditRequest;
/// use hbridge::engine::{Engine, EngineOptions};
/// use hbridge::image::RgbImage;
/// # let dir = std::env::temp_dir().join(format!("hbridge-doc-edit-{}", std::process::id()));
/// # let tiny = hbridge::presets::preset("tiny").unwrap();
/// # hbridge::init::write_checkpoint(&dir, &tiny, 0, hbridge::init::WeightDType::BF16, true)?;
/// // `dir` holds a checkpoint with a VAE encoder (here the built-in tiny model, random weights).
/// let engine = Engine::load(&dir, &EngineOptions::cpu())?;
/// // A 32x32 reference image: row-major RGB bytes (a horizontal gradient).
/// let bytes = (0..32 * 32).flat_map(|i| [(i % 32 * 8) as u8, 64, 128]).collect();
/// let reference = RgbImage::new(32, 32, bytes).expect("32 * 32 * 3 bytes");
/// let mut request = EditRequest::new("make it blue", vec![reference]);
/// request.steps = 2;
/// request.text_guidance = 5.0; // c, r and u branches all run
/// request.image_guidance = 2.0;
/// let edited = engine.edit_image(&request, |_, _| std::ops::ControlFlow::Continue(()))?;
/// // The output takes the reference's size (after OmniGen2's resize, here unchanged).
/// assert_eq!((edited.width, edited.height), (32, 32));
/// assert_eq!(edited.rgb.len(), 32 * 32 * 3);
/// assert_eq!(edited.references[0].latent.shape, [4, 8, 8]); // [C_lat, H/f, W/f], f = 4 for tiny
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EditRequest {
    /// The edit instruction; templated for the und context of the c branch, after the reference images'
    /// vision tokens. Must not be empty.
    pub prompt: String,
    /// Text of the r and u guidance branches (default `""`).
    pub negative_prompt: String,
    /// Reference images, 1 to 5 (`image_index_embedding` has 5 rows).
    pub images: Vec<RgbImage>,
    /// Denoising (Euler) steps over the shifted schedule; default 50, at least 1.
    pub steps: usize,
    /// Text guidance scale `s_txt` (default 5.0); see [`EditGuidance`] for which branches run.
    pub text_guidance: f32,
    /// Image guidance scale `s_img` (default 2.0); the r branch runs only when both scales exceed 1.
    pub image_guidance: f32,
    /// Seed of the initial Gaussian noise (ignored when `noise` is given).
    pub seed: u64,
    /// Output `(width, height)`; default: the first reference image's size after its resize.
    pub size: Option<(usize, usize)>,
    /// Explicit initial noise `[C, H/f, W/f]` instead of the seeded one.
    pub noise: Option<HostTensor>,
    /// Reference images are shrunk (never enlarged) to at most this many pixels before the VAE encoder
    /// (OmniGen2's `max_pixels`; default [`resize::DEFAULT_MAX_PIXELS`]).
    pub max_input_pixels: usize,
    /// Longest side, in pixels, reference images are shrunk to before the VAE encoder (OmniGen2's
    /// `max_side_length`; default [`resize::DEFAULT_MAX_SIDE`]).
    pub max_input_side: usize,
    /// Largest accepted output width or height, in pixels.
    pub max_side: usize,
}

impl EditRequest {
    /// An edit of `images` (1 to 5 reference images) by `prompt`, with the defaults: 50 steps, text
    /// guidance 5.0, image guidance 2.0, empty negative prompt, seed 0, the output sized as the first
    /// reference after its resize, OmniGen2's input limits, output sides up to 4096.
    pub fn new(prompt: impl Into<String>, images: Vec<RgbImage>) -> Self {
        EditRequest {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            images,
            steps: 50,
            text_guidance: 5.0,
            image_guidance: 2.0,
            seed: 0,
            size: None,
            noise: None,
            max_input_pixels: resize::DEFAULT_MAX_PIXELS,
            max_input_side: resize::DEFAULT_MAX_SIDE,
            max_side: 4096,
        }
    }
    /// Sets the negative prompt (the r and u branches' text).
    pub fn negative(mut self, text: impl Into<String>) -> Self {
        self.negative_prompt = text.into();
        self
    }

    /// Sets the number of denoising steps.
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// Sets the text and image guidance scales.
    pub fn guidance_scales(mut self, text: f32, image: f32) -> Self {
        self.text_guidance = text;
        self.image_guidance = image;
        self
    }

    /// Sets the seed of the initial noise.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the output size in pixels (default: the first reference's size after its resize).
    pub fn size(mut self, width: usize, height: usize) -> Self {
        self.size = Some((width, height));
        self
    }

    /// The request's two guidance scales, which decide the branches that run.
    pub fn guidance(&self) -> EditGuidance {
        EditGuidance {
            text: self.text_guidance,
            image: self.image_guidance,
        }
    }
}

/// Wall-clock time of each stage of an edit.
#[derive(Debug, Clone, Default)]
pub struct EditTimings {
    /// Resizing the reference images and running the VAE encoder on them.
    pub encode: Duration,
    /// The und prefill of every guidance branch (with the vision tower on the references, once for c
    /// and r).
    pub prefill: Duration,
    /// All denoising steps: the gen expert on every branch, the three-way guidance and the Euler updates.
    pub denoise: Duration,
    /// The VAE decode of the final latent to pixels.
    pub vae: Duration,
    /// Making weights resident during the request (a first request's one-time cost), not counted in
    /// the stages above.
    pub weights: Duration,
}

/// An edited image, with the tensors it came from, the encoded references and what each stage took.
#[derive(Debug, Clone)]
pub struct EditOutput {
    /// Output width in pixels (the request's, else the first reference's after its resize).
    pub width: usize,
    /// Output height in pixels.
    pub height: usize,
    /// Row-major RGB bytes, `height * width * 3`.
    pub rgb: Vec<u8>,
    /// The sampled latent after the last Euler step, f32 `[C_lat, H/f, W/f]`.
    pub latent: HostTensor,
    /// The VAE decoder's output, f32 `[3, H, W]`, roughly in [-1, 1], not clamped.
    pub pixels: HostTensor,
    /// Each reference image as encoded (size after the resize, latent).
    pub references: Vec<ReferenceLatent>,
    /// Wall-clock time of each stage.
    pub timings: EditTimings,
}

/// The memory `req`'s state takes (three branches' und contexts with the references' image tokens, the
/// reference latents in the gen sequence, the largest arena; see [`Model::image_state_bytes`]).
pub fn state_bytes(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    req: &EditRequest,
) -> Result<u64, RunError> {
    let c = &model.checkpoint.config;
    let f = c.vae.downscale();
    let multiple = f * c.gen.patch_size;
    let ref_shapes: Vec<[usize; 3]> = req
        .images
        .iter()
        .map(|img| {
            let (h, w) = resize::target_size(
                img.height,
                img.width,
                multiple,
                req.max_input_pixels,
                req.max_input_side,
            );
            [c.vae.latent_channels, h / f, w / f]
        })
        .collect();
    let image_tokens: usize = match ImageSetup::new(model) {
        Ok(setup) if model.checkpoint.has_vision => req
            .images
            .iter()
            .map(|img| {
                let p = &setup.processor;
                crate::image::preprocess::smart_resize(
                    img.height,
                    img.width,
                    p.factor(),
                    p.min_pixels,
                    p.max_pixels,
                )
                .map_or(0, |(h, w)| (h / p.factor()) * (w / p.factor()))
            })
            .sum(),
        _ => 0,
    };
    let prompt = crate::t2i::context_tokens(tokenizer, &req.prompt)?;
    let negative = crate::t2i::context_tokens(tokenizer, &req.negative_prompt)?;
    let lens = [prompt + image_tokens, negative + image_tokens, negative];
    let (w, h) = output_size(model, req)?;
    model.image_state_bytes(w, h, &lens, &ref_shapes)
}

/// The output `(width, height)` of `req`: its `size`, or the first reference's size after its resize,
/// checked as an output size. Known before anything runs (the C ABI reports it for the caller's buffer).
pub fn output_size(model: &Model, req: &EditRequest) -> Result<(usize, usize), RunError> {
    let (w, h) = match (req.size, req.images.first()) {
        (Some(s), _) => s,
        (None, Some(first)) => {
            let (h, w) = crate::validate::reference_size(
                model,
                0,
                first,
                req.max_input_pixels,
                req.max_input_side,
            )?;
            (w, h)
        }
        (None, None) => {
            return Err(RunError::Invalid(crate::validate::RequestError {
                argument: "images",
                problem: "none given, so no output size; an edit takes 1 to 5 reference images"
                    .into(),
            }))
        }
    };
    crate::validate::output_size(model, w, h, req.max_side)?;
    Ok((w, h))
}

/// The reference images as the und expert sees them (DESIGN.md 6): prepared by the Qwen2.5-VL image
/// processor (as given, before OmniGen2's resize) and encoded by the vision tower once, for every branch
/// whose context holds them.
pub struct ReferenceTokens {
    setup: ImageSetup,
    prepared: Vec<PreparedImage>,
    embeds: HostTensor,
}

impl ReferenceTokens {
    /// Encodes `images`; `None` when there are none or the checkpoint has no vision tower (its branches
    /// then use text contexts alone, and the gen side still sees the references; the CLI says so).
    pub fn encode(model: &Model, images: &[RgbImage]) -> Result<Option<Self>, RunError> {
        if images.is_empty() || !model.checkpoint.has_vision {
            return Ok(None);
        }
        let request = |e: &dyn std::fmt::Display| RunError::Request(e.to_string());
        let setup = ImageSetup::new(model).map_err(|e| request(&e))?;
        let prepared = images
            .iter()
            .enumerate()
            .map(|(j, img)| setup.prepare(Path::new(&format!("reference image {j}")), img))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| request(&e))?;
        let embeds = encode_images(model, &prepared)?;
        Ok(Some(ReferenceTokens {
            setup,
            prepared,
            embeds,
        }))
    }
}

/// The und context of one branch: the image-generation template around `text`, with `images` (as
/// given) as the user turn's image tokens before the text (DESIGN.md 6), M-RoPE positions as HF's
/// `get_rope_index` gives them, and `s0` after the context's largest position.
pub fn branch_context(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    images: &[RgbImage],
) -> Result<UndContext, RunError> {
    let refs = ReferenceTokens::encode(model, images)?;
    branch_context_with(model, tokenizer, text, refs.as_ref())
}

/// [`branch_context`] over reference images already encoded (`None`: a text-only context).
pub fn branch_context_with(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    refs: Option<&ReferenceTokens>,
) -> Result<UndContext, RunError> {
    let Some(refs) = refs else {
        return crate::t2i::text_context(model, tokenizer, text);
    };
    let content = refs.setup.prompt_text(&refs.prepared) + text;
    let ids = crate::prompt::encode(tokenizer, &crate::prompt::image_context(&content))
        .map_err(|e| RunError::Request(e.to_string()))?;
    crate::validate::context_length(model, "prompt", ids.len())?;
    let spec = model.context_spec(ids.len());
    let (out, positions) = prefill_with_image_embeds(
        model,
        &refs.setup,
        &ids,
        &refs.prepared,
        &refs.embeds,
        &spec,
    )?;
    model.context_from_prefill(out, ids.len(), next_position(&positions))
}

/// The und contexts the guidance needs: c = (prompt, images), r = (negative, images), u = (negative).
/// The vision tower runs once for c and r.
pub fn branches(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    req: &EditRequest,
) -> Result<EditBranches, RunError> {
    let g = req.guidance();
    let refs = ReferenceTokens::encode(model, &req.images)?;
    let cond = branch_context_with(model, tokenizer, &req.prompt, refs.as_ref())?;
    let uncond = if g.needs_uncond() {
        Some(branch_context_with(
            model,
            tokenizer,
            &req.negative_prompt,
            None,
        )?)
    } else {
        None
    };
    let refonly = match (&uncond, g.needs_refonly()) {
        // Without a vision tower r's context is u's (both the negative text): one prefill serves both.
        (Some(u), true) if refs.is_none() => Some(u.clone()),
        (_, true) => Some(branch_context_with(
            model,
            tokenizer,
            &req.negative_prompt,
            refs.as_ref(),
        )?),
        (_, false) => None,
    };
    Ok(EditBranches {
        cond,
        refonly,
        uncond,
    })
}

/// Edits: encodes the reference images, runs the guided sampler and decodes. `progress(step, steps)` is
/// called after every denoising step; returning `ControlFlow::Break` cancels ([`RunError::Cancelled`]).
pub fn edit(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    req: &EditRequest,
    progress: impl FnMut(usize, usize) -> std::ops::ControlFlow<()>,
) -> Result<EditOutput, RunError> {
    crate::validate::edit(model, req)?;
    let c = &model.checkpoint.config;
    let f = c.vae.downscale();

    let phase = Phase::start(model);
    let references = req
        .images
        .iter()
        .enumerate()
        .map(|(j, img)| encode_reference(model, j, img, req.max_input_pixels, req.max_input_side))
        .collect::<Result<Vec<_>, _>>()?;
    let (encode, mut weights) = phase.end(model);
    let (width, height) = output_size(model, req)?;
    let shape = vec![c.vae.latent_channels, height / f, width / f];
    let noise = match &req.noise {
        Some(n) => {
            crate::validate::noise(model, n, width, height)?;
            n.clone()
        }
        None => HostTensor::f32(
            shape.clone(),
            noise::normal_noise(req.seed, shape.iter().product()),
        ),
    };

    let phase = Phase::start(model);
    let branches = branches(model, tokenizer, req)?;
    let (prefill, w) = phase.end(model);
    weights += w;

    let phase = Phase::start(model);
    let ts = sampler::schedule(req.steps, shape[1], shape[2]);
    let refs: Vec<HostTensor> = references.iter().map(|r| r.latent.clone()).collect();
    let latent = sample(
        model,
        &noise,
        &ts,
        &branches,
        &refs,
        req.guidance(),
        progress,
    )?;
    let (denoise, w) = phase.end(model);
    weights += w;

    let phase = Phase::start(model);
    let pixels = model.vae_decode(&latent)?;
    let rgb = to_image(&pixels)
        .as_i32()
        .unwrap_or_default()
        .iter()
        .map(|&v| v as u8)
        .collect();
    let (vae, w) = phase.end(model);
    weights += w;
    Ok(EditOutput {
        width,
        height,
        rgb,
        latent,
        pixels,
        references,
        timings: EditTimings {
            encode,
            prefill,
            denoise,
            vae,
            weights,
        },
    })
}

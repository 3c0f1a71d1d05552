//! Request validation, in one place. The pipelines (`chat`, `t2i`, `edit`) call these checks before any
//! compute, so the CLI, the Rust API ([`crate::engine::Engine`]) and the C ABI refuse the same requests
//! with the same messages. Each message names the argument at fault and what was expected.

use crate::chat::{ChatError, ChatRequest};
use crate::edit::EditRequest;
use crate::image::RgbImage;
use crate::model::Model;
use crate::t2i::ImageRequest;
use hbridge_engine::cpu::HostTensor;
use hbridge_loader::config::MAX_REF_IMAGES;

/// A request argument that cannot be served: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{argument}: {problem}")]
pub struct RequestError {
    /// The argument's name as the CLI spells it (`width`, `guidance`, `image-guidance`, ...).
    pub argument: &'static str,
    /// What is wrong with it and what was expected.
    pub problem: String,
}

fn invalid<T>(argument: &'static str, problem: impl Into<String>) -> Result<T, RequestError> {
    Err(RequestError {
        argument,
        problem: problem.into(),
    })
}

/// The sampling parameters of a chat request (the prompt is checked by [`chat_prompt`] once known).
pub fn chat_params(request: &ChatRequest) -> Result<(), ChatError> {
    if !(request.temperature.is_finite() && request.temperature >= 0.0) {
        return Err(ChatError::InvalidTemperature(request.temperature));
    }
    if !(request.top_p > 0.0 && request.top_p <= 1.0) {
        return Err(ChatError::InvalidTopP(request.top_p));
    }
    Ok(())
}

/// A chat request against its templated prompt: parameters, emptiness, vocabulary, context length.
pub fn chat_prompt(model: &Model, prompt: &[u32], request: &ChatRequest) -> Result<(), ChatError> {
    chat_params(request)?;
    if prompt.is_empty() {
        return Err(ChatError::EmptyPrompt);
    }
    let c = &model.checkpoint.config.und;
    let vocab = c.vocab_size.min(i32::MAX as usize);
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(ChatError::TokenOutOfVocab { id, vocab });
    }
    if let Some(limit) = c.max_position_embeddings {
        if prompt.len() > limit {
            return Err(ChatError::PromptTooLong {
                tokens: prompt.len(),
                limit,
            });
        }
        if prompt.len().saturating_add(request.max_tokens) > limit {
            return Err(ChatError::ContextOverflow {
                prompt: prompt.len(),
                max_tokens: request.max_tokens,
                limit,
            });
        }
    }
    Ok(())
}

/// A text-to-image request against the model.
pub fn image(model: &Model, req: &ImageRequest) -> Result<(), RequestError> {
    if req.prompt.trim().is_empty() {
        return invalid("prompt", "empty; describe the image to generate");
    }
    steps(req.steps)?;
    guidance("guidance", req.guidance)?;
    output_size(model, req.width, req.height, req.max_side)?;
    if let Some(n) = &req.noise {
        noise(model, n, req.width, req.height)?;
    }
    Ok(())
}

/// An editing request against the model (the output size, when it defaults to the first reference's
/// size after its resize, is checked by [`output_size`] once known).
pub fn edit(model: &Model, req: &EditRequest) -> Result<(), RequestError> {
    if req.prompt.trim().is_empty() {
        return invalid("prompt", "empty; describe the edit");
    }
    if req.images.is_empty() || req.images.len() > MAX_REF_IMAGES {
        return invalid(
            "images",
            format!(
                "{} given; an edit takes 1 to {MAX_REF_IMAGES} reference images",
                req.images.len()
            ),
        );
    }
    for (j, img) in req.images.iter().enumerate() {
        reference_size(model, j, img, req.max_input_pixels, req.max_input_side)?;
    }
    steps(req.steps)?;
    guidance("guidance", req.text_guidance)?;
    guidance("image-guidance", req.image_guidance)?;
    if !model.checkpoint.has_vae_encoder {
        return invalid(
            "model",
            format!(
                "{}: the checkpoint has no VAE encoder (encoder.* tensors); editing needs it",
                model.checkpoint.config.layout.vae_dir
            ),
        );
    }
    if let Some((w, h)) = req.size {
        output_size(model, w, h, req.max_side)?;
    }
    Ok(())
}

/// The `(height, width)` reference image `index` is resized to for the VAE (OmniGen2's rule, see
/// [`crate::edit::resize::target_size`]), or why it is too small for one.
pub fn reference_size(
    model: &Model,
    index: usize,
    img: &RgbImage,
    max_pixels: usize,
    max_side: usize,
) -> Result<(usize, usize), RequestError> {
    let c = &model.checkpoint.config;
    let multiple = c.vae.downscale() * c.gen.patch_size;
    let (h, w) =
        crate::edit::resize::target_size(img.height, img.width, multiple, max_pixels, max_side);
    if h == 0 || w == 0 {
        return invalid(
            "images",
            format!(
                "reference image {index}: {}x{} is too small; each side must reach {multiple} pixels after \
                 fitting {max_pixels} pixels and a longest side of {max_side}",
                img.width, img.height
            ),
        );
    }
    Ok((h, w))
}

/// An output image size: positive multiples of the VAE factor times the patch size, at most `max_side`.
pub fn output_size(
    model: &Model,
    width: usize,
    height: usize,
    max_side: usize,
) -> Result<(), RequestError> {
    let c = &model.checkpoint.config;
    let multiple = c.vae.downscale() * c.gen.patch_size;
    for (name, v) in [("width", width), ("height", height)] {
        if v == 0 || v % multiple != 0 {
            return invalid(
                name,
                format!(
                    "{v} is not a positive multiple of {multiple} (VAE factor {} x patch {})",
                    c.vae.downscale(),
                    c.gen.patch_size
                ),
            );
        }
        if v > max_side {
            return invalid(
                name,
                format!("{v} exceeds the maximum of {max_side} pixels"),
            );
        }
    }
    Ok(())
}

/// Explicit initial noise: f32 `[C, H/f, W/f]` for a `width` x `height` output.
pub fn noise(
    model: &Model,
    noise: &HostTensor,
    width: usize,
    height: usize,
) -> Result<(), RequestError> {
    let c = &model.checkpoint.config;
    let f = c.vae.downscale();
    let want = [c.vae.latent_channels, height / f, width / f];
    if noise.shape != want || noise.as_f32().is_none() {
        return invalid(
            "noise",
            format!(
                "shape {:?}, expected f32 {want:?} for {width}x{height}",
                noise.shape
            ),
        );
    }
    Ok(())
}

/// A templated und context of `tokens` tokens (`what` names the prompt) against the model's context.
pub fn context_length(
    model: &Model,
    what: &'static str,
    tokens: usize,
) -> Result<(), RequestError> {
    match model.checkpoint.config.und.max_position_embeddings {
        Some(max) if tokens > max => invalid(
            what,
            format!("{tokens} tokens after templating exceed the und context of {max}"),
        ),
        _ => Ok(()),
    }
}

fn steps(steps: usize) -> Result<(), RequestError> {
    if steps == 0 {
        return invalid("steps", "must be at least 1");
    }
    Ok(())
}

fn guidance(name: &'static str, scale: f32) -> Result<(), RequestError> {
    if !scale.is_finite() || scale < 0.0 {
        return invalid(name, format!("{scale} is not a non-negative number"));
    }
    Ok(())
}

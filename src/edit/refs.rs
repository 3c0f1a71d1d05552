//! Reference images to model-space latents: OmniGen2's resize, pixels to [-1, 1], the VAE encoder.

use super::resize::resize_lanczos;
use crate::image::RgbImage;
use crate::model::{Model, RunError};
use hbridge_engine::cpu::HostTensor;

/// A reference image ready for the gen expert.
#[derive(Debug, Clone)]
pub struct ReferenceLatent {
    /// Width in pixels of the image the VAE encoded (after OmniGen2's resize; a multiple of VAE factor x
    /// patch size).
    pub width: usize,
    /// Height in pixels of the image the VAE encoded (after the resize), same multiple as `width`.
    pub height: usize,
    /// `[latent_channels, height/f, width/f]`, model space (`(mean - shift) * scale`).
    pub latent: HostTensor,
}

/// Pixels `[3, H, W]` in [-1, 1] from RGB bytes: `2 * (b / 255) - 1` in f32, in that order, as diffusers'
/// `VaeImageProcessor` (`pil_to_numpy` then `normalize`) computes it.
pub fn to_pixels(img: &RgbImage) -> HostTensor {
    let plane = img.width * img.height;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for (ch, &b) in px.iter().enumerate() {
            out[ch * plane + i] = 2.0 * (b as f32 / 255.0) - 1.0;
        }
    }
    HostTensor::f32(vec![3, img.height, img.width], out)
}

/// Resizes reference image `index` for the VAE (OmniGen2's rule: shrink to fit `max_pixels` and
/// `max_side`, round down to multiples of VAE factor x patch, Lanczos) and encodes it.
pub fn encode_reference(
    model: &Model,
    index: usize,
    img: &RgbImage,
    max_pixels: usize,
    max_side: usize,
) -> Result<ReferenceLatent, RunError> {
    let (h, w) = crate::validate::reference_size(model, index, img, max_pixels, max_side)?;
    let resized;
    let img = if (w, h) == (img.width, img.height) {
        img
    } else {
        resized = resize_lanczos(img, w, h);
        &resized
    };
    let latent = model.vae_encode(&to_pixels(img))?;
    Ok(ReferenceLatent {
        width: w,
        height: h,
        latent,
    })
}

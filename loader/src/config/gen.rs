//! The generation expert's config: the OmniGen2 transformer `config.json` (DESIGN.md section 3).

use super::json::{Fields, MAX_DIM};
use crate::error::Result;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_refiner_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// `hidden_size / num_attention_heads`, equal to `sum(axes_dim_rope)`.
    pub head_dim: usize,
    pub ffn_inner: usize,
    pub norm_eps: f64,
    pub axes_dim_rope: [usize; 3],
    pub in_channels: usize,
    pub out_channels: usize,
    pub patch_size: usize,
    pub text_feat_dim: usize,
    pub timestep_scale: f64,
}

/// Width of the sinusoidal timestep features fed to `timestep_embedder.linear_1`.
pub const TIMESTEP_FREQ_DIM: usize = 256;
/// Rows of `image_index_embedding`: at most this many reference images.
pub const MAX_REF_IMAGES: usize = 5;

impl GenConfig {
    /// Width of the timestep embedding `temb`: `min(hidden, 1024)`.
    pub fn temb_dim(&self) -> usize {
        self.hidden_size.min(1024)
    }
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Features per latent patch token: `patch^2 * channels`.
    pub fn patch_dim_in(&self) -> usize {
        self.patch_size * self.patch_size * self.in_channels
    }
    pub fn patch_dim_out(&self) -> usize {
        self.patch_size * self.patch_size * self.out_channels
    }

    pub fn parse(path: &Path, value: &Value) -> Result<Self> {
        let f = Fields::new(path, value)?;
        let hidden_size = f.positive("hidden_size")?;
        let num_heads = f.positive("num_attention_heads")?;
        let num_kv_heads = f.positive("num_kv_heads")?;
        if hidden_size % num_heads != 0 {
            return Err(f.inconsistent(format!(
                "hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}"
            )));
        }
        if num_heads % num_kv_heads != 0 {
            return Err(f.inconsistent(format!(
                "num_attention_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads} (GQA groups must be whole)"
            )));
        }
        let head_dim = hidden_size / num_heads;
        let axes = f.usize_list("axes_dim_rope")?;
        if axes.len() != 3 {
            return Err(f.unsupported("axes_dim_rope", "3 integers", format!("{axes:?}")));
        }
        if axes.iter().sum::<usize>() != head_dim {
            return Err(f.inconsistent(format!(
                "axes_dim_rope {axes:?} sums to {}, expected the head dim hidden_size/num_attention_heads = {head_dim}",
                axes.iter().sum::<usize>()
            )));
        }
        if axes.iter().any(|a| a % 2 != 0) {
            return Err(f.inconsistent(format!(
                "axes_dim_rope {axes:?}: every axis must be even (RoPE rotates pairs)"
            )));
        }

        // FFN width as OmniGen2's LuminaFeedForward computes it.
        let multiple_of = f.opt_dim("multiple_of")?.unwrap_or(256).max(1);
        let mut inner = 4 * hidden_size;
        if let Some(mult) = f.opt_f64("ffn_dim_multiplier")? {
            if mult.is_nan() || mult <= 0.0 {
                return Err(f.unsupported("ffn_dim_multiplier", "a positive number or null", mult));
            }
            let scaled = mult * inner as f64;
            if scaled > MAX_DIM as f64 {
                return Err(f.unsupported(
                    "ffn_dim_multiplier",
                    &format!(
                        "a multiplier keeping 4*hidden_size*ffn_dim_multiplier at most {MAX_DIM}"
                    ),
                    mult,
                ));
            }
            inner = scaled as usize;
        }
        let ffn_inner = inner.div_ceil(multiple_of) * multiple_of;

        let in_channels = f.positive("in_channels")?;
        let out_channels = f.opt_dim("out_channels")?.unwrap_or(in_channels);
        Ok(GenConfig {
            hidden_size,
            num_layers: f.layers("num_layers")?,
            num_refiner_layers: f.opt_layers("num_refiner_layers")?.unwrap_or(2),
            num_heads,
            num_kv_heads,
            head_dim,
            ffn_inner,
            norm_eps: f.f64_or("norm_eps", 1e-5)?,
            axes_dim_rope: [axes[0], axes[1], axes[2]],
            in_channels,
            out_channels,
            patch_size: f.positive("patch_size")?,
            text_feat_dim: f.opt_dim("text_feat_dim")?.unwrap_or(1024),
            timestep_scale: f.f64_or("timestep_scale", 1.0)?,
        })
    }
}

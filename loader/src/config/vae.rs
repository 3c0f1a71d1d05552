//! The VAE's config: diffusers `AutoencoderKL` `config.json` (DESIGN.md section 4). The structure is read
//! from here, never assumed to be FLUX's.

use super::json::Fields;
use crate::error::Result;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub shift_factor: f64,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    /// Pixels per latent pixel along each side: `2^(len(block_out_channels) - 1)`.
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    pub fn parse(path: &Path, value: &Value) -> Result<Self> {
        let f = Fields::new(path, value)?;
        let block_out_channels = f.usize_list("block_out_channels")?;
        if block_out_channels.is_empty() || block_out_channels.len() > 8 {
            return Err(f.unsupported(
                "block_out_channels",
                "1 to 8 channel counts",
                format!("{block_out_channels:?}"),
            ));
        }
        let norm_num_groups = f.opt_dim("norm_num_groups")?.unwrap_or(32);
        if norm_num_groups == 0 {
            return Err(f.unsupported("norm_num_groups", "a positive integer", 0));
        }
        if let Some(&c) = block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % norm_num_groups != 0)
        {
            return Err(f.inconsistent(format!(
                "block_out_channels {block_out_channels:?}: {c} is not a positive multiple of norm_num_groups {norm_num_groups}"
            )));
        }
        for (field, expected) in [
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ] {
            if let Some(types) = f.get(field).and_then(|v| v.as_array()) {
                if types.len() != block_out_channels.len() {
                    return Err(f.inconsistent(format!(
                        "{field} has {} entries, block_out_channels has {}",
                        types.len(),
                        block_out_channels.len()
                    )));
                }
                if let Some(t) = types.iter().find(|t| t.as_str() != Some(expected)) {
                    return Err(f.unsupported(field, &format!("only \"{expected}\" blocks"), t));
                }
            }
        }
        if let Some(act) = f.opt_str("act_fn")? {
            if act != "silu" {
                return Err(f.unsupported("act_fn", "\"silu\"", act));
            }
        }
        Ok(VaeConfig {
            in_channels: f.opt_dim("in_channels")?.unwrap_or(3),
            out_channels: f.opt_dim("out_channels")?.unwrap_or(3),
            latent_channels: f.positive("latent_channels")?,
            block_out_channels,
            layers_per_block: f.opt_layers("layers_per_block")?.unwrap_or(1),
            norm_num_groups,
            scaling_factor: f.f64_or("scaling_factor", 0.18215)?,
            shift_factor: f.f64_or("shift_factor", 0.0)?,
            use_quant_conv: f.opt_bool("use_quant_conv")?.unwrap_or(true),
            use_post_quant_conv: f.opt_bool("use_post_quant_conv")?.unwrap_or(true),
            mid_block_add_attention: f.opt_bool("mid_block_add_attention")?.unwrap_or(true),
        })
    }
}

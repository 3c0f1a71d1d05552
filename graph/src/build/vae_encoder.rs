//! VAE encoder graph (diffusers AutoencoderKL `Encoder`, structure read from vae/config.json; DESIGN.md 4):
//! pixels in [-1, 1] -> the posterior **mean** (not a sample, so that editing stays deterministic) ->
//! `(mean - shift_factor) * scaling_factor`, the model-space latent of a reference image.

use super::vae::Ctx;
use crate::op::Op;
use crate::{DataType, Graph, GraphError, TensorId};
use hbridge_loader::config::VaeConfig;
use hbridge_loader::Part;

/// Input: the image `[in_channels, H, W]`, values in [-1, 1] (`2 * byte / 255 - 1`).
pub const VAE_ENCODER_INPUT: &str = "vae.encoder_input";
/// Output: the model-space latent `[latent_channels, H/f, W/f]`.
pub const VAE_ENCODED: &str = "vae.encoded";

impl Ctx<'_> {
    /// diffusers `Downsample2D(use_conv=True, padding=0)` of a `DownEncoderBlock2D`: zero-pad one row at the
    /// bottom and one column at the right (`F.pad(x, (0, 1, 0, 1))`), then a 3x3 stride-2 convolution.
    fn downsample(&mut self, x: TensorId, name: &str, ch: usize) -> Result<TensorId, GraphError> {
        let w = self
            .g
            .weight(Part::Vae, format!("{name}.weight"), &[ch, ch, 3, 3]);
        let b = self.g.weight(Part::Vae, format!("{name}.bias"), &[ch]);
        self.g.push(
            Op::Conv2d {
                x,
                w,
                bias: Some(b),
                stride: 2,
                pad: 1,
                pad_bottom_right_only: true,
            },
            name,
        )
    }
}

/// Encodes `vae.encoder_input` `[in_channels, H, W]` to `vae.encoded` `[latent_channels, H/f, W/f]`
/// (f = `2^(len(block_out_channels) - 1)`). H and W must be positive multiples of f: diffusers' padded
/// stride-2 convolution rounds odd sizes in a way no latent grid of the decoder can invert.
pub fn vae_encode(c: &VaeConfig, image_hw: (usize, usize)) -> Result<Graph, GraphError> {
    let (h, w) = image_hw;
    let f = c.downscale();
    if h == 0 || w == 0 || h % f != 0 || w % f != 0 {
        return Err(GraphError::Request(format!(
            "VAE encode of a {w}x{h} image: width and height must be positive multiples of {f}"
        )));
    }
    let boc = &c.block_out_channels;
    let (first, last) = (boc[0], boc[boc.len() - 1]);
    let mut cx = Ctx {
        g: Graph::default(),
        c,
    };
    let image =
        cx.g.input(VAE_ENCODER_INPUT, &[c.in_channels, h, w], DataType::F32);
    let mut x = cx.conv(image, "encoder.conv_in", first, c.in_channels, 3)?;
    let (mut hh, mut ww) = (h, w);
    let mut prev = first;
    for (i, &out) in boc.iter().enumerate() {
        for j in 0..c.layers_per_block {
            x = cx.resnet(
                x,
                &format!("encoder.down_blocks.{i}.resnets.{j}."),
                if j == 0 { prev } else { out },
                out,
            )?;
        }
        if i + 1 < boc.len() {
            x = cx.downsample(
                x,
                &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                out,
            )?;
            hh /= 2;
            ww /= 2;
        }
        prev = out;
    }
    x = cx.resnet(x, "encoder.mid_block.resnets.0.", last, last)?;
    if c.mid_block_add_attention {
        x = cx.attention(x, "encoder.mid_block.attentions.0.", last, (hh, ww))?;
    }
    x = cx.resnet(x, "encoder.mid_block.resnets.1.", last, last)?;
    x = cx.group_norm(x, "encoder.conv_norm_out", last)?;
    x = cx.g.push(Op::Silu { x }, "encoder.act_out")?;
    let moments = 2 * c.latent_channels;
    x = cx.conv(x, "encoder.conv_out", moments, last, 3)?;
    if c.use_quant_conv {
        x = cx.conv(x, "quant_conv", moments, moments, 1)?;
    }
    // The posterior's mean is the first latent_channels channels of the moments (the rest is log-variance).
    let flat = cx.g.push(
        Op::Reshape {
            x,
            shape: vec![moments, hh * ww],
        },
        "vae.moments",
    )?;
    let mean = cx.g.push(
        Op::SliceRows {
            x: flat,
            start: 0,
            len: c.latent_channels,
        },
        "vae.posterior_mean_flat",
    )?;
    let mean = cx.g.push(
        Op::Reshape {
            x: mean,
            shape: vec![c.latent_channels, hh, ww],
        },
        "vae.posterior_mean",
    )?;
    // (mean - shift) * scale = mean * scale - shift * scale
    let scaled = cx.g.push(
        Op::Affine {
            x: mean,
            scale: c.scaling_factor as f32,
            shift: (-c.shift_factor * c.scaling_factor) as f32,
        },
        VAE_ENCODED,
    )?;
    cx.g.mark_output(VAE_ENCODED, scaled);
    Ok(cx.g)
}

//! VAE decoder graph (diffusers AutoencoderKL, structure read from vae/config.json; DESIGN.md 4).

use super::names;
use crate::op::Op;
use crate::{DataType, Graph, GraphError, TensorId};
use hbridge_loader::config::VaeConfig;
use hbridge_loader::Part;

/// diffusers' Decoder uses eps 1e-6 in every GroupNorm (resnets, mid attention, conv_norm_out).
const GROUP_NORM_EPS: f32 = 1e-6;

/// Shared with the encoder graph (`vae_encoder.rs`): the same resnet, mid-block attention and convs.
pub(super) struct Ctx<'a> {
    pub(super) g: Graph,
    pub(super) c: &'a VaeConfig,
}

impl Ctx<'_> {
    pub(super) fn conv(
        &mut self,
        x: TensorId,
        name: &str,
        cout: usize,
        cin: usize,
        k: usize,
    ) -> Result<TensorId, GraphError> {
        let w = self
            .g
            .weight(Part::Vae, format!("{name}.weight"), &[cout, cin, k, k]);
        let b = self.g.weight(Part::Vae, format!("{name}.bias"), &[cout]);
        self.g.push(
            Op::Conv2d {
                x,
                w,
                bias: Some(b),
                stride: 1,
                pad: k / 2,
                pad_bottom_right_only: false,
            },
            name,
        )
    }

    pub(super) fn group_norm(
        &mut self,
        x: TensorId,
        name: &str,
        ch: usize,
    ) -> Result<TensorId, GraphError> {
        let weight = self.g.weight(Part::Vae, format!("{name}.weight"), &[ch]);
        let bias = self.g.weight(Part::Vae, format!("{name}.bias"), &[ch]);
        self.g.push(
            Op::GroupNorm {
                x,
                weight,
                bias,
                groups: self.c.norm_num_groups,
                eps: GROUP_NORM_EPS,
            },
            name,
        )
    }

    pub(super) fn resnet(
        &mut self,
        x: TensorId,
        p: &str,
        cin: usize,
        cout: usize,
    ) -> Result<TensorId, GraphError> {
        let h = self.group_norm(x, &format!("{p}norm1"), cin)?;
        let h = self.g.push(Op::Silu { x: h }, format!("{p}act1"))?;
        let h = self.conv(h, &format!("{p}conv1"), cout, cin, 3)?;
        let h = self.group_norm(h, &format!("{p}norm2"), cout)?;
        let h = self.g.push(Op::Silu { x: h }, format!("{p}act2"))?;
        let h = self.conv(h, &format!("{p}conv2"), cout, cout, 3)?;
        let shortcut = if cin != cout {
            self.conv(x, &format!("{p}conv_shortcut"), cout, cin, 1)?
        } else {
            x
        };
        self.g
            .push(Op::Add { a: shortcut, b: h }, format!("{p}out"))
    }

    /// Single-head self-attention over the pixels with a GroupNorm before q/k/v (diffusers applies it; DESIGN.md
    /// omits it) and a residual.
    pub(super) fn attention(
        &mut self,
        x: TensorId,
        p: &str,
        ch: usize,
        hw: (usize, usize),
    ) -> Result<TensorId, GraphError> {
        let n = self.group_norm(x, &format!("{p}group_norm"), ch)?;
        let flat = self.g.push(
            Op::Reshape {
                x: n,
                shape: vec![ch, hw.0 * hw.1],
            },
            format!("{p}flat"),
        )?;
        let tokens = self
            .g
            .push(Op::Transpose { x: flat }, format!("{p}tokens"))?;
        let proj = |g: &mut Graph, name: &str, input: TensorId| -> Result<TensorId, GraphError> {
            let w = g.weight(Part::Vae, format!("{p}{name}.weight"), &[ch, ch]);
            let b = g.weight(Part::Vae, format!("{p}{name}.bias"), &[ch]);
            g.push(
                Op::Linear {
                    x: input,
                    w,
                    bias: Some(b),
                },
                format!("{p}{name}"),
            )
        };
        let q = proj(&mut self.g, "to_q", tokens)?;
        let k = proj(&mut self.g, "to_k", tokens)?;
        let v = proj(&mut self.g, "to_v", tokens)?;
        let a = self.g.push(
            Op::Attention {
                q,
                segments: vec![crate::KvSegment::new(k, v)],
                heads: 1,
                kv_heads: 1,
                head_dim: ch,
                causal: false,
                scale: (ch as f32).powf(-0.5),
            },
            format!("{p}attn"),
        )?;
        let o = proj(&mut self.g, "to_out.0", a)?;
        let back = self.g.push(Op::Transpose { x: o }, format!("{p}pixels"))?;
        let back = self.g.push(
            Op::Reshape {
                x: back,
                shape: vec![ch, hw.0, hw.1],
            },
            format!("{p}image"),
        )?;
        self.g.push(Op::Add { a: x, b: back }, format!("{p}out"))
    }
}

/// Decodes a latent `vae.latent` `[latent_channels, h, w]` (model space: the sampler's output) to pixels
/// `vae.pixels` `[out_channels, h*f, w*f]`, roughly in [-1, 1] and unclamped.
pub fn vae_decode(c: &VaeConfig, latent_hw: (usize, usize)) -> Result<Graph, GraphError> {
    let (h, w) = latent_hw;
    if h == 0 || w == 0 {
        return Err(GraphError::Request("VAE decode of an empty latent".into()));
    }
    let boc = &c.block_out_channels;
    let (first, last) = (boc[0], boc[boc.len() - 1]);
    let mut cx = Ctx {
        g: Graph::default(),
        c,
    };
    let z =
        cx.g.input(names::VAE_LATENT, &[c.latent_channels, h, w], DataType::F32);
    let mut x = cx.g.push(
        Op::Affine {
            x: z,
            scale: (1.0 / c.scaling_factor) as f32,
            shift: c.shift_factor as f32,
        },
        "vae.unscaled_latent",
    )?;
    if c.use_post_quant_conv {
        x = cx.conv(
            x,
            "post_quant_conv",
            c.latent_channels,
            c.latent_channels,
            1,
        )?;
    }
    x = cx.conv(x, "decoder.conv_in", last, c.latent_channels, 3)?;
    x = cx.resnet(x, "decoder.mid_block.resnets.0.", last, last)?;
    if c.mid_block_add_attention {
        x = cx.attention(x, "decoder.mid_block.attentions.0.", last, (h, w))?;
    }
    x = cx.resnet(x, "decoder.mid_block.resnets.1.", last, last)?;
    let (mut hh, mut ww) = (h, w);
    let mut prev = last;
    for (i, &out) in boc.iter().rev().enumerate() {
        for j in 0..=c.layers_per_block {
            x = cx.resnet(
                x,
                &format!("decoder.up_blocks.{i}.resnets.{j}."),
                if j == 0 { prev } else { out },
                out,
            )?;
        }
        if i + 1 < boc.len() {
            x = cx.g.push(
                Op::Upsample2x { x },
                format!("decoder.up_blocks.{i}.upsample"),
            )?;
            x = cx.conv(
                x,
                &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                out,
                out,
                3,
            )?;
            hh *= 2;
            ww *= 2;
        }
        prev = out;
    }
    debug_assert_eq!((hh, ww), (h * c.downscale(), w * c.downscale()));
    x = cx.group_norm(x, "decoder.conv_norm_out", first)?;
    x = cx.g.push(Op::Silu { x }, "decoder.act_out")?;
    x = cx.conv(x, "decoder.conv_out", c.out_channels, first, 3)?;
    cx.g.mark_output("vae.pixels", x);
    Ok(cx.g)
}

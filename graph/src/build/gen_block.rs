//! The gen expert's building blocks shared by both topologies' step graphs: the modulated block, gen
//! self-attention, the timestep embedding, the latent embedding with its refiner, and norm_out.

use crate::op::{KvSegment, Op, RopeKind};
use crate::{Graph, GraphError, TensorId};
use hbridge_loader::config::{GenConfig, TIMESTEP_FREQ_DIM};
use hbridge_loader::Part;

/// Gen RoPE theta and the fixed epsilons of DESIGN.md 3 (not read from `norm_eps`).
pub(super) const GEN_ROPE_THETA: f64 = 10000.0;
pub(super) const QK_NORM_EPS: f32 = 1e-5;
pub(super) const NORM_OUT_EPS: f32 = 1e-6;

pub(super) struct Ctx<'a> {
    pub(super) g: Graph,
    pub(super) c: &'a GenConfig,
    pub(super) temb_silu: TensorId,
}

impl Ctx<'_> {
    pub(super) fn w(&mut self, part: Part, name: &str, shape: &[usize]) -> TensorId {
        self.g.weight(part, name, shape)
    }

    pub(super) fn linear(
        &mut self,
        x: TensorId,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
        label: String,
    ) -> Result<TensorId, GraphError> {
        let w = self.w(Part::Gen, &format!("{name}.weight"), &[out, inp]);
        let b = if bias {
            Some(self.w(Part::Gen, &format!("{name}.bias"), &[out]))
        } else {
            None
        };
        self.g.push(Op::Linear { x, w, bias: b }, label)
    }

    pub(super) fn bridge_linear(
        &mut self,
        x: TensorId,
        name: &str,
        out: usize,
        inp: usize,
        label: String,
    ) -> Result<TensorId, GraphError> {
        let w = self.w(Part::Bridge, &format!("{name}.weight"), &[out, inp]);
        self.g.push(Op::Linear { x, w, bias: None }, label)
    }

    pub(super) fn rmsnorm(
        &mut self,
        x: TensorId,
        weight: &str,
        dim: usize,
        eps: f32,
        label: String,
    ) -> Result<TensorId, GraphError> {
        let w = self.w(Part::Gen, weight, &[dim]);
        self.g.push(
            Op::RmsNorm {
                x,
                weight: Some(w),
                dim,
                eps,
            },
            label,
        )
    }

    /// to_q / to_k / to_v and the per-head norm of q and k (before any RoPE).
    pub(super) fn qkv(
        &mut self,
        p: &str,
        l: &str,
        h: TensorId,
    ) -> Result<[TensorId; 3], GraphError> {
        let c = self.c;
        let [q, k] = self.qk(p, l, h)?;
        let v = self.linear(
            h,
            &format!("{p}attn.to_v"),
            c.kv_dim(),
            c.hidden_size,
            false,
            format!("{l}v"),
        )?;
        Ok([q, k, v])
    }

    /// to_q / to_k and the per-head norm of q and k (before any RoPE).
    pub(super) fn qk(
        &mut self,
        p: &str,
        l: &str,
        h: TensorId,
    ) -> Result<[TensorId; 2], GraphError> {
        let c = self.c;
        let (hid, d) = (c.hidden_size, c.head_dim);
        let q = self.linear(
            h,
            &format!("{p}attn.to_q"),
            c.q_dim(),
            hid,
            false,
            format!("{l}q"),
        )?;
        let k = self.linear(
            h,
            &format!("{p}attn.to_k"),
            c.kv_dim(),
            hid,
            false,
            format!("{l}k"),
        )?;
        let q = self.rmsnorm(
            q,
            &format!("{p}attn.norm_q.weight"),
            d,
            QK_NORM_EPS,
            format!("{l}q_norm"),
        )?;
        let k = self.rmsnorm(
            k,
            &format!("{p}attn.norm_k.weight"),
            d,
            QK_NORM_EPS,
            format!("{l}k_norm"),
        )?;
        Ok([q, k])
    }

    /// Gen self-attention with the interleaved 3-axis RoPE, to_out.0 included.
    pub(super) fn self_attention(
        &mut self,
        p: &str,
        l: &str,
        h: TensorId,
        positions: TensorId,
    ) -> Result<TensorId, GraphError> {
        let c = self.c;
        let [q, k, v] = self.qkv(p, l, h)?;
        let kind = RopeKind::Interleaved3 {
            axes: c.axes_dim_rope,
            theta: GEN_ROPE_THETA,
        };
        let q = self.g.push(
            Op::Rope {
                x: q,
                positions,
                heads: c.num_heads,
                head_dim: c.head_dim,
                kind: kind.clone(),
            },
            format!("{l}q_rope"),
        )?;
        let k = self.g.push(
            Op::Rope {
                x: k,
                positions,
                heads: c.num_kv_heads,
                head_dim: c.head_dim,
                kind,
            },
            format!("{l}k_rope"),
        )?;
        let a = self.g.push(
            Op::Attention {
                q,
                segments: vec![KvSegment::new(k, v)],
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                causal: false,
                scale: (c.head_dim as f32).powf(-0.5),
            },
            format!("{l}attn"),
        )?;
        self.linear(
            a,
            &format!("{p}attn.to_out.0"),
            c.hidden_size,
            c.q_dim(),
            false,
            format!("{l}out"),
        )
    }

    /// `ffn_norm2(linear_2(silu(linear_1(f)) * linear_3(f)))`, the FFN half of every gen block after
    /// its input norm.
    pub(super) fn feed_forward(
        &mut self,
        p: &str,
        l: &str,
        f: TensorId,
    ) -> Result<TensorId, GraphError> {
        let c = self.c;
        let (hid, eps) = (c.hidden_size, c.norm_eps as f32);
        let gate = self.linear(
            f,
            &format!("{p}feed_forward.linear_1"),
            c.ffn_inner,
            hid,
            false,
            format!("{l}ffn_gate"),
        )?;
        let up = self.linear(
            f,
            &format!("{p}feed_forward.linear_3"),
            c.ffn_inner,
            hid,
            false,
            format!("{l}ffn_up"),
        )?;
        let s = self
            .g
            .push(Op::SwiGlu { gate, up }, format!("{l}ffn_swiglu"))?;
        let ff = self.linear(
            s,
            &format!("{p}feed_forward.linear_2"),
            hid,
            c.ffn_inner,
            false,
            format!("{l}ffn_down"),
        )?;
        self.rmsnorm(
            ff,
            &format!("{p}ffn_norm2.weight"),
            hid,
            eps,
            format!("{l}ffn_norm2"),
        )
    }

    /// The modulated block; `attention` computes attn(h).
    pub(super) fn block(
        &mut self,
        p: &str,
        l: &str,
        x: TensorId,
        attention: impl FnOnce(&mut Self, TensorId) -> Result<TensorId, GraphError>,
    ) -> Result<TensorId, GraphError> {
        let c = self.c;
        let hid = c.hidden_size;
        let eps = c.norm_eps as f32;
        let m = self.linear(
            self.temb_silu,
            &format!("{p}norm1.linear"),
            4 * hid,
            c.temb_dim(),
            true,
            format!("{l}modulation"),
        )?;
        let chunk = |cx: &mut Self, i: usize, name: &str| {
            cx.g.push(
                Op::SliceCols {
                    x: m,
                    start: i * hid,
                    len: hid,
                },
                format!("{l}{name}"),
            )
        };
        let (s_msa, g_msa, s_mlp, g_mlp) = (
            chunk(self, 0, "scale_msa")?,
            chunk(self, 1, "gate_msa")?,
            chunk(self, 2, "scale_mlp")?,
            chunk(self, 3, "gate_mlp")?,
        );
        let n = self.rmsnorm(
            x,
            &format!("{p}norm1.norm.weight"),
            hid,
            eps,
            format!("{l}norm1"),
        )?;
        let h = self
            .g
            .push(Op::Modulate { x: n, scale: s_msa }, format!("{l}norm1_mod"))?;
        let a = attention(self, h)?;
        let a = self.rmsnorm(
            a,
            &format!("{p}norm2.weight"),
            hid,
            eps,
            format!("{l}norm2"),
        )?;
        let x = self.g.push(
            Op::GateResidual {
                x,
                gate: g_msa,
                y: a,
            },
            format!("{l}attn_residual"),
        )?;
        let f = self.rmsnorm(
            x,
            &format!("{p}ffn_norm1.weight"),
            hid,
            eps,
            format!("{l}ffn_norm1"),
        )?;
        let f = self.g.push(
            Op::Modulate { x: f, scale: s_mlp },
            format!("{l}ffn_norm1_mod"),
        )?;
        let ff = self.feed_forward(p, l, f)?;
        self.g.push(
            Op::GateResidual {
                x,
                gate: g_mlp,
                y: ff,
            },
            format!("{l}out"),
        )
    }
}

impl<'a> Ctx<'a> {
    /// Starts a gen-step graph from the timestep input: temb = linear_2(silu(linear_1(features(t)))),
    /// and every modulation reads silu(temb).
    pub(super) fn start(mut g: Graph, c: &'a GenConfig, t: TensorId) -> Result<Self, GraphError> {
        let e = c.temb_dim();
        let feats = g.push(
            Op::TimestepFeatures {
                t,
                half: TIMESTEP_FREQ_DIM / 2,
                scale: c.timestep_scale,
            },
            "gen.t_features",
        )?;
        let feats = g.push(
            Op::Reshape {
                x: feats,
                shape: vec![1, TIMESTEP_FREQ_DIM],
            },
            "gen.t_features_row",
        )?;
        let mut cx = Ctx {
            g,
            c,
            temb_silu: feats,
        };
        let te = "time_caption_embed.timestep_embedder.";
        let h1 = cx.linear(
            feats,
            &format!("{te}linear_1"),
            e,
            TIMESTEP_FREQ_DIM,
            true,
            "gen.temb_hidden".into(),
        )?;
        let h1 = cx.g.push(Op::Silu { x: h1 }, "gen.temb_hidden_silu")?;
        let temb = cx.linear(h1, &format!("{te}linear_2"), e, e, true, "gen.temb".into())?;
        cx.temb_silu = cx.g.push(Op::Silu { x: temb }, "gen.temb_silu")?;
        Ok(cx)
    }

    /// The noisy latent's tokens: patchify, x_embedder, then the noise refiner on them alone at their
    /// joint positions.
    pub(super) fn embed_latent(
        &mut self,
        x: TensorId,
        positions: TensorId,
    ) -> Result<TensorId, GraphError> {
        let c = self.c;
        let tokens = self.g.push(
            Op::Patchify {
                x,
                patch: c.patch_size,
            },
            "gen.latent_tokens",
        )?;
        let mut lat = self.linear(
            tokens,
            "x_embedder",
            c.hidden_size,
            c.patch_dim_in(),
            true,
            "gen.latent_embed".into(),
        )?;
        for j in 0..c.num_refiner_layers {
            let (pre, l) = (
                format!("noise_refiner.{j}."),
                format!("gen.noise_refiner.{j}."),
            );
            lat = self.block(&pre, &l, lat, |cx, h| {
                cx.self_attention(&pre, &l, h, positions)
            })?;
        }
        Ok(lat)
    }

    /// norm_out on the noisy-latent rows `start..` of `seq` (it is row-wise, so the other rows need
    /// none), linear_2, unpatchify: the `gen.velocity` output.
    pub(super) fn velocity(
        &mut self,
        seq: TensorId,
        start: usize,
        latent: [usize; 3],
    ) -> Result<TensorId, GraphError> {
        let c = self.c;
        let (hid, p) = (c.hidden_size, c.patch_size);
        let [_, height, width] = latent;
        let len = (height / p) * (width / p);
        let rows = self
            .g
            .push(Op::SliceRows { x: seq, start, len }, "gen.latent_hidden")?;
        let scale = self.linear(
            self.temb_silu,
            "norm_out.linear_1",
            hid,
            c.temb_dim(),
            true,
            "gen.norm_out_scale".into(),
        )?;
        let y = self.g.push(
            Op::LayerNorm {
                x: rows,
                dim: hid,
                eps: NORM_OUT_EPS,
            },
            "gen.norm_out",
        )?;
        let y = self
            .g
            .push(Op::Modulate { x: y, scale }, "gen.norm_out_mod")?;
        let out = self.linear(
            y,
            "norm_out.linear_2",
            c.patch_dim_out(),
            hid,
            true,
            "gen.out_tokens".into(),
        )?;
        let velocity = self.g.push(
            Op::Unpatchify {
                x: out,
                patch: p,
                channels: c.out_channels,
                height,
                width,
            },
            "gen.velocity",
        )?;
        self.g.mark_output("gen.velocity", velocity);
        Ok(velocity)
    }
}

/// Checks a latent `[C, H, W]` against the gen config; returns its patch-token count.
pub(super) fn latent_tokens(c: &GenConfig, latent: [usize; 3]) -> Result<usize, GraphError> {
    let [ch, height, width] = latent;
    let p = c.patch_size;
    if ch != c.in_channels || height % p != 0 || width % p != 0 || height == 0 || width == 0 {
        return Err(GraphError::Request(format!(
            "latent {ch}x{height}x{width} does not fit in_channels {} and patch {p}",
            c.in_channels
        )));
    }
    Ok((height / p) * (width / p))
}

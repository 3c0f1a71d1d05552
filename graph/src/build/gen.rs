//! Gen expert (OmniGen2 DiT) step graph for one guidance branch of the hbridge topology: latent and t in,
//! velocity and SRT output out; bridged layers read the branch's cached und K/V (DESIGN.md 3 and 5).

use super::names;
use crate::op::{KvSegment, Op, RopeKind};
use crate::{DataType, Graph, GraphError, TensorId};
use hbridge_loader::config::{GenConfig, ModelConfig, Topology, TIMESTEP_FREQ_DIM};
use hbridge_loader::Part;

/// Gen RoPE theta and the fixed epsilons of DESIGN.md 3 (not read from `norm_eps`).
pub(super) const GEN_ROPE_THETA: f64 = 10000.0;
pub(super) const QK_NORM_EPS: f32 = 1e-5;
pub(super) const NORM_OUT_EPS: f32 = 1e-6;

#[derive(Debug, Clone, PartialEq)]
pub struct GenStepSpec {
    /// Latent `[C, H, W]` in latent pixels.
    pub latent: [usize; 3],
    /// Tokens in this branch's und context (rows of its cached K/V).
    pub context_len: usize,
    /// `gen.hs.{i}` outputs for every main layer (traces and fixtures).
    pub hidden_states: bool,
    /// `gen.srt` output.
    pub srt: bool,
}

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

    fn bridge_linear(
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
        let v = self.linear(
            h,
            &format!("{p}attn.to_v"),
            c.kv_dim(),
            hid,
            false,
            format!("{l}v"),
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
        Ok([q, k, v])
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
                segments: vec![KvSegment { k, v }],
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
        let ff = self.rmsnorm(
            ff,
            &format!("{p}ffn_norm2.weight"),
            hid,
            eps,
            format!("{l}ffn_norm2"),
        )?;
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

/// One gen step of one branch. Inputs: `gen.x` `[C, H, W]`, `gen.t` `[1]`, `gen.positions` I32 `[N, 3]`,
/// `gen.positions.latent` I32 `[n_latent, 3]` (its latent rows), `gen.shared_positions` I32 `[3, N]`, and
/// `und.k.{u}` / `und.v.{u}` `[context_len, K_u*D_u]` for every bridged und layer u. Outputs:
/// `gen.velocity` `[C, H, W]`, `gen.srt`, and `gen.hs.{i}` when traced.
pub fn gen_step(config: &ModelConfig, spec: &GenStepSpec) -> Result<Graph, GraphError> {
    let c = &config.gen;
    let u = &config.und;
    let bridge = match (&config.layout.bridge, config.layout.topology) {
        (Some(b), Topology::Hbridge) => b,
        (_, Topology::Omnigen2) => return super::gen_omnigen2::gen_step_omnigen2(config, spec),
        _ => {
            return Err(GraphError::Request(format!(
                "the gen step graph of the {} topology is not built yet",
                config.layout.topology
            )))
        }
    };
    let [ch, height, width] = spec.latent;
    let p = c.patch_size;
    if ch != c.in_channels || height % p != 0 || width % p != 0 || height == 0 || width == 0 {
        return Err(GraphError::Request(format!(
            "latent {ch}x{height}x{width} does not fit in_channels {} and patch {p}",
            c.in_channels
        )));
    }
    if spec.context_len == 0 {
        return Err(GraphError::Request(
            "a bridged gen step needs a non-empty und context".into(),
        ));
    }
    let n_srt = bridge.num_srt_tokens;
    let n_lat = (height / p) * (width / p);
    let n = n_srt + n_lat;
    let hid = c.hidden_size;
    let e = c.temb_dim();

    let mut g = Graph::default();
    let x_in = g.input(names::GEN_X, &spec.latent, DataType::F32);
    let t = g.input(names::GEN_T, &[1], DataType::F32);
    let positions = g.input(names::GEN_POSITIONS, &[n, 3], DataType::I32);
    let lat_positions = g.input("gen.positions.latent", &[n_lat, 3], DataType::I32);
    let shared = g.input(names::SHARED_POSITIONS, &[3, n], DataType::I32);

    // temb = linear_2(silu(linear_1(features(t)))); every modulation reads silu(temb).
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

    let tokens =
        cx.g.push(Op::Patchify { x: x_in, patch: p }, "gen.latent_tokens")?;
    let mut lat = cx.linear(
        tokens,
        "x_embedder",
        hid,
        c.patch_dim_in(),
        true,
        "gen.latent_embed".into(),
    )?;
    for j in 0..c.num_refiner_layers {
        let (pre, l) = (
            format!("noise_refiner.{j}."),
            format!("gen.noise_refiner.{j}."),
        );
        lat = cx.block(&pre, &l, lat, |cx, h| {
            cx.self_attention(&pre, &l, h, lat_positions)
        })?;
    }
    let srt_tokens = cx.w(Part::Bridge, "srt.tokens", &[n_srt, hid]);
    let mut seq = cx.g.push(
        Op::ConcatRows {
            parts: vec![srt_tokens, lat],
        },
        "gen.hs.0",
    )?;
    if spec.hidden_states {
        cx.g.mark_output("gen.hs.0", seq);
    }

    let mut und_kv = std::collections::BTreeMap::new();
    for &(_, ul) in &bridge.pairs {
        und_kv.entry(ul).or_insert_with(|| {
            let k = cx.g.input(
                names::und_k(ul),
                &[spec.context_len, u.kv_dim()],
                DataType::F32,
            );
            let v = cx.g.input(
                names::und_v(ul),
                &[spec.context_len, u.kv_dim()],
                DataType::F32,
            );
            KvSegment { k, v }
        });
    }
    for i in 0..c.num_layers {
        let (pre, l) = (format!("layers.{i}."), format!("gen.layers.{i}."));
        let pair = bridge
            .pairs
            .iter()
            .find(|(gl, _)| *gl == i)
            .map(|&(_, ul)| und_kv[&ul].clone());
        seq = match pair {
            None => cx.block(&pre, &l, seq, |cx, h| {
                cx.self_attention(&pre, &l, h, positions)
            })?,
            Some(und_segment) => cx.block(&pre, &l, seq, |cx, h| {
                // DESIGN.md 5: gen q/k/v (normed, no gen RoPE) -> und head space -> und M-RoPE at the
                // shared positions -> attention over [und K/V ; gen K/V] -> back to gen heads.
                let [q, k, v] = cx.qkv(&pre, &l, h)?;
                let b = format!("bridge.layers.{i}.");
                let qs = cx.bridge_linear(
                    q,
                    &format!("{b}q_proj"),
                    u.q_dim(),
                    c.q_dim(),
                    format!("{l}bridge_q"),
                )?;
                let ks = cx.bridge_linear(
                    k,
                    &format!("{b}k_proj"),
                    u.kv_dim(),
                    c.kv_dim(),
                    format!("{l}bridge_k"),
                )?;
                let vs = cx.bridge_linear(
                    v,
                    &format!("{b}v_proj"),
                    u.kv_dim(),
                    c.kv_dim(),
                    format!("{l}bridge_v"),
                )?;
                let kind = RopeKind::Mrope {
                    section: u.mrope_section,
                    theta: u.rope_theta,
                };
                let qs = cx.g.push(
                    Op::Rope {
                        x: qs,
                        positions: shared,
                        heads: u.num_heads,
                        head_dim: u.head_dim,
                        kind: kind.clone(),
                    },
                    format!("{l}bridge_q_rope"),
                )?;
                let ks = cx.g.push(
                    Op::Rope {
                        x: ks,
                        positions: shared,
                        heads: u.num_kv_heads,
                        head_dim: u.head_dim,
                        kind,
                    },
                    format!("{l}bridge_k_rope"),
                )?;
                let a = cx.g.push(
                    Op::Attention {
                        q: qs,
                        segments: vec![und_segment, KvSegment { k: ks, v: vs }],
                        heads: u.num_heads,
                        kv_heads: u.num_kv_heads,
                        head_dim: u.head_dim,
                        causal: false,
                        scale: (u.head_dim as f32).powf(-0.5),
                    },
                    format!("{l}bridge_attn"),
                )?;
                let o = cx.bridge_linear(
                    a,
                    &format!("{b}o_proj"),
                    c.q_dim(),
                    u.q_dim(),
                    format!("{l}bridge_o"),
                )?;
                cx.linear(
                    o,
                    &format!("{pre}attn.to_out.0"),
                    hid,
                    c.q_dim(),
                    false,
                    format!("{l}out"),
                )
            })?,
        };
        if spec.hidden_states {
            cx.g.mark_output(format!("gen.hs.{}", i + 1), seq);
        }
    }

    let srt_rows = cx.g.push(
        Op::SliceRows {
            x: seq,
            start: 0,
            len: n_srt,
        },
        "gen.srt_hidden",
    )?;
    let srt_w = cx.w(
        Part::Bridge,
        "srt.proj.weight",
        &[config.srt_out_dim(), hid],
    );
    let srt_b = cx.w(Part::Bridge, "srt.proj.bias", &[config.srt_out_dim()]);
    let srt = cx.g.push(
        Op::Linear {
            x: srt_rows,
            w: srt_w,
            bias: Some(srt_b),
        },
        "gen.srt",
    )?;
    if spec.srt {
        cx.g.mark_output("gen.srt", srt);
    }

    // norm_out is row-wise, so only the noisy-latent rows need it.
    let lat_rows = cx.g.push(
        Op::SliceRows {
            x: seq,
            start: n_srt,
            len: n_lat,
        },
        "gen.latent_hidden",
    )?;
    let scale = cx.linear(
        cx.temb_silu,
        "norm_out.linear_1",
        hid,
        e,
        true,
        "gen.norm_out_scale".into(),
    )?;
    let y = cx.g.push(
        Op::LayerNorm {
            x: lat_rows,
            dim: hid,
            eps: NORM_OUT_EPS,
        },
        "gen.norm_out",
    )?;
    let y =
        cx.g.push(Op::Modulate { x: y, scale }, "gen.norm_out_mod")?;
    let out = cx.linear(
        y,
        "norm_out.linear_2",
        c.patch_dim_out(),
        hid,
        true,
        "gen.out_tokens".into(),
    )?;
    let velocity = cx.g.push(
        Op::Unpatchify {
            x: out,
            patch: p,
            channels: c.out_channels,
            height,
            width,
        },
        "gen.velocity",
    )?;
    cx.g.mark_output("gen.velocity", velocity);
    Ok(crate::prune::prune(cx.g))
}

//! Gen expert (OmniGen2 DiT) step graph for one guidance branch of the hbridge topology: latent and t in,
//! velocity and SRT output out; bridged layers read the branch's cached und K/V (DESIGN.md 3 and 5).

use super::gen_block::Ctx;
use super::names;
use crate::derived;
use crate::op::{KvSegment, Op, RopeKind};
use crate::{DataType, Graph, GraphError, TensorId};
use hbridge_loader::config::{ModelConfig, Topology};
use hbridge_loader::Part;

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
    /// The bridged und layers' K/V as state tensors (same names and shapes) instead of inputs: a
    /// request makes them resident on the backend once and every denoising step reads them in place.
    pub und_kv_states: bool,
}

/// Which part of an hbridge gen step a graph computes. The layers before the first bridged one never
/// see the und context, so guidance branches with the same gen sequence (latent, time, references)
/// compute them identically: a request with several branches runs that prefix once per step and each
/// branch's suffix from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenPart {
    /// The whole step of one branch.
    Whole,
    /// The timestep and latent embeddings, the noise refiner, the references and the main layers
    /// before the first bridged one ([`prefix_layers`]); writes the sequence into state
    /// [`names::GEN_PREFIX`] `[N, hidden]` at row [`names::GEN_PREFIX_ROW`] (I32 `[1]`, 0). No outputs
    /// but the traced `gen.hs.{i}`.
    Prefix,
    /// One branch's step from state [`names::GEN_PREFIX`] on: the remaining layers, the velocity and
    /// the SRT output. Needs no `gen.x`, latent positions or references.
    Suffix,
}

/// The main gen layers a [`GenPart::Prefix`] runs: those before the first bridged one.
pub fn prefix_layers(config: &ModelConfig) -> usize {
    let layers = config.gen.num_layers;
    config
        .layout
        .bridge
        .as_ref()
        .and_then(|b| b.pairs.iter().map(|&(g, _)| g).min())
        .map_or(layers, |g| g.min(layers))
}

/// One gen step of one branch. Inputs: `gen.x` `[C, H, W]`, `gen.t` `[1]`, `gen.positions` I32 `[N, 3]`,
/// `gen.positions.latent` I32 `[n_latent, 3]` (its latent rows), `gen.shared_positions` I32 `[3, N]`, and
/// `und.k.{u}` / `und.v.{u}` `[context_len, K_u*D_u]` for every bridged und layer u. Outputs:
/// `gen.velocity` `[C, H, W]`, `gen.srt`, and `gen.hs.{i}` when traced.
pub fn gen_step(config: &ModelConfig, spec: &GenStepSpec) -> Result<Graph, GraphError> {
    gen_step_with_refs(config, spec, &[])
}

/// `gen_step` with reference latents `refs` (each `[C, H_j, W_j]`) between the SRT tokens and the noisy
/// latent: gen sequence `[SRT | ref_0 | .. | noisy latent]` (DESIGN.md 3 and 5). Extra inputs per
/// reference j: `gen.ref.{j}` and `gen.positions.ref.{j}` (see `gen_refs`); `gen.positions` and
/// `gen.shared_positions` cover the whole sequence. Traced steps also output `gen.ref_tokens.{j}`.
/// With no references the graph is exactly `gen_step`'s.
pub fn gen_step_with_refs(
    config: &ModelConfig,
    spec: &GenStepSpec,
    refs: &[[usize; 3]],
) -> Result<Graph, GraphError> {
    gen_step_part(config, spec, refs, GenPart::Whole)
}

/// `part` of [`gen_step_with_refs`]'s graph (hbridge topology only: an omnigen2 branch's caption is in
/// its gen sequence from the first layer on, so only [`GenPart::Whole`] exists there). Prefix then
/// suffix compute exactly what the whole graph does.
pub fn gen_step_part(
    config: &ModelConfig,
    spec: &GenStepSpec,
    refs: &[[usize; 3]],
    part: GenPart,
) -> Result<Graph, GraphError> {
    let c = &config.gen;
    let bridge = match (&config.layout.bridge, config.layout.topology) {
        (Some(b), Topology::Hbridge) => b,
        (_, Topology::Omnigen2) if part == GenPart::Whole => {
            return super::gen_omnigen2::gen_step_omnigen2_with_refs(config, spec, refs)
        }
        _ => {
            return Err(GraphError::Request(format!(
                "the {part:?} gen step graph of the {} topology is not built",
                config.layout.topology
            )))
        }
    };
    let n_lat = super::gen_block::latent_tokens(c, spec.latent)?;
    if spec.context_len == 0 {
        return Err(GraphError::Request(
            "a bridged gen step needs a non-empty und context".into(),
        ));
    }
    let n_refs: usize = super::gen_refs::ref_token_counts(c, refs)?.iter().sum();
    let n_srt = bridge.num_srt_tokens;
    let n = n_srt + n_refs + n_lat;
    let hid = c.hidden_size;
    let split = prefix_layers(config);
    let layers = match part {
        GenPart::Whole => 0..c.num_layers,
        GenPart::Prefix => 0..split,
        GenPart::Suffix => split..c.num_layers,
    };

    let mut g = Graph::default();
    let embeds = part != GenPart::Suffix;
    let x_in = embeds.then(|| g.input(names::GEN_X, &spec.latent, DataType::F32));
    let t = g.input(names::GEN_T, &[1], DataType::F32);
    let positions = g.input(names::GEN_POSITIONS, &[n, 3], DataType::I32);
    let lat_positions = embeds.then(|| g.input("gen.positions.latent", &[n_lat, 3], DataType::I32));
    let shared = g.input(names::SHARED_POSITIONS, &[3, n], DataType::I32);

    let mut cx = Ctx::start(g, c, t)?;

    let mut seq = match (x_in, lat_positions) {
        (Some(x_in), Some(lat_positions)) => {
            let lat = cx.embed_latent(x_in, lat_positions)?;
            let ref_tokens = cx.embed_refs(refs, spec.hidden_states)?;
            let srt_tokens = cx.w(Part::Bridge, "srt.tokens", &[n_srt, hid]);
            let mut parts = vec![srt_tokens];
            parts.extend(ref_tokens);
            parts.push(lat);
            let seq = cx.g.push(Op::ConcatRows { parts }, "gen.hs.0")?;
            if spec.hidden_states {
                cx.g.mark_output("gen.hs.0", seq);
            }
            seq
        }
        _ => cx.g.state(names::GEN_PREFIX, &[n, hid]),
    };

    let mut und_kv = std::collections::BTreeMap::new();
    for &(_, ul) in bridge.pairs.iter().filter(|(gl, _)| layers.contains(gl)) {
        und_kv.entry(ul).or_insert_with(|| {
            let shape = [spec.context_len, config.und.kv_dim()];
            let (k, v) = if spec.und_kv_states {
                (
                    cx.g.state(names::und_k(ul), &shape),
                    cx.g.state(names::und_v(ul), &shape),
                )
            } else {
                (
                    cx.g.input(names::und_k(ul), &shape, DataType::F32),
                    cx.g.input(names::und_v(ul), &shape, DataType::F32),
                )
            };
            KvSegment::new(k, v)
        });
    }
    for i in layers {
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
                bridged_attention(cx, config, i, h, shared, und_segment)
            })?,
        };
        if spec.hidden_states {
            cx.g.mark_output(format!("gen.hs.{}", i + 1), seq);
        }
    }

    if part == GenPart::Prefix {
        let state = cx.g.state(names::GEN_PREFIX, &[n, hid]);
        let row = cx.g.input(names::GEN_PREFIX_ROW, &[1], DataType::I32);
        cx.g.write_state(state, seq, row)?;
        return Ok(crate::prune::prune(cx.g));
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

    cx.velocity(seq, n_srt + n_refs, spec.latent)?;
    Ok(crate::prune::prune(cx.g))
}

/// DESIGN.md 5, the attention of bridged gen layer `i`: gen q/k/v (normed, no gen RoPE) -> und head
/// space -> und M-RoPE at the shared positions -> attention over [und K/V ; gen K/V] -> back to gen
/// heads (to_out.0 included). v's two projections and the two on the way out are each one derived
/// weight ([`crate::derived`]): nothing lies between them.
fn bridged_attention(
    cx: &mut Ctx<'_>,
    config: &ModelConfig,
    i: usize,
    h: TensorId,
    shared: TensorId,
    und_segment: KvSegment,
) -> Result<TensorId, GraphError> {
    let (c, u) = (&config.gen, &config.und);
    let (pre, l) = (format!("layers.{i}."), format!("gen.layers.{i}."));
    let [q, k] = cx.qk(&pre, &l, h)?;
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
    let wv = cx.g.weight(
        Part::Bridge,
        derived::bridge_v(i),
        &[u.kv_dim(), c.hidden_size],
    );
    let vs = cx.g.push(
        Op::Linear {
            x: h,
            w: wv,
            bias: None,
        },
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
            segments: vec![und_segment, KvSegment::new(ks, vs)],
            heads: u.num_heads,
            kv_heads: u.num_kv_heads,
            head_dim: u.head_dim,
            causal: false,
            scale: (u.head_dim as f32).powf(-0.5),
        },
        format!("{l}bridge_attn"),
    )?;
    let wo = cx.g.weight(
        Part::Bridge,
        derived::bridge_out(i),
        &[c.hidden_size, u.q_dim()],
    );
    cx.g.push(
        Op::Linear {
            x: a,
            w: wo,
            bias: None,
        },
        format!("{l}out"),
    )
}

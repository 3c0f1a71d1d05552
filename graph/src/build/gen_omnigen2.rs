//! Gen expert step graph for one guidance branch of the omnigen2 topology (DESIGN.md 3 and 6, OmniGen2's
//! `transformer_omnigen2.py`): the branch's caption features (the und expert's post-norm last hidden
//! states of its context) -> `time_caption_embed.caption_embedder` -> `context_refiner` (unmodulated) ->
//! gen sequence `[caption | noisy latent]` -> modulated main layers with plain gen self-attention over the
//! whole sequence -> `norm_out` on the latent rows. No bridge, no SRT.

use super::gen::GenStepSpec;
use super::gen_block::Ctx;
use super::names;
use crate::op::Op;
use crate::{DataType, Graph, GraphError, TensorId};
use hbridge_loader::config::{ModelConfig, Topology};

/// Input: the caption features `[L, text_feat_dim]` of the branch (`und.final_hidden` of its prefill).
pub const GEN_CAPTION: &str = "gen.caption";
/// Input: gen RoPE positions `[L, 3]` of the caption tokens, (i, i, i) (the first L rows of
/// `gen.positions`; a separate input because row slices are f32-only).
pub const GEN_POSITIONS_CAPTION: &str = "gen.positions.caption";

impl Ctx<'_> {
    /// The unmodulated block of `context_refiner`: `norm1.weight` is a plain RMSNorm, no tanh gates.
    /// x = x + norm2(attn(norm1(x))); x = x + ffn_norm2(ff(ffn_norm1(x))).
    fn unmodulated_block(
        &mut self,
        p: &str,
        l: &str,
        x: TensorId,
        positions: TensorId,
    ) -> Result<TensorId, GraphError> {
        let c = self.c;
        let hid = c.hidden_size;
        let eps = c.norm_eps as f32;
        let h = self.rmsnorm(
            x,
            &format!("{p}norm1.weight"),
            hid,
            eps,
            format!("{l}norm1"),
        )?;
        let a = self.self_attention(p, l, h, positions)?;
        let a = self.rmsnorm(
            a,
            &format!("{p}norm2.weight"),
            hid,
            eps,
            format!("{l}norm2"),
        )?;
        let x = self
            .g
            .push(Op::Add { a: x, b: a }, format!("{l}attn_residual"))?;
        let f = self.rmsnorm(
            x,
            &format!("{p}ffn_norm1.weight"),
            hid,
            eps,
            format!("{l}ffn_norm1"),
        )?;
        let ff = self.feed_forward(p, l, f)?;
        self.g.push(Op::Add { a: x, b: ff }, format!("{l}out"))
    }
}

/// One gen step of one omnigen2 branch. `spec.context_len` is the caption length L (the branch's und
/// context length). Inputs: `gen.caption` `[L, text_feat_dim]`, `gen.x` `[C, H, W]`, `gen.t` `[1]`,
/// `gen.positions` I32 `[L + n_latent, 3]` (caption i -> (i, i, i), latent -> (L, row, col)),
/// `gen.positions.caption` I32 `[L, 3]` (its first L rows) and `gen.positions.latent` I32
/// `[n_latent, 3]` (its latent rows). Outputs: `gen.velocity` `[C, H, W]`, and `gen.hs.{i}` when traced
/// (`gen.hs.0` = `[refined caption | refined latent]`, the sequence entering main layer 0).
/// `spec.srt` is ignored (no SRT in this topology).
pub fn gen_step_omnigen2(config: &ModelConfig, spec: &GenStepSpec) -> Result<Graph, GraphError> {
    gen_step_omnigen2_with_refs(config, spec, &[])
}

/// `gen_step_omnigen2` with reference latents: gen sequence `[caption | ref_0 | .. | noisy latent]`
/// (OmniGen2's own layout); the reference inputs are `gen_step_with_refs`'s.
pub fn gen_step_omnigen2_with_refs(
    config: &ModelConfig,
    spec: &GenStepSpec,
    refs: &[[usize; 3]],
) -> Result<Graph, GraphError> {
    let c = &config.gen;
    if config.layout.topology != Topology::Omnigen2 {
        return Err(GraphError::Request(format!(
            "the omnigen2 gen step does not serve the {} topology",
            config.layout.topology
        )));
    }
    let n_lat = super::gen_block::latent_tokens(c, spec.latent)?;
    let n_cap = spec.context_len;
    if n_cap == 0 {
        return Err(GraphError::Request(
            "an omnigen2 gen step needs a non-empty caption (und context)".into(),
        ));
    }
    let n_refs: usize = super::gen_refs::ref_token_counts(c, refs)?.iter().sum();
    let n = n_cap + n_refs + n_lat;
    let hid = c.hidden_size;

    let mut g = Graph::default();
    let caption = g.input(GEN_CAPTION, &[n_cap, c.text_feat_dim], DataType::F32);
    let x_in = g.input(names::GEN_X, &spec.latent, DataType::F32);
    let t = g.input(names::GEN_T, &[1], DataType::F32);
    let positions = g.input(names::GEN_POSITIONS, &[n, 3], DataType::I32);
    let cap_positions = g.input(GEN_POSITIONS_CAPTION, &[n_cap, 3], DataType::I32);
    let lat_positions = g.input("gen.positions.latent", &[n_lat, 3], DataType::I32);

    let mut cx = Ctx::start(g, c, t)?;

    // caption_embedder = Sequential(RMSNorm(text_feat_dim, eps=norm_eps), Linear(bias)), then the
    // unmodulated context_refiner at the caption positions (i, i, i), caption tokens alone.
    let ce = "time_caption_embed.caption_embedder.";
    let cap = cx.rmsnorm(
        caption,
        &format!("{ce}0.weight"),
        c.text_feat_dim,
        c.norm_eps as f32,
        "gen.caption_norm".into(),
    )?;
    let mut cap = cx.linear(
        cap,
        &format!("{ce}1"),
        hid,
        c.text_feat_dim,
        true,
        "gen.caption_embed".into(),
    )?;
    for j in 0..c.num_refiner_layers {
        cap = cx.unmodulated_block(
            &format!("context_refiner.{j}."),
            &format!("gen.context_refiner.{j}."),
            cap,
            cap_positions,
        )?;
    }

    // noisy latent: x_embedder, noise_refiner (alone, with its joint positions).
    let lat = cx.embed_latent(x_in, lat_positions)?;
    let ref_tokens = cx.embed_refs(refs, spec.hidden_states)?;
    let mut parts = vec![cap];
    parts.extend(ref_tokens);
    parts.push(lat);
    let mut seq = cx.g.push(Op::ConcatRows { parts }, "gen.hs.0")?;
    if spec.hidden_states {
        cx.g.mark_output("gen.hs.0", seq);
    }

    for i in 0..c.num_layers {
        let (pre, l) = (format!("layers.{i}."), format!("gen.layers.{i}."));
        seq = cx.block(&pre, &l, seq, |cx, h| {
            cx.self_attention(&pre, &l, h, positions)
        })?;
        if spec.hidden_states {
            cx.g.mark_output(format!("gen.hs.{}", i + 1), seq);
        }
    }

    cx.velocity(seq, n_cap + n_refs, spec.latent)?;
    Ok(crate::prune::prune(cx.g))
}

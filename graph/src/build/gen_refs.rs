//! Reference images in the gen sequence (DESIGN.md 3; OmniGen2's `transformer_omnigen2.py`): each
//! reference latent is patchified, embedded by `ref_image_patch_embedder`, gets row j of
//! `image_index_embedding` added to every token, and runs through `ref_image_refiner` alone (attending
//! only within its own tokens) at the gen positions it has in the joint sequence.

use super::gen_block::Ctx;
use crate::op::Op;
use crate::{DataType, GraphError, TensorId};
use hbridge_loader::config::{GenConfig, MAX_REF_IMAGES};
use hbridge_loader::Part;

/// Input: reference latent j `[C, H_j, W_j]` (model space: VAE encoder output).
pub fn ref_input(j: usize) -> String {
    format!("gen.ref.{j}")
}

/// Input: gen RoPE positions I32 `[n_j, 3]` of reference j's tokens (their rows of `gen.positions`; a
/// separate input because row slices are f32-only).
pub fn ref_positions(j: usize) -> String {
    format!("gen.positions.ref.{j}")
}

/// Output (traced steps only): reference j's tokens after the ref refiner, `[n_j, hidden]`.
pub fn ref_tokens_output(j: usize) -> String {
    format!("gen.ref_tokens.{j}")
}

/// Checks the reference latents against the gen config; returns each one's patch-token count.
pub(super) fn ref_token_counts(
    c: &GenConfig,
    refs: &[[usize; 3]],
) -> Result<Vec<usize>, GraphError> {
    if refs.len() > MAX_REF_IMAGES {
        return Err(GraphError::Request(format!(
            "{} reference images; image_index_embedding has rows for at most {MAX_REF_IMAGES}",
            refs.len()
        )));
    }
    refs.iter()
        .enumerate()
        .map(|(j, &r)| {
            super::gen_block::latent_tokens(c, r).map_err(|e| match e {
                GraphError::Request(m) => GraphError::Request(format!("reference image {j}: {m}")),
                other => other,
            })
        })
        .collect()
}

impl Ctx<'_> {
    /// The refined tokens of every reference latent, in order. Declares the inputs `gen.ref.{j}` and
    /// `gen.positions.ref.{j}`; with `trace`, marks `gen.ref_tokens.{j}` as outputs. No refs: no nodes.
    pub(super) fn embed_refs(
        &mut self,
        refs: &[[usize; 3]],
        trace: bool,
    ) -> Result<Vec<TensorId>, GraphError> {
        let c = self.c;
        let counts = ref_token_counts(c, refs)?;
        let mut out = Vec::with_capacity(refs.len());
        for (j, (&shape, &n)) in refs.iter().zip(&counts).enumerate() {
            let x = self.g.input(ref_input(j), &shape, DataType::F32);
            let positions = self.g.input(ref_positions(j), &[n, 3], DataType::I32);
            let l = format!("gen.ref.{j}.");
            let tokens = self.g.push(
                Op::Patchify {
                    x,
                    patch: c.patch_size,
                },
                format!("{l}tokens"),
            )?;
            let embedded = self.linear(
                tokens,
                "ref_image_patch_embedder",
                c.hidden_size,
                c.patch_dim_in(),
                true,
                format!("{l}embed"),
            )?;
            let table = self.w(
                Part::Gen,
                "image_index_embedding",
                &[MAX_REF_IMAGES, c.hidden_size],
            );
            let row = self.g.push(
                Op::SliceRows {
                    x: table,
                    start: j,
                    len: 1,
                },
                format!("{l}index_embedding"),
            )?;
            let mut tok = self.g.push(
                Op::Add {
                    a: embedded,
                    b: row,
                },
                format!("{l}indexed"),
            )?;
            for r in 0..c.num_refiner_layers {
                let (pre, lr) = (
                    format!("ref_image_refiner.{r}."),
                    format!("{l}refiner.{r}."),
                );
                tok = self.block(&pre, &lr, tok, |cx, h| {
                    cx.self_attention(&pre, &lr, h, positions)
                })?;
            }
            if trace {
                self.g.mark_output(ref_tokens_output(j), tok);
            }
            out.push(tok);
        }
        Ok(out)
    }
}

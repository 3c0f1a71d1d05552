//! Builders: a loaded model's config and a request shape -> the static graphs of und prefill, und decode
//! step, gen step and VAE decode. Tensor names follow the checkpoint; graph input and output names follow
//! docs/FIXTURES.md so that traces compare directly with the reference.

mod gen;
mod gen_block;
mod gen_omnigen2;
pub mod gen_refs;
pub mod positions;
mod und;
mod vae;
pub mod vae_encoder;
pub mod vision;

pub use gen::{gen_step, gen_step_part, gen_step_with_refs, prefix_layers, GenPart, GenStepSpec};
pub use gen_omnigen2::{
    gen_step_omnigen2, gen_step_omnigen2_with_refs, GEN_CAPTION, GEN_POSITIONS_CAPTION,
};
pub use und::{und_decode_chunk, und_decode_step, und_prefill, UndPrefillSpec};
pub use vae::vae_decode;
pub use vae_encoder::vae_encode;

/// Input names shared by builders and callers.
pub mod names {
    pub const UND_IDS: &str = "und.input_ids";
    pub const UND_POSITIONS: &str = "und.position_ids";
    /// I32 `[1]`: the K/V cache rows filled before this decode step (where its K/V go).
    pub const UND_CACHE_LEN: &str = "und.cache_len";
    pub const GEN_X: &str = "gen.x";
    pub const GEN_T: &str = "gen.t";
    pub const GEN_POSITIONS: &str = "gen.positions";
    pub const SHARED_POSITIONS: &str = "gen.shared_positions";
    /// State `[N, hidden]`: the gen sequence after the layers every guidance branch shares (see
    /// `GenPart::Prefix`).
    pub const GEN_PREFIX: &str = "gen.prefix";
    /// I32 `[1]`, always 0: the row a prefix graph writes `GEN_PREFIX` from.
    pub const GEN_PREFIX_ROW: &str = "gen.prefix.row";
    pub const VAE_LATENT: &str = "vae.latent";

    pub fn und_k(layer: usize) -> String {
        format!("und.k.{layer}")
    }
    pub fn und_v(layer: usize) -> String {
        format!("und.v.{layer}")
    }
    /// State: one layer's K cache `[capacity, K*D]` (post-RoPE keys, rows past the filled length unused).
    pub fn cache_k(layer: usize) -> String {
        format!("und.cache_k.{layer}")
    }
    /// State: one layer's V cache `[capacity, K*D]`.
    pub fn cache_v(layer: usize) -> String {
        format!("und.cache_v.{layer}")
    }
}

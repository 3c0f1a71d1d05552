//! One und decode step measured alone, after a K/V cache of `context` tokens filled with random values
//! (never zeros): CUDA's eager vs replayed device time, and a per-node profile on either backend.

use super::KvCache;
use crate::model::{GraphProfile, Model, Outputs, RunError};
use hbridge_graph::build::names;

/// A cache holding `context` random rows per layer, and the inputs of the decode step after them.
fn filled_cache(model: &Model, context: usize) -> Result<(KvCache, Outputs), RunError> {
    let c = &model.checkpoint.config.und;
    let mut cache = KvCache::new(model, c.num_layers, c.kv_dim(), context + 1)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rows = vec![0f32; context * c.kv_dim()];
    for i in 0..c.num_layers {
        for name in [names::cache_k(i), names::cache_v(i)] {
            // Uniform in [-1, 1): what matters is nonzero data of a plausible scale.
            for v in rows.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *v = (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            }
            model.write_state_rows(&mut cache.states, &name, 0, &rows)?;
        }
    }
    cache.len = context;
    let inputs = cache.step_inputs(&[(c.vocab_size / 2) as u32])?;
    Ok((cache, inputs))
}

/// CUDA only: device time of one und decode step after `context` cached tokens, `iters` eager launches
/// against `iters` CUDA graph replays; `None` on the CPU.
pub fn time_decode_step(
    model: &Model,
    context: usize,
    iters: usize,
) -> Result<Option<hbridge_engine::cuda::ReplayTiming>, RunError> {
    if model.device() != hbridge_engine::device::Device::Cuda {
        return Ok(None);
    }
    let (mut cache, inputs) = filled_cache(model, context)?;
    model.time_und_decode_step(cache.capacity, &inputs, &mut cache.states, iters)
}

/// The time of each node of one und decode step after `context` cached tokens (see
/// [`GraphProfile`]), on either backend.
pub fn profile_decode_step(model: &Model, context: usize) -> Result<GraphProfile, RunError> {
    let (mut cache, inputs) = filled_cache(model, context)?;
    model.profile_und_decode_step(cache.capacity, &inputs, &mut cache.states)
}

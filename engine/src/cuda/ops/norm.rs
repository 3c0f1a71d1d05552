//! Fused RMSNorm, LayerNorm and GroupNorm (kernels/cuda/norm.cu).

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::unsupported;

/// Over each of `rows` rows of `dim` features:
/// `h = x (+ residual)`; `residual_out = h` if given; `out = h * rsqrt(mean(h^2) + eps) * (weight or 1)
/// * (1 + scale)` (scale: one row `[dim]`, the DiT's modulation). Per-head QK-norm is `rows = tokens *
/// heads, dim = head_dim`. Mean and rsqrt in f32. `out` may alias `x`.
#[derive(Debug, Clone, Copy)]
pub struct RmsNormArgs {
    pub x: DevPtr,
    pub residual: Option<DevPtr>,
    pub residual_out: Option<DevPtr>,
    pub weight: Option<DevPtr>,
    pub scale: Option<DevPtr>,
    pub out: DevPtr,
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
}

pub fn rmsnorm(gpu: &Gpu, args: &RmsNormArgs) -> CudaResult<()> {
    let _ = (gpu, args);
    Err(unsupported("rmsnorm", "not implemented yet"))
}

/// `(x - mean) * rsqrt(var + eps)` over each row of `dim`, biased variance, no affine; stats in f32.
pub fn layernorm(gpu: &Gpu, x: DevPtr, out: DevPtr, rows: usize, dim: usize, eps: f32) -> CudaResult<()> {
    let _ = (gpu, x, out, rows, dim, eps);
    Err(unsupported("layernorm", "not implemented yet"))
}

/// GroupNorm of `[channels, hw]`: `groups` groups of `channels / groups` channels, affine `weight`/`bias`
/// `[channels]`; stats in f32.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    gpu: &Gpu,
    x: DevPtr,
    weight: DevPtr,
    bias: DevPtr,
    out: DevPtr,
    channels: usize,
    hw: usize,
    groups: usize,
    eps: f32,
) -> CudaResult<()> {
    let _ = (gpu, x, weight, bias, out, channels, hw, groups, eps);
    Err(unsupported("group_norm", "not implemented yet"))
}

//! Rotary embeddings in both conventions (kernels/cuda/rope.cu); semantics of `hbridge_graph::RopeKind`.

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::unsupported;

/// Und M-RoPE (rotate_half) of `x` `[n, heads*head_dim]` at positions i32 `[3, n]`, written to `out`
/// whose rows are `out_row_stride` elements apart (`heads*head_dim` for a plain tensor). `out` may alias
/// `x` when the strides agree.
#[allow(clippy::too_many_arguments)]
pub fn mrope(
    gpu: &Gpu,
    x: DevPtr,
    positions: DevPtr,
    out: DevPtr,
    out_row_stride: usize,
    n: usize,
    heads: usize,
    head_dim: usize,
    section: [usize; 3],
    theta: f64,
) -> CudaResult<()> {
    let _ = (gpu, x, positions, out, out_row_stride, n, heads, head_dim, section, theta);
    Err(unsupported("rope", "mrope not implemented yet"))
}

/// Gen 3-axis interleaved RoPE of `x` `[n, heads*head_dim]` at positions i32 `[n, 3]`. `out` may alias `x`.
#[allow(clippy::too_many_arguments)]
pub fn interleaved3(
    gpu: &Gpu,
    x: DevPtr,
    positions: DevPtr,
    out: DevPtr,
    n: usize,
    heads: usize,
    head_dim: usize,
    axes: [usize; 3],
    theta: f64,
) -> CudaResult<()> {
    let _ = (gpu, x, positions, out, n, heads, head_dim, axes, theta);
    Err(unsupported("rope", "interleaved3 not implemented yet"))
}

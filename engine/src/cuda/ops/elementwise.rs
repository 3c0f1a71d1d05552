//! Elementwise ops (kernels/cuda/elementwise.cu). `n` counts elements; row-broadcast operands have `d`
//! elements and apply to element `i` as `[i % d]`. Outputs may alias the first input.

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::unsupported;

fn todo(op: &'static str) -> CudaResult<()> {
    Err(unsupported(op, "not implemented yet"))
}

/// `out = a + b`, `b` of `b_len` elements: `n` (same shape) or a row broadcast.
pub fn add(gpu: &Gpu, a: DevPtr, b: DevPtr, out: DevPtr, n: usize, b_len: usize) -> CudaResult<()> {
    let _ = (gpu, a, b, out, n, b_len);
    todo("add")
}

/// `out = x * (1 + scale[i % d])`.
pub fn modulate(gpu: &Gpu, x: DevPtr, scale: DevPtr, out: DevPtr, n: usize, d: usize) -> CudaResult<()> {
    let _ = (gpu, x, scale, out, n, d);
    todo("modulate")
}

/// `out = x + tanh(gate[i % d]) * y`.
#[allow(clippy::too_many_arguments)]
pub fn gate_residual(gpu: &Gpu, x: DevPtr, gate: DevPtr, y: DevPtr, out: DevPtr, n: usize, d: usize) -> CudaResult<()> {
    let _ = (gpu, x, gate, y, out, n, d);
    todo("gate_residual")
}

/// `out = x * scale + shift`.
pub fn affine(gpu: &Gpu, x: DevPtr, out: DevPtr, n: usize, scale: f32, shift: f32) -> CudaResult<()> {
    let _ = (gpu, x, out, n, scale, shift);
    todo("affine")
}

pub fn silu(gpu: &Gpu, x: DevPtr, out: DevPtr, n: usize) -> CudaResult<()> {
    let _ = (gpu, x, out, n);
    todo("silu")
}

/// Exact (erf) GELU.
pub fn gelu(gpu: &Gpu, x: DevPtr, out: DevPtr, n: usize) -> CudaResult<()> {
    let _ = (gpu, x, out, n);
    todo("gelu")
}

/// `out = silu(gate) * up`.
pub fn swiglu(gpu: &Gpu, gate: DevPtr, up: DevPtr, out: DevPtr, n: usize) -> CudaResult<()> {
    let _ = (gpu, gate, up, out, n);
    todo("swiglu")
}

/// `out[c, j] = x[c, j] + bias[c]` over `[channels, hw]` (a convolution's bias after the GEMM).
pub fn add_channel_bias(gpu: &Gpu, x: DevPtr, bias: DevPtr, out: DevPtr, channels: usize, hw: usize) -> CudaResult<()> {
    let _ = (gpu, x, bias, out, channels, hw);
    todo("add_channel_bias")
}

/// f32 `src` -> bf16 `dst`, round to nearest even.
pub fn f32_to_bf16(gpu: &Gpu, src: DevPtr, dst: DevPtr, n: usize) -> CudaResult<()> {
    let _ = (gpu, src, dst, n);
    todo("f32_to_bf16")
}

/// bf16 `src` -> f32 `dst`.
pub fn bf16_to_f32(gpu: &Gpu, src: DevPtr, dst: DevPtr, n: usize) -> CudaResult<()> {
    let _ = (gpu, src, dst, n);
    todo("bf16_to_f32")
}

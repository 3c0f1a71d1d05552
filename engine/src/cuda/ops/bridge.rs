//! The bridge's shared-space step (kernels/cuda/bridge.cu): the gen expert's K and V, already projected
//! into the und head space, get und M-RoPE (K only) and are written into the joint K/V layout in one pass.

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::unsupported;

/// `k_in`, `v_in` `[n, kv_heads*head_dim]` (rows `in_row_stride` apart, so one fused K|V projection
/// output can be passed twice with offsets); positions i32 `[3, n]`; writes `k_out = mrope(k_in)` and
/// `v_out = v_in`, rows `out_row_stride` apart (a slot of the joint K/V buffers).
#[derive(Debug, Clone, Copy)]
pub struct BridgeKvArgs {
    pub k_in: DevPtr,
    pub v_in: DevPtr,
    pub in_row_stride: usize,
    pub positions: DevPtr,
    pub k_out: DevPtr,
    pub v_out: DevPtr,
    pub out_row_stride: usize,
    pub n: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub section: [usize; 3],
    pub theta: f64,
}

pub fn bridge_kv_write(gpu: &Gpu, args: &BridgeKvArgs) -> CudaResult<()> {
    let _ = (gpu, args);
    Err(unsupported("bridge_kv_write", "not implemented yet"))
}

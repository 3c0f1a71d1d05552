//! The bridge's shared-space step (kernels/cuda/bridge.cu): the gen expert's K and V, already projected
//! into the und head space, get und M-RoPE (K only) and are written into the joint K/V layout in one pass.

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::elementwise::{aligned16, grid_1d, launch, mul, to_i32, to_i64};
use super::rope::{check_mrope, mrope_table, rope_units};
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
    const OP: &str = "bridge_kv_write";
    let a = args;
    if a.n == 0 || a.kv_heads == 0 || a.head_dim == 0 {
        return Ok(());
    }
    let (s0, s01) = check_mrope(OP, a.head_dim, a.section)?;
    let width = mul(OP, a.kv_heads, a.head_dim)?;
    if a.in_row_stride < width || a.out_row_stride < width {
        return Err(unsupported(
            OP,
            format!(
                "row strides {} / {} are shorter than a row of {width}",
                a.in_row_stride, a.out_row_stride
            ),
        ));
    }
    let half = a.head_dim / 2;
    let vec = half.is_multiple_of(8)
        && a.in_row_stride.is_multiple_of(8)
        && a.out_row_stride.is_multiple_of(8)
        && aligned16(&[a.k_in, a.v_in, a.k_out, a.v_out]);
    let units = rope_units(OP, a.n, a.kv_heads, if vec { half / 8 } else { half })?;
    let tab = mrope_table(a.theta, a.head_dim);
    let (ki, vi, pp, ko, vo) = (a.k_in.0, a.v_in.0, a.positions.0, a.k_out.0, a.v_out.0);
    let (ins, outs) = (
        to_i64(OP, "in stride", a.in_row_stride)?,
        to_i64(OP, "out stride", a.out_row_stride)?,
    );
    let (n, heads, hd) = (
        to_i32(OP, "n", a.n)?,
        to_i32(OP, "kv_heads", a.kv_heads)?,
        a.head_dim as i32,
    );
    launch!(
        gpu,
        "bridge",
        if vec { "bridge_kv_v8" } else { "bridge_kv_s" },
        grid_1d(units),
        [&ki, &vi, &ins, &pp, &ko, &vo, &outs, &n, &heads, &hd, &s0, &s01, &tab]
    )
}

//! Rotary embeddings in both conventions (kernels/cuda/rope.cu); semantics of `hbridge_graph::RopeKind`.

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::elementwise::{aligned16, grid_1d, launch, mul, to_i32, to_i64};
use super::unsupported;
use cudarc::driver::DeviceRepr;

/// Most rotation frequencies per head (`ROPE_MAX_HALF` of rope.cu / `BRIDGE_MAX_HALF` of bridge.cu):
/// head_dim <= 512.
pub(super) const MAX_HALF: usize = 256;
/// Heads one thread handles (`ROPE_HP` / `BRIDGE_HP`).
pub(super) const HEADS_PER_THREAD: usize = 4;

/// M-RoPE inverse frequencies, passed to the kernels by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct F32Table {
    pub inv: [f32; MAX_HALF],
}

// SAFETY: plain `#[repr(C)]` array of f32, the layout of rope.cu's `RopeF32Table` and bridge.cu's
// `BridgeRopeTable`.
unsafe impl DeviceRepr for F32Table {}

#[repr(C)]
#[derive(Clone, Copy)]
struct F64Table {
    inv: [f64; MAX_HALF],
}

// SAFETY: plain `#[repr(C)]` array of f64, the layout of rope.cu's `RopeF64Table`.
unsafe impl DeviceRepr for F64Table {}

/// HF's `inv_freq = 1 / theta^(arange(0, D, 2) / D)` in f32, bit for bit what the CPU backend uses: the
/// exponent is an f32 quotient, the power the correctly rounded f32 (computed in f64), the reciprocal
/// an f32 division.
pub(super) fn mrope_table(theta: f64, head_dim: usize) -> F32Table {
    let mut t = F32Table {
        inv: [0.0; MAX_HALF],
    };
    for k in 0..(head_dim / 2).min(MAX_HALF) {
        let e = (2 * k) as f32 / head_dim as f32;
        let p = ((theta as f32) as f64).powf(e as f64) as f32;
        t.inv[k] = 1.0 / p;
    }
    t
}

/// Checks an M-RoPE geometry; returns `(s0, s0 + s1)` as the kernels take them.
pub(super) fn check_mrope(
    op: &'static str,
    head_dim: usize,
    section: [usize; 3],
) -> CudaResult<(i32, i32)> {
    if !head_dim.is_multiple_of(2) || head_dim / 2 > MAX_HALF {
        return Err(unsupported(
            op,
            format!(
                "head_dim {head_dim} (must be even and at most {})",
                2 * MAX_HALF
            ),
        ));
    }
    if section.iter().sum::<usize>() != head_dim / 2 {
        return Err(unsupported(
            op,
            format!(
                "mrope section {section:?} does not sum to head_dim / 2 = {}",
                head_dim / 2
            ),
        ));
    }
    Ok((section[0] as i32, (section[0] + section[1]) as i32))
}

/// Work units of a rope launch (token x head block x chunk), which the kernels index in 32 bits.
pub(super) fn rope_units(
    op: &'static str,
    n: usize,
    heads: usize,
    chunks: usize,
) -> CudaResult<usize> {
    let units = mul(op, mul(op, n, heads.div_ceil(HEADS_PER_THREAD))?, chunks)?;
    to_i32(op, "rope work units", units)?;
    Ok(units)
}

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
    mrope_strided(
        gpu,
        x,
        heads.saturating_mul(head_dim),
        positions,
        out,
        out_row_stride,
        n,
        heads,
        head_dim,
        section,
        theta,
    )
}

/// [`mrope`] with the input rows `in_row_stride` elements apart too (e.g. the Q or K columns of a fused
/// QKV projection output).
#[allow(clippy::too_many_arguments)]
pub fn mrope_strided(
    gpu: &Gpu,
    x: DevPtr,
    in_row_stride: usize,
    positions: DevPtr,
    out: DevPtr,
    out_row_stride: usize,
    n: usize,
    heads: usize,
    head_dim: usize,
    section: [usize; 3],
    theta: f64,
) -> CudaResult<()> {
    const OP: &str = "mrope";
    if n == 0 || heads == 0 || head_dim == 0 {
        return Ok(());
    }
    let (s0, s01) = check_mrope(OP, head_dim, section)?;
    let tab = mrope_table(theta, head_dim);
    mrope_launch(
        gpu,
        x,
        in_row_stride,
        positions,
        out,
        out_row_stride,
        n,
        heads,
        head_dim,
        (s0, s01),
        &tab,
    )
}

/// The vision tower's 2-D rotary (rotate_half) of `x` `[n, heads*head_dim]` at positions i32 `[2, n]`
/// (rows h, w): the M-RoPE kernel with sections (D/4, D/4, 0) and HF's axial frequencies
/// `1 / theta^(2j / (D/2))`, j < D/4, repeated for h and w (see `RopeKind::Vision2d`). `out` may alias `x`.
#[allow(clippy::too_many_arguments)]
pub fn vision2d(
    gpu: &Gpu,
    x: DevPtr,
    positions: DevPtr,
    out: DevPtr,
    n: usize,
    heads: usize,
    head_dim: usize,
    theta: f64,
) -> CudaResult<()> {
    const OP: &str = "vision2d rope";
    if n == 0 || heads == 0 || head_dim == 0 {
        return Ok(());
    }
    if !head_dim.is_multiple_of(4) || head_dim / 2 > MAX_HALF {
        return Err(unsupported(
            OP,
            format!(
                "head_dim {head_dim} (must be a multiple of 4, at most {})",
                2 * MAX_HALF
            ),
        ));
    }
    let (half, quarter) = (head_dim / 2, head_dim / 4);
    // HF computes inv_freq over dim = head_dim / 2: the M-RoPE table of a head of `half` dims.
    let axial = mrope_table(theta, half);
    let mut tab = mrope_table(theta, head_dim);
    for k in 0..half {
        tab.inv[k] = axial.inv[k % quarter];
    }
    let width = mul(OP, heads, head_dim)?;
    mrope_launch(
        gpu,
        x,
        width,
        positions,
        out,
        width,
        n,
        heads,
        head_dim,
        (quarter as i32, half as i32),
        &tab,
    )
}

#[allow(clippy::too_many_arguments)]
fn mrope_launch(
    gpu: &Gpu,
    x: DevPtr,
    in_row_stride: usize,
    positions: DevPtr,
    out: DevPtr,
    out_row_stride: usize,
    n: usize,
    heads: usize,
    head_dim: usize,
    (s0, s01): (i32, i32),
    tab: &F32Table,
) -> CudaResult<()> {
    const OP: &str = "mrope";
    let width = mul(OP, heads, head_dim)?;
    if in_row_stride < width || out_row_stride < width {
        return Err(unsupported(
            OP,
            format!(
                "row strides {in_row_stride} / {out_row_stride} are shorter than a row of {width}"
            ),
        ));
    }
    let half = head_dim / 2;
    let vec = half.is_multiple_of(8)
        && in_row_stride.is_multiple_of(8)
        && out_row_stride.is_multiple_of(8)
        && aligned16(&[x, out]);
    let units = rope_units(OP, n, heads, if vec { half / 8 } else { half })?;
    let tab = *tab;
    let (xp, pp, op_) = (x.0, positions.0, out.0);
    let (ins, outs) = (
        to_i64(OP, "in stride", in_row_stride)?,
        to_i64(OP, "out stride", out_row_stride)?,
    );
    let (n_, heads_, hd) = (
        to_i32(OP, "n", n)?,
        to_i32(OP, "heads", heads)?,
        head_dim as i32,
    );
    launch!(
        gpu,
        "rope",
        if vec { "mrope_v8" } else { "mrope_s" },
        grid_1d(units),
        [&xp, &ins, &pp, &op_, &outs, &n_, &heads_, &hd, &s0, &s01, &tab]
    )
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
    const OP: &str = "interleaved3";
    if n == 0 || heads == 0 || head_dim == 0 {
        return Ok(());
    }
    if axes.iter().any(|a| a % 2 != 0)
        || axes.iter().sum::<usize>() != head_dim
        || head_dim / 2 > MAX_HALF
    {
        return Err(unsupported(
            OP,
            format!(
                "axes {axes:?} must be even and sum to head_dim {head_dim} (at most {})",
                2 * MAX_HALF
            ),
        ));
    }
    mul(OP, mul(OP, n, heads)?, head_dim)?;
    // Pair p rotates by pos[axis] * theta^(-2k/a), k its index within its axis (f64, as the CPU does).
    let mut tab = F64Table {
        inv: [0.0; MAX_HALF],
    };
    let mut p = 0;
    for &a in &axes {
        for k in 0..a / 2 {
            tab.inv[p] = 1.0 / theta.powf((2 * k) as f64 / a as f64);
            p += 1;
        }
    }
    let (b0, b01) = ((axes[0] / 2) as i32, ((axes[0] + axes[1]) / 2) as i32);
    let vec = head_dim.is_multiple_of(8) && aligned16(&[x, out]);
    let units = rope_units(OP, n, heads, if vec { head_dim / 8 } else { head_dim / 2 })?;
    let (xp, pp, op_) = (x.0, positions.0, out.0);
    let (n_, heads_, hd) = (
        to_i32(OP, "n", n)?,
        to_i32(OP, "heads", heads)?,
        head_dim as i32,
    );
    launch!(
        gpu,
        "rope",
        if vec {
            "interleaved3_v8"
        } else {
            "interleaved3_s"
        },
        grid_1d(units),
        [&xp, &pp, &op_, &n_, &heads_, &hd, &b0, &b01, &tab]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layouts_match_the_kernels() {
        assert_eq!(std::mem::size_of::<F32Table>(), 4 * MAX_HALF);
        assert_eq!(std::mem::size_of::<F64Table>(), 8 * MAX_HALF);
        assert_eq!(std::mem::align_of::<F64Table>(), 8);
    }

    #[test]
    fn mrope_table_is_hf_inv_freq() {
        let t = mrope_table(1e6, 128);
        assert_eq!(t.inv[0], 1.0);
        assert!((t.inv[1] as f64 - 1e6f64.powf(-2.0 / 128.0)).abs() < 1e-7);
        assert_eq!(t.inv[64], 0.0);
    }
}

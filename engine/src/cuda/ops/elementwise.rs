//! Elementwise ops (kernels/cuda/elementwise.cu). `n` counts elements; row-broadcast operands have `d`
//! elements and apply to element `i` as `[i % d]`. Outputs may alias the first input.
//!
//! This module also holds the launch helpers the other hand-written-kernel launchers share (grid
//! sizing, the rows x columns tiling, alignment checks, the `launch!` macro).

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::unsupported;
use cudarc::driver::LaunchConfig;

/// Launches `entry` of kernel file `file` on the GPU's stream. The arguments are references to locals
/// declared before the call, each of exactly the kernel parameter's type: `u64` for a pointer, `i64` for
/// `long long`, `i32` for `int`, `f32`, `f64`, or a `#[repr(C)]` struct the kernel takes by value.
macro_rules! launch {
    ($gpu:expr, $file:literal, $entry:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let entry: &str = $entry;
        let func = $gpu.function($file, entry)?;
        let mut params = [$( $crate::cuda::ops::elementwise::param($arg) ),*];
        // SAFETY: the launcher validated the sizes against the kernel's contract, every pointer comes from
        // the caller as the address of a live allocation of the documented size, and the argument list
        // matches the kernel's parameter list in order and type.
        unsafe { $crate::cuda::launch::launch_kernel($gpu, &func, $cfg, &mut params) }
            .map_err(|e| $crate::cuda::CudaError::driver(format!("launching {entry} ({})", $file), e))
    }};
}

/// The kernel-parameter pointer of one launch argument (a reference to a local of the parameter's type).
pub(crate) fn param<T>(arg: &T) -> *mut std::ffi::c_void {
    arg as *const T as *mut std::ffi::c_void
}
pub(super) use launch;

/// Threads per block of the memory-bound kernels.
pub(super) const THREADS: u32 = 256;
/// Most blocks of a flat grid-stride launch: several waves on any current GPU, and every thread then
/// handles several units on large tensors.
pub(super) const MAX_BLOCKS: usize = 8192;
/// Blocks a 2-D (rows x column strips) launch aims for.
const TARGET_BLOCKS: usize = 4096;

/// Whether every pointer is 16-byte aligned (the kernels' 8 x bf16 vector paths need it).
pub(super) fn aligned16(ptrs: &[DevPtr]) -> bool {
    ptrs.iter().all(|p| p.0 % 16 == 0)
}

/// A 1-D grid-stride launch over `units` work items, one per thread per sweep.
pub(super) fn grid_1d(units: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            units.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Work items of a flat kernel: 8-element vectors (plus the tail) or single elements.
fn flat_units(n: usize, vec: i32) -> usize {
    if vec == 1 {
        n / 8 + n % 8
    } else {
        n
    }
}

/// `a * b`, or an error naming `op` when it overflows.
pub(super) fn mul(op: &'static str, a: usize, b: usize) -> CudaResult<usize> {
    a.checked_mul(b)
        .ok_or_else(|| unsupported(op, format!("{a} x {b} elements overflow")))
}

pub(super) fn to_i64(op: &'static str, what: &str, v: usize) -> CudaResult<i64> {
    i64::try_from(v).map_err(|_| unsupported(op, format!("{what} = {v} does not fit in 64 bits")))
}

pub(super) fn to_i32(op: &'static str, what: &str, v: usize) -> CudaResult<i32> {
    i32::try_from(v).map_err(|_| unsupported(op, format!("{what} = {v} exceeds {}", i32::MAX)))
}

/// The rows x column-units tiling of `ew_bcast`, `copy_rows`, `upsample2x` and `im2col`: `1 << tpr_log2`
/// threads per row (the largest power of two <= 256 whose last column strip idles at most 1/8 of its
/// threads), `256 >> tpr_log2` rows per block; grid.y = column strips, grid.x = blocks striding over rows.
pub(super) struct RowTiling {
    pub tpr_log2: i32,
    pub cfg: LaunchConfig,
}

pub(super) fn row_tiling(rows: usize, units: usize) -> RowTiling {
    let mut tpr = THREADS as usize;
    while tpr > 1 && (units.div_ceil(tpr) * tpr - units) * 8 > units {
        tpr /= 2;
    }
    let rpb = THREADS as usize / tpr;
    let strips = units.div_ceil(tpr).clamp(1, 65535);
    let row_blocks = rows.div_ceil(rpb).clamp(1, (TARGET_BLOCKS / strips).max(1));
    RowTiling {
        tpr_log2: tpr.trailing_zeros() as i32,
        cfg: LaunchConfig {
            grid_dim: (row_blocks as u32, strips as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        },
    }
}

// Op codes of elementwise.cu.
const EW_SILU: i32 = 0;
const EW_GELU: i32 = 1;
const EW_AFFINE: i32 = 2;
const EW_ADD: i32 = 3;
const EW_SWIGLU: i32 = 4;
const BC_ADD: i32 = 0;
const BC_MODULATE: i32 = 1;
const BC_GATE: i32 = 2;
const BC_ROW_ADD: i32 = 3;

// The kernel's flat signature (op code and its two scalars) is mirrored here on purpose.
#[allow(clippy::too_many_arguments)]
fn unary(
    gpu: &Gpu,
    op: &'static str,
    code: i32,
    x: DevPtr,
    out: DevPtr,
    n: usize,
    a: f32,
    b: f32,
) -> CudaResult<()> {
    if n == 0 {
        return Ok(());
    }
    let vec = aligned16(&[x, out]) as i32;
    let (xp, op_, n_) = (x.0, out.0, to_i64(op, "n", n)?);
    launch!(
        gpu,
        "elementwise",
        "ew_unary",
        grid_1d(flat_units(n, vec)),
        [&xp, &op_, &n_, &code, &a, &b, &vec]
    )
}

fn binary(
    gpu: &Gpu,
    op: &'static str,
    code: i32,
    x: DevPtr,
    y: DevPtr,
    out: DevPtr,
    n: usize,
) -> CudaResult<()> {
    if n == 0 {
        return Ok(());
    }
    let vec = aligned16(&[x, y, out]) as i32;
    let (xp, yp, op_, n_) = (x.0, y.0, out.0, to_i64(op, "n", n)?);
    launch!(
        gpu,
        "elementwise",
        "ew_binary",
        grid_1d(flat_units(n, vec)),
        [&xp, &yp, &op_, &n_, &code, &vec]
    )
}

/// `ew_bcast` over `rows x cols`; `v` is a `[cols]` row (or `[rows]` for `BC_ROW_ADD`), `y` the gate's
/// second operand.
#[allow(clippy::too_many_arguments)]
fn bcast(
    gpu: &Gpu,
    op: &'static str,
    code: i32,
    x: DevPtr,
    v: DevPtr,
    y: Option<DevPtr>,
    out: DevPtr,
    rows: usize,
    cols: usize,
) -> CudaResult<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    mul(op, rows, cols)?;
    let mut ptrs = vec![x, out];
    if code != BC_ROW_ADD {
        ptrs.push(v);
    }
    ptrs.extend(y);
    let vec = (cols.is_multiple_of(8) && aligned16(&ptrs)) as i32;
    let units = if vec == 1 { cols / 8 } else { cols };
    let t = row_tiling(rows, units);
    let (xp, vp, yp, op_) = (x.0, v.0, y.map_or(0, |p| p.0), out.0);
    let (rows_, cols_) = (to_i64(op, "rows", rows)?, to_i64(op, "cols", cols)?);
    launch!(
        gpu,
        "elementwise",
        "ew_bcast",
        t.cfg,
        [
            &xp,
            &vp,
            &yp,
            &op_,
            &rows_,
            &cols_,
            &t.tpr_log2,
            &code,
            &vec
        ]
    )
}

/// Rows of a row-broadcast over `n` elements with a `d`-element operand.
fn bcast_rows(op: &'static str, n: usize, d: usize) -> CudaResult<usize> {
    if d == 0 || !n.is_multiple_of(d) {
        return Err(unsupported(
            op,
            format!("{n} elements are not whole rows of {d}"),
        ));
    }
    Ok(n / d)
}

/// `out = a + b`, `b` of `b_len` elements: `n` (same shape) or a row broadcast.
pub fn add(gpu: &Gpu, a: DevPtr, b: DevPtr, out: DevPtr, n: usize, b_len: usize) -> CudaResult<()> {
    if n == 0 {
        return Ok(());
    }
    if b_len == n {
        return binary(gpu, "add", EW_ADD, a, b, out, n);
    }
    let rows = bcast_rows("add", n, b_len)?;
    bcast(gpu, "add", BC_ADD, a, b, None, out, rows, b_len)
}

/// `out = x * (1 + scale[i % d])`.
pub fn modulate(
    gpu: &Gpu,
    x: DevPtr,
    scale: DevPtr,
    out: DevPtr,
    n: usize,
    d: usize,
) -> CudaResult<()> {
    if n == 0 {
        return Ok(());
    }
    let rows = bcast_rows("modulate", n, d)?;
    bcast(gpu, "modulate", BC_MODULATE, x, scale, None, out, rows, d)
}

/// `out = x + tanh(gate[i % d]) * y`.
#[allow(clippy::too_many_arguments)]
pub fn gate_residual(
    gpu: &Gpu,
    x: DevPtr,
    gate: DevPtr,
    y: DevPtr,
    out: DevPtr,
    n: usize,
    d: usize,
) -> CudaResult<()> {
    if n == 0 {
        return Ok(());
    }
    let rows = bcast_rows("gate_residual", n, d)?;
    bcast(
        gpu,
        "gate_residual",
        BC_GATE,
        x,
        gate,
        Some(y),
        out,
        rows,
        d,
    )
}

/// `out = x * scale + shift`.
pub fn affine(
    gpu: &Gpu,
    x: DevPtr,
    out: DevPtr,
    n: usize,
    scale: f32,
    shift: f32,
) -> CudaResult<()> {
    unary(gpu, "affine", EW_AFFINE, x, out, n, scale, shift)
}

pub fn silu(gpu: &Gpu, x: DevPtr, out: DevPtr, n: usize) -> CudaResult<()> {
    unary(gpu, "silu", EW_SILU, x, out, n, 0.0, 0.0)
}

/// Exact (erf) GELU.
pub fn gelu(gpu: &Gpu, x: DevPtr, out: DevPtr, n: usize) -> CudaResult<()> {
    unary(gpu, "gelu", EW_GELU, x, out, n, 0.0, 0.0)
}

/// `out = silu(gate) * up`.
pub fn swiglu(gpu: &Gpu, gate: DevPtr, up: DevPtr, out: DevPtr, n: usize) -> CudaResult<()> {
    binary(gpu, "swiglu", EW_SWIGLU, gate, up, out, n)
}

/// `out[c, j] = x[c, j] + bias[c]` over `[channels, hw]` (a convolution's bias after the GEMM).
pub fn add_channel_bias(
    gpu: &Gpu,
    x: DevPtr,
    bias: DevPtr,
    out: DevPtr,
    channels: usize,
    hw: usize,
) -> CudaResult<()> {
    bcast(
        gpu,
        "add_channel_bias",
        BC_ROW_ADD,
        x,
        bias,
        None,
        out,
        channels,
        hw,
    )
}

/// f32 `src` -> bf16 `dst`, round to nearest even.
pub fn f32_to_bf16(gpu: &Gpu, src: DevPtr, dst: DevPtr, n: usize) -> CudaResult<()> {
    cast(gpu, "cast_f32_to_bf16", src, dst, n)
}

/// bf16 `src` -> f32 `dst`.
pub fn bf16_to_f32(gpu: &Gpu, src: DevPtr, dst: DevPtr, n: usize) -> CudaResult<()> {
    cast(gpu, "cast_bf16_to_f32", src, dst, n)
}

/// One of the flat cast kernels, which share a signature `(src, dst, n, vec)`.
fn cast(gpu: &Gpu, entry: &'static str, src: DevPtr, dst: DevPtr, n: usize) -> CudaResult<()> {
    if n == 0 {
        return Ok(());
    }
    let vec = aligned16(&[src, dst]) as i32;
    let (s, d, n_) = (src.0, dst.0, to_i64(entry, "n", n)?);
    launch!(
        gpu,
        "elementwise",
        entry,
        grid_1d(flat_units(n, vec)),
        [&s, &d, &n_, &vec]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_tiling_wastes_little_and_stays_in_limits() {
        for &(rows, units) in &[
            (1, 1),
            (7, 3),
            (8224, 315),
            (8224, 448),
            (128, 131072),
            (1000, 1_000_000),
            (3, 65536 * 300),
        ] {
            let t = row_tiling(rows, units);
            let tpr = 1usize << t.tpr_log2;
            assert!(tpr <= 256 && 256 % tpr == 0);
            assert!(
                (units.div_ceil(tpr) * tpr - units) * 8 <= units || tpr == 1,
                "{rows}x{units}"
            );
            let (gx, gy, _) = t.cfg.grid_dim;
            assert!(
                gx >= 1 && (1..=65535).contains(&gy),
                "{rows}x{units}: {gx}x{gy}"
            );
        }
    }
}

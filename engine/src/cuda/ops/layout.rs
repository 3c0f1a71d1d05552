//! Data movement (kernels/cuda/layout.cu): embedding gather, strided 2-D copies (slices, concatenation),
//! transpose, patchify/unpatchify, nearest upsampling and im2col for convolutions as GEMMs.

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::elementwise::{aligned16, grid_1d, launch, mul, row_tiling, to_i32, to_i64};
use super::unsupported;
use cudarc::driver::LaunchConfig;

/// `copy_rows` of layout.cu: `dst[r] = src[ids[r] or r]`, `cols` elements per row.
#[allow(clippy::too_many_arguments)]
fn copy_rows(
    gpu: &Gpu,
    op: &'static str,
    src: DevPtr,
    src_stride: usize,
    dst: DevPtr,
    dst_stride: usize,
    rows: usize,
    cols: usize,
    ids: Option<DevPtr>,
    vocab: usize,
) -> CudaResult<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    mul(op, rows, cols)?;
    let vec = cols.is_multiple_of(8)
        && src_stride.is_multiple_of(8)
        && dst_stride.is_multiple_of(8)
        && aligned16(&[src, dst]);
    let t = row_tiling(rows, if vec { cols / 8 } else { cols });
    let (sp, dp, ip) = (src.0, dst.0, ids.map_or(0, |p| p.0));
    let (ss, ds) = (
        to_i64(op, "src stride", src_stride)?,
        to_i64(op, "dst stride", dst_stride)?,
    );
    let (rows_, cols_, vocab_) = (
        to_i64(op, "rows", rows)?,
        to_i64(op, "cols", cols)?,
        to_i64(op, "vocab", vocab)?,
    );
    let vec = vec as i32;
    launch!(
        gpu,
        "layout",
        "copy_rows",
        t.cfg,
        [
            &sp,
            &ss,
            &dp,
            &ds,
            &rows_,
            &cols_,
            &ip,
            &vocab_,
            &t.tpr_log2,
            &vec
        ]
    )
}

/// `state[row[0] + r] = src[r]` for `r < rows`, `cols` elements per row, `row` an i32 on the device (read
/// when the kernel runs, so a CUDA graph replays it at the current value). A row range past `capacity`
/// writes nothing.
pub fn write_rows(
    gpu: &Gpu,
    src: DevPtr,
    state: DevPtr,
    row: DevPtr,
    rows: usize,
    cols: usize,
    capacity: usize,
) -> CudaResult<()> {
    let op = "state_write";
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    mul(op, capacity, cols)?;
    let vec = cols.is_multiple_of(8) && aligned16(&[src, state]);
    let t = row_tiling(rows, if vec { cols / 8 } else { cols });
    let (sp, dp, rp) = (src.0, state.0, row.0);
    let (rows_, cols_, cap_) = (
        to_i64(op, "rows", rows)?,
        to_i64(op, "cols", cols)?,
        to_i64(op, "capacity", capacity)?,
    );
    let vec = vec as i32;
    launch!(
        gpu,
        "layout",
        "write_rows",
        t.cfg,
        [&sp, &dp, &rp, &rows_, &cols_, &cap_, &t.tpr_log2, &vec]
    )
}

/// `out[i] = table[ids[i]]`, ids i32 `[n]` (validated on the host), table `[vocab, d]`.
pub fn embed(
    gpu: &Gpu,
    table: DevPtr,
    ids: DevPtr,
    out: DevPtr,
    n: usize,
    d: usize,
) -> CudaResult<()> {
    // vocab 0: only negative ids are caught (zero rows); the caller validated the upper bound.
    copy_rows(gpu, "embed", table, d, out, d, n, d, Some(ids), 0)
}

/// [`embed`] that also guards the upper bound on the device: ids outside `[0, vocab)` give zero rows
/// instead of reads past the table.
#[allow(clippy::too_many_arguments)]
pub fn embed_bounded(
    gpu: &Gpu,
    table: DevPtr,
    vocab: usize,
    ids: DevPtr,
    out: DevPtr,
    n: usize,
    d: usize,
) -> CudaResult<()> {
    if vocab == 0 && n > 0 && d > 0 {
        return Err(unsupported("embed", "empty embedding table"));
    }
    copy_rows(gpu, "embed", table, d, out, d, n, d, Some(ids), vocab)
}

/// `dst[r, c] = src[r, c]` for `rows x cols` elements, rows `src_stride` / `dst_stride` apart.
/// `src_stride` 0 broadcasts one source row; destination rows must not overlap.
#[allow(clippy::too_many_arguments)]
pub fn copy2d(
    gpu: &Gpu,
    src: DevPtr,
    src_stride: usize,
    dst: DevPtr,
    dst_stride: usize,
    rows: usize,
    cols: usize,
) -> CudaResult<()> {
    if rows > 1 && cols > 0 && dst_stride < cols {
        return Err(unsupported(
            "copy2d",
            format!("destination rows of {cols} elements {dst_stride} apart overlap"),
        ));
    }
    copy_rows(
        gpu, "copy2d", src, src_stride, dst, dst_stride, rows, cols, None, 0,
    )
}

/// `[a, b]` -> `[b, a]`.
pub fn transpose(gpu: &Gpu, x: DevPtr, out: DevPtr, a: usize, b: usize) -> CudaResult<()> {
    const OP: &str = "transpose";
    if a == 0 || b == 0 {
        return Ok(());
    }
    mul(OP, a, b)?;
    let tiles_b = to_i32(OP, "column tiles", b.div_ceil(32))?;
    let cfg = LaunchConfig {
        grid_dim: (tiles_b as u32, a.div_ceil(32).min(65535) as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    let (xp, op_, a_, b_) = (x.0, out.0, to_i64(OP, "a", a)?, to_i64(OP, "b", b)?);
    launch!(gpu, "layout", "transpose2d", cfg, [&xp, &op_, &a_, &b_])
}

fn check_patch(op: &'static str, c: usize, h: usize, w: usize, p: usize) -> CudaResult<usize> {
    if p == 0 || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
        return Err(unsupported(
            op,
            format!("{h}x{w} does not split into {p}x{p} patches"),
        ));
    }
    mul(op, mul(op, c, h)?, w)
}

/// `[c, h, w]` -> tokens `[(h/p)*(w/p), p*p*c]`, features ordered `(p1, p2, c)` (graph `Op::Patchify`).
pub fn patchify(
    gpu: &Gpu,
    x: DevPtr,
    out: DevPtr,
    c: usize,
    h: usize,
    w: usize,
    p: usize,
) -> CudaResult<()> {
    patch_op(gpu, "patchify", x, out, c, h, w, p)
}

/// Inverse of [`patchify`].
pub fn unpatchify(
    gpu: &Gpu,
    x: DevPtr,
    out: DevPtr,
    c: usize,
    h: usize,
    w: usize,
    p: usize,
) -> CudaResult<()> {
    patch_op(gpu, "unpatchify", x, out, c, h, w, p)
}

#[allow(clippy::too_many_arguments)]
fn patch_op(
    gpu: &Gpu,
    op: &'static str,
    x: DevPtr,
    out: DevPtr,
    c: usize,
    h: usize,
    w: usize,
    p: usize,
) -> CudaResult<()> {
    let total = check_patch(op, c, h, w, p)?;
    if total == 0 {
        return Ok(());
    }
    let (xp, op_) = (x.0, out.0);
    let (c_, h_, w_, p_) = (
        to_i64(op, "c", c)?,
        to_i64(op, "h", h)?,
        to_i64(op, "w", w)?,
        to_i64(op, "p", p)?,
    );
    launch!(
        gpu,
        "layout",
        op,
        grid_1d(total),
        [&xp, &op_, &c_, &h_, &w_, &p_]
    )
}

/// Nearest x2 of `[c, h, w]` -> `[c, 2h, 2w]`.
pub fn upsample2x(
    gpu: &Gpu,
    x: DevPtr,
    out: DevPtr,
    c: usize,
    h: usize,
    w: usize,
) -> CudaResult<()> {
    const OP: &str = "upsample2x";
    let rows = mul(OP, c, h)?;
    if rows == 0 || w == 0 {
        return Ok(());
    }
    mul(OP, mul(OP, rows, w)?, 4)?;
    let vec = w.is_multiple_of(8) && aligned16(&[x, out]);
    let t = row_tiling(rows, if vec { w / 8 } else { w });
    let (xp, op_, rows_, w_) = (x.0, out.0, to_i64(OP, "rows", rows)?, to_i64(OP, "w", w)?);
    let vec = vec as i32;
    launch!(
        gpu,
        "layout",
        "upsample2x",
        t.cfg,
        [&xp, &op_, &rows_, &w_, &t.tpr_log2, &vec]
    )
}

/// Convolution geometry for [`im2col`].
#[derive(Debug, Clone, Copy)]
pub struct ConvGeometry {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    /// Zero padding before the first row/column.
    pub pad_begin: usize,
    /// Zero padding after the last row/column.
    pub pad_end: usize,
}

impl ConvGeometry {
    pub fn out_h(&self) -> usize {
        (self.h + self.pad_begin + self.pad_end - self.k) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + self.pad_begin + self.pad_end - self.k) / self.stride + 1
    }
}

/// `x` `[cin, h, w]` -> `cols` `[out_h*out_w, cin*k*k]` (row = output pixel, features `(ci, ky, kx)`, the
/// order of a `[cout, cin, k, k]` weight's rows), zeros where the window leaves the image. A convolution
/// is then `weight [cout, cin*k*k] @ cols^T` -> `[cout, out_h*out_w]`.
pub fn im2col(gpu: &Gpu, x: DevPtr, cols: DevPtr, g: &ConvGeometry) -> CudaResult<()> {
    if g.k == 0
        || g.stride == 0
        || g.h + g.pad_begin + g.pad_end < g.k
        || g.w + g.pad_begin + g.pad_end < g.k
    {
        return Err(unsupported("im2col", format!("impossible geometry {g:?}")));
    }
    im2col_rows(gpu, x, cols, g, 0, g.out_h())
}

/// The rows of [`im2col`] for output rows `oy0 .. oy0 + out_rows` only (a band, so a large convolution
/// can run as several GEMMs over a bounded column buffer): `cols` `[out_rows*out_w, cin*k*k]`.
pub fn im2col_rows(
    gpu: &Gpu,
    x: DevPtr,
    cols: DevPtr,
    g: &ConvGeometry,
    oy0: usize,
    out_rows: usize,
) -> CudaResult<()> {
    const OP: &str = "im2col";
    if g.k == 0
        || g.stride == 0
        || g.h + g.pad_begin + g.pad_end < g.k
        || g.w + g.pad_begin + g.pad_end < g.k
    {
        return Err(unsupported(OP, format!("impossible geometry {g:?}")));
    }
    let (out_h, out_w) = (g.out_h(), g.out_w());
    if oy0.checked_add(out_rows).is_none_or(|end| end > out_h) {
        return Err(unsupported(
            OP,
            format!("output rows {oy0}..+{out_rows} outside 0..{out_h}"),
        ));
    }
    let feats = mul(OP, mul(OP, g.cin, g.k)?, g.k)?;
    let npix = mul(OP, out_rows, out_w)?;
    if feats == 0 || npix == 0 {
        return Ok(());
    }
    mul(OP, npix, feats)?;
    to_i32(OP, "cin*k*k", feats)?;
    to_i32(OP, "padded height", g.h + g.pad_begin + g.pad_end)?;
    to_i32(OP, "padded width", g.w + g.pad_begin + g.pad_end)?;
    let vec = feats % 8 == 0 && aligned16(&[cols]);
    let t = row_tiling(npix, if vec { feats / 8 } else { feats });
    let (xp, cp) = (x.0, cols.0);
    let (cin, h, w, k, stride, pad) = (
        g.cin as i32,
        g.h as i32,
        g.w as i32,
        g.k as i32,
        g.stride as i32,
        g.pad_begin as i32,
    );
    let out_w_ = out_w as i32;
    let (pix0, npix_) = (
        to_i64(OP, "first pixel", mul(OP, oy0, out_w)?)?,
        to_i64(OP, "pixels", npix)?,
    );
    let vec = vec as i32;
    launch!(
        gpu,
        "layout",
        "im2col",
        t.cfg,
        [
            &xp,
            &cp,
            &cin,
            &h,
            &w,
            &k,
            &stride,
            &pad,
            &out_w_,
            &pix0,
            &npix_,
            &t.tpr_log2,
            &vec
        ]
    )
}

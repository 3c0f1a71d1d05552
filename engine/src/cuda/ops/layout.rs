//! Data movement (kernels/cuda/layout.cu): embedding gather, strided 2-D copies (slices, concatenation),
//! transpose, patchify/unpatchify, nearest upsampling and im2col for convolutions as GEMMs.

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::unsupported;

fn todo(op: &'static str) -> CudaResult<()> {
    Err(unsupported(op, "not implemented yet"))
}

/// `out[i] = table[ids[i]]`, ids i32 `[n]` (validated on the host), table `[vocab, d]`.
pub fn embed(gpu: &Gpu, table: DevPtr, ids: DevPtr, out: DevPtr, n: usize, d: usize) -> CudaResult<()> {
    let _ = (gpu, table, ids, out, n, d);
    todo("embed")
}

/// `dst[r, c] = src[r, c]` for `rows x cols` elements, rows `src_stride` / `dst_stride` apart.
#[allow(clippy::too_many_arguments)]
pub fn copy2d(gpu: &Gpu, src: DevPtr, src_stride: usize, dst: DevPtr, dst_stride: usize, rows: usize, cols: usize) -> CudaResult<()> {
    let _ = (gpu, src, src_stride, dst, dst_stride, rows, cols);
    todo("copy2d")
}

/// `[a, b]` -> `[b, a]`.
pub fn transpose(gpu: &Gpu, x: DevPtr, out: DevPtr, a: usize, b: usize) -> CudaResult<()> {
    let _ = (gpu, x, out, a, b);
    todo("transpose")
}

/// `[c, h, w]` -> tokens `[(h/p)*(w/p), p*p*c]`, features ordered `(p1, p2, c)` (graph `Op::Patchify`).
pub fn patchify(gpu: &Gpu, x: DevPtr, out: DevPtr, c: usize, h: usize, w: usize, p: usize) -> CudaResult<()> {
    let _ = (gpu, x, out, c, h, w, p);
    todo("patchify")
}

/// Inverse of [`patchify`].
pub fn unpatchify(gpu: &Gpu, x: DevPtr, out: DevPtr, c: usize, h: usize, w: usize, p: usize) -> CudaResult<()> {
    let _ = (gpu, x, out, c, h, w, p);
    todo("unpatchify")
}

/// Nearest x2 of `[c, h, w]` -> `[c, 2h, 2w]`.
pub fn upsample2x(gpu: &Gpu, x: DevPtr, out: DevPtr, c: usize, h: usize, w: usize) -> CudaResult<()> {
    let _ = (gpu, x, out, c, h, w);
    todo("upsample2x")
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
    let _ = (gpu, x, cols, g);
    todo("im2col")
}

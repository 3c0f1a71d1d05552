//! 2-D convolution as im2col + GEMM. The column buffer is built for a band of output rows at a time so
//! its size stays bounded (a 1024x1024 VAE layer would otherwise need gigabytes).

use super::matmul::{matmul, Mat, MatMut};
use rayon::prelude::*;

/// Upper bound on the column buffer, in values.
const COL_BUDGET: usize = 1 << 22;

pub(crate) struct Conv2dShape {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    /// Zero rows/columns added before the first input row/column (the rest of the padding is implied by
    /// the output size).
    pub pad_before: usize,
    pub hout: usize,
    pub wout: usize,
}

/// x `[cin, h, w]`, weight `[cout, cin, k, k]`, bias `[cout]` -> out `[cout, hout, wout]`.
pub(crate) fn conv2d(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    out: &mut [f32],
) {
    let plane = s.hout * s.wout;
    if plane == 0 || s.cout == 0 {
        return;
    }
    match bias {
        Some(b) => out
            .par_chunks_mut(plane)
            .zip(b)
            .for_each(|(o, &b)| o.fill(b)),
        None => out.fill(0.0),
    }
    let kk = s.cin * s.k * s.k;
    let w = Mat::rm(weight, s.cout, kk);
    if s.k == 1 && s.stride == 1 && s.pad_before == 0 && s.hout == s.h && s.wout == s.w {
        // A 1x1 convolution is already a product with the image as a [cin, h*w] matrix.
        matmul(
            MatMut::rm(out, s.cout, plane),
            w,
            Mat::rm(x, s.cin, plane),
            1.0,
            true,
            None,
        );
        return;
    }
    let band = (COL_BUDGET / (kk * s.wout).max(1)).clamp(1, s.hout);
    let mut col = vec![0f32; kk * band * s.wout];
    for oy0 in (0..s.hout).step_by(band) {
        let rows = band.min(s.hout - oy0);
        let ncols = rows * s.wout;
        let col = &mut col[..kk * ncols];
        col.par_chunks_mut(ncols)
            .enumerate()
            .for_each(|(r, c)| im2col_row(x, s, r, oy0, c));
        let dst = MatMut {
            data: &mut out[oy0 * s.wout..],
            rows: s.cout,
            cols: ncols,
            rs: plane,
            cs: 1,
        };
        matmul(dst, w, Mat::rm(col, kk, ncols), 1.0, true, None);
    }
}

/// Row `r = (ci*k + ky)*k + kx` of the column matrix for output rows `oy0..`: the input value each output
/// position multiplies with that weight tap, zero where it falls in the padding.
fn im2col_row(x: &[f32], s: &Conv2dShape, r: usize, oy0: usize, c: &mut [f32]) {
    let (ci, ky, kx) = (r / (s.k * s.k), (r / s.k) % s.k, r % s.k);
    for (i, crow) in c.chunks_mut(s.wout).enumerate() {
        let iy = ((oy0 + i) * s.stride + ky) as isize - s.pad_before as isize;
        if iy < 0 || iy as usize >= s.h {
            crow.fill(0.0);
            continue;
        }
        let xrow = &x[(ci * s.h + iy as usize) * s.w..(ci * s.h + iy as usize + 1) * s.w];
        for (ox, v) in crow.iter_mut().enumerate() {
            let ix = (ox * s.stride + kx) as isize - s.pad_before as isize;
            *v = if ix < 0 || ix as usize >= s.w {
                0.0
            } else {
                xrow[ix as usize]
            };
        }
    }
}

//! 2-D convolution. Stride-1 k x k kernels use a "shifted GEMM": the input is zero-padded once and each
//! tap `(ky, kx)` is one product with a shifted view of it; other strided kernels use im2col + GEMM. Both
//! work on a band of output rows at a time so their scratch stays bounded (a 1024x1024 VAE layer would
//! otherwise need gigabytes). With `HBRIDGE_CPU_MATMUL=bf16` on an AMX CPU every stride-1 convolution
//! runs on the tiles instead (`amx.rs`).

#[cfg(target_arch = "x86_64")]
mod amx;

use super::matmul::{Mat, MatMut};
use super::packed_gemm::{self, product, BSource, RowTable};
use rayon::prelude::*;

/// Upper bound on the column buffer, in values.
const COL_BUDGET: usize = 1 << 22;

/// Upper bound on the shifted-GEMM scratch (padded input band + accumulator), in values. Smaller than
/// `COL_BUDGET`: keeping the band near the last-level cache measured faster on the VAE decoder, most of
/// all for few output channels, where the products are bound by memory traffic.
const SHIFT_BUDGET: usize = 1 << 20;

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

#[cfg(test)]
impl Conv2dShape {
    /// A stride-1 shape from `(cin, h, w, cout, k, pad_before, pad_after)`.
    pub(crate) fn stride1(
        (cin, h, w, cout, k, pad_before, pad_after): (
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
        ),
    ) -> Conv2dShape {
        Conv2dShape {
            cin,
            h,
            w,
            cout,
            k,
            stride: 1,
            pad_before,
            hout: h + pad_before + pad_after + 1 - k,
            wout: w + pad_before + pad_after + 1 - k,
        }
    }
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
    #[cfg(target_arch = "x86_64")]
    if s.stride == 1 && super::amx_tiles::enabled() {
        amx::conv2d(x, weight, bias, s, out);
        return;
    }
    if s.stride == 1 && s.k > 1 {
        // Writes every output once, bias included: no separate pass over the output for the bias.
        conv2d_shifted(x, weight, bias, s, out, SHIFT_BUDGET);
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
        product(
            MatMut::rm(out, s.cout, plane),
            w,
            Mat::rm(x, s.cin, plane),
            true,
            None,
        );
        return;
    }
    conv2d_im2col(x, weight, s, out);
}

/// Any stride, accumulated onto `out`: im2col for a band of output rows, then one GEMM.
fn conv2d_im2col(x: &[f32], weight: &[f32], s: &Conv2dShape, out: &mut [f32]) {
    let plane = s.hout * s.wout;
    let kk = s.cin * s.k * s.k;
    let w = Mat::rm(weight, s.cout, kk);
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
        product(dst, w, Mat::rm(col, kk, ncols), true, None);
    }
}

/// Stride-1 convolution: `out = bias + conv` (every output written once; `out`'s values unread).
///
/// For a band of output rows `oy0..oy0+rows`, the input rows it reads are zero-padded into
/// `xpad[cin, rows + k - 1, wp]` with `wp = wout + k - 1`, so padded `(py, px)` is input
/// `(oy0 + py - pad_before, px - pad_before)`. On the padded width, output `(i, ox)` of the band sits at
/// `j = i*wp + ox` and its tap `(ky, kx)` reads `xpad[ci, j + ky*wp + kx]`: each tap is one GEMM
/// `acc[cout, n] += W[:, :, ky, kx] @ xpad[:, off..off + n]` with `off = ky*wp + kx`. With
/// `n = (rows-1)*wp + wout` the last valid output's reads end exactly at the end of a channel plane; the
/// columns `ox >= wout` of `acc` are garbage (they wrap into the next row) and are never copied out.
fn conv2d_shifted(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    out: &mut [f32],
    budget: usize,
) {
    let (k, cin, cout) = (s.k, s.cin, s.cout);
    let wp = s.wout + k - 1;
    // Scratch per band: cin*(rows+k-1)*wp padded input plus cout*rows*wp accumulator.
    let per_row = (cin + cout) * wp;
    let band = ((budget / per_row.max(1)).saturating_sub(k - 1))
        .max(1)
        .min(s.hout);
    let plane_cap = (band + k - 1) * wp;
    let mut xpad = vec![0f32; cin * plane_cap];
    let mut acc = vec![0f32; cout * band * wp];
    let mut offsets = Vec::with_capacity(cin * k * k);
    let pb = s.pad_before as isize;
    for oy0 in (0..s.hout).step_by(band) {
        let rows = band.min(s.hout - oy0);
        let prow = rows + k - 1;
        let pplane = prow * wp;
        let xpad = &mut xpad[..cin * pplane];
        xpad.par_chunks_mut(pplane).enumerate().for_each(|(ci, p)| {
            for (py, prow) in p.chunks_mut(wp).enumerate() {
                let iy = (oy0 + py) as isize - pb;
                if iy < 0 || iy as usize >= s.h {
                    prow.fill(0.0);
                    continue;
                }
                let xrow = &x[(ci * s.h + iy as usize) * s.w..][..s.w];
                // Input column ix lands at px = ix + pad_before; clip to the padded width.
                let lo = s.pad_before.min(wp);
                let n = s.w.min(wp - lo);
                prow[..lo].fill(0.0);
                prow[lo..lo + n].copy_from_slice(&xrow[..n]);
                prow[lo + n..].fill(0.0);
            }
        });
        let n = (rows - 1) * wp + s.wout;
        let acc = &mut acc[..cout * n];
        // All taps as one product: depth `(ci*k + ky)*k + kx`, the weight's own column order, reads
        // channel ci's padded plane from `ky*wp + kx` on.
        offsets.clear();
        for ci in 0..cin {
            for ky in 0..k {
                offsets.extend((0..k).map(|kx| ci * pplane + ky * wp + kx));
            }
        }
        let rows_b = RowTable {
            data: xpad,
            offsets: &offsets,
            cols: n,
        };
        let w = Mat::rm(weight, cout, cin * k * k);
        if packed_gemm::gemm(
            MatMut::rm(acc, cout, n),
            w,
            BSource::Rows(rows_b),
            None,
            None,
        ) {
            add_band(out, acc, bias, (oy0, rows), (n, wp), s);
            continue;
        }
        for ky in 0..k {
            for kx in 0..k {
                let tap = ky * k + kx;
                let off = ky * wp + kx;
                let lhs = Mat {
                    data: &weight[tap..],
                    rows: cout,
                    cols: cin,
                    rs: cin * k * k,
                    cs: k * k,
                };
                let rhs = Mat {
                    data: &xpad[off..],
                    rows: cin,
                    cols: n,
                    rs: pplane,
                    cs: 1,
                };
                product(MatMut::rm(acc, cout, n), lhs, rhs, tap != 0, None);
            }
        }
        add_band(out, acc, bias, (oy0, rows), (n, wp), s);
    }
}

/// Writes the band's valid accumulator columns (`acc[cout, n]` on the padded width `wp`) plus the
/// channel's bias into output rows `oy0 .. oy0 + rows`.
fn add_band(
    out: &mut [f32],
    acc: &[f32],
    bias: Option<&[f32]>,
    (oy0, rows): (usize, usize),
    (n, wp): (usize, usize),
    s: &Conv2dShape,
) {
    let plane = s.hout * s.wout;
    out.par_chunks_mut(plane)
        .zip(acc.par_chunks(n))
        .enumerate()
        .for_each(|(c, (o, a))| {
            // `bias + acc`, the order the bias-filled output plus the product gave.
            let b = bias.map_or(0.0, |b| b[c]);
            for i in 0..rows {
                let orow = &mut o[(oy0 + i) * s.wout..][..s.wout];
                for (v, &a) in orow.iter_mut().zip(&a[i * wp..i * wp + s.wout]) {
                    *v = b + a;
                }
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution in f64 (stride 1), zero outside the input: per output `(sum, sum of the
    /// products' magnitudes)`, the magnitude bounding a test's rounding error.
    pub(super) fn direct(x: &[f64], wt: &[f64], s: &Conv2dShape) -> Vec<(f64, f64)> {
        let mut out = vec![(0f64, 0f64); s.cout * s.hout * s.wout];
        for co in 0..s.cout {
            for oy in 0..s.hout {
                for ox in 0..s.wout {
                    let (mut sum, mut mag) = (0f64, 0f64);
                    for ci in 0..s.cin {
                        for ky in 0..s.k {
                            for kx in 0..s.k {
                                let iy = (oy + ky) as isize - s.pad_before as isize;
                                let ix = (ox + kx) as isize - s.pad_before as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w
                                {
                                    let p = wt[((co * s.cin + ci) * s.k + ky) * s.k + kx]
                                        * x[(ci * s.h + iy as usize) * s.w + ix as usize];
                                    sum += p;
                                    mag += p.abs();
                                }
                            }
                        }
                    }
                    out[(co * s.hout + oy) * s.wout + ox] = (sum, mag);
                }
            }
        }
        out
    }

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        let mut st = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                st ^= st << 13;
                st ^= st >> 17;
                st ^= st << 5;
                (st as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn shifted_gemm_matches_direct_convolution() {
        // (cin, h, w, cout, k, pad_before, pad_after)
        let cases = [
            (3, 7, 9, 5, 3, 1, 1),
            (5, 13, 11, 7, 3, 1, 1),
            (4, 9, 7, 3, 3, 0, 0),
            (3, 8, 11, 2, 3, 0, 1),
            (2, 11, 5, 3, 5, 2, 2),
            (6, 6, 13, 4, 5, 0, 0),
            (1, 1, 1, 1, 3, 1, 1),
            // Many row tiles and column panels, depth over two GEMM passes (9 x 40 = 360).
            (40, 20, 37, 33, 3, 1, 1),
        ];
        for (i, &(cin, h, w, cout, k, pb, pa)) in cases.iter().enumerate() {
            let s = Conv2dShape::stride1((cin, h, w, cout, k, pb, pa));
            let x = vals(cin * h * w, 2 * i as u32 + 1);
            let wt = vals(cout * cin * k * k, 2 * i as u32 + 2);
            let widen = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<_>>();
            let want: Vec<f64> = direct(&widen(&x), &widen(&wt), &s)
                .into_iter()
                .map(|(sum, _)| sum)
                .collect();
            // A budget of 1 forces one output row per band; the large one takes the image at once.
            for budget in [1, 3 * (cin + cout) * (s.wout + k - 1), SHIFT_BUDGET] {
                let mut got = vec![0f32; s.cout * s.hout * s.wout];
                conv2d_shifted(&x, &wt, None, &s, &mut got, budget);
                for (j, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                        "case {i} budget {budget} [{j}]: {g} vs {e}"
                    );
                }
            }
        }
    }

    /// Times the two stride-1 paths on the `mid` preset's VAE-decoder shapes at 256x256, interleaved.
    /// `cargo test --release -p hbridge-engine --lib conv_paths_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn conv_paths_timing() {
        let shapes = [
            (256, 32, 256),
            (256, 64, 256),
            (256, 128, 256),
            (256, 128, 128),
            (128, 128, 128),
            (128, 256, 128),
            (128, 256, 64),
            (64, 256, 64),
            (64, 256, 3),
        ];
        let (mut ta, mut tb) = (0f64, 0f64);
        for &(cin, hw, cout) in &shapes {
            let s = Conv2dShape::stride1((cin, hw, hw, cout, 3, 1, 1));
            let x = vals(cin * hw * hw, 1);
            let wt = vals(cout * cin * 9, 2);
            let mut out = vec![0f32; cout * hw * hw];
            let (mut a, mut b) = (f64::MAX, f64::MAX);
            for _ in 0..5 {
                let t = std::time::Instant::now();
                conv2d_im2col(&x, &wt, &s, &mut out);
                a = a.min(t.elapsed().as_secs_f64() * 1e3);
                let t = std::time::Instant::now();
                conv2d_shifted(&x, &wt, None, &s, &mut out, SHIFT_BUDGET);
                b = b.min(t.elapsed().as_secs_f64() * 1e3);
            }
            ta += a;
            tb += b;
            println!(
                "{cin:>4}x{hw:>3}x{hw:<3} -> {cout:>3}: im2col {a:8.2} ms  shifted {b:8.2} ms"
            );
        }
        println!("total: im2col {ta:.1} ms  shifted {tb:.1} ms");
    }
}

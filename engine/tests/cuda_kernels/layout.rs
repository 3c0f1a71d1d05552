//! GPU tests of kernels/cuda/layout.cu. Everything here moves data, so every output must equal its
//! reference bit for bit.

use super::common::{self, Rng};
use super::elementwise::{exact, ints, place, poisoned};
use hbridge_engine::cuda::ops::layout::{self, ConvGeometry};

#[test]
fn embed_gathers_rows() {
    let Some(gpu) = common::gpu("layout::embed_gathers_rows") else {
        return;
    };
    let mut rng = Rng::fresh("layout::embed_gathers_rows");
    for &(vocab, d, n) in &[
        (50usize, 72usize, 1000usize),
        (7, 13, 9),
        (3, 8, 1),
        (1000, 3584, 37),
    ] {
        for shift in [0usize, 1] {
            let table = rng.normal_bf16(vocab * d, 1.0);
            let ids: Vec<i32> = (0..n).map(|_| rng.below(vocab) as i32).collect();
            let (_ids_buf, ip) = ints(&gpu, &ids);
            let pt = place(&gpu, &table, shift);
            let out = poisoned(&gpu, n * d, shift);
            layout::embed(&gpu, pt.ptr, ip, out.ptr, n, d).unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].to_vec())
                .collect();
            exact(
                &format!("embed vocab={vocab} d={d} n={n} shift={shift}"),
                &common::down(&gpu, out.ptr, n * d),
                &want,
            );

            // Bounded: ids outside the table give zero rows.
            let bad: Vec<i32> = ids
                .iter()
                .enumerate()
                .map(|(i, &id)| match i % 3 {
                    1 => -1 - id,
                    2 => vocab as i32 + id,
                    _ => id,
                })
                .collect();
            let (_bad_buf, bp) = ints(&gpu, &bad);
            let out = poisoned(&gpu, n * d, shift);
            layout::embed_bounded(&gpu, pt.ptr, vocab, bp, out.ptr, n, d).unwrap();
            let want: Vec<f32> = bad
                .iter()
                .flat_map(|&i| {
                    if i >= 0 && (i as usize) < vocab {
                        table[i as usize * d..(i as usize + 1) * d].to_vec()
                    } else {
                        vec![0.0; d]
                    }
                })
                .collect();
            exact(
                &format!("embed_bounded vocab={vocab} d={d} n={n} shift={shift}"),
                &common::down(&gpu, out.ptr, n * d),
                &want,
            );
        }
    }
}

#[test]
fn copy2d_copies_strided_rows() {
    let Some(gpu) = common::gpu("layout::copy2d_copies_strided_rows") else {
        return;
    };
    let mut rng = Rng::fresh("layout::copy2d_copies_strided_rows");
    // (rows, cols, src_stride, dst_stride)
    for &(rows, cols, ss, ds) in &[
        (7usize, 24usize, 40usize, 32usize),
        (1000, 13, 13, 20),
        (1, 3584, 3584, 3584),
        (33, 120, 2520, 128),
        (5, 16, 0, 16),
    ] {
        for shift in [0usize, 1] {
            let src = rng.normal_bf16((rows - 1) * ss + cols, 1.0);
            let ps = place(&gpu, &src, shift);
            let dst_len = (rows - 1) * ds + cols;
            let out = poisoned(&gpu, dst_len, shift);
            layout::copy2d(&gpu, ps.ptr, ss, out.ptr, ds, rows, cols).unwrap();
            let got = common::down(&gpu, out.ptr, dst_len);
            let case = format!("copy2d {rows}x{cols} strides {ss}/{ds} shift={shift}");
            let got_rows: Vec<f32> = (0..rows)
                .flat_map(|r| got[r * ds..r * ds + cols].to_vec())
                .collect();
            let want: Vec<f32> = (0..rows)
                .flat_map(|r| src[r * ss..r * ss + cols].to_vec())
                .collect();
            exact(&case, &got_rows, &want);
            if ds > cols && rows > 1 {
                assert!(got[cols].is_nan(), "{case}: wrote between rows");
            }
        }
    }
}

#[test]
fn transpose_is_exact() {
    let Some(gpu) = common::gpu("layout::transpose_is_exact") else {
        return;
    };
    let mut rng = Rng::fresh("layout::transpose_is_exact");
    for &(a, b) in &[
        (1usize, 1usize),
        (7, 1000),
        (33, 65),
        (100, 37),
        (512, 4096),
    ] {
        for shift in [0usize, 1] {
            let x = rng.normal_bf16(a * b, 1.0);
            let px = place(&gpu, &x, shift);
            let out = poisoned(&gpu, a * b, shift);
            layout::transpose(&gpu, px.ptr, out.ptr, a, b).unwrap();
            let want: Vec<f32> = (0..b)
                .flat_map(|j| (0..a).map(move |i| (i, j)))
                .map(|(i, j)| x[i * b + j])
                .collect();
            exact(
                &format!("transpose {a}x{b} shift={shift}"),
                &common::down(&gpu, out.ptr, a * b),
                &want,
            );
        }
    }
}

fn patchify_ref(x: &[f32], c: usize, h: usize, w: usize, p: usize) -> Vec<f32> {
    let (wt, f) = (w / p, p * p * c);
    let mut out = vec![0.0; c * h * w];
    for t in 0..(h / p) * wt {
        let (ti, tj) = (t / wt, t % wt);
        for p1 in 0..p {
            for p2 in 0..p {
                for ch in 0..c {
                    out[t * f + (p1 * p + p2) * c + ch] =
                        x[(ch * h + ti * p + p1) * w + tj * p + p2];
                }
            }
        }
    }
    out
}

#[test]
fn patchify_and_unpatchify_are_exact() {
    let Some(gpu) = common::gpu("layout::patchify_and_unpatchify_are_exact") else {
        return;
    };
    let mut rng = Rng::fresh("layout::patchify_and_unpatchify_are_exact");
    for &(c, h, w, p) in &[
        (16usize, 12usize, 10usize, 2usize),
        (3, 6, 9, 3),
        (16, 128, 128, 2),
        (1, 1, 1, 1),
    ] {
        for shift in [0usize, 1] {
            let n = c * h * w;
            let x = rng.normal_bf16(n, 1.0);
            let px = place(&gpu, &x, shift);
            let tokens = poisoned(&gpu, n, shift);
            layout::patchify(&gpu, px.ptr, tokens.ptr, c, h, w, p).unwrap();
            let want = patchify_ref(&x, c, h, w, p);
            let case = format!("c={c} h={h} w={w} p={p} shift={shift}");
            exact(
                &format!("patchify {case}"),
                &common::down(&gpu, tokens.ptr, n),
                &want,
            );
            let back = poisoned(&gpu, n, shift);
            layout::unpatchify(&gpu, tokens.ptr, back.ptr, c, h, w, p).unwrap();
            exact(
                &format!("unpatchify {case}"),
                &common::down(&gpu, back.ptr, n),
                &x,
            );
        }
    }
    let x = place(&gpu, &[1.0; 64], 0);
    assert!(layout::patchify(&gpu, x.ptr, x.ptr, 1, 5, 4, 2).is_err());
    assert!(layout::unpatchify(&gpu, x.ptr, x.ptr, 1, 4, 4, 0).is_err());
}

#[test]
fn upsample2x_is_exact() {
    let Some(gpu) = common::gpu("layout::upsample2x_is_exact") else {
        return;
    };
    let mut rng = Rng::fresh("layout::upsample2x_is_exact");
    for &(c, h, w) in &[
        (3usize, 5usize, 16usize),
        (2, 3, 7),
        (1, 1, 1),
        (128, 64, 64),
        (4, 33, 40),
    ] {
        for shift in [0usize, 1] {
            let x = rng.normal_bf16(c * h * w, 1.0);
            let px = place(&gpu, &x, shift);
            let n = 4 * c * h * w;
            let out = poisoned(&gpu, n, shift);
            layout::upsample2x(&gpu, px.ptr, out.ptr, c, h, w).unwrap();
            let mut want = vec![0.0f32; n];
            for ch in 0..c {
                for y in 0..2 * h {
                    for xx in 0..2 * w {
                        want[(ch * 2 * h + y) * 2 * w + xx] = x[(ch * h + y / 2) * w + xx / 2];
                    }
                }
            }
            exact(
                &format!("upsample2x c={c} h={h} w={w} shift={shift}"),
                &common::down(&gpu, out.ptr, n),
                &want,
            );
        }
    }
}

fn im2col_ref(x: &[f32], g: &ConvGeometry, oy0: usize, rows: usize) -> Vec<f32> {
    let (ow, feats) = (g.out_w(), g.cin * g.k * g.k);
    let mut out = vec![0.0f32; rows * ow * feats];
    for r in 0..rows * ow {
        let (oy, ox) = (oy0 + r / ow, r % ow);
        for ci in 0..g.cin {
            for ky in 0..g.k {
                for kx in 0..g.k {
                    let iy = (oy * g.stride + ky) as isize - g.pad_begin as isize;
                    let ix = (ox * g.stride + kx) as isize - g.pad_begin as isize;
                    let inside = iy >= 0 && (iy as usize) < g.h && ix >= 0 && (ix as usize) < g.w;
                    out[r * feats + (ci * g.k + ky) * g.k + kx] = if inside {
                        x[(ci * g.h + iy as usize) * g.w + ix as usize]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
    out
}

#[test]
fn im2col_is_exact() {
    let Some(gpu) = common::gpu("layout::im2col_is_exact") else {
        return;
    };
    let mut rng = Rng::fresh("layout::im2col_is_exact");
    let geoms = [
        // 3x3 "same" conv, 27 features (scalar path).
        ConvGeometry {
            cin: 3,
            h: 7,
            w: 9,
            k: 3,
            stride: 1,
            pad_begin: 1,
            pad_end: 1,
        },
        // The VAE encoder's downsampling conv: stride 2, padding (0, 1); 72 features (vector path).
        ConvGeometry {
            cin: 8,
            h: 10,
            w: 11,
            k: 3,
            stride: 2,
            pad_begin: 0,
            pad_end: 1,
        },
        // 1x1.
        ConvGeometry {
            cin: 16,
            h: 5,
            w: 6,
            k: 1,
            stride: 1,
            pad_begin: 0,
            pad_end: 0,
        },
        // Larger: 128 channels, 32x40, 3x3.
        ConvGeometry {
            cin: 128,
            h: 32,
            w: 40,
            k: 3,
            stride: 1,
            pad_begin: 1,
            pad_end: 1,
        },
    ];
    for g in &geoms {
        for shift in [0usize, 1] {
            let x = rng.normal_bf16(g.cin * g.h * g.w, 1.0);
            let px = place(&gpu, &x, shift);
            let (oh, ow, feats) = (g.out_h(), g.out_w(), g.cin * g.k * g.k);
            let out = poisoned(&gpu, oh * ow * feats, shift);
            layout::im2col(&gpu, px.ptr, out.ptr, g).unwrap();
            exact(
                &format!("im2col {g:?} shift={shift}"),
                &common::down(&gpu, out.ptr, oh * ow * feats),
                &im2col_ref(&x, g, 0, oh),
            );
            // A band of output rows.
            if oh >= 3 {
                let (oy0, rows) = (1, oh - 2);
                let band = poisoned(&gpu, rows * ow * feats, shift);
                layout::im2col_rows(&gpu, px.ptr, band.ptr, g, oy0, rows).unwrap();
                exact(
                    &format!("im2col_rows {oy0}+{rows} {g:?} shift={shift}"),
                    &common::down(&gpu, band.ptr, rows * ow * feats),
                    &im2col_ref(&x, g, oy0, rows),
                );
            }
        }
    }
    let x = place(&gpu, &[1.0; 64], 0);
    let g = ConvGeometry {
        cin: 1,
        h: 2,
        w: 2,
        k: 5,
        stride: 1,
        pad_begin: 0,
        pad_end: 0,
    };
    assert!(layout::im2col(&gpu, x.ptr, x.ptr, &g).is_err());
    let g = ConvGeometry { k: 1, ..g };
    assert!(layout::im2col_rows(&gpu, x.ptr, x.ptr, &g, 1, 2).is_err());
}

/// `write_rows`: the rows land at the row the device-side index says (re-read at every launch), the
/// rest of the state keeps its bits, and a range past the capacity writes nothing.
#[test]
fn write_rows_lands_at_the_device_row() {
    let Some(gpu) = common::gpu("layout::write_rows_lands_at_the_device_row") else {
        return;
    };
    let mut rng = Rng::fresh("layout::write_rows_lands_at_the_device_row");
    // (capacity, cols, rows): vectorized (cols % 8 == 0) and scalar, one row (a decode step) and many.
    for &(capacity, cols, rows) in &[
        (17usize, 512usize, 1usize),
        (9, 13, 3),
        (300, 128, 257),
        (5, 8, 5),
    ] {
        for shift in [0usize, 1] {
            let state0 = rng.normal_bf16(capacity * cols, 1.0);
            let src = rng.normal_bf16(rows * cols, 1.0);
            let ps = place(&gpu, &src, shift);
            for at in [
                0i32,
                (capacity - rows) as i32,
                capacity as i32 - rows as i32 + 1,
                -1,
            ] {
                let st = place(&gpu, &state0, shift);
                let (_row_buf, rp) = ints(&gpu, &[at]);
                layout::write_rows(&gpu, ps.ptr, st.ptr, rp, rows, cols, capacity).unwrap();
                let mut want = state0.clone();
                let fits = at >= 0 && at as usize + rows <= capacity;
                if fits {
                    let r0 = at as usize * cols;
                    want[r0..r0 + rows * cols].copy_from_slice(&src);
                }
                exact(
                    &format!(
                        "write_rows capacity={capacity} cols={cols} rows={rows} at={at} shift={shift} (fits {fits})"
                    ),
                    &common::down(&gpu, st.ptr, capacity * cols),
                    &want,
                );
            }
        }
    }
}

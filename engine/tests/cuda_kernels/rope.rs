//! GPU tests of kernels/cuda/rope.cu: M-RoPE (rotate_half, HF f32 arithmetic) with strided outputs and
//! the gen expert's interleaved 3-axis RoPE, vector and scalar paths, in place.

use super::common::{self, Rng, BF16_TOL};
use super::elementwise::{ints, place, poisoned};
use hbridge_engine::cuda::ops::rope;

/// HF's f32 inverse frequencies (as the CPU backend computes them).
pub(super) fn mrope_inv(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|k| {
            let e = (2 * k) as f32 / head_dim as f32;
            1.0 / ((theta as f32) as f64).powf(e as f64) as f32
        })
        .collect()
}

/// M-RoPE reference: f32 angles and f32 cos/sin as torch computes them, the rotation in f64. `x` rows are
/// `in_stride` apart; returns `[n, heads*head_dim]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn mrope_ref(
    x: &[f32],
    in_stride: usize,
    pos: &[i32],
    n: usize,
    heads: usize,
    head_dim: usize,
    section: [usize; 3],
    theta: f64,
) -> Vec<f64> {
    let half = head_dim / 2;
    let inv = mrope_inv(theta, head_dim);
    let mut out = vec![0.0f64; n * heads * head_dim];
    for i in 0..n {
        for k in 0..half {
            let axis = if k < section[0] {
                0
            } else if k < section[0] + section[1] {
                1
            } else {
                2
            };
            let angle = pos[axis * n + i] as f32 * inv[k];
            let (c, s) = (angle.cos() as f64, angle.sin() as f64);
            for h in 0..heads {
                let a = x[i * in_stride + h * head_dim + k] as f64;
                let b = x[i * in_stride + h * head_dim + k + half] as f64;
                let o = (i * heads + h) * head_dim;
                out[o + k] = a * c - b * s;
                out[o + k + half] = b * c + a * s;
            }
        }
    }
    out
}

/// Random positions `[3, n]` as the und expert sees them: a text run (p, p, p) then an image grid.
pub(super) fn mrope_positions(rng: &mut Rng, n: usize) -> Vec<i32> {
    let text = n / 3;
    let s = rng.below(3000) as i32;
    let wgrid = 1 + rng.below(40);
    let mut p = vec![0i32; 3 * n];
    for i in 0..n {
        let (t, h, w) = if i < text {
            let v = s + i as i32;
            (v, v, v)
        } else {
            let j = i - text;
            let base = s + text as i32;
            (base, base + (j / wgrid) as i32, base + (j % wgrid) as i32)
        };
        p[i] = t;
        p[n + i] = h;
        p[2 * n + i] = w;
    }
    p
}

/// Gathers the `[n, width]` rows of a strided `[n, stride]` buffer.
pub(super) fn rows_of(v: &[f32], n: usize, width: usize, stride: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|i| v[i * stride..i * stride + width].iter().copied())
        .collect()
}

#[test]
fn mrope_matches_f64() {
    let Some(gpu) = common::gpu("rope::mrope_matches_f64") else {
        return;
    };
    let mut rng = Rng::fresh("rope::mrope_matches_f64");
    // (n, heads, head_dim, section, extra columns per output row)
    let cases: &[(usize, usize, usize, [usize; 3], usize)] = &[
        (7, 3, 16, [2, 3, 3], 0),
        (1, 28, 128, [16, 24, 24], 0),
        (1000, 4, 128, [16, 24, 24], 0),
        (33, 28, 128, [16, 24, 24], 3 * 128),
        (5, 5, 24, [4, 4, 4], 0),
        (9, 2, 20, [3, 3, 4], 8),
        (3, 6, 80, [8, 16, 16], 0),
    ];
    for &(n, heads, hd, section, extra) in cases {
        for shift in [0usize, 1] {
            for in_place in [false, true] {
                if in_place && extra != 0 {
                    continue; // in place needs equal strides
                }
                let width = heads * hd;
                let stride = width + extra;
                let theta = 1e6;
                let x = rng.normal_bf16(n * width, 1.0);
                let pos = mrope_positions(&mut rng, n);
                let (_pos_buf, pp) = ints(&gpu, &pos);
                let px = place(&gpu, &x, shift);
                let out = poisoned(&gpu, n * stride, shift);
                let out_ptr = if in_place { px.ptr } else { out.ptr };
                rope::mrope(
                    &gpu, px.ptr, pp, out_ptr, stride, n, heads, hd, section, theta,
                )
                .unwrap();
                let want = mrope_ref(&x, width, &pos, n, heads, hd, section, theta);
                let got = common::down(&gpu, out_ptr, n * stride);
                let case = format!("mrope n={n} heads={heads} d={hd} stride={stride} shift={shift} in_place={in_place}");
                common::check(&case, &rows_of(&got, n, width, stride), &want, BF16_TOL);
                if extra != 0 {
                    // The gap between rows is left alone (still poisoned).
                    assert!(
                        got[width].is_nan() && got[stride - 1].is_nan(),
                        "{case}: wrote between rows"
                    );
                }
            }
        }
    }
    // Strided input too: the K columns of a fused [n, (q|k|v)] projection output.
    let (n, heads, hd, section) = (17usize, 4usize, 128usize, [16usize, 24, 24]);
    let in_stride = 3 * heads * hd;
    let x = rng.normal_bf16(n * in_stride, 1.0);
    let pos = mrope_positions(&mut rng, n);
    let (_pos_buf, pp) = ints(&gpu, &pos);
    let px = place(&gpu, &x, 0);
    let out = poisoned(&gpu, n * heads * hd, 0);
    let k_cols = px.ptr.offset(heads * hd, 2);
    rope::mrope_strided(
        &gpu,
        k_cols,
        in_stride,
        pp,
        out.ptr,
        heads * hd,
        n,
        heads,
        hd,
        section,
        1e6,
    )
    .unwrap();
    let want = mrope_ref(
        &x[heads * hd..],
        in_stride,
        &pos,
        n,
        heads,
        hd,
        section,
        1e6,
    );
    common::check(
        "mrope strided input",
        &common::down(&gpu, out.ptr, n * heads * hd),
        &want,
        BF16_TOL,
    );
}

/// f64 reference of the gen RoPE (the CPU backend's math).
fn interleaved3_ref(
    x: &[f32],
    pos: &[i32],
    n: usize,
    heads: usize,
    hd: usize,
    axes: [usize; 3],
    theta: f64,
) -> Vec<f64> {
    let pairs: Vec<(usize, f64)> = axes
        .iter()
        .enumerate()
        .flat_map(|(axis, &a)| {
            (0..a / 2).map(move |k| (axis, 1.0 / theta.powf((2 * k) as f64 / a as f64)))
        })
        .collect();
    let mut out = vec![0.0f64; n * heads * hd];
    for i in 0..n {
        for (p, &(axis, inv)) in pairs.iter().enumerate() {
            let angle = pos[i * 3 + axis] as f64 * inv;
            let (c, s) = (angle.cos(), angle.sin());
            for h in 0..heads {
                let o = (i * heads + h) * hd + 2 * p;
                let (a, b) = (x[o] as f64, x[o + 1] as f64);
                out[o] = a * c - b * s;
                out[o + 1] = a * s + b * c;
            }
        }
    }
    out
}

#[test]
fn interleaved3_matches_f64() {
    let Some(gpu) = common::gpu("rope::interleaved3_matches_f64") else {
        return;
    };
    let mut rng = Rng::fresh("rope::interleaved3_matches_f64");
    let cases: &[(usize, usize, usize, [usize; 3])] = &[
        (7, 3, 24, [8, 8, 8]),
        (300, 21, 120, [40, 40, 40]),
        (1, 7, 120, [40, 40, 40]),
        (9, 5, 12, [4, 4, 4]),
        (1, 1, 6, [2, 2, 2]),
        (11, 2, 16, [2, 6, 8]),
    ];
    for &(n, heads, hd, axes) in cases {
        for shift in [0usize, 1] {
            for in_place in [false, true] {
                let x = rng.normal_bf16(n * heads * hd, 1.0);
                // Gen positions: a few hundred at most (SRT index, then image shift + row/col).
                let pos: Vec<i32> = (0..3 * n).map(|_| rng.below(400) as i32).collect();
                let (_pos_buf, pp) = ints(&gpu, &pos);
                let px = place(&gpu, &x, shift);
                let out = poisoned(&gpu, x.len(), shift);
                let out_ptr = if in_place { px.ptr } else { out.ptr };
                rope::interleaved3(&gpu, px.ptr, pp, out_ptr, n, heads, hd, axes, 10000.0).unwrap();
                let want = interleaved3_ref(&x, &pos, n, heads, hd, axes, 10000.0);
                let case = format!(
                    "interleaved3 n={n} heads={heads} d={hd} shift={shift} in_place={in_place}"
                );
                common::check(
                    &case,
                    &common::down(&gpu, out_ptr, x.len()),
                    &want,
                    BF16_TOL,
                );
            }
        }
    }
}

#[test]
fn launchers_validate() {
    let Some(gpu) = common::gpu("rope::launchers_validate") else {
        return;
    };
    let x = place(&gpu, &[1.0; 64], 0);
    // Section not summing to head_dim / 2, odd head_dim, short output stride, odd axes.
    assert!(rope::mrope(&gpu, x.ptr, x.ptr, x.ptr, 16, 1, 1, 16, [2, 2, 2], 1e6).is_err());
    assert!(rope::mrope(&gpu, x.ptr, x.ptr, x.ptr, 15, 1, 1, 15, [3, 2, 2], 1e6).is_err());
    assert!(rope::mrope(&gpu, x.ptr, x.ptr, x.ptr, 8, 1, 1, 16, [2, 3, 3], 1e6).is_err());
    assert!(rope::interleaved3(&gpu, x.ptr, x.ptr, x.ptr, 1, 1, 12, [3, 5, 4], 1e4).is_err());
    rope::mrope(&gpu, x.ptr, x.ptr, x.ptr, 16, 0, 1, 16, [2, 3, 3], 1e6).unwrap();
    gpu.synchronize().unwrap();
}

/// The vision tower's 2-D rotary: HF's `Qwen2_5_VLVisionRotaryEmbedding` (axial inv_freq over head_dim/2,
/// the first head_dim/4 frequencies rotate by the patch row h, the rest by its column w), rotate_half,
/// f32 angles; positions `[2, n]` only (the kernel must not read a third row).
#[test]
fn vision2d_matches_f64() {
    let Some(gpu) = common::gpu("rope::vision2d_matches_f64") else {
        return;
    };
    let mut rng = Rng::fresh("rope::vision2d_matches_f64");
    // (n, heads, head_dim): the 7B tower (16 heads of 80), the tiny test dims, a vector-path size.
    for &(n, heads, hd) in &[
        (1000usize, 16usize, 80usize),
        (37, 2, 8),
        (64, 4, 64),
        (5, 3, 12),
    ] {
        for in_place in [false, true] {
            let width = heads * hd;
            let (half, quarter) = (hd / 2, hd / 4);
            let theta = 1e4;
            let x = rng.normal_bf16(n * width, 1.0);
            let grid_w = 1 + rng.below(40);
            let mut pos = vec![0i32; 2 * n];
            for i in 0..n {
                pos[i] = (i / grid_w) as i32;
                pos[n + i] = (i % grid_w) as i32;
            }
            let (_pos_buf, pp) = ints(&gpu, &pos);
            let px = place(&gpu, &x, 0);
            let out = poisoned(&gpu, n * width, 0);
            let out_ptr = if in_place { px.ptr } else { out.ptr };
            rope::vision2d(&gpu, px.ptr, pp, out_ptr, n, heads, hd, theta).unwrap();
            let inv = mrope_inv(theta, half);
            let mut want = vec![0.0f64; n * width];
            for i in 0..n {
                for k in 0..half {
                    let angle = if k < quarter {
                        pos[i] as f32 * inv[k]
                    } else {
                        pos[n + i] as f32 * inv[k - quarter]
                    };
                    let (c, s) = (angle.cos() as f64, angle.sin() as f64);
                    for h in 0..heads {
                        let o = i * width + h * hd;
                        let (a, b) = (x[o + k] as f64, x[o + k + half] as f64);
                        want[o + k] = a * c - b * s;
                        want[o + k + half] = b * c + a * s;
                    }
                }
            }
            let got = common::down(&gpu, out_ptr, n * width);
            let case = format!("vision2d n={n} heads={heads} d={hd} in_place={in_place}");
            common::check(&case, &got, &want, BF16_TOL);
        }
    }
    // A head_dim that is not a multiple of 4 is refused, not misrotated.
    let x = place(&gpu, &[0.5; 6], 0);
    assert!(rope::vision2d(&gpu, x.ptr, x.ptr, x.ptr, 1, 1, 6, 1e4).is_err());
}

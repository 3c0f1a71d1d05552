use crate::common::*;
use hbridge_graph::{Op, RopeKind};

/// M-RoPE in f64 given per-frequency angles `angle(i, k)`.
fn mrope_rotate(
    x: &[f32],
    n: usize,
    heads: usize,
    d: usize,
    angle: impl Fn(usize, usize) -> f64,
) -> Vec<f64> {
    let half = d / 2;
    let mut out = vec![0f64; x.len()];
    for i in 0..n {
        for h in 0..heads {
            let base = i * heads * d + h * d;
            for j in 0..d {
                let k = j % half;
                let (c, s) = (angle(i, k).cos(), angle(i, k).sin());
                // rotate_half(x)[j] = -x[j + half] for j < half, x[j - half] otherwise.
                let rot = if j < half {
                    -(x[base + j + half] as f64)
                } else {
                    x[base + j - half] as f64
                };
                out[base + j] = x[base + j] as f64 * c + rot * s;
            }
        }
    }
    out
}

fn section_row(section: [usize; 3], k: usize) -> usize {
    if k < section[0] {
        0
    } else if k < section[0] + section[1] {
        1
    } else {
        2
    }
}

fn mrope_case(
    seed: u64,
    n: usize,
    heads: usize,
    d: usize,
    section: [usize; 3],
    theta: f64,
    max_pos: usize,
) -> (Vec<f32>, Vec<i32>, Vec<f32>) {
    let mut r = Rng::new(seed);
    let x = r.vec(n * heads * d, 1.0);
    // Distinct t, h, w rows so a wrong section mapping shows.
    let pos = r.ints(3 * n, max_pos);
    let mut t = OneOp::new();
    let xi = t.f32("x", &[n, heads * d], x.clone());
    let pi = t.i32("pos", &[3, n], pos.clone());
    let got = t.run_shaped(
        Op::Rope {
            x: xi,
            positions: pi,
            heads,
            head_dim: d,
            kind: RopeKind::Mrope { section, theta },
        },
        &[n, heads * d],
    );
    (x, pos, got)
}

#[test]
fn mrope_hf_f32_arithmetic() {
    // Large positions: here f32 angles differ from exact ones by ~1e-4, so the reference must reproduce
    // HF's f32 inv_freq and f32 angle, then rotate exactly.
    for &(n, heads, d, section, theta) in &[
        (19usize, 3usize, 16usize, [2usize, 3, 3], 1e6f64),
        (23, 2, 24, [4, 4, 4], 5e5),
        (7, 4, 128, [16, 24, 24], 1e6),
    ] {
        let (x, pos, got) = mrope_case(41, n, heads, d, section, theta, 5000);
        let inv: Vec<f32> = (0..d / 2)
            .map(|k| {
                1.0 / (((theta as f32) as f64).powf(((2 * k) as f32 / d as f32) as f64) as f32)
            })
            .collect();
        let want = mrope_rotate(&x, n, heads, d, |i, k| {
            (pos[section_row(section, k) * n + i] as f32 * inv[k]) as f64
        });
        assert_close(&format!("mrope d {d}"), &got, &want, 1e-6);
    }
}

#[test]
fn mrope_matches_exact_math_at_small_positions() {
    let (n, heads, d, section, theta) = (13, 3, 16, [2, 3, 3], 1e6);
    let (x, pos, got) = mrope_case(42, n, heads, d, section, theta, 40);
    let want = mrope_rotate(&x, n, heads, d, |i, k| {
        pos[section_row(section, k) * n + i] as f64 * theta.powf(-2.0 * k as f64 / d as f64)
    });
    assert_close("mrope exact", &got, &want, 1e-5);
}

#[test]
fn interleaved3_f64() {
    let mut r = Rng::new(43);
    for &(n, heads, axes) in &[
        (17usize, 3usize, [8usize, 8, 8]),
        (11, 2, [4, 6, 6]),
        (5, 1, [40, 40, 40]),
    ] {
        let d: usize = axes.iter().sum();
        let x = r.vec(n * heads * d, 1.0);
        let pos = r.ints(3 * n, 300);
        let mut t = OneOp::new();
        let xi = t.f32("x", &[n, heads * d], x.clone());
        let pi = t.i32("pos", &[n, 3], pos.clone());
        let kind = RopeKind::Interleaved3 {
            axes,
            theta: 10000.0,
        };
        let got = t.run_shaped(
            Op::Rope {
                x: xi,
                positions: pi,
                heads,
                head_dim: d,
                kind,
            },
            &[n, heads * d],
        );
        let mut want = vec![0f64; x.len()];
        for i in 0..n {
            for h in 0..heads {
                let base = i * heads * d + h * d;
                let mut start = 0;
                for (a, &width) in axes.iter().enumerate() {
                    for k in 0..width / 2 {
                        let ang =
                            pos[i * 3 + a] as f64 * 10000f64.powf(-2.0 * k as f64 / width as f64);
                        let (x0, x1) = (
                            x[base + start + 2 * k] as f64,
                            x[base + start + 2 * k + 1] as f64,
                        );
                        want[base + start + 2 * k] = x0 * ang.cos() - x1 * ang.sin();
                        want[base + start + 2 * k + 1] = x0 * ang.sin() + x1 * ang.cos();
                    }
                    start += width;
                }
            }
        }
        assert_close(&format!("interleaved3 {axes:?}"), &got, &want, 1e-6);
    }
}

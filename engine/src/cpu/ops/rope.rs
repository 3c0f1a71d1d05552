//! Rotary embeddings: the und expert's M-RoPE (rotate_half, f32 arithmetic exactly as HF computes it) and
//! the gen expert's 3-axis interleaved RoPE (f64 like diffusers' complex128 multiply).

use super::for_rows;

/// HF's `inv_freq = 1 / theta^(arange(0, D, 2) / D)`: the exponent is an f32 quotient and the power an
/// f32 result; computing the power in f64 and rounding gives the correctly rounded f32 that libm's powf
/// returns.
fn mrope_inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|k| {
            let e = (2 * k) as f32 / head_dim as f32;
            let p = ((theta as f32) as f64).powf(e as f64) as f32;
            1.0 / p
        })
        .collect()
}

/// The vision tower's axial 2-D rotary (HF `Qwen2_5_VLVisionRotaryEmbedding`): x `[n, heads*head_dim]`,
/// positions `[2, n]` (rows h, w). `inv_freq` is computed over `head_dim/2` dims (the same f32 arithmetic
/// as `mrope_inv_freq`), the first `head_dim/4` frequency indices rotate by h, the rest by w.
pub(crate) fn vision2d(
    x: &[f32],
    positions: &[i32],
    heads: usize,
    head_dim: usize,
    theta: f64,
    out: &mut [f32],
) {
    let n = positions.len() / 2;
    let half = head_dim / 2;
    let quarter = head_dim / 4;
    let inv = mrope_inv_freq(theta, half);
    let width = heads * head_dim;
    for_rows(out, width, 8, |i, o| {
        let (h, w) = (positions[i] as f32, positions[n + i] as f32);
        let cs: Vec<(f32, f32)> = (0..half)
            .map(|k| {
                let angle = if k < quarter {
                    h * inv[k]
                } else {
                    w * inv[k - quarter]
                };
                (angle.cos(), angle.sin())
            })
            .collect();
        let x = &x[i * width..(i + 1) * width];
        for (xh, oh) in x.chunks_exact(head_dim).zip(o.chunks_exact_mut(head_dim)) {
            for (k, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = (xh[k], xh[k + half]);
                oh[k] = a * c + (-b) * s;
                oh[k + half] = b * c + a * s;
            }
        }
    });
}

/// Which position row (t, h, w) each frequency index uses.
fn mrope_rows(section: [usize; 3], half: usize) -> Vec<usize> {
    (0..half)
        .map(|k| {
            if k < section[0] {
                0
            } else if k < section[0] + section[1] {
                1
            } else {
                2
            }
        })
        .collect()
}

/// x `[n, heads*head_dim]`, positions `[3, n]` (rows t, h, w).
pub(crate) fn mrope(
    x: &[f32],
    positions: &[i32],
    heads: usize,
    head_dim: usize,
    section: [usize; 3],
    theta: f64,
    out: &mut [f32],
) {
    let n = positions.len() / 3;
    let half = head_dim / 2;
    let inv = mrope_inv_freq(theta, head_dim);
    let rows = mrope_rows(section, half);
    let width = heads * head_dim;
    for_rows(out, width, 8, |i, o| {
        let mut cs = vec![(0f32, 0f32); half];
        for k in 0..half {
            let angle = positions[rows[k] * n + i] as f32 * inv[k];
            cs[k] = (angle.cos(), angle.sin());
        }
        let x = &x[i * width..(i + 1) * width];
        for (xh, oh) in x.chunks_exact(head_dim).zip(o.chunks_exact_mut(head_dim)) {
            for (k, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = (xh[k], xh[k + half]);
                oh[k] = a * c + (-b) * s;
                oh[k + half] = b * c + a * s;
            }
        }
    });
}

/// x `[n, heads*head_dim]`, positions `[n, 3]`; axis widths `axes` sum to head_dim, each even.
pub(crate) fn interleaved3(
    x: &[f32],
    positions: &[i32],
    heads: usize,
    head_dim: usize,
    axes: [usize; 3],
    theta: f64,
    out: &mut [f32],
) {
    // (axis, inverse frequency) per rotated pair, in pair order.
    let pairs: Vec<(usize, f64)> = axes
        .iter()
        .enumerate()
        .flat_map(|(axis, &a)| {
            (0..a / 2).map(move |k| (axis, 1.0 / theta.powf((2 * k) as f64 / a as f64)))
        })
        .collect();
    let width = heads * head_dim;
    for_rows(out, width, 8, |i, o| {
        let cs: Vec<(f64, f64)> = pairs
            .iter()
            .map(|&(axis, inv)| {
                let angle = positions[i * 3 + axis] as f64 * inv;
                (angle.cos(), angle.sin())
            })
            .collect();
        let x = &x[i * width..(i + 1) * width];
        for (xh, oh) in x.chunks_exact(head_dim).zip(o.chunks_exact_mut(head_dim)) {
            for (p, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = (xh[2 * p] as f64, xh[2 * p + 1] as f64);
                oh[2 * p] = (a * c - b * s) as f32;
                oh[2 * p + 1] = (a * s + b * c) as f32;
            }
        }
    });
}

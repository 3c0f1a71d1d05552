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
///
/// A pair's angle depends on one axis's position, and the rows of an image share few of them (a
/// 64 x 64 latent has 64 heights and 64 widths): each axis's `(cos, sin)` are computed once per
/// position it spans ([`AxisTable`]) instead of once per row, the same f64 values. Per row they
/// were 32 f64 sincos at head dim 64, all of the op's 2 ms at 4112 rows.
pub(crate) fn interleaved3(
    x: &[f32],
    positions: &[i32],
    heads: usize,
    head_dim: usize,
    axes: [usize; 3],
    theta: f64,
    out: &mut [f32],
) {
    let n = positions.len() / 3;
    let tables: Vec<AxisTable> = axes
        .iter()
        .enumerate()
        .map(|(axis, &a)| {
            let inv: Vec<f64> = (0..a / 2)
                .map(|k| 1.0 / theta.powf((2 * k) as f64 / a as f64))
                .collect();
            AxisTable::new((0..n).map(|i| positions[i * 3 + axis]), inv)
        })
        .collect();
    let width = heads * head_dim;
    for_rows(out, width, 8, |i, o| {
        // (cos, sin) per rotated pair, in pair order (the axes' pairs one after another).
        let mut cs: Vec<(f64, f64)> = Vec::with_capacity(head_dim / 2);
        for (axis, t) in tables.iter().enumerate() {
            t.extend(positions[i * 3 + axis], &mut cs);
        }
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

/// One axis's `(cos, sin)` of `position * inv[k]` (f64) for every whole position from the least to
/// the greatest the rows use, where that span is no longer than the rows; otherwise (positions far
/// apart) none, and each row computes its own.
struct AxisTable {
    inv: Vec<f64>,
    first: i64,
    /// Position `first + j`'s pairs at `j * inv.len()`.
    values: Vec<(f64, f64)>,
}

impl AxisTable {
    fn new(positions: impl Iterator<Item = i32> + Clone, inv: Vec<f64>) -> Self {
        let rows = positions.clone().count();
        let lo = positions.clone().min().unwrap_or(0) as i64;
        let hi = positions.max().unwrap_or(-1) as i64;
        let span = (hi - lo + 1).max(0) as usize;
        let values = if span <= rows {
            (lo..=hi)
                .flat_map(|p| inv.iter().map(move |&f| Self::angle(p, f)))
                .collect()
        } else {
            Vec::new()
        };
        AxisTable {
            inv,
            first: lo,
            values,
        }
    }

    fn angle(position: i64, inv: f64) -> (f64, f64) {
        let angle = position as f64 * inv;
        (angle.cos(), angle.sin())
    }

    /// Appends `position`'s pairs to `cs`.
    fn extend(&self, position: i32, cs: &mut Vec<(f64, f64)>) {
        let k = self.inv.len();
        let j = position as i64 - self.first;
        if !self.values.is_empty() && j >= 0 && ((j as usize + 1) * k) <= self.values.len() {
            cs.extend_from_slice(&self.values[j as usize * k..][..k]);
        } else {
            cs.extend(self.inv.iter().map(|&f| Self::angle(position as i64, f)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::test_values::values;

    /// The 3-axis RoPE from its tables gives the bits of the formula computed per row, for
    /// positions that span fewer values than rows (tables) and far-apart ones (computed per row),
    /// negative ones included.
    #[test]
    fn interleaved3_tables_give_the_per_row_bits() {
        let (heads, head_dim, axes, theta) = (3, 16, [4, 6, 6], 10_000.0);
        let n = 40;
        let x = values(n * heads * head_dim, 9);
        let dense: Vec<i32> = (0..n as i32)
            .flat_map(|i| [i % 3 - 1, i / 7, i % 7])
            .collect();
        let sparse: Vec<i32> = (0..n as i32).flat_map(|i| [i * 1000, -i * 77, 5]).collect();
        for positions in [dense, sparse] {
            let mut got = vec![f32::NAN; x.len()];
            interleaved3(&x, &positions, heads, head_dim, axes, theta, &mut got);
            for i in 0..n {
                let mut pair = 0;
                for (axis, &a) in axes.iter().enumerate() {
                    for k in 0..a / 2 {
                        let inv = 1.0 / theta.powf((2 * k) as f64 / a as f64);
                        let angle = positions[i * 3 + axis] as f64 * inv;
                        let (c, s) = (angle.cos(), angle.sin());
                        for h in 0..heads {
                            let at = i * heads * head_dim + h * head_dim + 2 * pair;
                            let (a, b) = (x[at] as f64, x[at + 1] as f64);
                            assert_eq!(got[at].to_bits(), ((a * c - b * s) as f32).to_bits());
                            assert_eq!(got[at + 1].to_bits(), ((a * s + b * c) as f32).to_bits());
                        }
                        pair += 1;
                    }
                }
            }
        }
    }
}

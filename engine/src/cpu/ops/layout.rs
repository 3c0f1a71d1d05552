//! Data movement: slices, concatenation, (un)patchify, transpose, nearest upsampling.

use super::{for_rows, map_indexed};

/// Columns `[start, start+len)` of `x` `[n, c]`.
pub(crate) fn slice_cols(x: &[f32], c: usize, start: usize, len: usize, out: &mut [f32]) {
    for_rows(out, len, 1, |r, o| {
        o.copy_from_slice(&x[r * c + start..r * c + start + len])
    });
}

/// Row-wise concatenation: each part is a contiguous block of the output.
pub(crate) fn concat_rows(parts: &[&[f32]], out: &mut [f32]) {
    let mut off = 0;
    for p in parts {
        out[off..off + p.len()].copy_from_slice(p);
        off += p.len();
    }
}

/// `[c, h, w]` -> `[(h/p)*(w/p), p*p*c]`, token `(i, j)` row-major, features `(p1 p2 c)`.
pub(crate) fn patchify(x: &[f32], c: usize, h: usize, w: usize, p: usize, out: &mut [f32]) {
    let (wt, f) = (w / p, p * p * c);
    for_rows(out, f, 1, |t, o| {
        let (ti, tj) = (t / wt, t % wt);
        for p1 in 0..p {
            for p2 in 0..p {
                for ch in 0..c {
                    o[(p1 * p + p2) * c + ch] = x[(ch * h + ti * p + p1) * w + tj * p + p2];
                }
            }
        }
    });
}

/// Inverse of `patchify`: tokens `[(h/p)*(w/p), p*p*c]` -> `[c, h, w]`.
pub(crate) fn unpatchify(x: &[f32], c: usize, h: usize, w: usize, p: usize, out: &mut [f32]) {
    let (wt, f) = (w / p, p * p * c);
    // One output row (channel, y) at a time keeps the writes contiguous.
    for_rows(out, w, 1, |row, o| {
        let (ch, y) = (row / h, row % h);
        let (ti, p1) = (y / p, y % p);
        for (xx, v) in o.iter_mut().enumerate() {
            let (tj, p2) = (xx / p, xx % p);
            *v = x[(ti * wt + tj) * f + (p1 * p + p2) * c + ch];
        }
    });
}

/// `[a, b]` -> `[b, a]`.
pub(crate) fn transpose(x: &[f32], a: usize, b: usize, out: &mut [f32]) {
    // Tiles of BLOCK output rows: each input row contributes BLOCK contiguous reads, and each output row
    // is written sequentially, so neither side strides through memory one value at a time.
    const BLOCK: usize = 16;
    if a == 0 {
        return;
    }
    for_rows(out, BLOCK * a, BLOCK, |blk, o| {
        let j0 = blk * BLOCK;
        let rows = o.len() / a;
        for i in 0..a {
            let src = &x[i * b + j0..i * b + j0 + rows];
            for (jj, &v) in src.iter().enumerate() {
                o[jj * a + i] = v;
            }
        }
    });
}

/// Nearest-neighbour x2: `[c, h, w]` -> `[c, 2h, 2w]`.
pub(crate) fn upsample2x(x: &[f32], h: usize, w: usize, out: &mut [f32]) {
    let (h2, w2) = (2 * h, 2 * w);
    for_rows(out, w2, 1, |row, o| {
        let (ch, y) = (row / h2, row % h2);
        let src = &x[(ch * h + y / 2) * w..(ch * h + y / 2 + 1) * w];
        // Each value written twice side by side (vectorizes as an interleave; indexing `src[xx / 2]`
        // per output value did not).
        for (pair, &v) in o.chunks_exact_mut(2).zip(src) {
            pair[0] = v;
            pair[1] = v;
        }
    });
}

/// Plain copy (reshape out of the arena, slices of rows).
pub(crate) fn copy(x: &[f32], out: &mut [f32]) {
    map_indexed(out, |i| x[i]);
}

/// `out[i] = x[rows[i]]` over `c`-wide rows (indices checked at graph build).
pub(crate) fn gather_rows(x: &[f32], c: usize, rows: &[usize], out: &mut [f32]) {
    for_rows(out, c, 1, |i, o| {
        o.copy_from_slice(&x[rows[i] * c..(rows[i] + 1) * c])
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::test_values::values;

    /// Nearest 2x upsampling: every output value is its source pixel's, for odd and even sizes and
    /// enough channels to run in parallel.
    #[test]
    fn upsample2x_repeats_each_pixel_twice_each_way() {
        for &(c, h, w) in &[(1, 1, 1), (3, 5, 7), (2, 4, 6), (40, 33, 65)] {
            let x = values(c * h * w, (c + h + w) as u64);
            let mut out = vec![f32::NAN; c * 4 * h * w];
            upsample2x(&x, h, w, &mut out);
            for ch in 0..c {
                for y in 0..2 * h {
                    for xx in 0..2 * w {
                        let got = out[(ch * 2 * h + y) * 2 * w + xx];
                        let want = x[(ch * h + y / 2) * w + xx / 2];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{c}x{h}x{w} at ({ch}, {y}, {xx})"
                        );
                    }
                }
            }
        }
    }
}

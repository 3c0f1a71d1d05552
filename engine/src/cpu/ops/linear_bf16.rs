//! nn.Linear over a row-major bf16 weight: the weight is widened a panel of output rows at a time
//! into a per-thread buffer, and each panel goes through the f32 `linear` (the same gemm), panels in
//! parallel. Only one panel per thread is ever f32, never the whole matrix.
//!
//! Where the packed GEMM runs (x86_64 with AVX2+FMA), a bf16 matrix that only linear ops read is
//! packed at load instead ([`WeightData::PackedBf16`](crate::WeightData::PackedBf16)) and never
//! comes here: this path widens and repacks per call. It serves the rest: a table an embedding
//! lookup also reads, weights given row-major, other CPUs.

use super::bf16::{widen_into, with_scratch, Scratch};
use super::linear::linear;
use half::bf16;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

/// Target f32 values of one widened panel (4 MiB). gemm packs the whole input again for every panel,
/// so panels much smaller than this lose to that; much larger ones fall out of the caches before gemm
/// reads them back. Panels never go below [`min_panel`], whatever `k` is.
const PANEL_VALUES: usize = 1 << 20;

/// Panel rows are a multiple of this (gemm's f32 micro-kernel height on AVX-512, twice that on AVX2),
/// so that only the last panel ends in a partial micro-panel.
const PANEL_STEP: usize = 48;

/// The fewest weight rows a panel may have when `rows` input rows go through it.
///
/// gemm-common 0.19 picks its kernel from the product's dimensions (it computes `y^T = w x^T`, so
/// `m` = weight rows, `n` = input rows): `m*n <= 256` takes a horizontal-reduction kernel, `m, n <= 64`
/// takes k-blocks of 512 (else blocks sized from the caches, from `k` alone), `n == 1` a row-major
/// gemv. Each picks its own summation order. A panel must fall on the same side of every threshold
/// as the whole product, so that each output sums its `k` terms in the same order as the f32 path and
/// the result is bit-identical; these bounds guarantee it for any whole product at least twice as
/// wide, which [`panels`] ensures before it splits.
fn min_panel(rows: usize) -> usize {
    let past_horizontal = 256 / rows.max(1) + 1;
    if rows <= 64 {
        past_horizontal.max(65)
    } else {
        past_horizontal.max(2)
    }
}

/// Output-row ranges covering `0..out`: all but the last `step` rows long, `step` being at least
/// `min_panel(rows)` and `panel_values / k` rounded up to [`PANEL_STEP`]; the last one between `step`
/// and `2 * step - 1`. A single range (the whole weight) when `out < 2 * step`.
fn panels(out: usize, rows: usize, k: usize, panel_values: usize) -> Vec<Range<usize>> {
    let step = min_panel(rows)
        .max(panel_values / k.max(1))
        .next_multiple_of(PANEL_STEP);
    let count = (out / step).max(1);
    (0..count)
        .map(|i| i * step..if i + 1 == count { out } else { (i + 1) * step })
        .collect()
}

/// x `[n, k]`, w `[out, k]` as bf16, bias `[out]` -> y `[n, out]`, bit-identical to `linear` on the
/// widened weight.
pub(crate) fn linear_bf16(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[bf16],
    out_features: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let panels = panels(out_features, n, k, PANEL_VALUES);
    by_panels(&panels, x, w, [n, k, out_features], bias, y);
}

/// `linear_bf16` over the given panels of the weight's rows.
fn by_panels(
    panels: &[Range<usize>],
    x: &[f32],
    w: &[bf16],
    [n, k, out_features]: [usize; 3],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    if n == 0 || panels.len() <= 1 {
        with_scratch(Scratch::Weight, out_features * k, |wf| {
            widen_into(w, wf);
            linear(x, n, k, wf, out_features, bias, y);
        });
        return;
    }
    // Panels write disjoint column ranges of y; each computes into its own buffer and copies its
    // columns in under the lock, which is held only for the copy (n * panel values, against
    // n * panel * k multiply-adds of compute).
    let y = Mutex::new(y);
    panels.par_iter().with_max_len(1).for_each(|r| {
        let p = r.len();
        with_scratch(Scratch::Weight, p * k, |wf| {
            widen_into(&w[r.start * k..r.end * k], wf);
            with_scratch(Scratch::Out, n * p, |yp| {
                linear(x, n, k, wf, p, bias.map(|b| &b[r.clone()]), yp);
                let mut y = y.lock().unwrap_or_else(PoisonError::into_inner);
                for (dst, src) in y.chunks_mut(out_features).zip(yp.chunks(p)) {
                    dst[r.clone()].copy_from_slice(src);
                }
            });
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded values in about [-1, 1), the weight's rounded to bf16.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(0x9E37_79B1).rotate_left(13) ^ seed;
                (h.wrapping_mul(0x85EB_CA6B) >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn panels_cover_and_respect_the_minimum() {
        for &(out, rows, k) in &[
            (1, 1, 1),
            (513, 1, 4096),
            (514, 1, 4096),
            (3584, 1, 3584),
            (18944, 7, 3584),
            (130, 64, 9000),
            (129, 65, 9000),
            (1000, 3, 10),
            (0, 5, 5),
        ] {
            for pv in [1, PANEL_VALUES] {
                let ps = panels(out, rows, k, pv);
                assert_eq!(ps.first().map_or(0, |r| r.start), 0);
                assert_eq!(ps.last().map_or(0, |r| r.end), out);
                assert!(ps.windows(2).all(|w| w[0].end == w[1].start));
                if ps.len() > 1 {
                    let min = ps.iter().map(|r| r.len()).min().unwrap();
                    assert!(min >= min_panel(rows), "{out} {rows} {k}");
                }
            }
        }
        assert_eq!(min_panel(1), 257);
        assert_eq!(min_panel(2), 129);
        assert_eq!(min_panel(4), 65);
        assert_eq!(min_panel(100), 3);
    }

    /// Panels at the smallest size the rule allows (so every split sits next to a gemm threshold) give
    /// the f32 result bit for bit: decode rows, 2 and 3 rows, k <= 2, k > 512, rows either side of 64.
    #[test]
    fn smallest_panels_are_bit_identical() {
        for &(n, k, out) in &[
            (1, 600, 700),
            (1, 2, 600),
            (2, 300, 300),
            (3, 40, 200),
            (5, 700, 200),
            (64, 50, 200),
            (65, 600, 100),
            (200, 3, 150),
        ] {
            let ps = panels(out, n, k, 1);
            assert!(ps.len() > 1, "{n}x{k}->{out} must split");
            let (x, wf, b) = (values(n * k, 1), values(out * k, 2), values(out, 3));
            let w: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            for bias in [None, Some(b.as_slice())] {
                let (mut want, mut got) = (vec![0.0; n * out], vec![f32::NAN; n * out]);
                linear(&x, n, k, &wf, out, bias, &mut want);
                by_panels(&ps, &x, &w, [n, k, out], bias, &mut got);
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{n}x{k}->{out} bias {}", bias.is_some());
            }
        }
    }
}

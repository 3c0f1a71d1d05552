//! RMSNorm, LayerNorm and GroupNorm. Statistics are accumulated in f64: the result is then the correctly
//! rounded f32 of the exact mean (torch's f32 reductions are pairwise and land within an ulp of it), so
//! the CPU reference carries no summation-order error of its own.

use super::{for_rows, sums};
use rayon::prelude::*;

/// Over rows of `dim`: `y = x * rsqrt(mean(x^2) + eps) * weight`.
pub(crate) fn rms_norm(x: &[f32], weight: Option<&[f32]>, dim: usize, eps: f32, out: &mut [f32]) {
    for_rows(out, dim, 4, |r, o| {
        let x = &x[r * dim..(r + 1) * dim];
        let ms = (sums::sum_sq(x) / dim as f64) as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        match weight {
            Some(w) => o
                .iter_mut()
                .zip(x)
                .zip(w)
                .for_each(|((o, x), w)| *o = x * inv * w),
            None => o.iter_mut().zip(x).for_each(|(o, x)| *o = x * inv),
        }
    });
}

/// Mean and `1/sqrt(biased variance + eps)` of `x`, two-pass in f64.
fn stats(x: &[f32], eps: f64) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let mean = sums::sum(x) / n;
    let var = sums::sum_sq_dev(x, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Over rows of `dim`, no affine: `(x - mean) * rsqrt(var + eps)`.
pub(crate) fn layer_norm(x: &[f32], dim: usize, eps: f32, out: &mut [f32]) {
    for_rows(out, dim, 4, |r, o| {
        let x = &x[r * dim..(r + 1) * dim];
        let (mean, inv) = stats(x, eps as f64);
        o.iter_mut()
            .zip(x)
            .for_each(|(o, &x)| *o = ((x as f64 - mean) * inv) as f32);
    });
}

/// GroupNorm of `[C, hw]` (image `[C, H, W]`): `groups` groups of consecutive channels, per-channel affine.
pub(crate) fn group_norm(
    x: &[f32],
    channels: usize,
    hw: usize,
    (weight, bias): (&[f32], &[f32]),
    groups: usize,
    eps: f32,
    out: &mut [f32],
) {
    let cpg = channels / groups;
    let glen = cpg * hw;
    if glen == 0 {
        return;
    }
    // A group's channels are contiguous in [C, H, W], so groups are disjoint chunks of the output.
    out.par_chunks_mut(glen).enumerate().for_each(|(g, o)| {
        let xs = &x[g * glen..(g + 1) * glen];
        let (mean, inv) = stats(xs, eps as f64);
        for (cl, (oc, xc)) in o.chunks_mut(hw).zip(xs.chunks(hw)).enumerate() {
            let c = g * cpg + cl;
            let (w, b) = (weight[c] as f64, bias[c] as f64);
            oc.iter_mut()
                .zip(xc)
                .for_each(|(o, &x)| *o = ((x as f64 - mean) * inv * w + b) as f32);
        }
    });
}

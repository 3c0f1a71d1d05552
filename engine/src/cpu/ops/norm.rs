//! RMSNorm, LayerNorm and GroupNorm. Statistics are accumulated in f64: the result is then the correctly
//! rounded f32 of the exact mean (torch's f32 reductions are pairwise and land within an ulp of it), so
//! the CPU reference carries no summation-order error of its own.

use super::{for_rows, sums};
use rayon::prelude::*;

/// A row norm of the graph, one row at a time: RMSNorm (`x * rsqrt(mean(x^2) + eps) * weight`) or
/// LayerNorm without affine (`(x - mean) * rsqrt(var + eps)`). The ops below and the fused passes of
/// `norm_fused` share it, so a fused pass gives the bits of the norm then its consumer.
#[derive(Clone, Copy)]
pub(crate) enum RowNorm<'a> {
    Rms { weight: Option<&'a [f32]>, eps: f32 },
    Layer { eps: f32 },
}

impl RowNorm<'_> {
    /// `o` = the norm of the row `x` (equal lengths).
    #[inline]
    pub(crate) fn apply(self, x: &[f32], o: &mut [f32]) {
        match self {
            RowNorm::Rms { weight, eps } => {
                let ms = (sums::sum_sq(x) / x.len() as f64) as f32;
                let inv = 1.0 / (ms + eps).sqrt();
                match weight {
                    Some(w) => o
                        .iter_mut()
                        .zip(x)
                        .zip(w)
                        .for_each(|((o, x), w)| *o = x * inv * w),
                    None => o.iter_mut().zip(x).for_each(|(o, x)| *o = x * inv),
                }
            }
            RowNorm::Layer { eps } => {
                let (mean, inv) = stats(x, eps as f64);
                o.iter_mut()
                    .zip(x)
                    .for_each(|(o, &x)| *o = ((x as f64 - mean) * inv) as f32);
            }
        }
    }
}

/// Over rows of `dim`: `y = x * rsqrt(mean(x^2) + eps) * weight`.
pub(crate) fn rms_norm(x: &[f32], weight: Option<&[f32]>, dim: usize, eps: f32, out: &mut [f32]) {
    row_norm(x, RowNorm::Rms { weight, eps }, dim, out)
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
    row_norm(x, RowNorm::Layer { eps }, dim, out)
}

fn row_norm(x: &[f32], norm: RowNorm<'_>, dim: usize, out: &mut [f32]) {
    for_rows(out, dim, 4, |r, o| {
        norm.apply(&x[r * dim..(r + 1) * dim], o)
    });
}

/// One normalized channel in f32: `((x - mean_hi) - mean_lo) * scale + shift`, the f64 mean split in
/// two f32 so that centering loses nothing a one-f32 mean would (the VAE's activations can sit far
/// from zero: with x ~ 300 +- 1, `x * scale + (shift - mean * scale)` had 5e-6 relative error, this
/// form keeps 1e-7).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelAffine {
    mean_hi: f32,
    mean_lo: f32,
    scale: f32,
    shift: f32,
}

impl ChannelAffine {
    pub(crate) fn new(mean: f64, scale: f64, shift: f32) -> Self {
        let mean_hi = mean as f32;
        ChannelAffine {
            mean_hi,
            mean_lo: (mean - mean_hi as f64) as f32,
            scale: scale as f32,
            shift,
        }
    }

    #[inline(always)]
    pub(crate) fn apply(self, x: f32) -> f32 {
        ((x - self.mean_hi) - self.mean_lo) * self.scale + self.shift
    }
}

/// GroupNorm of `[C, hw]` (image `[C, H, W]`): `groups` groups of consecutive channels, per-channel
/// affine, and with `silu` the SiLU of the result (the fused `GroupNorm` + `Silu` pair), written in the
/// same pass.
#[allow(clippy::too_many_arguments)] // the op's attributes, as the graph lists them
pub(crate) fn group_norm(
    x: &[f32],
    channels: usize,
    hw: usize,
    (weight, bias): (&[f32], &[f32]),
    groups: usize,
    eps: f32,
    silu: bool,
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
            let affine = ChannelAffine::new(mean, inv * weight[c] as f64, bias[c]);
            if silu {
                super::fast_exp::channel_silu(xc, affine, oc);
            } else {
                oc.iter_mut()
                    .zip(xc)
                    .for_each(|(o, &x)| *o = affine.apply(x));
            }
        }
    });
}

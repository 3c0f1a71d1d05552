//! exp for the CPU backend's attention softmax, SwiGLU and SiLU, in a form LLVM vectorizes: libm's `expf` is a
//! scalar call per element, and on the mid config's gen step it was a third of the attention's time
//! (62 -> 41 ms per cond branch with the exponential taken out, 2-core x86 build machine) and most of
//! SwiGLU's.
//!
//! Cephes' `expf` scheme: `x = n ln2 + r` with `|r| <= ln2/2` (ln2 split in two so `n ln2` is exact), a
//! degree-6 polynomial for `e^r`, and `2^n` put together from its exponent bits. Within 2 ulp of the
//! correctly rounded result over the clamped range; NaN stays NaN. Only plain multiplies and adds (no
//! `mul_add`): the AVX2 instantiation and the portable one give the same bits on every machine.

use super::norm::ChannelAffine;
use super::simd::{at_level, level, Level};

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts, so that `n * LN2_HI` is exact for the exponents here.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// The polynomial for `(e^r - 1 - r) / r^2`, highest power first (Horner's order).
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// Below this, e^x is under f32's smallest normal; the result is that normal's neighbourhood (at most
/// 1.2e-38), which no sum or product here can tell from 0.
const X_MIN: f32 = -87.336_55;
/// Above this, e^x overflows f32.
const X_MAX: f32 = 88.722_83;

#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Comparisons, not min/max: a NaN passes through both and comes out NaN.
    let x = if x < X_MIN { X_MIN } else { x };
    let x = if x > X_MAX { X_MAX } else { x };
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let c = EXP_POLY;
    let p = (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) * r2 + r + 1.0;
    // n is in [-126, 128]; 2^128 is built as 2 * 2^127 so the exponent field never overflows.
    let half = (n * 0.5).floor();
    p * pow2(half) * pow2(n - half)
}

/// `2^k` for a whole `k` in [-126, 127], from its exponent bits. `k + 127` is put in the mantissa by
/// adding 2^23, not by a float-to-int cast: Rust's `as i32` saturates, which LLVM does not vectorize
/// on AVX2 (the exp ran one lane at a time, 2 ns per element). A NaN `k` gives 0 (and the exp's
/// polynomial is NaN then, so the product stays NaN).
#[inline(always)]
fn pow2(k: f32) -> f32 {
    let biased = (k + (127.0 + 8_388_608.0)).to_bits() & 0x7F_FFFF;
    f32::from_bits(biased << 23)
}

#[inline(always)]
fn exp_shifted_sum_body(row: &mut [f32], shift: f32) -> f64 {
    // The exp alone in its loop vectorizes (one exp per iteration interleaved with f64 sums did not:
    // 2 ns per element on AVX2); then the sum in eight partial sums, the same total on every build.
    for v in row.iter_mut() {
        *v = exp(*v - shift);
    }
    super::sums::sum(row)
}

#[inline(always)]
fn swiglu_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

#[inline(always)]
fn silu_body(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v / (1.0 + exp(-v));
    }
}

#[inline(always)]
fn channel_silu_body(x: &[f32], affine: ChannelAffine, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        let y = affine.apply(v);
        *o = y / (1.0 + exp(-y));
    }
}

at_level!(silu_at = silu_body(x: &[f32], out: &mut [f32]) -> ());
at_level!(channel_silu_at = channel_silu_body(x: &[f32], affine: ChannelAffine, out: &mut [f32]) -> ());
at_level!(swiglu_at = swiglu_body(gate: &[f32], up: &[f32], out: &mut [f32]) -> ());
at_level!(exp_shifted_sum_at = exp_shifted_sum_body(row: &mut [f32], shift: f32) -> f64);

/// `v = exp(v - shift)` for every element of `row`; returns the sum of the results in f64 (eight
/// partial sums in a fixed order: the same total on every build). Within 2 ulp of `expf`; results under
/// f32's smallest normal come out as about 1.2e-38, not 0.
pub fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f64 {
    exp_shifted_sum_at(level(), row, shift)
}

/// `out = silu(x) = x / (1 + e^-x)` elementwise (equal lengths).
pub(crate) fn silu(x: &[f32], out: &mut [f32]) {
    silu_at(level(), x, out)
}

/// `out = silu(affine(x))` elementwise (equal lengths): a GroupNorm channel and the SiLU after it in
/// one pass.
pub(crate) fn channel_silu(x: &[f32], affine: ChannelAffine, out: &mut [f32]) {
    channel_silu_at(level(), x, affine, out)
}

/// `out = silu(gate) * up` elementwise (equal lengths).
pub(crate) fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_at(level(), gate, up, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn within_two_ulp_of_f64_exp_over_the_range() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.5 {
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            worst = worst.max(ulps(got, want));
            x += 0.001_37;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1000.0) < 1.2e-38 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 3.0e38);
    }

    #[test]
    fn pow2_is_exact_over_the_exponent_range() {
        for k in -126..=127 {
            assert_eq!(pow2(k as f32), 2f32.powi(k), "2^{k}");
        }
        assert_eq!(pow2(f32::NAN), 0.0);
    }

    /// Every level this CPU has, lowest first.
    fn levels() -> Vec<Level> {
        [Level::Portable, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|&l| l == Level::Portable || l as u8 <= level() as u8)
            .collect()
    }

    #[test]
    fn every_level_gives_the_same_bits() {
        let row: Vec<f32> = (0..1003)
            .map(|i| ((i * 41) % 307) as f32 * -0.07 + 3.0)
            .collect();
        let up: Vec<f32> = row.iter().map(|v| v * 0.3 - 1.0).collect();
        let run = |l| {
            let mut e = row.clone();
            let sum = exp_shifted_sum_at(l, &mut e, 0.5);
            let (mut si, mut sw) = (vec![0f32; row.len()], vec![0f32; row.len()]);
            silu_at(l, &row, &mut si);
            swiglu_at(l, &row, &up, &mut sw);
            let mut ss = vec![0f32; row.len()];
            let affine = ChannelAffine::new(1.25, 0.7, -0.3);
            channel_silu_at(l, &row, affine, &mut ss);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (sum.to_bits(), bits(&e), bits(&si), bits(&sw), bits(&ss))
        };
        let want = run(Level::Portable);
        let tested = levels();
        for &l in &tested[1..] {
            assert!(run(l) == want, "{l:?} differs from the portable loops");
        }
        if !tested.contains(&Level::Avx512) {
            eprintln!("note: this CPU has no AVX-512F; the AVX-512 loops were not compared");
        }
    }

    #[test]
    fn vector_and_portable_paths_agree_bit_for_bit() {
        let row: Vec<f32> = (0..1003).map(|i| ((i * 37) % 211) as f32 * -0.11).collect();
        let mut a = row.clone();
        let mut b = row.clone();
        let sa = exp_shifted_sum(&mut a, 0.25);
        let sb = exp_shifted_sum_body(&mut b, 0.25);
        assert_eq!(sa.to_bits(), sb.to_bits());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        let up: Vec<f32> = row.iter().map(|v| v * 0.3 + 1.0).collect();
        let gate: Vec<f32> = row.iter().map(|v| v + 11.0).collect();
        let (mut oa, mut ob) = (vec![0f32; row.len()], vec![0f32; row.len()]);
        swiglu(&gate, &up, &mut oa);
        swiglu_body(&gate, &up, &mut ob);
        assert!(oa.iter().zip(&ob).all(|(x, y)| x.to_bits() == y.to_bits()));
        let (mut sa, mut sb) = (vec![0f32; row.len()], vec![0f32; row.len()]);
        silu(&gate, &mut sa);
        silu_body(&gate, &mut sb);
        assert!(sa.iter().zip(&sb).all(|(x, y)| x.to_bits() == y.to_bits()));
        for (&g, &o) in gate.iter().zip(&sa) {
            let want = (g as f64 / (1.0 + (-g as f64).exp())) as f32;
            assert!(
                (o - want).abs() <= 4.0 * f32::EPSILON * want.abs().max(1e-30),
                "silu {g}: {o} vs {want}"
            );
        }
        // And against the f64 definition.
        for ((&g, &u), &o) in gate.iter().zip(&up).zip(&oa) {
            let want = (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32;
            assert!(
                (o - want).abs() <= 4.0 * f32::EPSILON * want.abs().max(1e-30),
                "{g} {u}: {o} vs {want}"
            );
        }
    }
}

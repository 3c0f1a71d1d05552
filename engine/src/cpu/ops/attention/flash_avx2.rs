//! The flash path's AVX2+FMA kernels, for CPUs without AVX-512 (the tile contract of
//! `flash_tile.rs`). Sixteen 8-lane registers hold a 6 x 16 sub-tile (12 accumulators, two B
//! vectors, a broadcast), so a 6 x 64 tile is four sub-tiles one after the other, and the softmax
//! step reads a block's scores back from memory a row at a time (a row is 8 registers).

#![deny(unsafe_op_in_unsafe_fn)]

use super::flash_tile::{kernel_set, Kernels, ScorePass, TILE_COLS, TILE_ROWS};
use crate::cpu::ops::fast_exp::{EXP_POLY, LN2_HI, LN2_LO};
use std::arch::x86_64::*;

/// Columns of one sub-tile: two 8-lane vectors.
const SUB: usize = 16;

kernel_set!(
    /// The AVX2+FMA kernel set.
    Avx2
);

/// [`score_tile`], then [`softmax_row`] on each row from memory.
///
/// # Safety
/// As [`Kernels::score_softmax_tile`], with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn score_softmax_tile(
    p: &ScorePass,
    live: &[usize; TILE_ROWS],
    max: &mut [f32; TILE_ROWS],
) -> [f32; TILE_ROWS] {
    // SAFETY: the function's contract; row `i` of the scores is 64 values at `s + i*lds`.
    unsafe {
        score_tile(p);
        std::array::from_fn(|i| softmax_row(p.s.add(i * p.lds), live[i], &mut max[i]))
    }
}

/// `p`'s scores, four 6 x 16 sub-tiles over the whole depth each, stored.
///
/// # Safety
/// As [`Kernels::score_tile`], with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn score_tile(p: &ScorePass) {
    // SAFETY: the function's contract: every access inside the promised ranges.
    unsafe {
        for c in (0..TILE_COLS).step_by(SUB) {
            let mut acc = [[_mm256_setzero_ps(); 2]; TILE_ROWS];
            if p.accumulate {
                for (i, row) in acc.iter_mut().enumerate() {
                    for (h, a) in row.iter_mut().enumerate() {
                        *a = _mm256_loadu_ps(p.s.add(i * p.lds + c + 8 * h));
                    }
                }
            }
            let (mut q, mut k) = (p.q, p.k.add(c));
            for _ in 0..p.depth {
                let b = [_mm256_loadu_ps(k), _mm256_loadu_ps(k.add(8))];
                for (i, row) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*q.add(i));
                    row[0] = _mm256_fmadd_ps(a, b[0], row[0]);
                    row[1] = _mm256_fmadd_ps(a, b[1], row[1]);
                }
                q = q.add(TILE_ROWS);
                k = k.add(TILE_COLS);
            }
            for (i, row) in acc.iter().enumerate() {
                for (h, a) in row.iter().enumerate() {
                    _mm256_storeu_ps(p.s.add(i * p.lds + c + 8 * h), *a);
                }
            }
        }
    }
}

/// The softmax step on one row of a block's 64 scores at `s` (see [`Kernels::score_softmax_tile`]).
///
/// The exponential is Cephes' `expf` scheme with FMAs (`x = n ln2 + r`, a degree-6 polynomial, then
/// `2^n` from its exponent bits); arguments below -87.34 give about 1.2e-38 (f32's smallest normal)
/// instead of a smaller value, which no sum here can tell from 0.
///
/// # Safety
/// AVX2 and FMA; `s` readable and writable for 64 values; `live <= 64`.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row(s: *mut f32, live: usize, max: &mut f32) -> f32 {
    // SAFETY: the function's contract: `s` holds the 64 values read and written.
    unsafe {
        if live == 0 {
            for v in 0..8 {
                _mm256_storeu_ps(s.add(8 * v), _mm256_setzero_ps());
            }
            return 0.0;
        }
        let x: [__m256; 8] = std::array::from_fn(|v| _mm256_loadu_ps(s.add(8 * v)));
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        // Lane masks: all ones where the key is live.
        let mask: [__m256; 8] = std::array::from_fn(|v| {
            let left = _mm256_set1_epi32(live as i32 - 8 * v as i32);
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(left, lanes))
        });
        let mut mx = _mm256_set1_ps(*max);
        for v in 0..8 {
            // Masked keys count as the running max (neutral); a NaN score may or may not win.
            mx = _mm256_max_ps(mx, _mm256_blendv_ps(mx, x[v], mask[v]));
        }
        let m = hmax(mx);
        let (shift, floor) = (_mm256_set1_ps(m), _mm256_set1_ps(-87.336_55));
        let mut sum = _mm256_setzero_ps();
        for v in 0..8 {
            // max(floor, x), not max(x, floor): the second operand comes back for a NaN.
            let e = exp8(_mm256_max_ps(floor, _mm256_sub_ps(x[v], shift)));
            let e = _mm256_and_ps(e, mask[v]);
            sum = _mm256_add_ps(sum, e);
            _mm256_storeu_ps(s.add(8 * v), e);
        }
        *max = m;
        hsum(sum)
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hmax(v: __m256) -> f32 {
    let h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_max_ss(h, _mm_movehdup_ps(h));
    _mm_cvtss_f32(h)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_movehdup_ps(h));
    _mm_cvtss_f32(h)
}

/// `e^x` for `x` in [-87.34, 0] (and NaN).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let c = |v: f32| _mm256_set1_ps(v);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        c(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, c(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, c(LN2_LO), r);
    let p = EXP_POLY[1..]
        .iter()
        .fold(c(EXP_POLY[0]), |p, &k| _mm256_fmadd_ps(p, r, c(k)));
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), c(1.0));
    // n in [-126, 0]: 2^n is the exponent field n + 127.
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
}

/// P V as four 6 x 16 sub-tiles over the block's keys each.
///
/// # Safety
/// As [`Kernels::pv_tile`], with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn pv_tile(p: *const f32, ldp: usize, v: *const f32, keys: usize, o: *mut f32, ldo: usize) {
    // SAFETY: the function's contract: every access inside the promised ranges.
    unsafe {
        for c in (0..TILE_COLS).step_by(SUB) {
            let mut acc = [[_mm256_setzero_ps(); 2]; TILE_ROWS];
            for (i, row) in acc.iter_mut().enumerate() {
                for (h, a) in row.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(o.add(i * ldo + c + 8 * h));
                }
            }
            let mut vp = v.add(c);
            for key in 0..keys {
                let b = [_mm256_loadu_ps(vp), _mm256_loadu_ps(vp.add(8))];
                for (i, row) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*p.add(i * ldp + key));
                    row[0] = _mm256_fmadd_ps(a, b[0], row[0]);
                    row[1] = _mm256_fmadd_ps(a, b[1], row[1]);
                }
                vp = vp.add(TILE_COLS);
            }
            for (i, row) in acc.iter().enumerate() {
                for (h, a) in row.iter().enumerate() {
                    _mm256_storeu_ps(o.add(i * ldo + c + 8 * h), *a);
                }
            }
        }
    }
}

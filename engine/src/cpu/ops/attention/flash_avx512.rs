//! The flash path's AVX-512 micro-kernels: a 6 x 64 register tile (four 16-lane vectors per row,
//! 24 accumulators).
//!
//! - [`score_tile`]: six query rows (packed `[d][6]`) against 64 keys (packed `[d][64]`) over a
//!   depth pass of the head dimension.
//! - [`pv_tile`]: six rows of probabilities (row-major, `ldp` apart) times a block of V (packed
//!   `[key][64]`: 64 of the head's columns) added into six rows of the output accumulator.
//! - [`score_softmax_tile`]: a block's last score pass, then each row's softmax step on the scores
//!   in registers (exponentials against the running max, masked keys zero).

#![deny(unsafe_op_in_unsafe_fn)]

use super::flash_tile::{kernel_set, Kernels, ScorePass, TILE_COLS, TILE_ROWS};
use crate::cpu::ops::fast_exp::{EXP_POLY, LN2_HI, LN2_LO};
use std::arch::x86_64::*;

/// 16-lane vectors per tile row: 6 x 4 accumulators, four B vectors and a broadcast fill 29 of the 32
/// registers. Per step 4 loads, 6 broadcasts and 24 FMAs (a 6 x 32 tile's 2 + 6 for 12 measured
/// slower: its step was as many instructions as the front end issues in the FMAs' time).
const VECS: usize = 4;
const _: () = assert!(16 * VECS == TILE_COLS);

kernel_set!(
    /// The AVX-512F kernel set.
    Avx512
);

/// `p`'s scores, in registers.
///
/// # Safety
/// As [`score_tile`].
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores(p: &ScorePass) -> [[__m512; VECS]; TILE_ROWS] {
    let ScorePass {
        q,
        k,
        depth,
        s,
        lds,
        accumulate,
    } = *p;
    // SAFETY: the caller's promise: AVX-512F, and every access inside the promised ranges.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); VECS]; TILE_ROWS];
        if accumulate {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, a) in row.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(s.add(i * lds + 16 * v));
                }
            }
        }
        let (mut q, mut k) = (q, k);
        for _ in 0..depth {
            let b: [__m512; VECS] = std::array::from_fn(|v| _mm512_loadu_ps(k.add(16 * v)));
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*q.add(i));
                for (v, c) in row.iter_mut().enumerate() {
                    *c = _mm512_fmadd_ps(a, b[v], *c);
                }
            }
            q = q.add(TILE_ROWS);
            k = k.add(TILE_COLS);
        }
        acc
    }
}

/// Computes and stores `p`'s scores: a depth pass before a block's last.
///
/// # Safety
/// AVX-512F; `p.q` readable for `6*depth` values, `p.k` for `64*depth`, `p.s` readable and writable
/// for six rows of 64 values `lds` apart.
#[target_feature(enable = "avx512f")]
unsafe fn score_tile(p: &ScorePass) {
    // SAFETY: the function's contract: AVX-512F, and every access inside the promised ranges.
    unsafe {
        let acc = scores(p);
        for (i, row) in acc.iter().enumerate() {
            for (v, a) in row.iter().enumerate() {
                _mm512_storeu_ps(p.s.add(i * p.lds + 16 * v), *a);
            }
        }
    }
}

/// A block's last depth pass `p` as [`score_tile`], then each row's softmax step while the scores are
/// still in registers: row `i` sees its first `live[i]` keys of the block; with `m` the larger of
/// `max[i]` and its largest live score, `s[i, c] = exp(score - m)` for live keys and 0 for the rest,
/// `max[i] = m`, and the row's sum of exponentials (f32, at most 64 values) comes back. A row with no
/// live key gets zeros, sum 0 and its max unchanged.
///
/// The exponential is Cephes' `expf` scheme with FMAs (`x = n ln2 + r`, a degree-6 polynomial, then
/// `scalef` by `2^n`), within 2 ulp of the rounded result; below -104 it is 0. A NaN score makes its
/// probability, and so the row's sum, NaN.
///
/// # Safety
/// As [`score_tile`]; `live[i] <= 64`.
#[target_feature(enable = "avx512f")]
unsafe fn score_softmax_tile(
    p: &ScorePass,
    live: &[usize; TILE_ROWS],
    max: &mut [f32; TILE_ROWS],
) -> [f32; TILE_ROWS] {
    let mut sums = [0f32; TILE_ROWS];
    let (s, lds) = (p.s, p.lds);
    // SAFETY: the function's contract: AVX-512F, and every access inside the promised ranges.
    unsafe {
        let acc = scores(p);
        for (i, row) in acc.iter().enumerate() {
            let lanes = |v: usize| -> __mmask16 {
                let n = live[i].saturating_sub(16 * v).min(16);
                ((1u32 << n) - 1) as __mmask16
            };
            let mut mx = _mm512_set1_ps(max[i]);
            for (v, x) in row.iter().enumerate() {
                mx = _mm512_mask_max_ps(mx, lanes(v), mx, *x);
            }
            let m = if live[i] == 0 {
                max[i]
            } else {
                _mm512_reduce_max_ps(mx)
            };
            let (shift, floor) = (_mm512_set1_ps(m), _mm512_set1_ps(-104.0));
            let mut sum = _mm512_setzero_ps();
            for (v, x) in row.iter().enumerate() {
                // max(floor, x), not max(x, floor): the second operand comes back for a NaN.
                let e = exp16(_mm512_max_ps(floor, _mm512_sub_ps(*x, shift)));
                let e = _mm512_maskz_mov_ps(lanes(v), e);
                sum = _mm512_add_ps(sum, e);
                _mm512_storeu_ps(s.add(i * lds + 16 * v), e);
            }
            max[i] = m;
            sums[i] = _mm512_reduce_add_ps(sum);
        }
    }
    sums
}

/// `o[i, 0..64] += sum_c p[i*ldp + c] * v[c*64 + 0..64]`, `c < keys`, for the six rows `i`; `o` rows
/// `ldo` apart.
///
/// # Safety
/// AVX-512F; `p` readable for six rows of `keys` values `ldp` apart, `v` for `64*keys` values, `o`
/// readable and writable for six rows of 64 values `ldo` apart.
#[target_feature(enable = "avx512f")]
unsafe fn pv_tile(p: *const f32, ldp: usize, v: *const f32, keys: usize, o: *mut f32, ldo: usize) {
    // SAFETY: the function's contract: AVX-512F, and every access inside the promised ranges.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); VECS]; TILE_ROWS];
        for (i, row) in acc.iter_mut().enumerate() {
            for (w, a) in row.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(o.add(i * ldo + 16 * w));
            }
        }
        let mut v = v;
        for c in 0..keys {
            let b: [__m512; VECS] = std::array::from_fn(|w| _mm512_loadu_ps(v.add(16 * w)));
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*p.add(i * ldp + c));
                for (w, x) in row.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(a, b[w], *x);
                }
            }
            v = v.add(TILE_COLS);
        }
        for (i, row) in acc.iter().enumerate() {
            for (w, a) in row.iter().enumerate() {
                _mm512_storeu_ps(o.add(i * ldo + 16 * w), *a);
            }
        }
    }
}

/// `e^x` for `x` in [-104, 0] (and NaN).
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512) -> __m512 {
    let c = |v: f32| _mm512_set1_ps(v);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, c(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, c(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, c(LN2_LO), r);
    let p = EXP_POLY[1..]
        .iter()
        .fold(c(EXP_POLY[0]), |p, &k| _mm512_fmadd_ps(p, r, c(k)));
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), c(1.0));
    _mm512_scalef_ps(y, n)
}

//! The AMX attention's online softmax (AVX-512), lane-wise over 16 queries: a vector lane is a query,
//! a vector a key of the block (the scores come transposed from the tiles, `[key][query]`), so no
//! max or sum is reduced across lanes. P goes out as the B tiles of `O^T += V^T P^T`.

use super::{KEY_BLOCK, KEY_DEPTHS};
use crate::cpu::ops::amx_tiles::TILE;
use std::arch::x86_64::*;

/// 16 queries' softmax state: the keys each sees, its running max (of `score * scale2`) and sum of
/// probabilities.
pub(super) struct Lanes<'a> {
    pub seen: &'a [i32],
    pub max: &'a mut [f32],
    pub sum: &'a mut [f32],
}

/// How far (in log2) a block's max may exceed a query's running max before the max moves and the
/// query's output and sum are rescaled: P is then at most 2^8, in range for bf16 and its f32 sums
/// (the CUDA v3 kernel's threshold).
const RESCALE_LOG2: f32 = 8.0;

/// `2^f` for `f` in [0, 1): a degree-3 polynomial, highest power first, fitted for relative error
/// (at most 7.8e-5 in f32, far below the bf16 rounding of P that follows).
const POLY: [f32; 4] = [0.077_907_24, 0.226_233_1, 0.695_777_1, 0.999_927_8];

/// `2^t` for `t <= RESCALE_LOG2`: `f = t - floor(t)` (VREDUCEPS, rounding down), the polynomial of
/// `2^f`, scaled by `2^floor(t)` (VSCALEFPS floors its exponent). Far below f32's range the result
/// is 0, and so it is for `t = -inf` (VREDUCEPS gives 0 and VSCALEFPS 0); a NaN stays NaN.
///
/// # Safety
/// AVX-512F and AVX-512DQ.
#[inline(always)]
unsafe fn exp2(t: __m512) -> __m512 {
    // SAFETY: the caller's promise (AVX-512F, AVX-512DQ).
    unsafe {
        // Imm 0x09: keep no fraction bits of the rounded value, round down, no precision exception.
        let f = _mm512_reduce_ps::<0x09>(t);
        let poly = POLY[1..].iter().fold(_mm512_set1_ps(POLY[0]), |acc, &k| {
            _mm512_fmadd_ps(acc, f, _mm512_set1_ps(k))
        });
        _mm512_scalef_ps(poly, t)
    }
}

/// VPERMW's indices that interleave the two halves of a VCVTNE2PS2BF16 result (`lo` keys in words
/// 0-15, `hi` in 16-31) into the pairs `(lo[c], hi[c])` a B tile row holds.
const INTERLEAVE: [u16; 32] = {
    let mut idx = [0u16; 32];
    let mut c = 0;
    while c < 16 {
        idx[2 * c] = c as u16;
        idx[2 * c + 1] = 16 + c as u16;
        c += 1;
    }
    idx
};

/// The softmax step of queries `q0 .. q0 + 16` (half `half` of a pair, lanes of `state`) over the
/// raw scores of keys `c0 .. c0 + KEY_BLOCK` in `sb`. Where the block's largest visible
/// `score * scale2` exceeds a query's running max by more than [`RESCALE_LOG2`], the max `m` becomes
/// it and the query's sum and output column in `ot` are rescaled by `2^(max - m)`; elsewhere `m` is
/// the running max. `p = 2^(score * scale2 - m)` (at most 2^RESCALE_LOG2; 0 for keys a query does
/// not see) goes into the sum and, rounded to bf16 (nearest even; a value below f32's normals
/// becomes 0), into the half's P^T tiles in `pt`; the max becomes `m`. A NaN score makes its query's sum
/// NaN.
///
/// Once every lane has a max (after its first visible block), the block is first taken in one pass
/// with `m` the running max, watching the largest exponent: a block that moves no lane's max (the
/// rule above) is then done, with the bits the two passes give. Otherwise, and for a lane's first
/// block, the block's max is found first and the exponentials taken again.
///
/// # Safety
/// AVX-512F, AVX-512DQ and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn softmax_half(
    sb: &[f32],
    half: usize,
    c0: usize,
    scale2: f32,
    state: Lanes<'_>,
    ot: &mut [f32],
    nb: usize,
    q0: usize,
    pt: &mut [u16],
) {
    assert!(sb.len() >= KEY_BLOCK * 32 && pt.len() >= 2 * KEY_DEPTHS * TILE);
    assert!(state.seen.len() == 16 && state.max.len() == 16 && state.sum.len() == 16);
    assert!(q0 + 16 <= nb && ot.len().is_multiple_of(nb));
    let tiles = &mut pt[half * KEY_DEPTHS * TILE..][..KEY_DEPTHS * TILE];
    // Keys of this block each lane sees, and the fewest and most over the lanes.
    let live: [i32; 16] =
        std::array::from_fn(|l| (state.seen[l] - c0 as i32).clamp(0, KEY_BLOCK as i32));
    let (lo, hi) = (
        *live.iter().min().expect("16 lanes") as usize,
        *live.iter().max().expect("16 lanes") as usize,
    );
    if hi == 0 {
        tiles.fill(0);
        return;
    }
    let block = Block {
        sb,
        half,
        lo,
        hi,
        live,
    };
    // SAFETY: AVX-512F, AVX512-BW, AVX-512DQ and AVX512-BF16 (the caller's promise; every AMX CPU
    // has them);
    // every load is inside `sb` (key c < KEY_BLOCK at c * 32 + half * 16, 16 values), `state` (16
    // lanes) or `ot` (16 queries from q0 of a column), every store inside `ot`, `state` or `tiles`
    // (asserted above).
    unsafe {
        let sc = _mm512_set1_ps(scale2);
        let old = _mm512_loadu_ps(state.max.as_ptr());
        let total = _mm512_loadu_ps(state.sum.as_ptr());
        if _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(old, _mm512_set1_ps(f32::NEG_INFINITY)) == 0 {
            let (sums, top) = block.exponentials(sc, old, total, tiles);
            if _mm512_cmp_ps_mask::<_CMP_GT_OQ>(top, _mm512_set1_ps(RESCALE_LOG2)) == 0 {
                _mm512_storeu_ps(state.sum.as_mut_ptr(), sums);
                return;
            }
        }
        // The block's max per lane, four chains.
        let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        for c in 0..hi {
            mx[c % 4] = _mm512_mask_max_ps(mx[c % 4], block.mask(c), mx[c % 4], block.load(c));
        }
        let raw = _mm512_max_ps(_mm512_max_ps(mx[0], mx[1]), _mm512_max_ps(mx[2], mx[3]));
        // The scale is positive and rounding monotonic: the max of the scaled scores.
        let new = _mm512_mul_ps(raw, sc);
        let mut total = total;
        // Lazily: a lane's max moves only when the block's exceeds it by more than RESCALE_LOG2 (or
        // it was -inf), so that P stays within 2^RESCALE_LOG2 and the output's columns are rescaled
        // a few times per query instead of at nearly every block. (A NaN in the block's max spreads
        // to the query's sum through its P, whatever the max.)
        let grew =
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(new, _mm512_add_ps(old, _mm512_set1_ps(RESCALE_LOG2)));
        let m = _mm512_mask_max_ps(old, grew, old, new);
        if grew != 0 {
            let alpha =
                _mm512_mask_blend_ps(grew, _mm512_set1_ps(1.0), exp2(_mm512_sub_ps(old, m)));
            total = _mm512_mul_ps(total, alpha);
            for col in ot.chunks_exact_mut(nb) {
                let o = col[q0..].as_mut_ptr();
                _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_loadu_ps(o), alpha));
            }
        }
        let (sums, _) = block.exponentials(sc, m, total, tiles);
        _mm512_storeu_ps(state.sum.as_mut_ptr(), sums);
        _mm512_storeu_ps(state.max.as_mut_ptr(), m);
    }
}

/// One half's scores for a key block: key `c`'s 16 lanes at `sb[c * 32 + half * 16..]`; lane `l`
/// sees the block's first `live[l]` keys, every lane the first `lo`, some lane the first `hi`.
struct Block<'a> {
    sb: &'a [f32],
    half: usize,
    lo: usize,
    hi: usize,
    live: [i32; 16],
}

impl Block<'_> {
    /// Key `c`'s scores (`c < KEY_BLOCK`).
    #[inline(always)]
    unsafe fn load(&self, c: usize) -> __m512 {
        // SAFETY: AVX-512F (the caller's); `c * 32 + half * 16 + 16 <= sb.len()` (`softmax_half`'s
        // assert).
        unsafe { _mm512_loadu_ps(self.sb[c * 32 + self.half * 16..].as_ptr()) }
    }

    /// The lanes that see key `c`.
    #[inline(always)]
    unsafe fn mask(&self, c: usize) -> __mmask16 {
        if c < self.lo {
            0xffff
        } else {
            // SAFETY: AVX-512F (the caller's); `live` holds 16 i32.
            unsafe {
                _mm512_cmpgt_epi32_mask(
                    _mm512_loadu_si512(self.live.as_ptr().cast()),
                    _mm512_set1_epi32(c as i32),
                )
            }
        }
    }

    /// `p = 2^(score * sc - m)` of every key (0 where a lane does not see it) into `tiles` as bf16
    /// P^T rows and into the sums started from `total`; returns the sums and each lane's largest
    /// exponent `score * sc - m` over the keys it sees.
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW, AVX-512DQ and AVX512-BF16; `tiles` holds [`KEY_DEPTHS`] tiles.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512bf16")]
    unsafe fn exponentials(
        &self,
        sc: __m512,
        m: __m512,
        total: __m512,
        tiles: &mut [u16],
    ) -> (__m512, __m512) {
        assert!(tiles.len() >= KEY_DEPTHS * TILE);
        // SAFETY: the caller's promise; the loads as in `load`, the stores inside `tiles` (row
        // `(c / 32) * TILE + ((c % 32) / 2) * 32` for c < KEY_BLOCK, 32 values).
        unsafe {
            if self.lo == KEY_BLOCK {
                // Every lane sees every key: no masks.
                self.exponentials_with(sc, m, total, tiles, |_| 0xffff)
            } else {
                self.exponentials_with(sc, m, total, tiles, |c| self.mask(c))
            }
        }
    }

    /// [`Block::exponentials`] with the lanes that see key `c` given by `mask(c)`.
    ///
    /// # Safety
    /// As for [`Block::exponentials`], whose target features this inlines into.
    #[inline(always)]
    unsafe fn exponentials_with(
        &self,
        sc: __m512,
        m: __m512,
        total: __m512,
        tiles: &mut [u16],
        mask: impl Fn(usize) -> __mmask16,
    ) -> (__m512, __m512) {
        // SAFETY: as for `exponentials`, whose target features this inlines into.
        unsafe {
            let shift = _mm512_sub_ps(_mm512_setzero_ps(), m);
            let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
            let mut sums = [total, _mm512_setzero_ps()];
            let mut top = [_mm512_set1_ps(f32::NEG_INFINITY); 2];
            for c in (0..KEY_BLOCK).step_by(2) {
                let p: [__m512; 2] = std::array::from_fn(|i| {
                    let c = c + i;
                    if c >= self.hi {
                        return _mm512_setzero_ps();
                    }
                    let k = mask(c);
                    let t = _mm512_fmadd_ps(self.load(c), sc, shift);
                    top[i] = _mm512_mask_max_ps(top[i], k, top[i], t);
                    _mm512_maskz_mov_ps(k, exp2(t))
                });
                sums[0] = _mm512_add_ps(sums[0], p[0]);
                sums[1] = _mm512_add_ps(sums[1], p[1]);
                let bf = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(p[1], p[0]));
                let row = (c / 32) * TILE + ((c % 32) / 2) * 32;
                _mm512_storeu_si512(
                    tiles[row..].as_mut_ptr().cast(),
                    _mm512_permutexvar_epi16(idx, bf),
                );
            }
            (
                _mm512_add_ps(sums[0], sums[1]),
                _mm512_max_ps(top[0], top[1]),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within the polynomial's 7.8e-5 of `2^t` in f64 over the range the softmax uses (whole
    /// numbers, fractions, both sides of a whole number), 0 at and far below f32's range, NaN kept.
    #[test]
    fn exp2_is_within_the_polynomials_error() {
        if !crate::cpu::ops::amx_tiles::supported() {
            eprintln!(
                "SKIPPED exp2 test: this CPU has no AMX-BF16 (nor the softmax's AVX-512 set)"
            );
            return;
        }
        let mut ts: Vec<f32> = (-1200..=64).map(|i| i as f32 / 8.0).collect();
        ts.extend([
            -1e-7, 1e-7, -0.999_999, 0.999_999, 7.999_999, 8.0, -125.5, -126.0,
        ]);
        for chunk in ts.chunks(16) {
            let mut t = [0f32; 16];
            t[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 16];
            // SAFETY: `supported` found AVX-512F and DQ; both arrays hold 16 values.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp2(_mm512_loadu_ps(t.as_ptr()))) };
            for (&t, &g) in t.iter().zip(&got).take(chunk.len()) {
                let want = (t as f64).exp2();
                let err = (g as f64 - want).abs();
                // Below f32's normals (t < -126) only the absolute error matters.
                assert!(err <= 7.9e-5 * want + 1e-38, "2^{t} = {g}, want {want}");
            }
        }
        let special = [f32::NEG_INFINITY, -1e30, -200.0, f32::NAN];
        let mut t = [0f32; 16];
        t[..4].copy_from_slice(&special);
        let mut got = [1f32; 16];
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp2(_mm512_loadu_ps(t.as_ptr()))) };
        assert_eq!(&got[..3], &[0.0, 0.0, 0.0]);
        assert!(got[3].is_nan());
    }
}

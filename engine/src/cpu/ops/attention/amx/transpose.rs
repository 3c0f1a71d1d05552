//! The 16 x 16 transpose of 32-bit elements that makes a Q^T B tile from 16 rounded query rows: a
//! row's adjacent bf16 depths (one 32-bit element) become one column of the tile's row for that
//! depth pair. Four stages of AVX-512 shuffles (64 for 256 elements) in place of an element-by-element
//! copy: Q's packing over a bench run of the mid preset's 1024x1024 gen step (one build each,
//! timed around `pack_q`) 71.6 -> 57.2 ms; the rest is reading Q and rounding it.

use std::arch::x86_64::*;

/// `dst[p * 16 + c] = src[c * stride + p]` for `p, c < 16` (32-bit elements).
///
/// # Safety
/// AVX-512F; `src` readable for 16 rows of 16 elements `stride` apart, `dst` writable for 256.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose16(src: *const u32, stride: usize, dst: *mut u32) {
    // SAFETY: the caller's promise: every load is a row of `src`, every store inside `dst`.
    unsafe {
        let r: [__m512i; 16] =
            std::array::from_fn(|c| _mm512_loadu_si512(src.add(c * stride).cast()));
        // Within each 128-bit lane: 32-bit pairs of rows, then 64-bit: b[4i + j]'s lane k holds
        // column 4k + j of rows 4i .. 4i + 4.
        let a: [__m512i; 16] = std::array::from_fn(|x| {
            let (i, hi) = (x / 2, x % 2);
            if hi == 0 {
                _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1])
            } else {
                _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1])
            }
        });
        let b: [__m512i; 16] = std::array::from_fn(|x| {
            let (i, j) = (x / 4, x % 4);
            let (lo, hi) = (a[4 * i + j / 2], a[4 * i + 2 + j / 2]);
            if j % 2 == 0 {
                _mm512_unpacklo_epi64(lo, hi)
            } else {
                _mm512_unpackhi_epi64(lo, hi)
            }
        });
        // Across lanes: column 4k + j is lane k of b[j], b[4 + j], b[8 + j], b[12 + j].
        for j in 0..4 {
            let c0 = _mm512_shuffle_i32x4::<0x44>(b[j], b[4 + j]);
            let c1 = _mm512_shuffle_i32x4::<0xee>(b[j], b[4 + j]);
            let d0 = _mm512_shuffle_i32x4::<0x44>(b[8 + j], b[12 + j]);
            let d1 = _mm512_shuffle_i32x4::<0xee>(b[8 + j], b[12 + j]);
            let rows = [
                _mm512_shuffle_i32x4::<0x88>(c0, d0),
                _mm512_shuffle_i32x4::<0xdd>(c0, d0),
                _mm512_shuffle_i32x4::<0x88>(c1, d1),
                _mm512_shuffle_i32x4::<0xdd>(c1, d1),
            ];
            for (k, v) in rows.into_iter().enumerate() {
                _mm512_storeu_si512(dst.add((4 * k + j) * 16).cast(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_every_element() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED transpose16 test: this CPU has no AVX-512F");
            return;
        }
        let stride = 21;
        let src: Vec<u32> = (0..16 * stride as u32).map(|i| i * 2654435761).collect();
        let mut dst = [0u32; 256];
        // SAFETY: AVX-512F found; `src` holds 16 rows of `stride`, `dst` 256.
        unsafe { transpose16(src.as_ptr(), stride, dst.as_mut_ptr()) };
        for p in 0..16 {
            for c in 0..16 {
                assert_eq!(dst[p * 16 + c], src[c * stride + p], "({p}, {c})");
            }
        }
    }
}

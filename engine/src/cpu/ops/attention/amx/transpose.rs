//! The 16 x 16 transpose of 32-bit elements that makes a Q^T B tile from 16 rounded query rows (and,
//! over key pairs, V^T's A tiles from V's rounded rows: [`v_tiles`]): a
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

/// V^T A tiles from V's rounded rows: `rows` is `[keys][dp]` bf16 (`keys` a multiple of 32, `dp` of
/// 16), `tiles` gets tile `(key block kb, column tile dt)` at `(kb * (dp / 16) + dt) * 512`, column
/// `e`, key `c` at `(e % 16) * 32 + c % 32` within it. Each tile row holds 32 keys of one column:
/// two keys' values side by side make a 32-bit element (a key pair), and the 16 x 16 transpose of
/// those pairs is the tile. In place of one scalar store per value (the attention packed V that way).
///
/// # Safety
/// AVX-512F and AVX512-BW; `rows` and `tiles` hold `keys * dp` values.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn v_tiles(rows: &[u16], tiles: &mut [u16], keys: usize, dp: usize) {
    assert!(keys.is_multiple_of(32) && dp.is_multiple_of(16));
    assert!(rows.len() >= keys * dp && tiles.len() >= keys * dp);
    let dts = dp / 16;
    let mut pairs = [0u32; 256];
    for kb in 0..keys / 32 {
        for dt in 0..dts {
            // SAFETY: AVX-512F and BW (the caller's promise); each load is 16 values of a key row
            // inside `rows`, each store inside `pairs`, and the tile inside `tiles` (asserted).
            unsafe {
                for j in 0..16 {
                    let at = |key: usize| rows.as_ptr().add(key * dp + dt * 16);
                    let even =
                        _mm512_cvtepu16_epi32(_mm256_loadu_si256(at(kb * 32 + 2 * j).cast()));
                    let odd =
                        _mm512_cvtepu16_epi32(_mm256_loadu_si256(at(kb * 32 + 2 * j + 1).cast()));
                    let pair = _mm512_or_si512(even, _mm512_slli_epi32::<16>(odd));
                    _mm512_storeu_si512(pairs.as_mut_ptr().add(j * 16).cast(), pair);
                }
                let tile = tiles.as_mut_ptr().add((kb * dts + dt) * 512);
                transpose16(pairs.as_ptr(), 16, tile.cast());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of V's rows lands where the attention's V^T tiles keep it.
    #[test]
    fn v_tiles_put_each_value_in_its_tile() {
        if !crate::cpu::ops::amx_tiles::supported() {
            eprintln!("SKIPPED v_tiles test: this CPU has no AVX-512 set of the AMX path");
            return;
        }
        let (keys, dp) = (64, 48);
        let rows: Vec<u16> = (0..keys * dp).map(|i| (i * 7919 % 65521) as u16).collect();
        let mut tiles = vec![0u16; keys * dp];
        // SAFETY: `supported` found AVX-512F and BW; both hold keys x dp.
        unsafe { v_tiles(&rows, &mut tiles, keys, dp) };
        let dts = dp / 16;
        for c in 0..keys {
            for e in 0..dp {
                let at = ((c / 32) * dts + e / 16) * 512 + (e % 16) * 32 + c % 32;
                assert_eq!(tiles[at], rows[c * dp + e], "key {c}, column {e}");
            }
        }
    }

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

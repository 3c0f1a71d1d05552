//! The flash path's AVX-512 micro-kernels. Both are the packed GEMM's 6 x 32 register tile (two
//! 16-lane vectors per row, 12 accumulators): per step two loads from a panel 32 wide, six
//! broadcasts, twelve FMAs.
//!
//! - [`score_tile`]: six query rows (packed `[d][6]`) against 32 keys (packed `[d][32]`) over a
//!   depth pass of the head dimension.
//! - [`pv_tile`]: six rows of probabilities (row-major, `ldp` apart) times a block of V (packed
//!   `[key][32]`: 32 of the head's columns) added into six rows of the output accumulator.

#![deny(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

/// Rows of one tile.
pub(super) const TILE_ROWS: usize = 6;
/// Columns of one tile: keys for scores, head-dimension columns for P V.
pub(super) const TILE_COLS: usize = 32;

/// `s[i, 0..32] = (s[i, ..] if accumulate else 0) + sum_e q[e*6 + i] * k[e*32 + 0..32]`, `e < depth`,
/// for the six rows `i`; `s` rows `lds` apart.
///
/// # Safety
/// AVX-512F; `q` readable for `6*depth` values, `k` for `32*depth`, `s` readable and writable for six
/// rows of 32 values `lds` apart.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn score_tile(
    q: *const f32,
    k: *const f32,
    depth: usize,
    s: *mut f32,
    lds: usize,
    accumulate: bool,
) {
    // SAFETY: the function's contract: AVX-512F, and every access inside the promised ranges.
    unsafe {
        let mut c0 = [_mm512_setzero_ps(); TILE_ROWS];
        let mut c1 = [_mm512_setzero_ps(); TILE_ROWS];
        if accumulate {
            for i in 0..TILE_ROWS {
                c0[i] = _mm512_loadu_ps(s.add(i * lds));
                c1[i] = _mm512_loadu_ps(s.add(i * lds + 16));
            }
        }
        let (mut q, mut k) = (q, k);
        for _ in 0..depth {
            let v0 = _mm512_loadu_ps(k);
            let v1 = _mm512_loadu_ps(k.add(16));
            for i in 0..TILE_ROWS {
                let a = _mm512_set1_ps(*q.add(i));
                c0[i] = _mm512_fmadd_ps(a, v0, c0[i]);
                c1[i] = _mm512_fmadd_ps(a, v1, c1[i]);
            }
            q = q.add(TILE_ROWS);
            k = k.add(TILE_COLS);
        }
        for i in 0..TILE_ROWS {
            _mm512_storeu_ps(s.add(i * lds), c0[i]);
            _mm512_storeu_ps(s.add(i * lds + 16), c1[i]);
        }
    }
}

/// `o[i, 0..32] += sum_c p[i*ldp + c] * v[c*32 + 0..32]`, `c < keys`, for the six rows `i`; `o` rows
/// `ldo` apart.
///
/// # Safety
/// AVX-512F; `p` readable for six rows of `keys` values `ldp` apart, `v` for `32*keys` values, `o`
/// readable and writable for six rows of 32 values `ldo` apart.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn pv_tile(
    p: *const f32,
    ldp: usize,
    v: *const f32,
    keys: usize,
    o: *mut f32,
    ldo: usize,
) {
    // SAFETY: the function's contract: AVX-512F, and every access inside the promised ranges.
    unsafe {
        let mut c0 = [_mm512_setzero_ps(); TILE_ROWS];
        let mut c1 = [_mm512_setzero_ps(); TILE_ROWS];
        for i in 0..TILE_ROWS {
            c0[i] = _mm512_loadu_ps(o.add(i * ldo));
            c1[i] = _mm512_loadu_ps(o.add(i * ldo + 16));
        }
        let mut v = v;
        for c in 0..keys {
            let v0 = _mm512_loadu_ps(v);
            let v1 = _mm512_loadu_ps(v.add(16));
            for i in 0..TILE_ROWS {
                let a = _mm512_set1_ps(*p.add(i * ldp + c));
                c0[i] = _mm512_fmadd_ps(a, v0, c0[i]);
                c1[i] = _mm512_fmadd_ps(a, v1, c1[i]);
            }
            v = v.add(TILE_COLS);
        }
        for i in 0..TILE_ROWS {
            _mm512_storeu_ps(o.add(i * ldo), c0[i]);
            _mm512_storeu_ps(o.add(i * ldo + 16), c1[i]);
        }
    }
}

/// The largest of `row`'s values (`-inf` for an empty row). A NaN may or may not win; the caller's
/// exponentials carry it to the output either way.
///
/// # Safety
/// AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn row_max(row: &[f32]) -> f32 {
    // SAFETY: AVX-512F (the caller's promise); the full chunks are 16 readable values, the masked
    // load reads only the tail's `len` values.
    unsafe {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        let chunks = row.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            m = _mm512_max_ps(m, _mm512_loadu_ps(c.as_ptr()));
        }
        if !tail.is_empty() {
            let mask: __mmask16 = (1u16 << tail.len()) - 1;
            m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, mask, tail.as_ptr()));
        }
        _mm512_reduce_max_ps(m)
    }
}

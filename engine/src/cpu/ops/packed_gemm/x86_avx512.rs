//! The AVX-512 micro-kernel: MR rows by two adjacent B panels (32 columns), one 16-lane vector per
//! row and panel. It reads the same packed A and B as the AVX2 kernel (panels of 16 columns), and
//! each output is the same FMA chain in the same order, so both give the same bits; on a CPU with
//! AVX-512 it does twice the multiply-adds per instruction. Per depth step: two B loads and MR
//! broadcasts for 2*MR FMAs (the AVX2 kernel's 16-column tile would need as many loads per FMA as
//! the two FMA ports can take).

#![deny(unsafe_op_in_unsafe_fn)]

use super::x86::Tile;
use super::{MR, NR};
use half::bf16;
use std::arch::x86_64::*;

/// B values the AVX-512 kernel can load sixteen at a time as f32.
pub(super) trait Lanes16: Copy {
    /// The 16 values at `p`, as f32.
    ///
    /// # Safety
    /// AVX-512F; `p` readable for 16 values.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Lanes16 for f32 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: the caller's promise.
        unsafe { _mm512_loadu_ps(p) }
    }
}

impl Lanes16 for bf16 {
    /// Zero-extend to 32 bits and shift left 16: exact, as the AVX2 kernel widens.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const bf16) -> __m512 {
        // SAFETY: the caller's promise: 32 readable bytes at `p`.
        unsafe {
            let h = _mm256_loadu_si256(p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
}

/// `c = (init or 0) + sum_p a[p, :R]^T [b0[p, :] b1[p, :]]` over 32 columns, one FMA per step and
/// output, depth in order.
///
/// # Safety
/// AVX-512F; `a` readable for `kc` steps of MR values; `b` for two panels of `16*kc` values one after
/// the other; `init` null or readable for `R` rows of 32 values `init_ld` apart; `c` writable for `R`
/// rows of 32 values `ldc` apart.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile2<const R: usize, T: Lanes16>(
    t: &Tile<T>,
    init: *const f32,
    init_ld: usize,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: the function's contract: AVX-512F, and every access inside the promised ranges.
    unsafe {
        let mut c0 = [_mm512_setzero_ps(); R];
        let mut c1 = [_mm512_setzero_ps(); R];
        if !init.is_null() {
            for i in 0..R {
                c0[i] = _mm512_loadu_ps(init.add(i * init_ld));
                c1[i] = _mm512_loadu_ps(init.add(i * init_ld + NR));
            }
        }
        let (mut a, mut b0) = (t.a, t.b);
        let mut b1 = t.b.add(NR * t.kc);
        for _ in 0..t.kc {
            let v0 = T::load16(b0);
            let v1 = T::load16(b1);
            for i in 0..R {
                let ai = _mm512_set1_ps(*a.add(i));
                c0[i] = _mm512_fmadd_ps(ai, v0, c0[i]);
                c1[i] = _mm512_fmadd_ps(ai, v1, c1[i]);
            }
            a = a.add(MR);
            b0 = b0.add(NR);
            b1 = b1.add(NR);
        }
        for i in 0..R {
            _mm512_storeu_ps(c.add(i * ldc), c0[i]);
            _mm512_storeu_ps(c.add(i * ldc + NR), c1[i]);
        }
    }
}

/// One row by 128 columns (eight full panels `16*kc` apart from `b`): `c = (init or 0) + sum_p a[p]
/// b[p, :]`, eight independent 16-lane chains (the AVX2 one-row kernel's eight 8-lane chains cover 64).
///
/// # Safety
/// AVX-512F; `a` readable at `p*MR` for `p < kc`; `b` for `128*kc` values; `init` null or readable for
/// 128 values; `c` writable for 128 values.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn wide1_512<T: Lanes16>(
    kc: usize,
    a: *const f32,
    b: *const T,
    init: *const f32,
    c: *mut f32,
) {
    // SAFETY: the function's contract: AVX-512F, and every access inside the promised ranges.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 8];
        if !init.is_null() {
            for (q, v) in acc.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(init.add(NR * q));
            }
        }
        let ld = NR * kc;
        for p in 0..kc {
            let x = _mm512_set1_ps(*a.add(p * MR));
            for (t, v) in acc.iter_mut().enumerate() {
                *v = _mm512_fmadd_ps(x, T::load16(b.add(t * ld + p * NR)), *v);
            }
        }
        for (q, v) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(NR * q), *v);
        }
    }
}

//! Intel AMX's tile unit, shared by the bf16 linear (`packed_gemm/amx.rs`), attention
//! (`attention/amx.rs`) and convolution (`conv/amx.rs`): whether this process may use it, the one tile configuration both use, and the
//! f32-to-bf16 rounding of their inputs.
//!
//! Every tile is 16 rows of 64 bytes (palette 1, all eight tiles alike). An A operand of TDPBF16PS is
//! 16 rows x 32 bf16 (row-major); a B operand is 32 depths x 16 columns stored pair-interleaved (row
//! `r` holds depths `2r, 2r+1` of each column side by side); C is 16 x 16 f32.

use std::arch::asm;
use std::sync::OnceLock;

/// bf16 values per tile (16 rows of 64 bytes).
pub(crate) const TILE: usize = 512;

/// Whether `HBRIDGE_CPU_MATMUL=bf16` is set and this CPU and OS run AMX-BF16 (checked once; the
/// process asks Linux for the tile state the first time).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| crate::cpu::matmul_mode::bf16_requested() && supported())
}

/// AMX-BF16, AVX-512F, AVX512-BW, AVX512-DQ and AVX512-BF16 in CPUID (every AMX CPU has all five;
/// the attention's softmax uses the other four), and Linux granting this process the tile data state.
pub(crate) fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        let leaf = std::arch::x86_64::__cpuid_count(7, 0);
        let cpu = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
        cpu && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512bf16")
            && request_tile_state()
    })
}

/// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): Linux refuses it where the kernel or the
/// hypervisor does not enable AMX, and without it the first tile instruction faults.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: isize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: the syscall only changes this process's permission to use the tile state; rcx and r11
    // are clobbered by `syscall`.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// f32 to bf16 bits, to nearest with ties to even; a NaN stays a (quiet) NaN. Without a branch, so
/// that loops over it vectorize.
#[inline(always)]
pub(crate) fn round_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let nan = bits & 0x7fff_ffff > 0x7f80_0000;
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet = ((bits >> 16) | 0x40) as u16;
    if nan {
        quiet
    } else {
        rounded
    }
}

/// `src` rounded to bf16 into tile rows: values `32 i .. 32 i + 32` at `dst[i * stride..][..32]`, the
/// last row zero past `src`'s end. VCVTNE2PS2BF16, 32 values an instruction: nearest with ties to
/// even and NaN kept quiet as [`round_bf16`], except that an f32 subnormal becomes (signed) zero (the
/// instruction treats its inputs' subnormals as zero). The scalar-tailed loop it replaced ran its tail
/// for every 32-value row and was 7% of a bf16 gen step's samples.
///
/// # Safety
/// AVX-512F, AVX512-BW and AVX512-BF16 ([`supported`]).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn round_rows(src: &[f32], dst: &mut [u16], stride: usize) {
    use std::arch::x86_64::*;
    let rows = src.len().div_ceil(32);
    assert!(rows == 0 || dst.len() >= (rows - 1) * stride + 32);
    for (i, chunk) in src.chunks(32).enumerate() {
        let n = chunk.len();
        let lanes = |k: usize| -> __mmask16 { ((1u32 << k.min(16)) - 1) as __mmask16 };
        let p = chunk.as_ptr();
        // SAFETY: AVX-512F, BW and BF16 (the caller's promise); the masked loads read only
        // `chunk`'s `n` values (masked-off lanes do not fault), the store is the 32 values at
        // `i * stride` inside `dst` (asserted above).
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lanes(n), p);
            let hi = _mm512_maskz_loadu_ps(lanes(n.saturating_sub(16)), p.wrapping_add(16));
            let bf = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i * stride).cast(), bf);
        }
    }
}

/// A tile configuration (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Eight tiles of 16 rows x 64 bytes.
static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Loads [`CONFIG`] into this thread's tile unit (zeroing every tile).
///
/// # Safety
/// [`supported`] must be true.
#[inline]
pub(crate) unsafe fn configure() {
    // SAFETY: the caller's promise (AMX usable); the configuration is valid for palette 1.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
}

/// Returns this thread's tile state to its initial (unconfigured) state, so that the OS need not save
/// it on a context switch.
///
/// # Safety
/// [`supported`] must be true.
#[inline]
pub(crate) unsafe fn release() {
    // SAFETY: the caller's promise (AMX usable).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// `rounds` x the 2 x 2 block's four TDPBF16PS on the tiles as they are (tmm0-3 += tmm4-5 x
/// tmm6-7), nothing loaded or stored: the tile unit's peak, for `hbridge bench`'s compute ceiling.
///
/// # Safety
/// This thread's tiles are configured ([`configure`]).
#[inline(never)]
pub(crate) unsafe fn products_in_place(rounds: usize) {
    for _ in 0..rounds {
        // SAFETY: the caller's promise.
        unsafe {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem)
            )
        };
    }
}

/// Depth blocks ahead that the products' loops prefetch their tiles: TILELOADD waits for lines that
/// the hardware prefetchers do not bring early (`scripts/amx-probe.rs`'s replica of the linear's
/// loop with buffers off a line: 0.58-0.68 TFLOP/s on one thread without, 1.03-1.14 with; 1 to 4
/// blocks ahead measured alike). With every buffer on a line (session 15) the replica runs 1.26-1.37
/// without against 1.14-1.16 with, and `amx_linear_timing` measured no difference beyond its noise
/// either way, so the prefetches stay.
pub(crate) const PREFETCH_AHEAD: usize = 2;

/// Prefetches the 16 lines of the tile at `p` into L1. A hint: `p` need not point into an
/// allocation (the address is formed with `wrapping_add` and never dereferenced).
#[inline(always)]
pub(crate) fn prefetch_tile(p: *const u16) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for line in 0..16 {
        // SAFETY: a prefetch never faults and reads nothing into the program.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line * 32).cast()) };
    }
}

/// tmm0-3 (the 2 x 2 block's C tiles) = 0.
///
/// # Safety
/// This thread's tiles are configured ([`configure`]).
#[inline(always)]
pub(crate) unsafe fn zero_c() {
    // SAFETY: the caller's promise.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        )
    };
}

/// tmm0-3 = the four 16 x 16 f32 quarters of the 32 x 32 block at `c` (rows `stride` values apart):
/// tmm0 top left, tmm1 top right, tmm2 bottom left, tmm3 bottom right. With `stride` 0 every row is
/// the 32 values at `c`.
///
/// # Safety
/// This thread's tiles are configured; `c` is readable for 32 rows of 32 f32, `stride` apart.
#[inline(always)]
pub(crate) unsafe fn load_c(c: *const f32, stride: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        asm!(
            "tileloadd tmm0, [{c0} + {s}]",
            "tileloadd tmm1, [{c1} + {s}]",
            "tileloadd tmm2, [{c2} + {s}]",
            "tileloadd tmm3, [{c3} + {s}]",
            c0 = in(reg) c,
            c1 = in(reg) c.add(16),
            c2 = in(reg) c.add(16 * stride),
            c3 = in(reg) c.add(16 * stride + 16),
            s = in(reg) stride * 4,
            options(nostack, readonly)
        )
    };
}

/// The 32 x 32 block at `c` (rows `stride` values apart) = tmm0-3, as [`load_c`] reads them.
///
/// # Safety
/// This thread's tiles are configured; `c` is writable for 32 rows of 32 f32, `stride` apart.
#[inline(always)]
pub(crate) unsafe fn store_c(c: *mut f32, stride: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        asm!(
            "tilestored [{c0} + {s}], tmm0",
            "tilestored [{c1} + {s}], tmm1",
            "tilestored [{c2} + {s}], tmm2",
            "tilestored [{c3} + {s}], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(16),
            c2 = in(reg) c.add(16 * stride),
            c3 = in(reg) c.add(16 * stride + 16),
            s = in(reg) stride * 4,
            options(nostack)
        )
    };
}

/// Outputs of at least this many bytes are streamed ([`store_c_streamed`]) where aligned: far larger
/// than the caches, they are read back from memory by the next node anyway. Smaller ones are read
/// back from the caches, and streaming them measured slower: the mid preset's 512-token prefill
/// (10 MB linear outputs) 102-119 -> 127 ms, its 256x256 gen step 100-104 -> 121-135 ms; its
/// 1024x1024 gen step, whose largest linear outputs are 50 MB, 2.65-2.81 -> 2.58-2.66 s.
pub(crate) const STREAM_MIN_BYTES: usize = 32 << 20;

/// Whether a 32 x 32 f32 block at `c`, rows `stride` values apart, can be streamed
/// ([`store_c_streamed`]): every row on a 64-byte boundary.
pub(crate) fn streamable(c: *const f32, stride: usize) -> bool {
    (c as usize).is_multiple_of(64) && stride.is_multiple_of(16)
}

/// A 32 x 32 f32 block on a cache line boundary.
#[repr(C, align(64))]
struct Block([f32; 32 * 32]);

/// [`store_c`], through a buffer in L1 and from there with non-temporal stores: the output's lines
/// are written whole without first being read for ownership, and do not displace the caches'
/// contents. For outputs far larger than the caches, which the next node reads from memory anyway.
/// Call [`end_streamed_stores`] before the output is handed to another thread.
///
/// # Safety
/// This thread's tiles are configured; AVX-512F; [`streamable`]`(c, stride)`, and `c` writable for
/// 32 rows of 32 f32, `stride` apart.
#[inline(always)]
pub(crate) unsafe fn store_c_streamed(c: *mut f32, stride: usize) {
    let mut block = Block([0.0; 32 * 32]);
    // SAFETY: the caller's promise; `block` holds 32 rows of 32.
    unsafe {
        store_c(block.0.as_mut_ptr(), 32);
        stream_block(block.0.as_ptr(), c, stride);
    }
}

/// The 32 x 32 f32 block at `c` (rows of 32) to `dst` (rows `stride` apart) with non-temporal
/// stores; see [`store_c_streamed`] and [`end_streamed_stores`].
///
/// # Safety
/// AVX-512F; `c` is 64-byte aligned and readable for 1024 values; [`streamable`]`(dst, stride)`,
/// and the 32 rows of `dst` writable.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn stream_block(c: *const f32, dst: *mut f32, stride: usize) {
    use std::arch::x86_64::{_mm512_load_ps, _mm512_stream_ps};
    for r in 0..32 {
        // SAFETY: the caller's promise; `c` is 64-byte aligned with rows of 128 bytes.
        unsafe {
            let row = dst.add(r * stride);
            _mm512_stream_ps(row, _mm512_load_ps(c.add(r * 32)));
            _mm512_stream_ps(row.add(16), _mm512_load_ps(c.add(r * 32 + 16)));
        }
    }
}

/// Orders this thread's streamed stores before its later stores (SFENCE): non-temporal stores are
/// weakly ordered, so a task ends with this before its output is read elsewhere.
#[inline]
pub(crate) fn end_streamed_stores() {
    // SAFETY: SSE, which every x86-64 CPU has.
    unsafe { std::arch::x86_64::_mm_sfence() };
}

/// The 2 x 2 block's step: tmm0 += a0 b0, tmm1 += a0 b1, tmm2 += a1 b0, tmm3 += a1 b1, with `a0`,
/// `a1` A tiles (16 rows x 32 bf16) and `b0`, `b1` B tiles (32 x 16, pair-interleaved), each a whole
/// tile of 64-byte rows.
///
/// # Safety
/// This thread's tiles are configured; each pointer is readable for [`TILE`] values.
#[inline(always)]
pub(crate) unsafe fn product(a0: *const u16, a1: *const u16, b0: *const u16, b1: *const u16) {
    // SAFETY: the caller's promise; B's rows are 64 bytes apart.
    unsafe { product_b_stride(a0, a1, b0, b1, 64) }
}

/// [`product`] with B's rows `b_stride` bytes apart (A's stay 64): B tiles read in place from a
/// pair-interleaved image, one 64-byte row per channel pair (the convolution's shifted views).
///
/// # Safety
/// This thread's tiles are configured; `a0`, `a1` are readable for [`TILE`] values, `b0`, `b1` for
/// 16 rows of 64 bytes, `b_stride` bytes apart.
#[inline(always)]
pub(crate) unsafe fn product_b_stride(
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    b_stride: usize,
) {
    // SAFETY: the caller's promise.
    unsafe {
        asm!(
            "tileloadd tmm4, [{a0} + {s}]",
            "tileloadd tmm5, [{a1} + {s}]",
            "tileloadd tmm6, [{b0} + {bs}]",
            "tileloadd tmm7, [{b1} + {bs}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            s = in(reg) 64usize,
            bs = in(reg) b_stride,
            options(nostack, readonly)
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::test_values::values;
    use half::bf16;

    fn widen(bits: u16) -> f64 {
        f32::from_bits((bits as u32) << 16) as f64
    }

    /// `n` values over 60 decades, then ties (the low 16 bits exactly half way, either parity),
    /// infinities, the largest finite value, a subnormal and zeros.
    fn rounding_cases(n: usize, seed: u64) -> Vec<f32> {
        let mut xs = values(n, seed);
        xs.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x *= 10f32.powi(i as i32 % 60 - 30));
        xs.extend([
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::from_bits(1),
            -0.0,
            0.0,
        ]);
        xs
    }

    #[test]
    fn rounding_matches_half() {
        let xs = rounding_cases(4096, 3);
        for &x in &xs {
            assert_eq!(round_bf16(x), bf16::from_f32(x).to_bits(), "{x:e}");
        }
        assert!(widen(round_bf16(f32::NAN)).is_nan());
        assert!(widen(round_bf16(f32::from_bits(0x7f80_0001))).is_nan());
    }

    /// [`round_rows`] gives [`round_bf16`]'s bits for every normal value, tie, infinity and zero,
    /// signed zero for a subnormal and a quiet NaN for a NaN; rows of any length land at their stride
    /// with zeros past the end, and nothing else in `dst` changes.
    #[test]
    fn round_rows_matches_round_bf16() {
        if !supported() {
            eprintln!("SKIPPED round_rows test: this CPU has no AMX-BF16 (nor AVX512-BF16)");
            return;
        }
        let mut xs = rounding_cases(1000, 5);
        xs.extend([
            -f32::from_bits(0x007f_ffff),
            f32::NAN,
            f32::from_bits(0x7f80_0001),
        ]);
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 64, 100, xs.len()] {
            let src = &xs[xs.len() - len..];
            let stride = 48;
            let mut dst = vec![0xabcdu16; len.div_ceil(32) * stride + 32];
            // SAFETY: `supported` found AVX-512F, BW and BF16; `dst` holds every row.
            unsafe { round_rows(src, &mut dst, stride) };
            for (i, &d) in dst.iter().enumerate() {
                let (row, col) = (i / stride, i % stride);
                let at = row * 32 + col;
                let want = if col >= 32 || row >= len.div_ceil(32) {
                    0xabcd
                } else if at >= len {
                    0
                } else {
                    let x = src[at];
                    if x.is_nan() {
                        assert!(widen(d).is_nan() && d & 0x40 != 0, "NaN at {at}: {d:#x}");
                        continue;
                    }
                    if x != 0.0 && x.abs() < f32::MIN_POSITIVE {
                        (x.to_bits() >> 16) as u16 & 0x8000
                    } else {
                        round_bf16(x)
                    }
                };
                assert_eq!(d, want, "len {len}, element {i} ({row}, {col})");
            }
        }
    }
}

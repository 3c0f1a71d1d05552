//! Linears of fewer than [`MIN_ROWS`](super::MIN_ROWS) rows (a decode step, a short prompt) over
//! the AMX tile copy of a bf16 weight, with AVX512-BF16's VDPBF16PS: a tile row (64 bytes) holds
//! one depth pair of 16 columns, exactly the pairs VDPBF16PS multiplies and adds into 16 f32 lanes.
//! So a weight held only as tiles ([`PackedB::tiles_only`](super::super::PackedB::tiles_only))
//! serves every row count, read once per row group in the order it is stored, nothing widened.
//!
//! Numerics: the bf16 mode's (the CUDA backend's): x rounded to bf16, exact products, f32 sums,
//! each output's depth pairs alternating between two chains (so that one row keeps enough
//! VDPBF16PS in flight) added at the end, then the bias. VDPBF16PS treats subnormal inputs and
//! results as zero.
//!
//! Launch shape: tasks over 32-column groups of the output (both 16-column tile blocks of a group
//! streamed side by side), each walking its rows [`ROWS`] at a time; memory-bound at one row (each
//! 64-byte load feeds one VDPBF16PS per row).

use super::super::super::amx_tiles::{round_rows, TILE};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows per pass over the weight: 2 chains x 2 column blocks x 6 rows = 24 accumulators.
const ROWS: usize = 6;
/// 32-column groups per task, at least (a group's weight is `k` x 32 bf16).
const MIN_GROUPS: usize = 2;

/// The output pointer, shared by tasks that write disjoint columns.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint columns of the output (see `linear`).
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The output from element `offset` (a method, so that closures capture the whole `OutPtr`).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `y` (`m` x `n`, row stride `n`) `= bias + bf16(x) @ w` (x rounded by [`round_rows`]), `w` (`k` x `n`) as the tiles
/// [`tiles_from_rows`](super::tiles_from_rows) makes. The caller checked the shapes and that the
/// CPU has AVX-512F and AVX512-BF16 (every AMX CPU has; [`supported`](super::supported)).
pub(crate) fn linear(
    x: &[f32],
    m: usize,
    (tiles, k, n): (&[u16], usize, usize),
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let kbs = k.div_ceil(32);
    let pairs = kbs * 16;
    let groups = n.div_ceil(32);
    assert!(tiles.len() >= groups * 2 * kbs * TILE && x.len() >= m * k && y.len() >= m * n);
    assert!(bias.is_none_or(|b| b.len() == n));
    if m == 0 || n == 0 {
        return;
    }
    // x rounded, each row's depths padded to whole tiles: row r's depth pair p is the u32 at
    // `r * pairs + p` (the even depth in its low half, as in the tile rows).
    let mut xb = vec![0u16; m * pairs * 2];
    for (r, row) in xb.chunks_exact_mut(pairs * 2).enumerate() {
        // SAFETY: AVX-512F, BW and BF16 (the caller's promise: `linear_few_rows` asserts
        // `supported`); the row's `kbs` rows of 32 fill `row` (zeros past `k`).
        unsafe { round_rows(&x[r * k..][..k], row, 32) };
    }
    let xp: Vec<u32> = xb
        .chunks_exact(2)
        .map(|p| p[0] as u32 | (p[1] as u32) << 16)
        .collect();
    let threads = rayon::current_num_threads();
    let per_task = groups.div_ceil(4 * threads).max(MIN_GROUPS);
    let out = OutPtr(y.as_mut_ptr());
    (0..groups.div_ceil(per_task))
        .into_par_iter()
        .for_each(|t| {
            for g in t * per_task..((t + 1) * per_task).min(groups) {
                let w0 = tiles[2 * g * kbs * TILE..][..2 * kbs * TILE].as_ptr();
                for r0 in (0..m).step_by(ROWS) {
                    let rows = ROWS.min(m - r0);
                    let xs = &xp[r0 * pairs..][..rows * pairs];
                    let width = 32.min(n - 32 * g);
                    let b = bias.map(|b| &b[32 * g..][..width]);
                    // SAFETY: AVX-512F and AVX512-BF16 (the caller's promise); `w0` holds the
                    // group's two column blocks (`kbs` tiles each, asserted above), `xs` `rows`
                    // rows of `pairs` pairs; the stores go to rows `r0 ..` of columns
                    // `32 g .. 32 g + width`, inside `y`, written by this task alone.
                    unsafe {
                        let c = out.at(r0 * n + 32 * g);
                        match rows {
                            6 => group::<6>(w0, kbs, xs, (b, width), c, n),
                            5 => group::<5>(w0, kbs, xs, (b, width), c, n),
                            4 => group::<4>(w0, kbs, xs, (b, width), c, n),
                            3 => group::<3>(w0, kbs, xs, (b, width), c, n),
                            2 => group::<2>(w0, kbs, xs, (b, width), c, n),
                            _ => group::<1>(w0, kbs, xs, (b, width), c, n),
                        }
                    }
                }
            }
        });
}

/// `R` rows by one 32-column group: `c[r, j] = bias[j] + sum_p dot(w pair p, x pair p of row r)`
/// for the group's first `width` columns (those inside the output; `bias`, if any, holds theirs).
///
/// # Safety
/// AVX-512F and AVX512-BF16; `w0` readable for `2 * kbs` tiles (the group's first column block, then
/// its second); `xs` holds `R` rows of `16 kbs` pairs; `c` writable for `R` rows (`ldc` apart) of
/// `width` values.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn group<const R: usize>(
    w0: *const u16,
    kbs: usize,
    xs: &[u32],
    (bias, width): (Option<&[f32]>, usize),
    c: *mut f32,
    ldc: usize,
) {
    let pairs = kbs * 16;
    assert!(xs.len() >= R * pairs && width <= 32 && bias.is_none_or(|b| b.len() == width));
    let w1 = w0.wrapping_add(kbs * TILE);
    // Per chain (even or odd depth pairs), per column block, per row.
    let mut acc = [[[_mm512_setzero_ps(); R]; 2]; 2];
    // SAFETY: the caller's promise bounds every load (pair q < pairs = 16 kbs rows of 32 values
    // per column block; row r < R of `xs`).
    unsafe {
        for p in (0..pairs).step_by(2) {
            for (chain, [a0, a1]) in acc.iter_mut().enumerate() {
                let q = p + chain;
                let v0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w0.add(q * 32).cast()));
                let v1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w1.add(q * 32).cast()));
                for (r, (c0, c1)) in a0.iter_mut().zip(a1.iter_mut()).enumerate() {
                    let xv: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(xs[r * pairs + q] as i32));
                    *c0 = _mm512_dpbf16_ps(*c0, v0, xv);
                    *c1 = _mm512_dpbf16_ps(*c1, v1, xv);
                }
            }
        }
    }
    let [[even0, even1], [odd0, odd1]] = acc;
    let blocks = even0.iter().zip(&odd0).zip(even1.iter().zip(&odd1));
    for (r, ((&e0, &o0), (&e1, &o1))) in blocks.enumerate() {
        let mut row = [0f32; 32];
        // SAFETY: AVX-512F (the caller's promise); `row` holds 32 values.
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), _mm512_add_ps(e0, o0));
            _mm512_storeu_ps(row[16..].as_mut_ptr(), _mm512_add_ps(e1, o1));
        }
        if let Some(b) = bias {
            for (v, b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
        // SAFETY: the caller's promise: row r's `width` columns from `c` are ours to write.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), width) };
        dst.copy_from_slice(&row[..width]);
    }
}

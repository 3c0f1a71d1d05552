//! The AVX2+FMA micro-kernel, the packing routines and the blocking loops around them. B packed
//! ahead may hold bf16 ([`Lanes`]): the kernels widen it as they load it, in the same FMA order.

#![deny(unsafe_op_in_unsafe_fn)]

use super::super::aligned::AlignedVec;
use super::super::bf16::widen_serial;
use super::super::matmul::Mat;
use super::packed_b::Values;
use super::x86_avx512::{tile2, wide1_512, Lanes16};
use super::{passes, BSource, Elem, Isa, Job, Out, RowTable, MC, MR, NC, NR};
use half::bf16;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

thread_local! {
    /// Per-thread buffer for B packed from a view, reused across calls.
    static PACKED_B: RefCell<AlignedVec<f32>> = const { RefCell::new(AlignedVec::new()) };
}

/// Packs depths `k0 .. k0 + kc` and columns `j0 .. j0 + nc` of a strided `b` into panels of `NR`
/// columns: panel `t`, depth `p`, column `j` at `t*NR*kc + p*NR + j`; columns past `nc` are zero.
///
/// # Safety
/// The CPU must support AVX2.
pub(super) unsafe fn pack_b(
    b: &Mat<'_>,
    k0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    buf: &mut [f32],
) {
    for (t, panel) in buf[..nc.div_ceil(NR) * NR * kc]
        .chunks_exact_mut(NR * kc)
        .enumerate()
    {
        let jp = j0 + t * NR;
        let w = NR.min(j0 + nc - jp);
        if b.cs == 1 {
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let src = &b.data[(k0 + p) * b.rs + jp..][..w];
                dst[..w].copy_from_slice(src);
                dst[w..].fill(0.0);
            }
            continue;
        }
        let mut j = 0;
        if b.rs == 1 {
            // Columns of b are contiguous (an nn.Linear weight's rows): 8x8 blocks transposed in
            // registers.
            let p8 = kc / 8 * 8;
            while j + 8 <= w {
                let first = (jp + j) * b.cs + k0;
                // The last of the 8 columns' last element read.
                let end = first + 7 * b.cs + p8;
                if p8 > 0 {
                    let src = &b.data[first..end];
                    // SAFETY: AVX2 (the caller's promise); `src` holds the 8 columns' `p8` values
                    // `b.cs` apart, `panel[j..]` the `kc` rows of 16 written.
                    unsafe { transpose_8_columns(src, b.cs, p8, &mut panel[j..]) };
                }
                for c in j..j + 8 {
                    let col = &b.data[(jp + c) * b.cs + k0..];
                    for p in p8..kc {
                        panel[p * NR + c] = col[p];
                    }
                }
                j += 8;
            }
        }
        for c in j..NR {
            if c < w {
                let col = &b.data[k0 * b.rs + (jp + c) * b.cs..];
                for p in 0..kc {
                    panel[p * NR + c] = col[p * b.rs];
                }
            } else {
                for p in 0..kc {
                    panel[p * NR + c] = 0.0;
                }
            }
        }
    }
}

/// [`pack_b`] for a [`RowTable`]: depth `k0 + p`'s columns `j0 .. j0 + nc` are the contiguous values
/// at its row offset.
fn pack_b_rows(b: &RowTable<'_>, k0: usize, kc: usize, j0: usize, nc: usize, buf: &mut [f32]) {
    for (t, panel) in buf[..nc.div_ceil(NR) * NR * kc]
        .chunks_exact_mut(NR * kc)
        .enumerate()
    {
        let jp = j0 + t * NR;
        let w = NR.min(j0 + nc - jp);
        for (dst, &off) in panel.chunks_exact_mut(NR).zip(&b.offsets[k0..k0 + kc]) {
            dst[..w].copy_from_slice(&b.data[off + jp..][..w]);
            dst[w..].fill(0.0);
        }
    }
}

/// Writes `dst[p*16 + j] = src[j*ld + p]` for 8 columns `j` and `p < p8` (a multiple of 8).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn transpose_8_columns(src: &[f32], ld: usize, p8: usize, dst: &mut [f32]) {
    assert!(p8.is_multiple_of(8) && src.len() >= 7 * ld + p8 && dst.len() + NR >= p8 * NR + 8);
    // SAFETY: AVX2 (the caller's promise); the assert keeps every load inside `src` (column `j`
    // reads `j*ld .. j*ld + p8`) and every store inside `dst` (row `p` writes `p*16 .. p*16 + 8`).
    unsafe {
        let s = src.as_ptr();
        let d = dst.as_mut_ptr();
        for p in (0..p8).step_by(8) {
            let r0 = _mm256_loadu_ps(s.add(p));
            let r1 = _mm256_loadu_ps(s.add(ld + p));
            let r2 = _mm256_loadu_ps(s.add(2 * ld + p));
            let r3 = _mm256_loadu_ps(s.add(3 * ld + p));
            let r4 = _mm256_loadu_ps(s.add(4 * ld + p));
            let r5 = _mm256_loadu_ps(s.add(5 * ld + p));
            let r6 = _mm256_loadu_ps(s.add(6 * ld + p));
            let r7 = _mm256_loadu_ps(s.add(7 * ld + p));
            let t0 = _mm256_unpacklo_ps(r0, r1);
            let t1 = _mm256_unpackhi_ps(r0, r1);
            let t2 = _mm256_unpacklo_ps(r2, r3);
            let t3 = _mm256_unpackhi_ps(r2, r3);
            let t4 = _mm256_unpacklo_ps(r4, r5);
            let t5 = _mm256_unpackhi_ps(r4, r5);
            let t6 = _mm256_unpacklo_ps(r6, r7);
            let t7 = _mm256_unpackhi_ps(r6, r7);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (q, v) in out.into_iter().enumerate() {
                _mm256_storeu_ps(d.add((p + q) * NR), v);
            }
        }
    }
}

/// The blocking loops for the destination's rows `rows` and columns `cols` (see `Job::part`).
///
/// # Safety
/// As `Job::part`, and the CPU must support AVX2 and FMA.
pub(super) unsafe fn part(job: &Job<'_>, rows: Range<usize>, cols: Range<usize>) {
    PACKED_B.with(|cell| {
        let mut bbuf = cell.borrow_mut();
        let m = rows.len();
        let mc_step = m.div_ceil(m.div_ceil(MC)).next_multiple_of(MR);
        let kstep = passes(job.k).1;
        // Packed B is read where it lies. From a view, B is packed NC columns at a time when the
        // block is reused by several row blocks, else a few panels at a time (used from L1/L2).
        let nc_step = match job.b {
            BSource::Packed(_) => cols.len(),
            BSource::View(_) | BSource::Rows(_) if m > mc_step => NC,
            BSource::View(_) | BSource::Rows(_) => 4 * NR,
        };
        let mut blk = Block {
            job,
            rows,
            mc_step,
            bpack: bbuf.sized(nc_step.next_multiple_of(NR) * kstep),
        };
        let ks = (0..job.k).step_by(kstep);
        let js = cols.clone().step_by(nc_step);
        let run = |blk: &mut Block<'_, '_, '_>, k0: usize, j0: usize| {
            let (kc, nc) = (kstep.min(job.k - k0), nc_step.min(cols.end - j0));
            // SAFETY: the caller's promises, and `j0 .. j0 + nc` lies within `cols`.
            unsafe { blk.run(k0, kc, j0, nc) }
        };
        if m <= MR {
            // One tile of rows does not reuse B: all depth passes of a few columns, then the next
            // ones, so that each column of a strided B is read as one stream.
            for j0 in js {
                for k0 in ks.clone() {
                    run(&mut blk, k0, j0);
                }
            }
        } else {
            for k0 in ks {
                for j0 in js.clone() {
                    run(&mut blk, k0, j0);
                }
            }
        }
    });
}

struct Block<'j, 'a, 's> {
    job: &'j Job<'a>,
    /// The rows this block computes (starting at a multiple of MR).
    rows: Range<usize>,
    mc_step: usize,
    bpack: &'s mut [f32],
}

impl Block<'_, '_, '_> {
    /// Depths `k0 .. k0 + kc` (one pass) of columns `j0 .. j0 + nc` (`j0` a multiple of 16), the
    /// block's rows.
    ///
    /// # Safety
    /// As [`part`], with `j0 .. j0 + nc` within its columns.
    unsafe fn run(&mut self, k0: usize, kc: usize, j0: usize, nc: usize) {
        let job = self.job;
        let (m, out) = (job.m, job.out);
        let rows = self.rows.clone();
        // The first depth pass starts the chains from the bias or zero, unless the call accumulates.
        let first = k0 == 0 && !job.accumulate;
        // This pass of packed A: micro-panel `t` (rows `6t ..`) at `t*MR*kc`.
        let mp = m.next_multiple_of(MR);
        let apass = &job.apack[k0 * mp..][..mp * kc];
        match &job.b {
            // SAFETY: AVX2 (the caller's promise).
            BSource::View(b) => unsafe { pack_b(b, k0, kc, j0, nc, self.bpack) },
            BSource::Rows(r) => pack_b_rows(r, k0, kc, j0, nc, self.bpack),
            BSource::Packed(_) => {}
        }
        let mut tile = [0f32; MR * NR];
        let mut bias_pad = [0f32; NR];
        for i0 in rows.clone().step_by(self.mc_step) {
            let mc = self.mc_step.min(rows.end - i0);
            let mut jp = j0;
            while jp < j0 + nc {
                // One row, four full panels (eight on AVX-512), destination contiguous: the wide
                // kernel.
                // (B packed per call comes four panels at a time for one row.)
                let panels = match (job.isa, &job.b) {
                    (Isa::Avx512, BSource::Packed(_)) => 8,
                    _ => 4,
                };
                if mc == 1 && jp + panels * NR <= j0 + nc && out.cs == 1 {
                    let bp = match &job.b {
                        BSource::Packed(p) => p.full_panels(jp, k0, kc, panels),
                        BSource::View(_) | BSource::Rows(_) => {
                            Values::F32(&self.bpack[(jp - j0) * kc..][..panels * NR * kc])
                        }
                    };
                    let c = out.ptr.wrapping_add(i0 * out.rs + jp);
                    let init = match job.bias {
                        Some(b) if first => b[jp..jp + panels * NR].as_ptr(),
                        None if first => std::ptr::null(),
                        _ => c.cast_const(),
                    };
                    let ap = apass[i0 * kc..][..MR * kc].as_ptr();
                    // SAFETY: AVX2+FMA (and AVX-512F for eight panels: `Isa::Avx512` is only chosen
                    // where detected); `ap` is a micro-panel of `kc` steps of MR values; `bp` is
                    // `panels` full panels of `kc` rows of 16, one after the other (one pass of packed
                    // B, or `bpack`); the bias has `16*panels` values from `jp`; the destination row
                    // `i0` has `16*panels` contiguous columns from `jp`, inside it and ours alone
                    // (`Job::part`).
                    unsafe { wide1(panels, kc, ap, bp, init, c) };
                    jp += panels * NR;
                    continue;
                }
                // Two full panels, destination contiguous, AVX-512: the 32-column kernel.
                if job.isa == Isa::Avx512 && jp + 2 * NR <= j0 + nc && out.cs == 1 {
                    let bp = match &job.b {
                        BSource::Packed(p) => widened(p.full_panels(jp, k0, kc, 2), mc, self.bpack),
                        BSource::View(_) | BSource::Rows(_) => {
                            Values::F32(&self.bpack[(jp - j0) * kc..][..2 * NR * kc])
                        }
                    };
                    let init: Option<*const f32> = match job.bias {
                        Some(b) if first => Some(b[jp..jp + 2 * NR].as_ptr()),
                        None if first => Some(std::ptr::null()),
                        _ => None,
                    };
                    // The next pair's packed values, fetched a slice per row tile while this pair
                    // computes.
                    let ahead = packed_ahead(&job.b, (jp + 2 * NR, 2), j0 + nc, (k0, kc));
                    let tiles = mc.div_ceil(MR);
                    for ir in (0..mc).step_by(MR) {
                        if let Some(bytes) = &ahead {
                            prefetch_part(bytes, ir / MR, tiles);
                        }
                        let (i, r) = (i0 + ir, MR.min(mc - ir));
                        if init.is_none() {
                            // Later depth passes start from the destination, long evicted when
                            // the rows are many: fetch the next tile's while this one computes.
                            prefetch_next(out, (i, jp), (i0, i0 + mc), (j0 + nc, 2 * NR));
                        }
                        let a = apass[i * kc..][..MR * kc].as_ptr();
                        let c = out.ptr.wrapping_add(i * out.rs + jp);
                        let (ip, ild) = init.map_or((c.cast_const(), out.rs), |p| (p, 0));
                        // SAFETY: AVX-512F (`Isa::Avx512` is only chosen where detected); `a` is a
                        // micro-panel of `kc` steps of MR values, `bp` two full panels of `kc` rows
                        // of 16 one after the other; the destination's rows `i .. i + r`, columns
                        // `jp .. jp + 32`, are inside it and ours alone (`Job::part`); a bias
                        // has 32 values from `jp`.
                        unsafe { kernel(r, 2, (kc, a, bp), ip, ild, c, out.rs) };
                    }
                    jp += 2 * NR;
                    continue;
                }
                let ahead = packed_ahead(&job.b, (jp + NR, 1), j0 + nc, (k0, kc));
                let tiles = mc.div_ceil(MR);
                let (bp, w) = match &job.b {
                    BSource::Packed(p) => match p.panel(jp, k0, kc) {
                        (panel, NR) => (widened(panel, mc, self.bpack), NR),
                        (panel, w) => {
                            // Edge panels are few: widened to f32 here, run by the f32 kernel.
                            panel.widen_panel(w, kc, self.bpack);
                            (Values::F32(&self.bpack[..kc * NR]), w)
                        }
                    },
                    BSource::View(_) | BSource::Rows(_) => (
                        Values::F32(&self.bpack[(jp - j0) * kc..][..kc * NR]),
                        NR.min(j0 + nc - jp),
                    ),
                };
                // Where this panel's chains start: the bias (padded to 16 when the panel is
                // narrower), zero, or (None) the destination.
                let init: Option<*const f32> = match job.bias {
                    Some(b) if first => Some(if w == NR {
                        b[jp..jp + NR].as_ptr()
                    } else {
                        bias_pad[..w].copy_from_slice(&b[jp..jp + w]);
                        bias_pad.as_ptr()
                    }),
                    None if first => Some(std::ptr::null()),
                    _ => None,
                };
                for ir in (0..mc).step_by(MR) {
                    if let Some(bytes) = &ahead {
                        prefetch_part(bytes, ir / MR, tiles);
                    }
                    let (i, r) = (i0 + ir, MR.min(mc - ir));
                    let a = apass[i * kc..][..MR * kc].as_ptr();
                    let c = out.ptr.wrapping_add(i * out.rs + jp * out.cs);
                    if w == NR && out.cs == 1 {
                        if init.is_none() {
                            prefetch_next(out, (i, jp), (i0, i0 + mc), (j0 + nc, NR));
                        }
                        let (ip, ild) = init.map_or((c.cast_const(), out.rs), |p| (p, 0));
                        // SAFETY: AVX2+FMA; `a` is a micro-panel of `kc` steps of MR values, `bp` a
                        // full panel of `kc` rows of 16; the destination's rows `i .. i + r`,
                        // columns `jp .. jp + 16`, are inside it (`gemm` asserted its span) and ours
                        // alone (`Job::part`); a bias has 16 values from `jp`.
                        unsafe { kernel(r, 1, (kc, a, bp), ip, ild, c, out.rs) };
                    } else {
                        // Edge or strided destination: through a 6x16 buffer.
                        let (ip, ild) = match init {
                            Some(p) => (p, 0),
                            None => {
                                // SAFETY: rows `i .. i + r`, columns `jp .. jp + w` are inside the
                                // destination and ours alone.
                                unsafe { copy_tile(out, (i, jp), (r, w), &mut tile, true) };
                                (tile.as_ptr(), NR)
                            }
                        };
                        // SAFETY: as above for A and B (a narrow panel is widened to 16 with
                        // zeros); `tile` holds 6 rows of 16, the bias `bias_pad` 16 values.
                        unsafe { kernel(r, 1, (kc, a, bp), ip, ild, tile.as_mut_ptr(), NR) };
                        // SAFETY: as for the copy in.
                        unsafe { copy_tile(out, (i, jp), (r, w), &mut tile, false) };
                    }
                }
                jp += NR;
            }
        }
    }
}

/// Full panels `b` as the micro-kernels should read them for `mc` rows: bf16 panels that more than
/// one row tile reads are widened once into `buf` (the kernels would otherwise widen every B vector
/// again for each row tile: two extra instructions per vector, on the AVX-512 kernel the FMAs' own
/// port); one row tile, or f32, reads them where they lie. Exact either way, so the bits are the same.
fn widened<'b>(b: Values<'b>, mc: usize, buf: &'b mut [f32]) -> Values<'b> {
    match b {
        Values::Bf16(v) if mc > MR => {
            let buf = &mut buf[..v.len()];
            widen_serial(v, buf);
            Values::F32(buf)
        }
        b => b,
    }
}

/// The bytes of packed B's `count` full panels from column `j` in the depth pass `(k0, kc)`, when B
/// is packed ahead and they end by `end`: what to prefetch while the panels before them compute.
fn packed_ahead(
    b: &BSource<'_>,
    (j, count): (usize, usize),
    end: usize,
    (k0, kc): (usize, usize),
) -> Option<Range<*const u8>> {
    let BSource::Packed(p) = b else { return None };
    if j + count * NR > end {
        return None;
    }
    let (ptr, n) = match p.full_panels(j, k0, kc, count) {
        Values::F32(v) => (v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)),
        Values::Bf16(v) => (v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)),
    };
    Some(ptr..ptr.wrapping_add(n))
}

/// Prefetches part `t` of `parts` of `bytes` (by cache lines) into L2: packed B read from memory
/// the first time, a row tile at a time, left the kernel waiting on it (the next panels, fetched
/// while the current ones compute, took the mid preset's prefill from 125-128 to 115-118 ms).
fn prefetch_part(bytes: &Range<*const u8>, t: usize, parts: usize) {
    let lines = (bytes.end as usize - bytes.start as usize).div_ceil(64);
    for l in lines * t / parts..lines * (t + 1) / parts {
        // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(bytes.start.wrapping_add(64 * l).cast()) };
    }
}

/// Prefetches the destination rows of the `width`-column tile after `(i, j)` in a block of rows
/// `i0 .. i_end`: the next rows of these columns, or the block's first rows of the next ones (below
/// `j_end`).
fn prefetch_next(
    out: Out,
    (i, j): (usize, usize),
    (i0, i_end): (usize, usize),
    (j_end, width): (usize, usize),
) {
    let (ni, nj) = if i + MR < i_end {
        (i + MR, j)
    } else {
        (i0, j + width)
    };
    if nj >= j_end {
        return;
    }
    for row in ni..i_end.min(ni + MR) {
        let p = out.ptr.wrapping_add(row * out.rs + nj);
        // Every line the row's `width` values touch: one each 16 values, and the last.
        for off in (0..width).step_by(16).chain([width - 1]) {
            // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast()) };
        }
    }
}

/// Copies rows `i .. i + r`, columns `j .. j + w` of the destination into `tile` (6 rows of 16),
/// or back with `to_tile` false.
///
/// # Safety
/// Those rows and columns must be inside the destination and not accessed by another thread.
unsafe fn copy_tile(
    out: Out,
    (i, j): (usize, usize),
    (r, w): (usize, usize),
    tile: &mut [f32; MR * NR],
    to_tile: bool,
) {
    for di in 0..r {
        for dj in 0..w {
            // SAFETY: the caller's promise.
            let p = unsafe { out.ptr.add((i + di) * out.rs + (j + dj) * out.cs) };
            if to_tile {
                // SAFETY: as above.
                tile[di * NR + dj] = unsafe { *p };
            } else {
                // SAFETY: as above.
                unsafe { *p = tile[di * NR + dj] };
            }
        }
    }
}

/// B values the kernels can load eight at a time as f32.
trait Lanes: Elem {
    /// The 8 values at `p`, as f32.
    ///
    /// # Safety
    /// AVX2; `p` readable for 8 values.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Lanes for f32 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the caller's promise.
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl Lanes for bf16 {
    /// A bf16 is the top half of the f32 of equal value: zero-extend to 32 bits and shift left 16
    /// (exact, two instructions, so the FMA chain sees the same f32 as f32 storage; a NaN weight stays
    /// a NaN, only its quiet bit is not forced as `widen1` forces it).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const bf16) -> __m256 {
        // SAFETY: the caller's promise: 16 readable bytes at `p`.
        unsafe {
            let h = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
}

/// One row by 64 columns: four full panels of `kc` rows of 16, one after the other, in `b`.
///
/// # Safety
/// AVX2 and FMA; `a` readable at `p*MR` for `p < kc`; `b` holds at least `64*kc` values; `init`
/// null or readable for 64 values; `c` writable for 64 values.
unsafe fn wide1(
    panels: usize,
    kc: usize,
    a: *const f32,
    b: Values<'_>,
    init: *const f32,
    c: *mut f32,
) {
    /// One B type: the assert gives the length the kernels read.
    ///
    /// # Safety
    /// As [`wide1`].
    unsafe fn run<T: Lanes + Lanes16>(
        panels: usize,
        kc: usize,
        a: *const f32,
        b: &[T],
        init: *const f32,
        c: *mut f32,
    ) {
        assert!(b.len() >= panels * NR * kc);
        // SAFETY: forwarded.
        unsafe {
            match panels {
                8 => wide1_512(kc, a, b.as_ptr(), init, c),
                _ => wide1_of(kc, a, b.as_ptr(), init, c),
            }
        }
    }
    // SAFETY: forwarded.
    unsafe {
        match b {
            Values::F32(b) => run(panels, kc, a, b, init, c),
            Values::Bf16(b) => run(panels, kc, a, b, init, c),
        }
    }
}

/// `c = (init or 0) + sum_p a[p] b[p, :]` over four panels `16*kc` apart from `b`. Eight independent
/// chains, so decode-sized products are not bound by FMA latency.
///
/// # Safety
/// As [`wide1`], `b` readable for `64*kc` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn wide1_of<T: Lanes>(kc: usize, a: *const f32, b: *const T, init: *const f32, c: *mut f32) {
    // SAFETY: the function's contract: AVX2+FMA, and every access inside the promised ranges.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 8];
        if !init.is_null() {
            for (q, v) in acc.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(init.add(8 * q));
            }
        }
        let b_ld = NR * kc;
        let bs = [b, b.add(b_ld), b.add(2 * b_ld), b.add(3 * b_ld)];
        for p in 0..kc {
            let x = _mm256_broadcast_ss(&*a.add(p * MR));
            for t in 0..4 {
                let bt = bs[t].add(p * NR);
                acc[2 * t] = _mm256_fmadd_ps(x, T::load8(bt), acc[2 * t]);
                acc[2 * t + 1] = _mm256_fmadd_ps(x, T::load8(bt.add(8)), acc[2 * t + 1]);
            }
        }
        for (q, v) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(8 * q), *v);
        }
    }
}

/// One micro-tile's operands: `kc` depth steps; A's step `p` is the MR values at `a + MR*p` (a
/// packed micro-panel); B's the 16 values at `b + 16p` (and, for the two-panel AVX-512 kernel, the
/// second panel's at `b + 16kc + 16p`).
pub(super) struct Tile<T> {
    pub(super) kc: usize,
    pub(super) a: *const f32,
    pub(super) b: *const T,
}

/// Calls `$tile::<R, $t>(args)` with `R` the constant for the run-time row count `$r` (1..=MR).
macro_rules! by_rows {
    ($r:expr, $tile:ident::<$t:ty>($($arg:expr),*)) => {
        match $r {
            6 => $tile::<6, $t>($($arg),*),
            5 => $tile::<5, $t>($($arg),*),
            4 => $tile::<4, $t>($($arg),*),
            3 => $tile::<3, $t>($($arg),*),
            2 => $tile::<2, $t>($($arg),*),
            _ => $tile::<1, $t>($($arg),*),
        }
    };
}

/// `r` rows (1..=MR) by `panels` full panels (1: 16 columns, AVX2 kernel; 2: 32 columns, AVX-512
/// kernel); `(kc, a, b)`: `kc` depth steps of a packed micro-panel of A and of the panels of B, one
/// after the other.
///
/// # Safety
/// AVX2 and FMA, and AVX-512F for two panels; `a` readable for `kc` steps of MR values; `b` holds at
/// least `16*panels*kc` values; `init` null or readable for `r` rows of `16*panels` values `init_ld`
/// apart; `c` writable for `r` rows of `16*panels` values `ldc` apart.
#[inline]
unsafe fn kernel(
    r: usize,
    panels: usize,
    (kc, a, b): (usize, *const f32, Values<'_>),
    init: *const f32,
    init_ld: usize,
    c: *mut f32,
    ldc: usize,
) {
    fn tile_of<T>(kc: usize, a: *const f32, b: &[T], panels: usize) -> Tile<T> {
        assert!(b.len() >= panels * NR * kc);
        Tile {
            kc,
            a,
            b: b.as_ptr(),
        }
    }
    // SAFETY: forwarded; `tile_of` asserts the length the kernels read.
    unsafe {
        match b {
            Values::F32(b) => {
                run_tile(r, panels, &tile_of(kc, a, b, panels), init, init_ld, c, ldc)
            }
            Values::Bf16(b) => {
                run_tile(r, panels, &tile_of(kc, a, b, panels), init, init_ld, c, ldc)
            }
        }
    }
}

/// [`kernel`]'s dispatch to the micro-kernel for `panels` and `r`.
///
/// # Safety
/// As [`kernel`].
#[inline]
unsafe fn run_tile<T: Lanes + Lanes16>(
    r: usize,
    panels: usize,
    t: &Tile<T>,
    init: *const f32,
    init_ld: usize,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: the function's contract, forwarded.
    unsafe {
        if panels == 2 {
            by_rows!(r, tile2::<T>(t, init, init_ld, c, ldc))
        } else {
            by_rows!(r, tile::<T>(t, init, init_ld, c, ldc))
        }
    }
}

/// `c = (init or 0) + sum_p a[p, :R]^T b[p, :]`, one FMA per step and output.
///
/// # Safety
/// As [`kernel`].
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, T: Lanes>(
    t: &Tile<T>,
    init: *const f32,
    init_ld: usize,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: the function's contract: AVX2+FMA, and every access inside the promised ranges.
    unsafe {
        let mut c0 = [_mm256_setzero_ps(); R];
        let mut c1 = [_mm256_setzero_ps(); R];
        if !init.is_null() {
            for i in 0..R {
                c0[i] = _mm256_loadu_ps(init.add(i * init_ld));
                c1[i] = _mm256_loadu_ps(init.add(i * init_ld + 8));
            }
        }
        let (mut a, mut b) = (t.a, t.b);
        for _ in 0..t.kc {
            let b0 = T::load8(b);
            let b1 = T::load8(b.add(8));
            for i in 0..R {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
                c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        for i in 0..R {
            _mm256_storeu_ps(c.add(i * ldc), c0[i]);
            _mm256_storeu_ps(c.add(i * ldc + 8), c1[i]);
        }
    }
}

//! Stride-1 convolutions on Intel AMX tiles in bf16 (with `HBRIDGE_CPU_MATMUL=bf16`): the VAE's 3x3
//! and 1x1 convolutions, which took 90% of its decode in f32.
//!
//! Numerics: the input and the weight are rounded to bf16 (nearest, ties to even), each product is
//! exact and the sums are f32 in the tile unit's order, starting from the bias: the bf16 linear's
//! contract (`packed_gemm/amx.rs`), held to DESIGN.md section 8's bf16 tolerance by the model checks.
//!
//! As a product: `out[co, p] = bias[co] + sum over taps (ky, kx) and channels ci of
//! W[co, ci, ky, kx] * xpad[ci, p + ky*wp + kx]`, with `xpad` the zero-padded input on a row width of
//! `wp = wout + k - 1` (the f32 path's shifted GEMM, `super::conv2d_shifted`). Output channels are
//! the tiles' rows (A: the weight, 16 channels x 32 input channels of one tap per tile, packed per
//! call), pixels their columns. The input is rounded once per band of output rows into channel
//! pairs, `xin[ci / 2][p]` = the bf16 pair `(ci, ci + 1)` at padded pixel `p`: exactly the rows of
//! a B tile (32 depths x 16 columns, pair-interleaved), so each tap's B tiles are loaded in place
//! at the tap's offset with the pair plane as their row stride, and nothing is packed per tap.
//!
//! A task owns a group of output rows and a range of output channels, which it walks in chunks of
//! at most [`A_CHUNK_BYTES`] of weight tiles (kept in L2): for each chunk, every row, every 32-pixel
//! block, every pair of 16-channel blocks in the chunk; the weight's tiles are prefetched ahead
//! (TILELOADD gets no help from the hardware prefetchers). Whole 32 x 32 blocks go straight into the
//! output planes, streamed (non-temporal) into outputs of `amx_tiles::STREAM_MIN_BYTES` or more;
//! blocks on the right edge or past the last channel go through a buffer.
//!
//! Versions (`benches/kernels.rs` `conv` group and `conv_amx_timing`, the 2-core build machine):
//! - v1: a task per output row, 32-pixel blocks outer: 1.0-1.7 TFLOP/s on the mid preset's VAE, but
//!   a 512 -> 512 channel weight (4.7 MB) streamed from L3 for every pixel block: 1.15 TFLOP/s.
//! - v2: row groups and weight chunks: 512 -> 512 at 128x128 1.5-1.8 TFLOP/s.
//! - v3 (this): streamed stores: the output's lines are no longer read for ownership; 128 -> 128
//!   channels at 1024x1024 1.3 -> 1.65-1.74 TFLOP/s.

use super::super::aligned::AlignedVec;
use super::Conv2dShape;
use crate::cpu::ops::amx_tiles::{
    self, prefetch_tile, product_b_stride, round_bf16, supported, PREFETCH_AHEAD, TILE,
};
use crate::cpu::ops::simd::{at_level, level, Level};
use rayon::prelude::*;
use std::ops::Range;

/// Most bytes of weight tiles a task walks its rows with before moving to the next output channels:
/// half of a 2 MiB L2, the rest for the input rows the taps read.
const A_CHUNK_BYTES: usize = 1 << 20;

/// Upper bound on one band's rounded input, in bytes: tens of rows at the VAE's widths, so the
/// k - 1 halo rows packed twice are a few percent.
const BAND_BYTES: usize = 8 << 20;

/// `out = bias + conv(x, weight)` for a stride-1 convolution (every output written once). The caller
/// checked [`amx_tiles::enabled`] and the shapes (`x`: `[cin, h, w]`, `weight`: `[cout, cin, k, k]`,
/// `out`: `[cout, hout, wout]`). Panics without AMX ([`supported`]).
pub(crate) fn conv2d(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    out: &mut [f32],
) {
    let budgets = (BAND_BYTES, A_CHUNK_BYTES, amx_tiles::STREAM_MIN_BYTES);
    conv2d_banded(x, weight, bias, s, out, budgets)
}

/// [`conv2d`] with bands of at most `band_bytes` of rounded input (at least one output row) and
/// tasks walking their rows with at most `chunk_bytes` of weight tiles (at least one pair of
/// 16-channel blocks), streaming whole blocks to an output of `stream_min` bytes or more.
fn conv2d_banded(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: &Conv2dShape,
    out: &mut [f32],
    (band_bytes, chunk_bytes, stream_min): (usize, usize, usize),
) {
    assert!(supported(), "conv::amx on a CPU without AMX-BF16");
    assert!(s.stride == 1 && s.k >= 1);
    let plane = s.hout * s.wout;
    assert!(x.len() >= s.cin * s.h * s.w && out.len() >= s.cout * plane);
    if plane == 0 || s.cout == 0 {
        return;
    }
    let g = Geometry::new(s);
    let a = pack_weight(weight, s, &g);
    // Row `co` of a 32-wide buffer holds bias[co] 32 times: a C tile loaded from it (row stride 32
    // values) starts every pixel of channel `co` from its bias.
    let bias_rows: Option<AlignedVec<f32>> = bias.map(|b| {
        let mut rows = AlignedVec::zeroed(g.cblocks * 16 * 32);
        for (co, row) in rows.chunks_exact_mut(32).enumerate() {
            row.fill(b.get(co).copied().unwrap_or(0.0));
        }
        rows
    });
    let band = g.band_rows(band_bytes, s.hout);
    let mut xin = AlignedVec::<u32>::zeroed(g.pairs * g.plane_len(band));
    let threads = rayon::current_num_threads();
    let out_ptr = OutPtr(out.as_mut_ptr());
    let level = level();
    for oy0 in (0..s.hout).step_by(band) {
        let rows = band.min(s.hout - oy0);
        let pp = g.plane_len(rows);
        let xin = &mut xin[..g.pairs * pp];
        xin.par_chunks_mut(pp)
            .enumerate()
            .for_each(|(pair, dst)| pack_pair_plane(level, x, s, &g, (oy0, rows), pair, dst));
        let xin = &*xin;
        // Groups of rows, each with all the output channels when there are enough groups to keep
        // every thread busy, else split over the channels too.
        let co_pairs = g.cblocks / 2;
        let groups = rows.min(4 * threads);
        let per_group = rows.div_ceil(groups);
        let groups = rows.div_ceil(per_group);
        let splits = (4 * threads).div_ceil(groups).clamp(1, co_pairs);
        let per_split = co_pairs.div_ceil(splits);
        (0..groups * splits).into_par_iter().for_each(|t| {
            let (group, split) = (t / splits, t % splits);
            let rows = group * per_group..((group + 1) * per_group).min(rows);
            let cps = split * per_split..((split + 1) * per_split).min(co_pairs);
            let task = Task {
                s,
                g: &g,
                chunk_bytes,
                a: &a,
                xin,
                pp,
                bias_rows: bias_rows.as_deref(),
                out: &out_ptr,
                stream: s.cout * plane * 4 >= stream_min,
            };
            // SAFETY: `supported` found AMX-BF16 with the tile state granted; this task writes output
            // rows `oy0 + rows` of channels `cps`, which no other task writes.
            unsafe { task.run(rows, oy0, cps) };
        });
    }
}

/// Sizes derived from the shape.
struct Geometry {
    k: usize,
    taps: usize,
    /// 32-channel depth blocks per tap (input channels padded to a multiple of 32).
    kbs: usize,
    /// Channel pairs in the rounded input (`kbs * 16`).
    pairs: usize,
    /// 16-channel output blocks (an even number: tasks take them two at a time).
    cblocks: usize,
    /// The padded row width.
    wp: usize,
}

impl Geometry {
    fn new(s: &Conv2dShape) -> Geometry {
        let kbs = s.cin.div_ceil(32);
        Geometry {
            k: s.k,
            taps: s.k * s.k,
            kbs,
            pairs: kbs * 16,
            cblocks: s.cout.div_ceil(32) * 2,
            wp: s.wout + s.k - 1,
        }
    }

    /// Output rows per band: as many as `band_bytes` of rounded input hold, at least one.
    fn band_rows(&self, band_bytes: usize, hout: usize) -> usize {
        (band_bytes / (self.pairs * self.wp * 4))
            .saturating_sub(self.k - 1)
            .clamp(1, hout)
    }

    /// Pixels per pair plane for a band of `rows` output rows: its padded rows plus room for the last
    /// pixel block's reads past the last valid column (up to 31 pixels and the taps' k - 1).
    fn plane_len(&self, rows: usize) -> usize {
        (rows + self.k - 1) * self.wp + 32 + self.k
    }
}

/// The weight as A tiles: tile `((cb * taps + tap) * kbs + kb)` holds output channels `cb*16 ..+16`
/// (rows) by input channels `kb*32 ..+32` (columns) of tap `tap = ky * k + kx`, zero-padded.
fn pack_weight(weight: &[f32], s: &Conv2dShape, g: &Geometry) -> AlignedVec<u16> {
    let per_block = g.taps * g.kbs * TILE;
    let mut a = AlignedVec::zeroed(g.cblocks * per_block);
    a.par_chunks_mut(per_block)
        .enumerate()
        .for_each(|(cb, block)| {
            for r in 0..16.min(s.cout.saturating_sub(cb * 16)) {
                let co = cb * 16 + r;
                for ci in 0..s.cin {
                    let src = &weight[(co * s.cin + ci) * g.taps..][..g.taps];
                    for (tap, &v) in src.iter().enumerate() {
                        block[(tap * g.kbs + ci / 32) * TILE + r * 32 + ci % 32] = round_bf16(v);
                    }
                }
            }
        });
    a
}

/// Pair plane `pair` of the band of `band_rows` output rows from `oy0`: padded pixel `py * wp + px` holds
/// input `(oy0 + py - pad_before, px - pad_before)` of channels `2 * pair` (low half) and
/// `2 * pair + 1` (high half) as bf16, zero in the padding, past the last channel and in the tail.
fn pack_pair_plane(
    level: Level,
    x: &[f32],
    s: &Conv2dShape,
    g: &Geometry,
    (oy0, band_rows): (usize, usize),
    pair: usize,
    dst: &mut [u32],
) {
    let (c0, c1) = (2 * pair, 2 * pair + 1);
    let channel_row = |c: usize, iy: usize| (c < s.cin).then(|| &x[(c * s.h + iy) * s.w..][..s.w]);
    let lo = s.pad_before.min(g.wp);
    let n = s.w.min(g.wp - lo);
    let (rows, tail) = dst.split_at_mut((band_rows + s.k - 1) * g.wp);
    tail.fill(0);
    for (py, row) in rows.chunks_exact_mut(g.wp).enumerate() {
        let iy = (oy0 + py) as isize - s.pad_before as isize;
        if c0 >= s.cin || iy < 0 || iy as usize >= s.h {
            row.fill(0);
            continue;
        }
        let iy = iy as usize;
        row[..lo].fill(0);
        let low = &channel_row(c0, iy).expect("c0 < cin")[..n];
        match channel_row(c1, iy) {
            Some(high) => interleave(level, low, &high[..n], &mut row[lo..lo + n]),
            None => interleave(level, low, &[], &mut row[lo..lo + n]),
        }
        row[lo + n..].fill(0);
    }
}

/// `dst[i]` = bf16(low[i]) | bf16(high[i]) << 16 (high read as zeros when empty).
#[inline(always)]
fn interleave_plain(low: &[f32], high: &[f32], dst: &mut [u32]) {
    if high.is_empty() {
        for (d, &l) in dst.iter_mut().zip(low) {
            *d = round_bf16(l) as u32;
        }
        return;
    }
    for ((d, &l), &h) in dst.iter_mut().zip(low).zip(high) {
        *d = round_bf16(l) as u32 | (round_bf16(h) as u32) << 16;
    }
}

at_level!(interleave = interleave_plain(low: &[f32], high: &[f32], dst: &mut [u32]) -> ());

/// The output pointer, shared by tasks that write disjoint (row, channel) parts.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint output parts (see `conv2d`).
unsafe impl Sync for OutPtr {}

struct Task<'a> {
    s: &'a Conv2dShape,
    g: &'a Geometry,
    /// Most bytes of weight tiles per channel chunk ([`A_CHUNK_BYTES`]).
    chunk_bytes: usize,
    a: &'a [u16],
    xin: &'a [u32],
    /// Pixels per pair plane of `xin`.
    pp: usize,
    bias_rows: Option<&'a [f32]>,
    out: &'a OutPtr,
    /// Whether whole blocks are streamed to the output ([`amx_tiles::STREAM_MIN_BYTES`]).
    stream: bool,
}

impl Task<'_> {
    /// Output rows `oy0 + rows` (`rows` of the band) for the output channel pairs of blocks `cps`.
    /// The channels go in chunks whose weight tiles fit in L2 (`chunk_bytes`), each over all
    /// the rows: a wide convolution's weight (4.7 MB at 512 -> 512 channels) would otherwise stream
    /// from L3 for every 32-pixel block.
    ///
    /// # Safety
    /// AMX-BF16 must be usable by this thread ([`supported`]), and no other thread may touch these
    /// output elements during the call.
    unsafe fn run(&self, rows: Range<usize>, oy0: usize, cps: Range<usize>) {
        let steps = self.g.taps * self.g.kbs;
        let chunk = (self.chunk_bytes / (2 * steps * TILE * 2)).max(1);
        // SAFETY: the caller's promise (AMX usable, this part of the output its own).
        unsafe {
            amx_tiles::configure();
            for first in cps.clone().step_by(chunk) {
                let chunk = first..(first + chunk).min(cps.end);
                for i in rows.clone() {
                    for ox0 in (0..self.s.wout).step_by(32) {
                        for cp in chunk.clone() {
                            self.block(i, oy0 + i, ox0, cp);
                        }
                    }
                }
            }
            amx_tiles::release();
            amx_tiles::end_streamed_stores();
        }
    }

    /// The 32 x 32 block of output channels `32 cp ..` and pixels `ox0 ..` of row `oy` (row `i` of
    /// the band).
    ///
    /// # Safety
    /// As for [`Task::run`], with this thread's tiles configured.
    #[inline(always)]
    unsafe fn block(&self, i: usize, oy: usize, ox0: usize, cp: usize) {
        let (s, g) = (self.s, self.g);
        let plane = s.hout * s.wout;
        let steps = g.taps * g.kbs;
        let co0 = cp * 32;
        // SAFETY: the caller's promise. A tiles are whole tiles of `a`; B tiles start at pair plane
        // `kb * 16` pixel `(i + ky) * wp + ox0 + kx (+ 16)` and read 16 pixels of 16 pair planes:
        // within `xin`, whose planes end 32 + k pixels past the band's last padded row
        // (`plane_len`). Stores go to `c` or to a whole 32 x 32 block of this task's output part.
        unsafe {
            let window = self.xin.as_ptr().add(i * g.wp + ox0);
            let dst = self.out.0.add(co0 * plane + oy * s.wout + ox0);
            let whole = co0 + 32 <= s.cout && ox0 + 32 <= s.wout;
            let a0 = self.a.as_ptr().add(2 * cp * steps * TILE);
            let a1 = a0.add(steps * TILE);
            match self.bias_rows {
                Some(b) => amx_tiles::load_c(b.as_ptr().add(co0 * 32), 32),
                None => amx_tiles::zero_c(),
            }
            for tap in 0..g.taps {
                let (ky, kx) = (tap / s.k, tap % s.k);
                let b0 = window.add(ky * g.wp + kx);
                for kb in 0..g.kbs {
                    let step = tap * g.kbs + kb;
                    if step + PREFETCH_AHEAD < steps {
                        let ahead = (step + PREFETCH_AHEAD) * TILE;
                        prefetch_tile(a0.wrapping_add(ahead));
                        prefetch_tile(a1.wrapping_add(ahead));
                    }
                    let b = b0.add(kb * 16 * self.pp).cast::<u16>();
                    product_b_stride(
                        a0.add(step * TILE),
                        a1.add(step * TILE),
                        b,
                        b.add(32),
                        self.pp * 4,
                    );
                }
            }
            if whole && self.stream && amx_tiles::streamable(dst, plane) {
                // Through L1 and streamed out: no read for ownership of the output's lines
                // (`conv_amx_timing`: 128 -> 128 channels at 1024x1024, 237-244 -> 187 ms).
                amx_tiles::store_c_streamed(dst, plane);
            } else if whole {
                amx_tiles::store_c(dst, plane);
            } else {
                let mut c = [0f32; 32 * 32];
                amx_tiles::store_c(c.as_mut_ptr(), 32);
                let width = 32.min(s.wout - ox0);
                for r in 0..32.min(s.cout - co0) {
                    // SAFETY: channel co0 + r < cout, pixels ox0 .. ox0 + width of row oy: inside
                    // `out`, in this task's part.
                    std::slice::from_raw_parts_mut(dst.add(r * plane), width)
                        .copy_from_slice(&c[r * 32..][..width]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! Flash attention on the CPU (x86-64 with AVX-512F, or AVX2 + FMA: the kernel sets of
//! `flash_avx512.rs` and `flash_avx2.rs`): K and V packed once per call and kv head, then for each
//! band of query rows and head, key blocks of [`KEY_BLOCK`] in order with an online softmax. The
//! GEMM path ([`super::attention`]'s other branch) instead computes a band's whole score row
//! through the `gemm` crate, which repacks the head's K^T and V for every band and head: at the
//! gen self-attention shape (4112 tokens, D=120) its packing was a quarter of the time.
//!
//! Per band (at most [`MAX_BAND`] rows, in tiles of six) and key block ([`KEY_BLOCK`] keys):
//! 1. scores: every row tile against the block's packed K (per depth pass of the head dimension);
//! 2. softmax: each row's block max, the running max and sum (f64 across blocks), the row's output
//!    rescaled when its max grows; masked keys (causal limit, past the last key) get probability 0;
//! 3. P V: for each 64 of the head's columns (a 16 KiB block of packed V), every row tile adds its
//!    probabilities times V into the output accumulator.
//!
//! A row's result depends only on its own queries and the keys (blocks start at key 0 for every
//! row): not on the band it falls in, the thread count or the other rows.
//!
//! Packed K and V and the scratch start on cache lines ([`AlignedVec`]), so that their 64-byte loads
//! never straddle two: the mid preset's 1024x1024 gen step (f32, `--profile`, two alternating runs)
//! 2310 -> 2202-2219 ms of attention.

use super::super::aligned::AlignedVec;
use super::flash_avx2::Avx2;
use super::flash_avx512::Avx512;
use super::flash_tile::{Kernels, ScorePass, TILE_COLS, TILE_ROWS};
use super::{for_each_band, pack_kv, AttnShape, FlashIsa, Segment};
use crate::cpu::ops::fast_exp::exp;
use std::cell::RefCell;

/// Keys per block, one tile wide: a band's scores for it (192 x 64 x 4 = 48 KiB) and 64 columns of
/// its V (16 KiB) stay close while the band's tiles use them. On the build machine (gen self-attention,
/// 4112 tokens, D=120, 6 x 32 tiles then) 64 measured 2-4% faster than 128, 256 slower again.
const KEY_BLOCK: usize = TILE_COLS;
// A block's scores are one tile wide: the softmax runs on one tile's registers.
const _: () = assert!(KEY_BLOCK == TILE_COLS);
/// Most of the head dimension one score pass covers: a block's packed K for one pass is 32 KiB.
const DEPTH_PASS: usize = 128;
/// Most query rows per band: each key block read from memory serves this many rows (192 measured
/// 4% faster than 96 and 10% faster than 48 on the same shape; 384 no better).
const MAX_BAND: usize = 192;

/// K and V of every kv head, keys compacted over the segments (each segment's first `len` rows).
struct PackedKv {
    /// Per kv head: blocks of 64 keys ([`TILE_COLS`]), each `[d][64]` (key `c`, column `e` at
    /// `(c/64)*d*64 + e*64 + c%64`); keys past the last are zero.
    k: AlignedVec<f32>,
    /// Per kv head: `chunks` blocks of 64 columns, each `[keys_pad][64]` (key `c`, column `e` at
    /// `(e/64)*keys_pad*64 + c*64 + e%64`); columns past `d` and keys past the last are zero.
    v: AlignedVec<f32>,
    keys: usize,
    keys_pad: usize,
    chunks: usize,
    d: usize,
}

impl PackedKv {
    fn new(segments: &[Segment<'_>], s: &AttnShape) -> Self {
        let d = s.head_dim;
        let keys: usize = segments.iter().map(|g| g.len).sum();
        let keys_pad = keys.next_multiple_of(TILE_COLS);
        let chunks = d.div_ceil(TILE_COLS);
        let mut k = AlignedVec::zeroed(s.kv_heads * keys_pad * d);
        let mut v = AlignedVec::zeroed(s.kv_heads * chunks * TILE_COLS * keys_pad);
        let (k_len, v_len) = (keys_pad * d, chunks * TILE_COLS * keys_pad);
        pack_kv(
            segments,
            s,
            (&mut k, k_len),
            (&mut v, v_len),
            |kh, vh, c, kr, vr| {
                let base = (c / TILE_COLS) * d * TILE_COLS + c % TILE_COLS;
                for (e, &x) in kr.iter().enumerate() {
                    kh[base + e * TILE_COLS] = x;
                }
                for (ch, part) in vr.chunks(TILE_COLS).enumerate() {
                    vh[(ch * keys_pad + c) * TILE_COLS..][..part.len()].copy_from_slice(part);
                }
            },
        );
        PackedKv {
            k,
            v,
            keys,
            keys_pad,
            chunks,
            d,
        }
    }

    fn k_head(&self, j: usize) -> &[f32] {
        &self.k[j * self.keys_pad * self.d..][..self.keys_pad * self.d]
    }

    fn v_head(&self, j: usize) -> &[f32] {
        let len = self.chunks * TILE_COLS * self.keys_pad;
        &self.v[j * len..][..len]
    }
}

/// One thread's buffers: packed queries, a band's scores for one key block, its output accumulator.
#[derive(Default)]
struct Scratch {
    q: AlignedVec<f32>,
    s: AlignedVec<f32>,
    o: AlignedVec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Rows per band: a multiple of the tile, enough bands for every thread, at most [`MAX_BAND`].
fn band_rows(nq: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    nq.div_ceil(4 * threads)
        .next_multiple_of(TILE_ROWS)
        .clamp(TILE_ROWS, MAX_BAND)
}

/// As [`super::attention`], with the kernels of `isa`.
///
/// # Panics
/// If the CPU lacks `isa`'s instructions (the kernels' `unsafe` rests on them).
pub(super) fn attention(
    isa: FlashIsa,
    q: &[f32],
    segments: &[Segment<'_>],
    s: &AttnShape,
    out: &mut [f32],
) {
    assert!(isa.supported(), "flash attention: this CPU has no {isa:?}");
    match isa {
        FlashIsa::Avx512 => attention_with::<Avx512>(q, segments, s, out),
        FlashIsa::Avx2 => attention_with::<Avx2>(q, segments, s, out),
    }
}

fn attention_with<K: Kernels>(q: &[f32], segments: &[Segment<'_>], s: &AttnShape, out: &mut [f32]) {
    let kv = PackedKv::new(segments, s);
    for_each_band(
        segments,
        s,
        out,
        band_rows(s.nq),
        &SCRATCH,
        |r0, vis, scratch, o| {
            for h in 0..s.heads {
                head_band::<K>(q, &kv, s, h, r0, vis, scratch, o);
            }
        },
    );
}

/// Head `h` of the rows `r0 .. r0 + vis.len()` (row `r0 + r` sees `vis[r]` score columns) into
/// `out` (those rows, all heads).
#[allow(clippy::too_many_arguments)]
fn head_band<K: Kernels>(
    q: &[f32],
    kv: &PackedKv,
    s: &AttnShape,
    h: usize,
    r0: usize,
    vis: &[usize],
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let (d, hd) = (s.head_dim, s.heads * s.head_dim);
    let j = h / (s.heads / s.kv_heads);
    let rows = vis.len();
    let tiles = rows.div_ceil(TILE_ROWS);
    let rp = tiles * TILE_ROWS;
    let dp = kv.chunks * TILE_COLS;
    // Queries times the scale, packed per tile as [d][6]; rows past the band are zero.
    let qp = scratch.q.sized(rp * d);
    for (t, tile) in qp.chunks_exact_mut(TILE_ROWS * d).enumerate() {
        for i in 0..TILE_ROWS {
            let r = t * TILE_ROWS + i;
            let dst = tile[i..].iter_mut().step_by(TILE_ROWS);
            if r < rows {
                let src = &q[(r0 + r) * hd + h * d..][..d];
                dst.zip(src).for_each(|(x, &y)| *x = y * s.scale);
            } else {
                dst.for_each(|x| *x = 0.0);
            }
        }
    }
    let sb = scratch.s.sized(rp * KEY_BLOCK);
    let ob = scratch.o.sized(rp * dp);
    ob.fill(0.0);
    let mut max = [f32::NEG_INFINITY; MAX_BAND];
    let mut sum = [0f64; MAX_BAND];
    // The most columns any row of a tile sees: a tile whose rows see none of a block skips it.
    let tile_vis: Vec<usize> = vis
        .chunks(TILE_ROWS)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect();
    let blocks = tile_vis.iter().max().map_or(0, |&v| v.div_ceil(KEY_BLOCK));
    let (k_head, v_head) = (kv.k_head(j), kv.v_head(j));
    for blk in 0..blocks {
        let c0 = blk * KEY_BLOCK;
        let cols = KEY_BLOCK.min(kv.keys - c0);
        let live_tiles = || (0..tiles).filter(|&t| tile_vis[t] > c0);
        let k_block = &k_head[(c0 / TILE_COLS) * d * TILE_COLS..][..d * TILE_COLS];
        // Score passes over the head dimension: all but the last stored, each pass's 64 keys
        // (32 KiB) serving every tile; the last one's scores go straight into the softmax.
        let last = (d - 1) / DEPTH_PASS * DEPTH_PASS;
        // The pass of tile `t`'s scores at depth `e0`; the slices hold every value it reads and
        // writes.
        let pass = |sb: &mut [f32], t: usize, e0: usize| {
            let depth = DEPTH_PASS.min(d - e0);
            let q = &qp[t * TILE_ROWS * d + e0 * TILE_ROWS..][..depth * TILE_ROWS];
            let k = &k_block[e0 * TILE_COLS..][..depth * TILE_COLS];
            let s = &mut sb[t * TILE_ROWS * KEY_BLOCK..][..(TILE_ROWS - 1) * KEY_BLOCK + TILE_COLS];
            ScorePass {
                q: q.as_ptr(),
                k: k.as_ptr(),
                depth,
                s: s.as_mut_ptr(),
                lds: KEY_BLOCK,
                accumulate: e0 > 0,
            }
        };
        for e0 in (0..last).step_by(DEPTH_PASS) {
            for t in live_tiles() {
                let p = pass(sb, t, e0);
                // SAFETY: the kernels' instructions (`attention` checked); `pass` sliced every
                // value the tile reads and writes.
                unsafe { K::score_tile(&p) };
            }
        }
        for t in live_tiles() {
            let p = pass(sb, t, last);
            let rows = t * TILE_ROWS..(t + 1) * TILE_ROWS;
            let live: [usize; TILE_ROWS] = std::array::from_fn(|i| {
                vis.get(rows.start + i)
                    .map_or(0, |&v| v.min(c0 + cols).saturating_sub(c0))
            });
            let old: [f32; TILE_ROWS] = max[rows.clone()].try_into().unwrap();
            let mut new = old;
            // SAFETY: the kernels' instructions (`attention` checked); `pass` sliced every value the
            // tile reads and writes; `live` is at most `cols <= 64`.
            let sums = unsafe { K::score_softmax_tile(&p, &live, &mut new) };
            for (i, r) in rows.enumerate() {
                if old[i] != f32::NEG_INFINITY && new[i] != old[i] {
                    let alpha = exp(old[i] - new[i]);
                    sum[r] *= alpha as f64;
                    ob[r * dp..][..dp].iter_mut().for_each(|x| *x *= alpha);
                }
                max[r] = new[i];
                sum[r] += sums[i] as f64;
            }
        }
        for ch in 0..kv.chunks {
            let v = &v_head[(ch * kv.keys_pad + c0) * TILE_COLS..][..cols * TILE_COLS];
            for t in live_tiles() {
                let p = &sb[t * TILE_ROWS * KEY_BLOCK..][..(TILE_ROWS - 1) * KEY_BLOCK + cols];
                let o = &mut ob[t * TILE_ROWS * dp + ch * TILE_COLS..]
                    [..(TILE_ROWS - 1) * dp + TILE_COLS];
                // SAFETY: the kernels' instructions (`attention` checked); the slices above hold
                // every value the tile reads and writes.
                unsafe { K::pv_tile(p.as_ptr(), KEY_BLOCK, v.as_ptr(), cols, o.as_mut_ptr(), dp) };
            }
        }
    }
    for r in 0..rows {
        // No visible key: the output is zero, as in the GEMM path. A NaN sum stays NaN.
        let inv = if sum[r] == 0.0 {
            0.0
        } else {
            (1.0 / sum[r]) as f32
        };
        let dst = &mut out[r * hd + h * d..][..d];
        dst.iter_mut()
            .zip(&ob[r * dp..][..d])
            .for_each(|(x, &y)| *x = y * inv);
    }
}

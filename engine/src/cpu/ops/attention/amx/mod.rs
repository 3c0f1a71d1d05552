//! Flash attention on Intel AMX tiles in bf16, with the linears' opt-in (`HBRIDGE_CPU_MATMUL=bf16`):
//! Q, K and V rounded to bf16, scores and P V summed in f32 on the tiles, the softmax in f32 with
//! AVX-512, P rounded to bf16 for its product with V and its sums taken before the rounding. That
//! is the CUDA backend's attention contract (and FlashAttention's); the f32 paths of `flash.rs`
//! remain the default.
//!
//! Transposed: the tiles compute `S^T = K Q^T` and `O^T += V^T P^T`, so that a vector lane is a query
//! and a vector a key (or an output column). The online softmax is then lane-wise over 16 queries at
//! a time: a query's max, sum and rescale factor live in one lane, and no step reduces across lanes.
//!
//! K (A tiles, keys x head dim) and V^T (A tiles, head dim x keys) are packed once per call and kv
//! head, keys compacted over the segments. Per band of at most [`BAND`] queries, head by head, key
//! blocks of [`KEY_BLOCK`] in order, for every 32-query pair of the band:
//! 1. scores: for every 32 keys of the block, four C tiles (tmm0-3) summed over the head dimension
//!    from two K tiles (tmm4-5) and the pair's two Q^T tiles (tmm6-7), stored f32 as
//!    `[key][32 queries]`;
//! 2. softmax (AVX-512), each 16-query half: the block's max per lane; where it exceeds the running
//!    max by more than 2^8, the new max, the output's columns and the sums rescaled (lazily, as the
//!    CUDA v3 kernel does), `p = 2^(score * scale * log2 e - max)` (0 for
//!    keys a query does not see) added to the sums and written, rounded to bf16 (VCVTNE2PS2BF16), as
//!    P^T B tiles (keys in pairs, interleaved by VPERMW);
//! 3. P V: for every 32 columns of the head, the output's four C tiles loaded, summed over the
//!    block's keys from V^T (tmm4-5) and P^T (tmm6-7), stored back.
//!
//! A query's result depends only on its own values and the keys (blocks start at key 0 for every
//! query, and neither the tiles nor the softmax mix lanes): not on the band it falls in, the thread
//! count or the other queries.
//!
//! Versions, on the build machine (2-core KVM Xeon with AMX; `benches/kernels.rs` attention group and
//! the mid preset's 1024x1024 gen step, head dim 64), against the f32 flash path's 0.26-0.28 TFLOP/s:
//! - v1: 64-row bands, 64-key blocks, the f32 path's `exp` and P rounded with integer AVX-512: 0.39
//!   TFLOP/s at head dim 64, the softmax over half the time.
//! - v2: a base-2 exponential with a degree-4 polynomial, P converted by VCVTNE2PS2BF16, sums in 16
//!   lanes, 128-row bands and 128-key blocks: 0.6-0.75 TFLOP/s at head dim 64, 0.83-0.86 at the
//!   7b4b shapes (120, 128), 1.1 at the VAE's 512. Its softmax went a query row at a time: a max and
//!   a sum reduced across lanes per row, and a branch per row on whether the max grew, a chain of
//!   dependent steps about twice as long as the row's vector work.
//! - v3 (this): transposed, as above, with the max moved lazily. The mid preset's 1024x1024 gen
//!   step (head dim 64), three alternating runs each: 2.52-2.63 s against v2's 2.87-3.02 s; the
//!   kernel bench's gen self-attention (120) 212-219 ms against 223-229 ms, the VAE's (512) alike.
//!   Without the lazy max, every block where any of 16 queries' max grew rescaled all 16 output
//!   columns, and at head dim 512 that made v3 10% slower than v2.
//! - v3 with its buffers on cache lines and the exponential as VREDUCEPS (the fraction below),
//!   a degree-3 polynomial and VSCALEFPS (5 vector operations instead of 9): the mid preset's
//!   1024x1024 gen step's attention 606-657 -> 573-602 ms (three alternating runs each; measured
//!   no different before the buffers were aligned, when the tile loads bound the kernel).
//! - Session 16: 64-key blocks and bands of up to 256 queries (were 128 and 128), chosen from a
//!   sweep of band 64/128/256 x block 32/64/128 on the mid preset's 1024x1024 gen step (head dim
//!   64): its attention 533-575 -> 477-492 ms (three alternating runs each). At the 7b4b shapes
//!   (kernel bench, head dims 120 and 128) and the VAE's 512 the two measured within noise. Also
//!   tried then: prefetching the pair's output columns into L1 before its scores (6% slower).
//! - Session 16, the softmax in one pass where it can: once a query's max is set, a block is taken
//!   with the running max, watching the largest exponent, and only a block that moves a max (the
//!   lazy rule above) is taken again after a pass for its max (`softmax.rs`); a block every query
//!   sees in full runs without masks. Measured by switching parts off (same run, mid preset
//!   1024x1024 gen step's cond branch): of 488 ms of attention the packing and bookkeeping were
//!   40, the softmax 196 and the tile work 209 (11.7 ns per TDPBF16PS: chains of two products
//!   between C stores, 7.5 ns in `scripts/amx-probe.rs`). Attention 476-571 -> 399-473 ms (five
//!   alternating runs each).
//! - Tried and dropped on v2: running the tile work of the neighbouring steps between the softmax's
//!   rows (no faster), the exponential without `roundscale` and `scalef` (10-25% slower), and trees
//!   for the row max and sum (+9% at head dim 64, -8% at 120).
//!
//! K, V^T, Q^T, P^T and the score and output buffers start on cache lines ([`AlignedVec`]): from the
//! allocator they started anywhere, and a tile row across two lines costs two (the mid preset's
//! 1024x1024 gen step's attention: 900 -> 692-714 ms).
//!
//! Floor: `scripts/amx-probe.rs` (buffers on lines) measures 4.7-4.8 ns per TDPBF16PS alone and
//! 5.8-7.0 ns per product of a 2 x 2 block whose tiles come from L1 (2.6-2.8 ns per 1 KiB tile load),
//! 7.7-9.3 from L2; each product here needs one load. (Before session 15 the probe's buffers, like
//! these, started off a line: 15 ns per load, 18 per product, and these kernels were load-bound.)

#![deny(unsafe_op_in_unsafe_fn)]

use super::super::aligned::AlignedVec;
use super::super::amx_tiles::{self, round_rows, TILE};
use super::{for_each_band, pack_kv, AttnShape, Segment};
use rayon::prelude::*;
use softmax::{softmax_half, Lanes};
use std::cell::RefCell;

mod softmax;
mod transpose;

/// Most queries per band (a multiple of 32): each key block loaded from L2 serves this many queries.
const BAND: usize = 256;
/// Keys per block (a multiple of 32): each load and store of the output's C tiles serves this many
/// keys' products.
const KEY_BLOCK: usize = 64;
/// 32-key depth blocks of one key block (P V's depth).
const KEY_DEPTHS: usize = KEY_BLOCK / 32;
const _: () = assert!(BAND.is_multiple_of(32) && KEY_BLOCK.is_multiple_of(32));

/// K and V^T of every kv head as bf16 A tiles, keys compacted over the segments (each segment's
/// first `len` rows); keys past the last and columns past `d` are zero.
struct PackedKv {
    /// Per kv head: tile `(key tile kt, depth block db)` at `(kt * dbs + db) * TILE`, key `c`,
    /// column `e` at `(c % 16) * 32 + e % 32` within it.
    k: AlignedVec<u16>,
    /// Per kv head: tile `(key block kb, column tile dt)` at `(kb * dts + dt) * TILE`, column `e`,
    /// key `c` at `(e % 16) * 32 + c % 32` within it.
    v: AlignedVec<u16>,
    keys_pad: usize,
    /// The head dimension padded to 32.
    dp: usize,
}

impl PackedKv {
    fn new(segments: &[Segment<'_>], s: &AttnShape) -> Self {
        let d = s.head_dim;
        let keys: usize = segments.iter().map(|g| g.len).sum();
        let keys_pad = keys.next_multiple_of(KEY_BLOCK);
        let dp = d.next_multiple_of(32);
        let dbs = dp / 32;
        let head = keys_pad * dp;
        let mut k = AlignedVec::zeroed(s.kv_heads * head);
        // V rounded row by row (`[key][dp]`), then transposed into its tiles 32 keys at a time.
        let mut v_rows = AlignedVec::zeroed(s.kv_heads * head);
        pack_kv(
            segments,
            s,
            (&mut k, head),
            (&mut v_rows, head),
            |kh, vh, c, kr, vr| {
                let row = (c / 16) * dbs * TILE + (c % 16) * 32;
                // SAFETY: `attention` asserted `supported` (AMX-BF16 and the AVX-512 set); key c's
                // `dbs` tile rows lie in `kh`, TILE apart (zeros past `d`, as the layout has), its
                // `dp` values (zeros past `d`) in `vh`.
                unsafe {
                    round_rows(kr, &mut kh[row..], TILE);
                    round_rows(vr, &mut vh[c * dp..], 32);
                }
            },
        );
        let mut v = AlignedVec::zeroed(s.kv_heads * head);
        v.par_chunks_mut(head.max(1))
            .zip(v_rows.par_chunks(head.max(1)))
            .for_each(|(vt, rows)| {
                // SAFETY: as above (AVX-512F); both hold `keys_pad` (a multiple of 32) x `dp`.
                unsafe { transpose::v_tiles(rows, vt, keys_pad, dp) }
            });
        PackedKv { k, v, keys_pad, dp }
    }

    fn k_head(&self, j: usize) -> &[u16] {
        &self.k[j * self.keys_pad * self.dp..][..self.keys_pad * self.dp]
    }

    fn v_head(&self, j: usize) -> &[u16] {
        &self.v[j * self.keys_pad * self.dp..][..self.keys_pad * self.dp]
    }
}

/// One thread's buffers for a band: Q^T as bf16 B tiles, one query pair's scores (f32) and P^T (bf16
/// B tiles) for a key block, the output accumulator O^T (f32, `[column][query]`), each query's max
/// and sum.
#[derive(Default)]
struct Scratch {
    q: AlignedVec<u16>,
    q_rows: AlignedVec<u16>,
    p: AlignedVec<u16>,
    s: AlignedVec<f32>,
    o: AlignedVec<f32>,
    max: AlignedVec<f32>,
    sum: AlignedVec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// As [`super::attention`], on the tiles in bf16.
///
/// # Panics
/// If this CPU or OS cannot run AMX-BF16 ([`amx_tiles::supported`]).
pub(super) fn attention(q: &[f32], segments: &[Segment<'_>], s: &AttnShape, out: &mut [f32]) {
    assert!(
        amx_tiles::supported(),
        "AMX attention on a CPU or OS without AMX-BF16"
    );
    let kv = PackedKv::new(segments, s);
    let threads = rayon::current_num_threads().max(1);
    // Enough bands to keep every thread busy, whole query pairs, at most BAND queries.
    let band =
        s.nq.div_ceil(4 * threads)
            .next_multiple_of(32)
            .clamp(32, BAND);
    for_each_band(segments, s, out, band, &SCRATCH, |r0, vis, scratch, o| {
        // SAFETY: `supported` (asserted above) found AMX-BF16 with the tile state granted.
        unsafe { amx_tiles::configure() };
        for h in 0..s.heads {
            head_band(q, &kv, s, h, r0, vis, scratch, o);
        }
        // SAFETY: as for `configure`.
        unsafe { amx_tiles::release() };
    });
}

/// Head `h` of the queries `r0 .. r0 + vis.len()` (query `r0 + r` sees `vis[r]` keys) into `out`
/// (those rows, all heads). The thread's tile unit is configured.
#[allow(clippy::too_many_arguments)]
fn head_band(
    q: &[f32],
    kv: &PackedKv,
    s: &AttnShape,
    h: usize,
    r0: usize,
    vis: &[usize],
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let (d, hd, dp) = (s.head_dim, s.heads * s.head_dim, kv.dp);
    let j = h / (s.heads / s.kv_heads);
    let rows = vis.len();
    let pairs = rows.div_ceil(32);
    let nb = pairs * 32;
    let dbs = dp / 32;
    let Scratch {
        q: q_tiles,
        q_rows,
        p,
        s: sb,
        o,
        max,
        sum,
    } = scratch;
    let qt = pack_q(q, s, (h, r0, rows, dp), q_rows, q_tiles);
    let pt = p.sized(2 * KEY_DEPTHS * TILE);
    let sb = sb.sized(KEY_BLOCK * 32);
    let ot = o.sized(dp * nb);
    ot.fill(0.0);
    let max = max.sized(nb);
    max.fill(f32::NEG_INFINITY);
    let sum = sum.sized(nb);
    sum.fill(0.0);
    // Scores times the scale, in units of log2: the softmax takes powers of two.
    let scale2 = s.scale * std::f32::consts::LOG2_E;
    // Per query (padded queries see nothing) and per pair, the keys seen: a pair none of whose
    // queries sees a block skips it.
    let seen: Vec<i32> = (0..nb)
        .map(|r| vis.get(r).map_or(0, |&v| v as i32))
        .collect();
    let pair_vis: Vec<usize> = vis
        .chunks(32)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect();
    let blocks = pair_vis.iter().max().map_or(0, |&v| v.div_ceil(KEY_BLOCK));
    let (k_head, v_head) = (kv.k_head(j), kv.v_head(j));
    for blk in 0..blocks {
        let c0 = blk * KEY_BLOCK;
        for pr in (0..pairs).filter(|&pr| pair_vis[pr] > c0) {
            // SAFETY: the tile unit is configured; every tile read lies in `qt` (pair `pr`'s query
            // tiles, `dbs` depth blocks) or `k_head` (block `blk`'s keys, padded to whole blocks),
            // every store in `sb` (KEY_BLOCK rows of 32).
            unsafe { scores(qt, k_head, dbs, c0, pr, sb) };
            for half in 0..2 {
                let lanes = pr * 32 + half * 16..pr * 32 + half * 16 + 16;
                let state = Lanes {
                    seen: &seen[lanes.clone()],
                    max: &mut max[lanes.clone()],
                    sum: &mut sum[lanes.clone()],
                };
                // SAFETY: AVX-512F, AVX-512DQ and AVX512-BF16 (`supported`).
                unsafe { softmax_half(sb, half, c0, scale2, state, ot, nb, lanes.start, pt) };
            }
            // SAFETY: the tile unit is configured; the tiles read lie in `pt` and `v_head` (block
            // `blk`, `dp / 16` column tiles), the loads and stores in `ot` (pair `pr`'s columns).
            unsafe { pv(pt, v_head, dp, c0, pr, ot, nb) };
        }
    }
    for (r, &total) in sum.iter().enumerate().take(rows) {
        // No visible key: the output is zero, as in the other paths. A NaN sum stays NaN.
        let inv = if total == 0.0 { 0.0 } else { 1.0 / total };
        let dst = &mut out[r * hd + h * d..][..d];
        for (e, x) in dst.iter_mut().enumerate() {
            *x = ot[e * nb + r] * inv;
        }
    }
}

/// Q of head `h`, queries `r0 .. r0 + rows`, as B tiles (Q^T): tile `(query tile t, depth block db)`
/// at `(t * dbs + db) * TILE`, depth `e`, query `c` at `((e % 32) / 2) * 32 + (c % 16) * 2 + e % 2`;
/// queries past `rows` and depths past `d` zero. Each query's row is rounded at vector width; a
/// rounded row's adjacent pairs are the tile's 32-bit elements, so a tile is a 16 x 16 transpose of
/// those.
fn pack_q<'a>(
    q: &[f32],
    s: &AttnShape,
    (h, r0, rows, dp): (usize, usize, usize, usize),
    rounded: &mut AlignedVec<u16>,
    tiles: &'a mut AlignedVec<u16>,
) -> &'a [u16] {
    let (d, hd) = (s.head_dim, s.heads * s.head_dim);
    let nb = rows.div_ceil(32) * 32;
    let dbs = dp / 32;
    let rounded = rounded.sized(nb * dp);
    rounded.fill(0);
    for r in 0..rows {
        // SAFETY: `attention` asserted `supported`; the row's `dp` values (d rounded, zeros to the
        // next 32) lie in `rounded`.
        unsafe { round_rows(&q[(r0 + r) * hd + h * d..][..d], &mut rounded[r * dp..], 32) };
    }
    let qt = tiles.sized(nb * dp);
    for t in 0..nb / 16 {
        for db in 0..dbs {
            let tile = &mut qt[(t * dbs + db) * TILE..][..TILE];
            let src = &rounded[t * 16 * dp + db * 32..][..15 * dp + 32];
            // SAFETY: AVX-512F (`attention` asserted `supported`); `src` holds the 16 rows' 32 bf16
            // (16 u32) `dp` apart, `tile` 512 bf16 (256 u32); both start on 4-byte boundaries (bf16
            // offsets that are multiples of 32 in buffers on cache lines).
            unsafe {
                transpose::transpose16(src.as_ptr().cast(), dp / 2, tile.as_mut_ptr().cast())
            };
        }
    }
    qt
}

/// Query pair `pr`'s raw scores `q . k` against keys `c0 .. c0 + KEY_BLOCK` into `sb` (key `c` at
/// `(c - c0) * 32`, the pair's 32 queries along it).
///
/// # Safety
/// The thread's tiles are configured.
unsafe fn scores(qt: &[u16], k_head: &[u16], dbs: usize, c0: usize, pr: usize, sb: &mut [f32]) {
    assert!(qt.len() >= (2 * pr + 2) * dbs * TILE && sb.len() >= 32 * KEY_BLOCK);
    assert!(k_head.len() >= (c0 + KEY_BLOCK) / 16 * dbs * TILE);
    let b0 = qt[2 * pr * dbs * TILE..].as_ptr();
    let b1 = qt[(2 * pr + 1) * dbs * TILE..].as_ptr();
    for kp in 0..KEY_BLOCK / 32 {
        let kt = c0 / 16 + 2 * kp;
        let a0 = k_head[kt * dbs * TILE..].as_ptr();
        let a1 = k_head[(kt + 1) * dbs * TILE..].as_ptr();
        // SAFETY: the caller's promise (tiles configured); the asserts above bound every tile read
        // (the key pair's K tiles, pair `pr`'s Q^T tiles) and the C store (32 rows of 32 f32
        // inside `sb`).
        unsafe {
            amx_tiles::zero_c();
            for db in 0..dbs {
                let o = db * TILE;
                amx_tiles::product(a0.add(o), a1.add(o), b0.add(o), b1.add(o));
            }
            amx_tiles::store_c(sb[kp * 32 * 32..].as_mut_ptr(), 32);
        }
    }
}

/// Query pair `pr`'s output O^T (column `e` of query `r` at `e * nb + r`) `+=` V^T of keys
/// `c0 .. c0 + KEY_BLOCK` times its P^T (B tiles in `pt`).
///
/// # Safety
/// The thread's tiles are configured.
unsafe fn pv(
    pt: &[u16],
    v_head: &[u16],
    dp: usize,
    c0: usize,
    pr: usize,
    ot: &mut [f32],
    nb: usize,
) {
    let dts = dp / 16;
    assert!(pt.len() >= 2 * KEY_DEPTHS * TILE && ot.len() >= dp * nb && nb >= (pr + 1) * 32);
    assert!(v_head.len() >= (c0 + KEY_BLOCK) / 32 * dts * TILE);
    for dq in 0..dp / 32 {
        let c = ot[dq * 32 * nb + pr * 32..].as_mut_ptr();
        // SAFETY: the caller's promise (tiles configured); the asserts above bound the C load and
        // store (32 rows of 32 f32, nb apart: columns 32 dq .. 32 dq + 32 of the pair's queries)
        // and every A and B tile read.
        unsafe {
            amx_tiles::load_c(c, nb);
            for kb in 0..KEY_DEPTHS {
                let a0 = v_head[((c0 / 32 + kb) * dts + 2 * dq) * TILE..].as_ptr();
                amx_tiles::product(
                    a0,
                    a0.add(TILE),
                    pt[kb * TILE..].as_ptr(),
                    pt[(KEY_DEPTHS + kb) * TILE..].as_ptr(),
                );
            }
            amx_tiles::store_c(c, nb);
        }
    }
}

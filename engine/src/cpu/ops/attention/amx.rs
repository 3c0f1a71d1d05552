//! Flash attention on Intel AMX tiles in bf16, with the linears' opt-in (`HBRIDGE_CPU_MATMUL=bf16`):
//! Q, K and V rounded to bf16, scores and P V summed in f32 on the tiles, the softmax in f32 with
//! AVX-512, P rounded to bf16 for its product with V and its row sums taken before the rounding. That
//! is the CUDA backend's attention contract (and FlashAttention's); the f32 paths of `flash.rs`
//! remain the default.
//!
//! K and V are packed once per call and kv head as B tiles (keys compacted over the segments). Per band
//! of at most [`BAND`] query rows, head by head, key blocks of [`KEY_BLOCK`] in order:
//! 1. scores: for every 32-row pair of the band and 32 keys of the block, four C tiles (tmm0-3) summed
//!    over the head dimension from two Q tiles (tmm4-5) and two K tiles (tmm6-7), stored f32;
//! 2. softmax (AVX-512, one row at a time): the row's scores times the scale, its running max and
//!    sum (16 f32 lanes, added in f64 at the end), its output accumulator rescaled when the max grows,
//!    masked keys 0; P written as bf16 A tiles (VCVTNE2PS2BF16);
//! 3. P V: for every row pair and 32 of the head's columns, the output's four C tiles loaded, summed
//!    over the block's keys from P (tmm4-5) and V (tmm6-7), stored back.
//!
//! A row's result depends only on its own queries and the keys (blocks start at key 0 for every row,
//! and a tile's rows do not mix): not on the band it falls in, the thread count or the other rows.
//!
//! Versions, on the build machine (2-core KVM Xeon with AMX; `benches/kernels.rs` attention group and
//! the mid preset's 1024x1024 gen step, head dim 64), against the f32 flash path's 0.26-0.28 TFLOP/s:
//! - v1: 64-row bands, 64-key blocks, the f32 path's `exp` and P rounded with integer AVX-512: 0.39
//!   TFLOP/s at head dim 64, the softmax over half the time.
//! - v2 (this): a base-2 exponential with a degree-4 polynomial, P converted by VCVTNE2PS2BF16, sums in
//!   16 lanes, 128-row bands and 128-key blocks: 0.6-0.75 TFLOP/s at head dim 64, 0.83-0.86 at the
//!   7b4b shapes (120, 128), 1.1 at the VAE's 512.
//! - Tried and dropped: running the tile work of the neighbouring steps between the softmax's rows (no
//!   faster: measured apart, the tile work and the softmax each took about half the time, together
//!   their sum), and the exponential without `roundscale` and `scalef` (10-25% slower).
//!
//! The tiles here are bound by their loads: `scripts/amx-probe.rs` measures 16 ns per 1 KiB tile load
//! from L1 against 5 ns per TDPBF16PS, and each product of the 2 x 2 blocks here needs one load.

#![deny(unsafe_op_in_unsafe_fn)]

use super::super::amx_tiles::{self, round_bf16, round_slice, TILE};
use super::super::fast_exp::exp;
use super::super::simd::level;
use super::{for_each_band, pack_kv, AttnShape, Segment};
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Most query rows per band (a multiple of 32): each key block loaded from L2 serves this many rows
/// (128 measured 5-10% faster than 64 and 32 at head dim 64).
const BAND: usize = 128;
/// Keys per block (a multiple of 32): each load and store of the output's C tiles serves this many
/// keys' products (128 measured 5% faster than 64; 256 no faster).
const KEY_BLOCK: usize = 128;
/// 32-key depth blocks of one key block (P V's depth).
const KEY_DEPTHS: usize = KEY_BLOCK / 32;
const _: () = assert!(BAND.is_multiple_of(32) && KEY_BLOCK.is_multiple_of(32));

/// K and V of every kv head as bf16 B tiles, keys compacted over the segments (each segment's first
/// `len` rows); keys past the last and columns past `d` are zero.
struct PackedKv {
    /// Per kv head: tile `(key tile kt, depth block db)` at `(kt * dbs + db) * TILE`, key `c`, column
    /// `e` at `((e % 32) / 2) * 32 + (c % 16) * 2 + e % 2` within it.
    k: Vec<u16>,
    /// Per kv head: tile `(key block kb, column tile ct)` at `(kb * cts + ct) * TILE`, key `c`, column
    /// `e` at `((c % 32) / 2) * 32 + (e % 16) * 2 + c % 2` within it.
    v: Vec<u16>,
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
        let (dbs, cts) = (dp / 32, dp / 16);
        let head = keys_pad * dp;
        let mut k = vec![0u16; s.kv_heads * head];
        let mut v = vec![0u16; s.kv_heads * head];
        pack_kv(
            segments,
            s,
            (&mut k, head),
            (&mut v, head),
            |kh, vh, c, kr, vr| {
                let tile = (c / 16) * dbs * TILE + (c % 16) * 2;
                for (e, &x) in kr.iter().enumerate() {
                    kh[tile + (e / 32) * TILE + ((e % 32) / 2) * 32 + e % 2] = round_bf16(x);
                }
                let tile = (c / 32) * cts * TILE + ((c % 32) / 2) * 32 + c % 2;
                for (e, &x) in vr.iter().enumerate() {
                    vh[tile + (e / 16) * TILE + (e % 16) * 2] = round_bf16(x);
                }
            },
        );
        PackedKv { k, v, keys_pad, dp }
    }

    fn k_head(&self, j: usize) -> &[u16] {
        &self.k[j * self.keys_pad * self.dp..][..self.keys_pad * self.dp]
    }

    fn v_head(&self, j: usize) -> &[u16] {
        &self.v[j * self.keys_pad * self.dp..][..self.keys_pad * self.dp]
    }
}

/// One thread's buffers for a band: Q as bf16 A tiles, one row pair's scores (f32) and P (bf16 A
/// tiles) for a key block, the output accumulator (f32) and each row's 16 lanes of softmax sums.
#[derive(Default)]
struct Scratch {
    q: Vec<u16>,
    p: Vec<u16>,
    s: Vec<f32>,
    o: Vec<f32>,
    sum: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn sized<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    &mut buf[..len]
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
    // Enough bands to keep every thread busy, whole row pairs, at most BAND rows.
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

/// Head `h` of the rows `r0 .. r0 + vis.len()` (row `r0 + r` sees `vis[r]` keys) into `out` (those
/// rows, all heads). The thread's tile unit is configured.
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
    let dbs = dp / 32;
    // Q as A tiles: tile (row tile rt, depth block db) at (rt * dbs + db) * TILE, row r and column e
    // at (r % 16) * 32 + e % 32; rows past the band and columns past d zero.
    let qa = sized(&mut scratch.q, pairs * 32 * dp);
    qa.fill(0);
    let lv = level();
    for r in 0..rows {
        let src = &q[(r0 + r) * hd + h * d..][..d];
        for (db, chunk) in src.chunks(32).enumerate() {
            let at = ((r / 16) * dbs + db) * TILE + (r % 16) * 32;
            round_slice(lv, chunk, &mut qa[at..][..chunk.len()]);
        }
    }
    let pa = sized(&mut scratch.p, 32 * KEY_BLOCK);
    let sb = sized(&mut scratch.s, 32 * KEY_BLOCK);
    let ob = sized(&mut scratch.o, pairs * 32 * dp);
    ob.fill(0.0);
    let sums = sized(&mut scratch.sum, pairs * 32 * 16);
    sums.fill(0.0);
    let mut max = [f32::NEG_INFINITY; BAND];
    // Scores times the scale, in units of log2: the softmax takes powers of two.
    let scale2 = s.scale * std::f32::consts::LOG2_E;
    // The most keys any row of a pair sees: a pair whose rows see none of a block skips it.
    let pair_vis: Vec<usize> = vis
        .chunks(32)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect();
    let blocks = pair_vis.iter().max().map_or(0, |&v| v.div_ceil(KEY_BLOCK));
    let (k_head, v_head) = (kv.k_head(j), kv.v_head(j));
    for blk in 0..blocks {
        let c0 = blk * KEY_BLOCK;
        for p in (0..pairs).filter(|&p| pair_vis[p] > c0) {
            // SAFETY: the tile unit is configured; every tile read lies in `qa` (pair `p`'s rows,
            // `dbs` depth blocks) or `k_head` (block `blk`'s keys, padded to whole blocks), every
            // store in `sb` (32 rows of KEY_BLOCK).
            unsafe { scores(qa, k_head, dbs, c0, p, sb) };
            for i in 0..32 {
                let r = p * 32 + i;
                // Padded rows of the last pair see nothing: their P is zero and they add nothing.
                let live = vis
                    .get(r)
                    .map_or(0, |&v| v.min(c0 + KEY_BLOCK).saturating_sub(c0));
                let row = Row {
                    scores: &sb[i * KEY_BLOCK..][..KEY_BLOCK],
                    live,
                    scale2,
                };
                let state = RowState {
                    max: &mut max[r],
                    sum: &mut sums[r * 16..][..16],
                    o: &mut ob[r * dp..][..dp],
                };
                // SAFETY: AVX-512F and AVX512-BF16 (`supported`).
                unsafe { softmax_row(&row, state, pa, i) };
            }
            // SAFETY: the tile unit is configured; the tiles read lie in `pa` and `v_head` (block
            // `blk`, `dp / 16` column tiles), the loads and stores in `ob` (pair `p`'s rows).
            unsafe { pv(pa, v_head, dp, c0, p, ob) };
        }
    }
    for r in 0..rows {
        let sum: f64 = sums[r * 16..][..16].iter().map(|&x| x as f64).sum();
        // No visible key: the output is zero, as in the other paths. A NaN sum stays NaN.
        let inv = if sum == 0.0 { 0.0 } else { (1.0 / sum) as f32 };
        let dst = &mut out[r * hd + h * d..][..d];
        dst.iter_mut()
            .zip(&ob[r * dp..][..d])
            .for_each(|(x, &y)| *x = y * inv);
    }
}

/// Where row `i` (of a pair)'s P values for 32-key depth block `kb` of a key block start: A tile
/// `(i / 16, kb)`, its row `i % 16`.
fn p_at(i: usize, kb: usize) -> usize {
    ((i / 16) * KEY_DEPTHS + kb) * TILE + (i % 16) * 32
}

/// Row pair `p`'s raw scores `q . k` against keys `c0 .. c0 + KEY_BLOCK` into `sb` (the pair's row
/// `i` at `i * KEY_BLOCK`).
///
/// # Safety
/// The thread's tiles are configured.
unsafe fn scores(qa: &[u16], k_head: &[u16], dbs: usize, c0: usize, p: usize, sb: &mut [f32]) {
    assert!(qa.len() >= (2 * p + 2) * dbs * TILE && sb.len() >= 32 * KEY_BLOCK);
    assert!(k_head.len() >= (c0 + KEY_BLOCK) / 16 * dbs * TILE);
    let a0 = qa[2 * p * dbs * TILE..].as_ptr();
    let a1 = qa[(2 * p + 1) * dbs * TILE..].as_ptr();
    for kp in 0..KEY_BLOCK / 32 {
        let kt = c0 / 16 + 2 * kp;
        let b0 = k_head[kt * dbs * TILE..].as_ptr();
        let b1 = k_head[(kt + 1) * dbs * TILE..].as_ptr();
        // SAFETY: the caller's promise (tiles configured); the asserts above bound every tile read
        // (pair `p`'s Q tiles, the key pair's K tiles) and the C store (32 rows of 32 f32,
        // KEY_BLOCK apart, inside `sb`).
        unsafe {
            amx_tiles::zero_c();
            for db in 0..dbs {
                let o = db * TILE;
                amx_tiles::product(a0.add(o), a1.add(o), b0.add(o), b1.add(o));
            }
            amx_tiles::store_c(sb[kp * 32..].as_mut_ptr(), KEY_BLOCK);
        }
    }
}

/// Row pair `p`'s output accumulator (row `r` of the band at `r * dp`) `+=` its P (A tiles in `pa`)
/// times V of keys `c0 .. c0 + KEY_BLOCK`.
///
/// # Safety
/// The thread's tiles are configured.
unsafe fn pv(pa: &[u16], v_head: &[u16], dp: usize, c0: usize, p: usize, ob: &mut [f32]) {
    let cts = dp / 16;
    assert!(pa.len() >= 2 * KEY_DEPTHS * TILE && ob.len() >= (p + 1) * 32 * dp);
    assert!(v_head.len() >= (c0 + KEY_BLOCK) / 32 * cts * TILE);
    for cq in 0..dp / 32 {
        let c = ob[p * 32 * dp + cq * 32..].as_mut_ptr();
        // SAFETY: the caller's promise (tiles configured); the asserts above bound the C load and
        // store (32 rows of 32 f32, dp apart, inside pair `p`'s rows) and every A and B tile read.
        unsafe {
            amx_tiles::load_c(c, dp);
            for kb in 0..KEY_DEPTHS {
                let b0 = v_head[((c0 / 32 + kb) * cts + 2 * cq) * TILE..].as_ptr();
                amx_tiles::product(
                    pa[kb * TILE..].as_ptr(),
                    pa[(KEY_DEPTHS + kb) * TILE..].as_ptr(),
                    b0,
                    b0.add(TILE),
                );
            }
            amx_tiles::store_c(c, dp);
        }
    }
}

/// One row's raw scores for a key block, of which the first `live` are visible (`live <= KEY_BLOCK`).
struct Row<'a> {
    scores: &'a [f32],
    live: usize,
    /// The softmax scale times log2(e).
    scale2: f32,
}

/// A row's running softmax state: its max (of `score * scale2`), 16 lanes of its sum of
/// probabilities, its output accumulator.
struct RowState<'a> {
    max: &'a mut f32,
    sum: &'a mut [f32],
    o: &'a mut [f32],
}

/// The softmax step of row `i` of a pair: with `m` the larger of the running max and the row's
/// largest live `x = score * scale2`, the output and sum are rescaled by `2^(max - m)` when `m` grows,
/// `p = 2^(x - m)` (0 for masked keys) goes to the row's P tiles in bf16 (nearest even; a value
/// below f32's normals becomes 0) and its f32 lanes into the sum, and the max becomes `m`. With no
/// live key the row's P is zero and nothing else changes. A NaN score makes the sum NaN.
///
/// `2^t` for `t <= 0`: `t = n + f` with `n` the nearest whole number, a degree-4 Taylor polynomial
/// of `2^f` (`|f| <= 1/2`, relative error under 5e-5, far below the bf16 rounding of P that
/// follows), scaled by `2^n` (`scalef`); below -150 it is 0. (Rounding by adding 1.5 * 2^23 and
/// making `2^n` from exponent bits instead of `roundscale` and `scalef`, with the raw scores' max
/// and one FMA for `x - m`, measured 10-25% slower on the build machine.)
///
/// # Safety
/// AVX-512F and AVX512-BF16; `row.scores` holds KEY_BLOCK values, `state.sum` 16, `pa` a pair's P.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn softmax_row(row: &Row<'_>, state: RowState<'_>, pa: &mut [u16], i: usize) {
    const VECS: usize = KEY_BLOCK / 16;
    // ln2^k / k!, k = 4 down to 1.
    const POLY: [f32; 4] = [
        9.618_129e-3,
        5.550_411e-2,
        2.402_265e-1,
        std::f32::consts::LN_2,
    ];
    let live = row.live;
    if live == 0 {
        for kb in 0..KEY_DEPTHS {
            pa[p_at(i, kb)..][..32].fill(0);
        }
        return;
    }
    let lanes = |v: usize| -> __mmask16 {
        let n = live.saturating_sub(16 * v).min(16);
        ((1u32 << n) - 1) as __mmask16
    };
    let scores = &row.scores[..KEY_BLOCK];
    assert!(state.sum.len() == 16 && pa.len() >= p_at(i, KEY_DEPTHS - 1) + 32);
    // SAFETY: AVX-512F and AVX512-BF16 (the caller's promise); every load and store is inside
    // `scores`, `state.sum`, `state.o` or row `i`'s 32-value spans of `pa` (asserted above).
    unsafe {
        let sc = _mm512_set1_ps(row.scale2);
        let x: [__m512; VECS] =
            std::array::from_fn(|v| _mm512_mul_ps(_mm512_loadu_ps(scores[16 * v..].as_ptr()), sc));
        let old = *state.max;
        let mut mx = _mm512_set1_ps(old);
        for (v, &xv) in x.iter().enumerate() {
            mx = _mm512_mask_max_ps(mx, lanes(v), mx, xv);
        }
        let m = _mm512_reduce_max_ps(mx);
        let mut total = _mm512_loadu_ps(state.sum.as_ptr());
        if old != f32::NEG_INFINITY && m != old {
            let alpha = exp((old - m) * std::f32::consts::LN_2);
            let a = _mm512_set1_ps(alpha);
            total = _mm512_mul_ps(total, a);
            for chunk in state.o.chunks_exact_mut(16) {
                let y = _mm512_mul_ps(_mm512_loadu_ps(chunk.as_ptr()), a);
                _mm512_storeu_ps(chunk.as_mut_ptr(), y);
            }
        }
        let (shift, floor) = (_mm512_set1_ps(m), _mm512_set1_ps(-150.0));
        let mut e = [_mm512_setzero_ps(); VECS];
        for (v, &xv) in x.iter().enumerate() {
            // max(floor, t), not max(t, floor): the second operand comes back for a NaN.
            let t = _mm512_max_ps(floor, _mm512_sub_ps(xv, shift));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
            let f = _mm512_sub_ps(t, n);
            let poly = POLY[1..].iter().fold(_mm512_set1_ps(POLY[0]), |acc, &k| {
                _mm512_fmadd_ps(acc, f, _mm512_set1_ps(k))
            });
            let y = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(1.0));
            e[v] = _mm512_maskz_mov_ps(lanes(v), _mm512_scalef_ps(y, n));
            total = _mm512_add_ps(total, e[v]);
        }
        for (kb, pair) in e.chunks_exact(2).enumerate() {
            let bf = _mm512_cvtne2ps_pbh(pair[1], pair[0]);
            _mm512_storeu_si512(
                pa[p_at(i, kb)..].as_mut_ptr().cast(),
                std::mem::transmute::<__m512bh, __m512i>(bf),
            );
        }
        _mm512_storeu_ps(state.sum.as_mut_ptr(), total);
        *state.max = m;
    }
}

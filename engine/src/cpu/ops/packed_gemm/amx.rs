//! nn.Linear on Intel AMX tiles in bf16 (opt-in: `HBRIDGE_CPU_MATMUL=bf16`), for CPUs with AMX-BF16
//! (Sapphire Rapids and later) under Linux.
//!
//! Numerics: the activations and the weight are rounded to bf16 (nearest, ties to even; a bf16 weight
//! is exact), each product is exact, and the sums are f32 in the tile unit's own order, starting from
//! the bias (the C tiles are loaded with it). This is the CUDA backend's contract (bf16 inputs, f32
//! accumulation), not the f32 CPU backend's: results differ from it by bf16 rounding, and the model
//! checks hold them to the bf16 tolerance of DESIGN.md section 8.
//!
//! Layout: every tile is 16 rows of 64 bytes. A (the activations, rounded on every call) is packed as
//! 16-row x 32-depth tiles; B (the weight, packed once from its 16-column panels and kept) as
//! 32-depth x 16-column tiles in the pair-interleaved layout TDPBF16PS reads (row `r` holds depths
//! `2r, 2r+1` of each column side by side). Rows, columns and depth are zero-padded to whole tiles.
//! Under bf16 compute a bf16 weight is loaded as these tiles alone (`PackedB::tiles_only`): linears
//! of fewer than [`MIN_ROWS`] rows read them too ([`few_rows`], VDPBF16PS), so no panels are held.
//! One task owns a block of rows and a range of columns; for each 32 x 32 output block it keeps four
//! C tiles (tmm0-3), loads two A tiles (tmm4-5) and two B tiles (tmm6-7) per 32 depths, and issues
//! four TDPBF16PS. A block's rows (at most [`TASK_ROWS`]) stay in L2 while the task walks its columns.
//! Where several tasks share a block's rows (few rows, many columns) A is packed once up front into a
//! buffer kept between calls; otherwise each task packs its own rows as it starts.
//!
//! Versions: v1 packed B on every call; at 512 rows (the mid preset's prefill) that took 2.1-2.7 ms of
//! a 4864 x 896 linear whose tile products took 3.1-4.0 ms. v2 keeps the tiles with the weight
//! (made on first use: a second, bf16 copy of each linear weight that runs on the tiles), and rounds A
//! at the CPU's vector width. v3 prefetches each product's tiles two depth blocks ahead (the
//! hardware prefetchers do not serve TILELOADD), starts the sums from the bias and stores whole
//! output blocks straight from the tiles (v2 stored them to a buffer and copied them out, adding the
//! bias). The output's stores still cost a quarter of the loop's time: at 4112 x 768 x 3072 it is a
//! 50 MB stream of f32 out of the caches. v4 (this) has a task that owns whole rows pack them itself,
//! into a buffer its thread keeps (v3 packed all of A up front into a fresh allocation: at 4112 x
//! 3072 x 768 a 25 MB buffer written out and read back, 4.5 ms of a 17.5 ms call with both threads
//! waiting on memory); packing now overlaps the other thread's tile work. `amx_linear_timing`
//! (ignored test), best of 5, two runs each: 4112 x 768 x 3072 15.0-15.3 -> 13.6-13.8 ms,
//! 4112 x 3072 x 768 17.4-17.7 -> 15.8-16.4 ms, the other shapes within noise. Every tile buffer
//! (the weight's tiles, A, the edge and bias rows) starts on a cache line ([`AlignedVec`]): the
//! allocator had put the weights' tiles 16 bytes past one, so every tile row spanned two lines.

use super::super::aligned::AlignedVec;
use super::super::amx_tiles::{
    self, prefetch_tile, round_bf16, round_rows, supported, PREFETCH_AHEAD, TILE,
};

use super::packed_b::{PackedRef, Values};
use super::passes;
use half::bf16;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::Mutex;

/// Fewest rows (tokens) a linear needs to go to the tile products: below this (a decode step) they
/// would pad the rows to 32; such linears read a weight's panels with the f32 kernels, or a weight
/// held only as tiles with [`few_rows`].
pub(crate) const MIN_ROWS: usize = crate::cpu::MatmulMode::MIN_ROWS;
/// Rows per task: 256 rows x 3072 depths of bf16 A is 1.5 MiB, within the 2 MiB L2.
const TASK_ROWS: usize = 256;
/// Output columns per task when there are too few row blocks to keep every thread busy.
const TASK_COLS: usize = 256;

/// Rows `rows` (a range of 16-row blocks, starting on one) of A (`x`: `m` rows of `k` f32, row
/// stride `k`) as 16 x 32 bf16 tiles into `dst`: the block of row `rows.start + 16 b`, depth block
/// `kb` at `(b * kbs + kb) * TILE`. Rows past `m` and depths past `k` are written as zeros (`dst` is
/// reused and may hold anything).
fn pack_a_rows(x: &[f32], (m, k, kbs): (usize, usize, usize), rows: Range<usize>, dst: &mut [u16]) {
    debug_assert!(rows.start.is_multiple_of(16) && dst.len() >= rows.len() * kbs * 32);
    for (b, block) in dst[..rows.len() * kbs * 32]
        .chunks_exact_mut(kbs * TILE)
        .enumerate()
    {
        let r0 = rows.start + b * 16;
        for r in 0..16 {
            if r0 + r >= m {
                for kb in 0..kbs {
                    block[kb * TILE + r * 32..][..32].fill(0);
                }
                continue;
            }
            // SAFETY: a task runs only where `supported` found AMX-BF16 and the AVX-512 set;
            // the row's `kbs` tile rows lie in `block`, TILE apart.
            unsafe { round_rows(&x[(r0 + r) * k..][..k], &mut block[r * 32..], TILE) };
        }
    }
}

thread_local! {
    /// Per thread: the rows of A a task packs for itself (at most [`TASK_ROWS`] x `k`), kept between
    /// calls.
    static TASK_A: RefCell<AlignedVec<u16>> = const { RefCell::new(AlignedVec::new()) };
}

/// The whole of A when several tasks share its rows, kept between calls (taken by one call at a time;
/// a call that finds it taken, one nested in another's tasks, allocates its own).
static SHARED_A: Mutex<AlignedVec<u16>> = Mutex::new(AlignedVec::new());

/// B (`w`: `k` x `n`, in 16-column panels) as 32 x 16 pair-interleaved bf16 tiles, tile `(cb, kb)`
/// at `(cb * kbs + kb) * TILE`, element `(depth d, column c)` at `(d / 2) * 32 + c * 2 + d % 2`;
/// `np` columns (a multiple of 32), zero-padded.
fn pack_b(w: PackedRef<'_>, np: usize, kbs: usize) -> AlignedVec<u16> {
    let (k, n) = (w.k(), w.n());
    let (_, step) = passes(k);
    let mut b = AlignedVec::zeroed(np * kbs * 32);
    b.par_chunks_mut(kbs * TILE)
        .enumerate()
        .for_each(|(cb, block)| {
            let j = cb * 16;
            if j >= n {
                return;
            }
            for k0 in (0..k).step_by(step) {
                let kc = step.min(k - k0);
                match w.panel(j, k0, kc) {
                    (Values::F32(v), width) => pack_panel(v, width, k0, block, round_bf16),
                    (Values::Bf16(v), width) => pack_panel(v, width, k0, block, |x| x.to_bits()),
                }
            }
        });
    b
}

/// A row-major `[n, k]` bf16 matrix `w` (B = `w^T`) as the tiles [`pack_b`] makes: the same layout,
/// `n` padded to 32 columns and `k` to 32 depths with zeros.
pub(crate) fn tiles_from_rows(w: &[bf16], n: usize, k: usize) -> AlignedVec<u16> {
    let (np, kbs) = (n.next_multiple_of(32), k.div_ceil(32));
    let mut b = AlignedVec::zeroed(np * kbs * 32);
    b.par_chunks_mut(kbs * TILE)
        .enumerate()
        .for_each(|(cb, block)| {
            for c in 0..16.min(n.saturating_sub(cb * 16)) {
                let row = &w[(cb * 16 + c) * k..][..k];
                for (d, v) in row.iter().enumerate() {
                    block[(d / 32) * TILE + ((d % 32) / 2) * 32 + c * 2 + d % 2] = v.to_bits();
                }
            }
        });
    b
}

/// The row-major `[n, k]` bf16 bits of a matrix held as [`tiles_from_rows`] tiles.
pub(crate) fn rows_from_tiles(tiles: &[u16], n: usize, k: usize) -> Vec<u16> {
    let kbs = k.div_ceil(32);
    let mut w = vec![0u16; n * k];
    for (j, row) in w.chunks_exact_mut(k.max(1)).enumerate().take(n) {
        let block = &tiles[(j / 16) * kbs * TILE..][..kbs * TILE];
        for (d, v) in row.iter_mut().enumerate() {
            *v = block[(d / 32) * TILE + ((d % 32) / 2) * 32 + (j % 16) * 2 + d % 2];
        }
    }
    w
}

/// One depth pass of one 16-column panel (`values[kk * width + c]` = depth `k0 + kk`, column `c`)
/// into its column block's tiles.
fn pack_panel<T: Copy>(
    values: &[T],
    width: usize,
    k0: usize,
    block: &mut [u16],
    bits: impl Fn(T) -> u16,
) {
    for (kk, row) in values.chunks_exact(width).enumerate() {
        let d = k0 + kk;
        let tile = &mut block[(d / 32) * TILE..][..TILE];
        let dst = &mut tile[((d % 32) / 2) * 32 + d % 2..];
        for (c, &v) in row.iter().enumerate() {
            dst[c * 2] = bits(v);
        }
    }
}

/// `y` (`m` x `n`, row stride `n`) `= bias + x @ w` on the tiles. The caller checked
/// [`amx_tiles::enabled`] and
/// the shapes (`x`: `m` x `k`, `w`: `k` x `n`, `bias`: `n`). Panics without AMX ([`supported`]).
pub(crate) fn linear(x: &[f32], m: usize, w: PackedRef<'_>, bias: Option<&[f32]>, y: &mut [f32]) {
    linear_streaming(x, m, w, bias, y, amx_tiles::STREAM_MIN_BYTES)
}

/// `y` (`m` x `n`) `= bias + x @ w` for `m` below [`MIN_ROWS`], over a weight held only as tiles
/// ([`few_rows`]). Panics without AMX ([`supported`]) or on a weight that has no tiles.
pub(crate) fn linear_few_rows(
    x: &[f32],
    m: usize,
    w: PackedRef<'_>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    assert!(
        supported(),
        "amx::linear_few_rows on a CPU without AMX-BF16"
    );
    let tiles = w.amx_tiles(|| panic!("linear_few_rows: a weight without its tile copy"));
    few_rows::linear(x, m, (tiles, w.k(), w.n()), bias, y);
}

/// [`linear`], streaming whole blocks to an output of `stream_min` bytes or more.
fn linear_streaming(
    x: &[f32],
    m: usize,
    w: PackedRef<'_>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    stream_min: usize,
) {
    let (k, n) = (w.k(), w.n());
    assert!(supported(), "amx::linear on a CPU without AMX-BF16");
    assert!(x.len() >= m * k && y.len() >= m * n && bias.is_none_or(|b| b.len() == n));
    if m == 0 || n == 0 {
        return;
    }
    let kbs = k.div_ceil(32);
    let np = n.next_multiple_of(32);
    let b = w.amx_tiles(|| pack_b(w, np, kbs));
    let out = OutPtr(y.as_mut_ptr());
    for_each_task(x, (m, k, n), |a, rows, cols| {
        let task = Task {
            a,
            b,
            kbs,
            m,
            n,
            bias,
            out: &out,
            stream: m * n * 4 >= stream_min,
        };
        // SAFETY: `supported` found AMX-BF16 with the tile state granted; the task's output block
        // (rows x cols, clipped to m x n) is written by no other task; `a` holds these rows' tiles.
        unsafe { task.run(rows, cols) };
    });
}

/// Splits the `m` x `n` output (padded to 32) into tasks, packs A (`x`: `m` x `k`) for them and runs
/// `task(a, rows, cols)` for each in parallel, `a` holding the A tiles of `rows` (from its start).
/// A task owns a block of up to [`TASK_ROWS`] rows and, where there are too few row blocks to keep
/// every thread busy, a range of columns.
fn for_each_task(
    x: &[f32],
    (m, k, n): (usize, usize, usize),
    task: impl Fn(&[u16], Range<usize>, Range<usize>) + Sync,
) {
    let kbs = k.div_ceil(32);
    let (mp, np) = (m.next_multiple_of(32), n.next_multiple_of(32));
    let row_tasks = mp.div_ceil(TASK_ROWS);
    let threads = rayon::current_num_threads();
    let col_tasks = if row_tasks >= 2 * threads {
        1
    } else {
        np.div_ceil(TASK_COLS)
            .min((4 * threads).div_ceil(row_tasks))
    };
    let cols_per_task = (np / 32).div_ceil(col_tasks) * 32;
    // One task per row block: each packs its own rows (in L2, overlapping other tasks' tile work).
    // Several per row block: A is packed once, up front, for all of them.
    let mut shared = AlignedVec::new();
    let mut pool = None;
    if col_tasks > 1 {
        pool = SHARED_A.try_lock().ok();
        let buf = pool.as_deref_mut().unwrap_or(&mut shared);
        buf.sized(mp * kbs * 32)
            .par_chunks_mut(kbs * TILE)
            .enumerate()
            .for_each(|(rb, block)| pack_a_rows(x, (m, k, kbs), rb * 16..rb * 16 + 16, block));
    }
    let packed_a = pool.as_deref().unwrap_or(&shared);
    (0..row_tasks * col_tasks).into_par_iter().for_each(|t| {
        let rows = (t / col_tasks) * TASK_ROWS..(((t / col_tasks) + 1) * TASK_ROWS).min(mp);
        let cols = (t % col_tasks) * cols_per_task..((t % col_tasks + 1) * cols_per_task).min(np);
        if col_tasks > 1 {
            task(
                &packed_a[rows.start * kbs * 32..][..rows.len() * kbs * 32],
                rows,
                cols,
            );
        } else {
            TASK_A.with_borrow_mut(|buf| {
                let a = buf.sized(rows.len() * kbs * 32);
                pack_a_rows(x, (m, k, kbs), rows.clone(), a);
                task(a, rows, cols);
            });
        }
    });
}

/// tmm0-3 = the 32 x 32 block of `A B` from the A tiles at `a0`, `a1` (two 16-row blocks) and the B
/// tiles at `b0`, `b1` (two 16-column blocks), each `kbs` depth tiles in a row, the sums started from
/// `bias_row` (every row of the block; 32 f32 on a cache line) or from zero.
///
/// # Safety
/// This thread's tiles are configured; each pointer is readable for `kbs` whole tiles.
#[inline(always)]
unsafe fn block_product(
    [a0, a1, b0, b1]: [*const u16; 4],
    kbs: usize,
    bias_row: Option<*const f32>,
) {
    // SAFETY: the caller's promise; the prefetches are hints (never dereferenced).
    unsafe {
        match bias_row {
            // Row stride 0: every row of the four C tiles is the bias row.
            Some(first) => amx_tiles::load_c(first, 0),
            None => amx_tiles::zero_c(),
        }
        for kb in 0..kbs {
            let o = kb * TILE;
            if kb + PREFETCH_AHEAD < kbs {
                let ahead = o + PREFETCH_AHEAD * TILE;
                for p in [a0, a1, b0, b1] {
                    prefetch_tile(p.wrapping_add(ahead));
                }
            }
            amx_tiles::product(a0.add(o), a1.add(o), b0.add(o), b1.add(o));
        }
    }
}

/// The bias of output columns `j .. j + 32` (zero past `n`, or everywhere without a bias) into `row`.
fn bias_row_at(bias: Option<&[f32]>, n: usize, j: usize, row: &mut [f32]) {
    row.fill(0.0);
    if let Some(bias) = bias {
        let width = 32.min(n - j.min(n));
        row[..width].copy_from_slice(&bias[j..j + width]);
    }
}

/// The output pointer, shared by tasks that write disjoint blocks.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint output blocks (see `linear`).
unsafe impl Sync for OutPtr {}

struct Task<'a> {
    /// The A tiles of the task's rows (as [`pack_a_rows`] packs them from the rows' start).
    a: &'a [u16],
    b: &'a [u16],
    kbs: usize,
    m: usize,
    n: usize,
    bias: Option<&'a [f32]>,
    out: &'a OutPtr,
    /// Whether whole blocks are streamed to the output ([`amx_tiles::STREAM_MIN_BYTES`]).
    stream: bool,
}

impl Task<'_> {
    /// Output rows `rows` x columns `cols` (multiples of 32, within the padded sizes).
    ///
    /// # Safety
    /// AMX-BF16 must be usable by this thread ([`supported`]), and no other thread may touch these
    /// output elements during the call.
    unsafe fn run(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        let (m, n) = (self.m, self.n);
        let mut c = AlignedVec::<f32>::zeroed(32 * 32);
        // The bias of the current 32 columns (every C tile row starts from it), on a cache line.
        let mut bias_row = AlignedVec::<f32>::zeroed(32);
        // SAFETY: the caller's promise (AMX usable); every tile read is a whole tile of `a` or `b`
        // (the packs are padded to whole tiles) or the bias row `first`, and the C stores go to `c`
        // or to a whole 32 x 32 block of `y` inside m x n, in this task's part.
        unsafe {
            amx_tiles::configure();
            for j in cols.step_by(32) {
                let b0 = self.b[(j / 16) * self.kbs * TILE..].as_ptr();
                let b1 = self.b[(j / 16 + 1) * self.kbs * TILE..].as_ptr();
                // The sums start from the bias: no pass over the output to add it.
                bias_row_at(self.bias, n, j, &mut bias_row);
                let first = self.bias.map(|_| bias_row.as_ptr());
                for i in rows.clone().step_by(32) {
                    let a0 = self.a[((i - rows.start) / 16) * self.kbs * TILE..].as_ptr();
                    let a1 = self.a[((i - rows.start) / 16 + 1) * self.kbs * TILE..].as_ptr();
                    block_product([a0, a1, b0, b1], self.kbs, first);
                    let dst = self.out.0.add(i * n + j);
                    if i + 32 <= m && j + 32 <= n && self.stream && amx_tiles::streamable(dst, n) {
                        amx_tiles::store_c_streamed(dst, n);
                    } else if i + 32 <= m && j + 32 <= n {
                        // Straight into the output (`scripts/amx-probe.rs`, the linear's loop on
                        // one thread, buffers on lines: 0.76-0.92 TFLOP/s, 0.65-0.76 through a
                        // buffer, 1.14-1.16 storing nothing).
                        amx_tiles::store_c(dst, n);
                    } else {
                        amx_tiles::store_c(c.as_mut_ptr(), 32);
                        self.write_edge(&c, i, j);
                    }
                }
            }
            amx_tiles::release();
            amx_tiles::end_streamed_stores();
        }
    }

    /// Stores the part of the 32 x 32 block `c` (row stride 32) at output `(i, j)` that lies inside
    /// `m` x `n` (a block on the output's edge).
    ///
    /// # Safety
    /// As for [`Task::run`].
    unsafe fn write_edge(&self, c: &[f32], i: usize, j: usize) {
        let width = 32.min(self.n - j.min(self.n));
        for r in 0..32.min(self.m.saturating_sub(i)) {
            // SAFETY: row `i + r < m`, columns `j .. j + width <= n`: inside `y`, owned by this task.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.out.0.add((i + r) * self.n + j), width)
            };
            dst.copy_from_slice(&c[r * 32..][..width]);
        }
    }
}

pub(crate) mod few_rows;
pub(crate) mod gate_up;
#[cfg(test)]
mod tests;

//! The feed-forward's first half in one pass on the AMX tiles: `silu(x Wg^T + bg) * (x Wu^T + bu)`,
//! the graph's `GateUpSwiGlu` group (two `Linear`s of one input and the `SwiGlu` of their outputs).
//!
//! Tasks and A's packing are the linear's ([`for_each_task`]). For each 32 x 32 output block a task
//! computes the gate's block and then the up projection's on the same A tiles, stores both to L1,
//! and writes only their SwiGLU. Run as three nodes, the two projections' outputs (each as large as
//! the result: 50 MB apiece at the mid preset's 1024x1024 gen step) were written out, read back by
//! the SwiGLU's pass, and its result written again.
//!
//! Bits: each projection's sums are the linear's (the same tiles in the same order, from the bias)
//! and the SwiGLU is [`swiglu`]'s, so the result equals the three nodes run one by one, bit for bit.

use super::super::super::aligned::AlignedVec;
use super::super::super::amx_tiles::{self, supported, TILE};
use super::super::super::fast_exp::swiglu;
use super::super::packed_b::PackedRef;
use super::{bias_row_at, block_product, for_each_task, pack_b, OutPtr};
use std::ops::Range;

/// One projection: its weight (`k` x `n`) and bias (`n`).
pub(crate) type Projection<'a> = (PackedRef<'a>, Option<&'a [f32]>);

/// `y` (`m` x `n`, row stride `n`) `= silu(bg + x @ wg) * (bu + x @ wu)` on the tiles (`x`: `m` x
/// `k`; both weights `k` x `n`). Panics without AMX ([`supported`]) or on mismatched shapes.
pub(crate) fn gate_up_swiglu(
    x: &[f32],
    m: usize,
    gate: Projection<'_>,
    up: Projection<'_>,
    y: &mut [f32],
) {
    gate_up_streaming(x, m, gate, up, y, amx_tiles::STREAM_MIN_BYTES)
}

/// [`gate_up_swiglu`], streaming whole blocks to an output of `stream_min` bytes or more.
pub(super) fn gate_up_streaming(
    x: &[f32],
    m: usize,
    (wg, bg): Projection<'_>,
    (wu, bu): Projection<'_>,
    y: &mut [f32],
    stream_min: usize,
) {
    let (k, n) = (wg.k(), wg.n());
    assert!(supported(), "amx::gate_up_swiglu on a CPU without AMX-BF16");
    assert!(
        wu.k() == k && wu.n() == n,
        "gate_up_swiglu: gate {k} x {n}, up {} x {}",
        wu.k(),
        wu.n()
    );
    assert!(x.len() >= m * k && y.len() >= m * n);
    assert!(bg.is_none_or(|b| b.len() == n) && bu.is_none_or(|b| b.len() == n));
    if m == 0 || n == 0 {
        return;
    }
    let kbs = k.div_ceil(32);
    let np = n.next_multiple_of(32);
    let gate_tiles = wg.amx_tiles(|| pack_b(wg, np, kbs));
    let up_tiles = wu.amx_tiles(|| pack_b(wu, np, kbs));
    let out = OutPtr(y.as_mut_ptr());
    for_each_task(x, (m, k, n), |a, rows, cols| {
        let task = Task {
            a,
            gate: (gate_tiles, bg),
            up: (up_tiles, bu),
            kbs,
            m,
            n,
            out: &out,
            stream: m * n * 4 >= stream_min,
        };
        // SAFETY: `supported` found AMX-BF16 with the tile state granted; the task's output block
        // is written by no other task; `a` holds these rows' tiles.
        unsafe { task.run(rows, cols) };
    });
}

struct Task<'a> {
    /// The A tiles of the task's rows (from the rows' start).
    a: &'a [u16],
    /// Each projection's B tiles and bias.
    gate: (&'a [u16], Option<&'a [f32]>),
    up: (&'a [u16], Option<&'a [f32]>),
    kbs: usize,
    m: usize,
    n: usize,
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
    unsafe fn run(&self, rows: Range<usize>, cols: Range<usize>) {
        let (n, kbs) = (self.n, self.kbs);
        // The two projections' blocks and their SwiGLU, 32 x 32 each, on cache lines (in L1).
        let mut g = AlignedVec::<f32>::zeroed(32 * 32);
        let mut u = AlignedVec::<f32>::zeroed(32 * 32);
        let mut h = AlignedVec::<f32>::zeroed(32 * 32);
        let mut bias_g = AlignedVec::<f32>::zeroed(32);
        let mut bias_u = AlignedVec::<f32>::zeroed(32);
        // SAFETY: the caller's promise (AMX usable); every tile read is a whole tile of `a` or a
        // projection's tiles (padded to whole tiles) or a bias row; the C stores go to `g` and `u`
        // (32 rows of 32), the output's writes to this task's part of `y` inside m x n.
        unsafe {
            amx_tiles::configure();
            for j in cols.step_by(32) {
                let at = |tiles: &[u16]| {
                    [
                        tiles[(j / 16) * kbs * TILE..].as_ptr(),
                        tiles[(j / 16 + 1) * kbs * TILE..].as_ptr(),
                    ]
                };
                let ([g0, g1], [u0, u1]) = (at(self.gate.0), at(self.up.0));
                bias_row_at(self.gate.1, n, j, &mut bias_g);
                bias_row_at(self.up.1, n, j, &mut bias_u);
                let first_g = self.gate.1.map(|_| bias_g.as_ptr());
                let first_u = self.up.1.map(|_| bias_u.as_ptr());
                for i in rows.clone().step_by(32) {
                    let a0 = self.a[((i - rows.start) / 16) * kbs * TILE..].as_ptr();
                    let a1 = self.a[((i - rows.start) / 16 + 1) * kbs * TILE..].as_ptr();
                    block_product([a0, a1, g0, g1], kbs, first_g);
                    amx_tiles::store_c(g.as_mut_ptr(), 32);
                    block_product([a0, a1, u0, u1], kbs, first_u);
                    amx_tiles::store_c(u.as_mut_ptr(), 32);
                    swiglu(&g, &u, &mut h);
                    self.write(&h, i, j);
                }
            }
            amx_tiles::release();
            amx_tiles::end_streamed_stores();
        }
    }

    /// The 32 x 32 block `h` (rows of 32, on a cache line) into the output at `(i, j)`: streamed
    /// where whole and the output is large, else the part inside `m` x `n` row by row.
    ///
    /// # Safety
    /// As for [`Task::run`].
    unsafe fn write(&self, h: &[f32], i: usize, j: usize) {
        let (m, n) = (self.m, self.n);
        // SAFETY: the caller's promise; `(i, j)` is inside m x n (a task's blocks start there).
        let dst = unsafe { self.out.0.add(i * n + j) };
        if i + 32 <= m && j + 32 <= n && self.stream && amx_tiles::streamable(dst, n) {
            // SAFETY: AVX-512F (`supported`); `h` holds 1024 values on a line; the whole block is
            // inside m x n and streamable.
            unsafe { amx_tiles::stream_block(h.as_ptr(), dst, n) };
            return;
        }
        let width = 32.min(n - j);
        for r in 0..32.min(m - i) {
            // SAFETY: row `i + r < m`, columns `j .. j + width <= n`: inside `y`, owned by this task.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.add(r * n), width) };
            row.copy_from_slice(&h[r * 32..][..width]);
        }
    }
}

#[cfg(test)]
mod tests;

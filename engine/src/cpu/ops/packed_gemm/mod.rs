//! An f32 GEMM for x86_64 CPUs with AVX2 and FMA (detected at run time): cache blocking around a
//! 6x16 FMA micro-kernel. B is either packed once ahead of time ([`PackedB`]: nn.Linear weights,
//! packed when they are loaded, so no call repacks them) or packed per call from a strided view; A
//! (the activations, few rows) is packed once per call and shared by the call's tasks.
//!
//! Numerics: every output element is one FMA chain. It starts from the bias (or zero), adds
//! `a[i,k] * b[k,j]` for `k = 0, 1, .., K-1` in that order with one rounding per step. The order
//! depends on nothing else: not the blocking, not the tile an element falls in, not the thread
//! count or how the columns are split among threads. So a product computed in column panels (the
//! bf16 linear widens its weight panel by panel) equals the whole product bit for bit, and B packed
//! ahead or per call give the same bits.

use super::matmul::{Mat, MatMut};
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
mod x86;

/// Micro-tile columns: two 8-lane vectors. Packed B is stored in panels this wide.
const NR: usize = 16;
/// Micro-tile rows.
const MR: usize = 6;
/// Most depth of one pass: a 6 x KC slice of A (6 KiB) and a KC x 16 slice of B (16 KiB) stay in
/// L1 while a micro-tile is computed; the destination is read and written once per pass.
const KC: usize = 256;
/// Most rows of A per block (MC x KC = 288 KiB, within a 512 KiB L2).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
const MC: usize = 288;
/// Columns of B packed at a time from a strided view (KC x NC x 4 = 1 MiB).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
const NC: usize = 1024;
/// Products with fewer multiply-adds run on the calling thread unless told otherwise.
const PAR_FLOPS: usize = 1 << 20;
/// Fewest multiply-adds per parallel task.
const TASK_FLOPS: usize = 1 << 19;

/// Whether this CPU runs [`gemm`]: x86_64 with AVX2 and FMA, detected once. `HBRIDGE_CPU_GEMM=crate`
/// turns it off (everything then goes through the `gemm` crate, for comparisons).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let off = std::env::var_os("HBRIDGE_CPU_GEMM").is_some_and(|v| v == "crate");
        !off && cpu_supported()
    })
}

#[cfg(target_arch = "x86_64")]
fn cpu_supported() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_supported() -> bool {
    false
}

/// The depth passes over `k`: `count` passes of `step` (the last one shorter), `step <= KC`, as
/// even as possible.
fn passes(k: usize) -> (usize, usize) {
    let count = k.div_ceil(KC).max(1);
    (count, k.div_ceil(count))
}

/// 64 bytes of f32, 64-byte aligned: scratch buffers are vectors of these so that packed panels
/// start on cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A reusable, cache-line aligned f32 buffer.
#[derive(Default)]
struct Buf(Vec<Line>);

impl Buf {
    /// At least `len` values, contents unspecified (whatever an earlier call left).
    fn get(&mut self, len: usize) -> &mut [f32] {
        let lines = len.div_ceil(16);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0.0; 16]));
        }
        &mut lines_as_f32_mut(&mut self.0)[..len]
    }
}

/// The values of `lines`, in order.
fn lines_as_f32(lines: &[Line]) -> &[f32] {
    // SAFETY: `Line` is `repr(C)` over `[f32; 16]` with no padding (64 bytes, align 64), so `lines`
    // is `16 * lines.len()` initialized f32s, borrowed for as long as `lines`.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<f32>(), 16 * lines.len()) }
}

/// The values of `lines`, in order, mutably.
fn lines_as_f32_mut(lines: &mut [Line]) -> &mut [f32] {
    // SAFETY: as in `lines_as_f32`, borrowed mutably for as long as `lines`.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<f32>(), 16 * lines.len()) }
}

thread_local! {
    /// The calling thread's packed A, for the duration of one `gemm` call.
    static PACKED_A: RefCell<Buf> = RefCell::new(Buf::default());
}

/// Values of A packed by [`pack_a`]: `m` rows rounded up to `MR`, times `k`.
fn packed_a_len(m: usize, k: usize) -> usize {
    m.next_multiple_of(MR) * k
}

/// Packs all of A for the micro-kernel: for each depth pass `k0 .. k0 + kc` (see [`passes`]), at
/// offset `k0 * mp` (`mp` = `m` rounded up to `MR`), micro-panels of `MR` rows one after the other:
/// row `6t + i` at depth `k0 + p` at `k0*mp + t*MR*kc + p*MR + i`; rows past `m` are zero.
fn pack_a(a: &Mat<'_>, buf: &mut [f32]) {
    let (m, k) = (a.rows, a.cols);
    let mp = m.next_multiple_of(MR);
    let (_, step) = passes(k);
    let pack_pass = |(pass, region): (usize, &mut [f32])| {
        let k0 = pass * step;
        let kc = region.len() / mp;
        for (t, panel) in region.chunks_exact_mut(MR * kc).enumerate() {
            let rows = MR.min(m - t * MR);
            if a.cs == 1 && rows == MR {
                // Six contiguous rows: one step (six values) at a time.
                let src: [&[f32]; MR] =
                    std::array::from_fn(|i| &a.data[(t * MR + i) * a.rs + k0..][..kc]);
                for (p, d) in panel.chunks_exact_mut(MR).enumerate() {
                    for (d, s) in d.iter_mut().zip(&src) {
                        *d = s[p];
                    }
                }
                continue;
            }
            for i in 0..MR {
                let dst = panel[i..].iter_mut().step_by(MR);
                if i < rows {
                    let src = &a.data[(t * MR + i) * a.rs + k0 * a.cs..];
                    dst.zip(src.iter().step_by(a.cs)).for_each(|(d, &v)| *d = v);
                } else {
                    dst.for_each(|d| *d = 0.0);
                }
            }
        }
    };
    let buf = &mut buf[..mp * k];
    if mp * k >= 1 << 18 {
        buf.par_chunks_mut(mp * step)
            .enumerate()
            .for_each(pack_pass);
    } else {
        buf.chunks_mut(mp * step).enumerate().for_each(pack_pass);
    }
}

/// A `k x n` matrix B packed for [`gemm`]: for each depth pass (see [`passes`]) `k0 .. k0 + kc`, at
/// offset `k0 * n`, the pass's rows of each 16-column panel one panel after the other, panel `p`
/// (columns `16p .. 16p + w`, `w` = 16 or what is left) as `kc` rows of `w` values: element
/// `(k0 + kk, 16p + j)` at `k0*n + 16p*kc + kk*w + j`. Exactly `k * n` values, no padding, and one
/// pass of a run of panels is one contiguous stretch of memory.
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    /// The values from a cache-line boundary (so the kernel's 32-byte loads of a 64-byte panel row
    /// never straddle two lines), padded to whole lines.
    lines: Vec<Line>,
}

impl PartialEq for PackedB {
    fn eq(&self, other: &Self) -> bool {
        (self.k, self.n) == (other.k, other.n) && self.data() == other.data()
    }
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("k", &self.k)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl PackedB {
    /// B = `w^T` for `w` row-major `[n, k]` (an nn.Linear weight `[out, in]`: `k` in, `n` out).
    pub(crate) fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "PackedB::from_rows: {n} x {k} from {} values",
            w.len()
        );
        let mut lines = vec![Line([0.0; 16]); (n * k).div_ceil(16)];
        let data = &mut lines_as_f32_mut(&mut lines)[..n * k];
        let (_, step) = passes(k);
        if n > 0 && k > 0 {
            // One task per depth pass.
            data.par_chunks_mut(step * n)
                .enumerate()
                .for_each(|(pass, block)| {
                    let k0 = pass * step;
                    let kc = block.len() / n;
                    let first = pack_full_panels(w, (n, k), (k0, kc), block);
                    for (p, panel) in block.chunks_mut(NR * kc).enumerate().skip(first) {
                        let width = panel.len() / kc;
                        for j in 0..width {
                            let row = &w[(p * NR + j) * k + k0..][..kc];
                            for (kk, &v) in row.iter().enumerate() {
                                panel[kk * width + j] = v;
                            }
                        }
                    }
                });
        }
        PackedB { k, n, lines }
    }

    /// The row-major `[n, k]` matrix it was packed from (exact).
    pub(crate) fn to_rows(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; n * k];
        let (_, step) = passes(k);
        if n > 0 && k > 0 {
            for (pass, block) in self.data().chunks(step * n).enumerate() {
                let k0 = pass * step;
                let kc = block.len() / n;
                for (p, panel) in block.chunks(NR * kc).enumerate() {
                    let width = panel.len() / kc;
                    for j in 0..width {
                        let row = &mut w[(p * NR + j) * k + k0..][..kc];
                        for (kk, v) in row.iter_mut().enumerate() {
                            *v = panel[kk * width + j];
                        }
                    }
                }
            }
        }
        w
    }

    /// The `k * n` values.
    fn data(&self) -> &[f32] {
        &lines_as_f32(&self.lines)[..self.n * self.k]
    }

    /// Rows of B (the linear's input features).
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Columns of B (the linear's output features).
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Values held (`k * n`).
    pub(crate) fn len(&self) -> usize {
        self.n * self.k
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `k0 .. k0 + kc` (one depth pass) of `count` full panels from column `j` (a multiple of
    /// 16), one after the other.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
    fn full_panels(&self, j: usize, k0: usize, kc: usize, count: usize) -> &[f32] {
        assert!(
            j + count * NR <= self.n,
            "full_panels: columns {j}.. past {}",
            self.n
        );
        &self.data()[k0 * self.n + j * kc..][..count * NR * kc]
    }

    /// Rows `k0 .. k0 + kc` (one depth pass) of the panel starting at column `j` (a multiple of 16),
    /// and its width.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
    fn panel(&self, j: usize, k0: usize, kc: usize) -> (&[f32], usize) {
        let width = NR.min(self.n - j);
        (&self.data()[k0 * self.n + j * kc..][..kc * width], width)
    }
}

/// Packs the full 16-column panels of one depth pass of `w^T` (`w` row-major `[n, k]`) into
/// `block` with the per-call packing's in-register transposes (their layout is the same); returns
/// how many it packed (none without AVX2).
fn pack_full_panels(
    w: &[f32],
    (n, k): (usize, usize),
    (k0, kc): (usize, usize),
    block: &mut [f32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if available() {
        let full = n / NR;
        // SAFETY: `available` found AVX2.
        unsafe { x86::pack_b(&Mat::rm_t(w, k, n), k0, kc, 0, full * NR, block) };
        return full;
    }
    let _ = (w, n, k, k0, kc, block);
    0
}

/// Where B's values come from.
#[derive(Clone, Copy)]
pub(crate) enum BSource<'a> {
    Packed(&'a PackedB),
    View(Mat<'a>),
}

impl BSource<'_> {
    fn rows(&self) -> usize {
        match self {
            BSource::Packed(p) => p.k,
            BSource::View(v) => v.rows,
        }
    }

    fn cols(&self) -> usize {
        match self {
            BSource::Packed(p) => p.n,
            BSource::View(v) => v.cols,
        }
    }
}

fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst = bias + a @ b` (`bias[j]` added to every row; zero without a bias). Computes nothing and
/// returns false when [`available`] is false; the caller then uses another GEMM. `parallel: None`
/// lets the size decide; `Some(false)` stays on the calling thread.
pub(crate) fn gemm(
    dst: MatMut<'_>,
    a: Mat<'_>,
    b: BSource<'_>,
    bias: Option<&[f32]>,
    parallel: Option<bool>,
) -> bool {
    if !available() {
        return false;
    }
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    assert!(
        a.rows == m && b.rows() == k && b.cols() == n,
        "gemm shapes: dst {m}x{n}, a {}x{}, b {}x{}",
        a.rows,
        a.cols,
        b.rows(),
        b.cols()
    );
    assert!(
        span(m, n, dst.rs, dst.cs) <= dst.data.len(),
        "gemm: dst view out of bounds"
    );
    assert!(
        span(m, k, a.rs, a.cs) <= a.data.len(),
        "gemm: a view out of bounds"
    );
    if let BSource::View(v) = b {
        assert!(
            span(k, n, v.rs, v.cs) <= v.data.len(),
            "gemm: b view out of bounds"
        );
    }
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "gemm: bias length");
    }
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        for r in 0..m {
            for c in 0..n {
                dst.data[r * dst.rs + c * dst.cs] = bias.map_or(0.0, |b| b[c]);
            }
        }
        return true;
    }
    PACKED_A.with(|cell| {
        let len = packed_a_len(m, k);
        // A nested call on this thread (a task stolen while this call waits) packs its own.
        let mut own = Buf::default();
        let mut held = cell.try_borrow_mut();
        let buf = match held.as_deref_mut() {
            Ok(buf) => buf.get(len),
            Err(_) => own.get(len),
        };
        pack_a(&a, buf);
        let job = Job {
            out: Out {
                ptr: dst.data.as_mut_ptr(),
                rs: dst.rs,
                cs: dst.cs,
            },
            m,
            k,
            apack: buf,
            b,
            bias,
        };
        job.run(parallel);
    });
    true
}

impl Job<'_> {
    /// Computes the whole destination: on this thread, or split by columns into tasks.
    fn run(&self, parallel: Option<bool>) {
        let (m, k, n) = (self.m, self.k, self.b.cols());
        let panels = n.div_ceil(NR);
        let threads = rayon::current_num_threads();
        let work = m * n * k;
        let par = parallel.unwrap_or(work >= PAR_FLOPS) && threads > 1 && panels > 1;
        if !par {
            // SAFETY: `out` addresses the whole `m x n` destination (asserted by `gemm`), borrowed
            // mutably for the call, and nothing else writes it.
            unsafe { self.columns(0..n) };
            return;
        }
        // A few tasks per thread, so that a thread that finishes early (or is free because a
        // side-by-side task finished) takes over part of the rest; each at least TASK_FLOPS of work.
        let tasks = (4 * threads).min(panels).min((work / TASK_FLOPS).max(2));
        let per = panels.div_ceil(tasks);
        (0..panels.div_ceil(per))
            .into_par_iter()
            .with_max_len(1)
            .for_each(|t| {
                let cols = t * per * NR..((t + 1) * per * NR).min(n);
                // SAFETY: as above; the tasks' column ranges are disjoint.
                unsafe { self.columns(cols) };
            });
    }
}

/// The destination's first element and strides; `Send`/`Sync` so tasks writing disjoint columns can
/// share it.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
struct Out {
    ptr: *mut f32,
    rs: usize,
    cs: usize,
}

// SAFETY: an `Out` is only dereferenced by `Job::columns`, whose callers hand each task its own
// columns; the pointee outlives every task (`gemm` borrows it mutably for the whole call).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// One `gemm` call's operands, shared by its tasks.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
struct Job<'a> {
    out: Out,
    m: usize,
    k: usize,
    /// All of A, packed by [`pack_a`].
    apack: &'a [f32],
    b: BSource<'a>,
    bias: Option<&'a [f32]>,
}

impl Job<'_> {
    /// Computes the destination's columns `cols` (starting at a multiple of 16) on this thread.
    ///
    /// # Safety
    /// `out` must address an `m x n` matrix with its strides, valid for reads and writes, that no
    /// other thread reads or writes in these columns during the call.
    unsafe fn columns(&self, cols: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller; `gemm` only gets here when AVX2 and FMA are available.
        unsafe {
            x86::columns(self, cols)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = cols;
            unreachable!("gemm returns before this without AVX2")
        }
    }
}

#[cfg(test)]
mod tests;

//! An f32 GEMM for x86_64 CPUs with AVX2 and FMA (detected at run time): cache blocking around a
//! 6x16 FMA micro-kernel. B is either packed once ahead of time ([`PackedB`]: nn.Linear weights,
//! packed when they are loaded, so no call repacks them; f32, or bf16 under bf16 weight storage,
//! widened to f32 in the kernels) or packed per call from a strided view; A (the activations, few
//! rows) is packed once per call and shared by the call's tasks.
//!
//! Numerics: every output element is one FMA chain. It starts from the bias (or zero), adds
//! `a[i,k] * b[k,j]` for `k = 0, 1, .., K-1` in that order with one rounding per step. The order
//! depends on nothing else: not the blocking, not the tile an element falls in, not the thread
//! count or how the columns are split among threads. So a product computed in column panels (the
//! row-major bf16 linear widens its weight panel by panel) equals the whole product bit for bit,
//! and B packed ahead (f32 or bf16: widening is exact) or per call give the same bits.

use super::matmul::{Mat, MatMut};
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
mod packed_b;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

use super::aligned::AlignedVec;
pub(crate) use packed_b::{Elem, PackedB, PackedRef};

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

/// Which micro-kernel computes the full tiles: both give the same bits (see the numerics above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// 6 x 16 tiles in 8-lane vectors.
    Avx2,
    /// 6 x 32 tiles (two panels) in 16-lane vectors; edge panels and single rows stay on AVX2.
    Avx512,
}

/// The micro-kernel this CPU runs, detected once: AVX-512 where it has AVX-512F, unless
/// `HBRIDGE_CPU_GEMM=avx2` asks for the AVX2 kernel (for comparisons).
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let avx2_only = std::env::var_os("HBRIDGE_CPU_GEMM").is_some_and(|v| v == "avx2");
        if !avx2_only && avx512_supported() {
            Isa::Avx512
        } else {
            Isa::Avx2
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn avx512_supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_supported() -> bool {
    false
}

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

thread_local! {
    /// The calling thread's packed A, for the duration of one `gemm` call.
    static PACKED_A: RefCell<AlignedVec<f32>> = const { RefCell::new(AlignedVec::new()) };
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

/// Where B's values come from.
#[derive(Clone, Copy)]
pub(crate) enum BSource<'a> {
    Packed(PackedRef<'a>),
    View(Mat<'a>),
    Rows(RowTable<'a>),
}

/// B whose row `p` is the `cols` contiguous values from `data[offsets[p]]`: rows gathered from
/// anywhere, packed per call like a view. A stride-1 convolution's implicit im2col: row
/// `(ci, ky, kx)` is input channel `ci`'s padded plane shifted by the tap, so all taps are one product
/// over `cin * k * k` depths with the weight as it lies, accumulated in registers.
#[derive(Clone, Copy)]
pub(crate) struct RowTable<'a> {
    pub data: &'a [f32],
    pub offsets: &'a [usize],
    pub cols: usize,
}

impl BSource<'_> {
    fn rows(&self) -> usize {
        match self {
            BSource::Packed(p) => p.k(),
            BSource::View(v) => v.rows,
            BSource::Rows(r) => r.offsets.len(),
        }
    }

    fn cols(&self) -> usize {
        match self {
            BSource::Packed(p) => p.n(),
            BSource::View(v) => v.cols,
            BSource::Rows(r) => r.cols,
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
    gemm_with(dst, a, b, bias, parallel, isa())
}

/// `dst = lhs @ rhs`, or with `accumulate` `dst += lhs @ rhs` (every chain starts from the
/// destination's value), for any strided views: this GEMM where the CPU runs it, else the `gemm`
/// crate. `parallel` as for [`gemm`].
pub(crate) fn product(
    dst: MatMut<'_>,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
    parallel: Option<bool>,
) {
    let MatMut {
        data,
        rows,
        cols,
        rs,
        cs,
    } = dst;
    let packed = MatMut {
        data: &mut *data,
        rows,
        cols,
        rs,
        cs,
    };
    let b = BSource::View(rhs);
    if !gemm_job(packed, lhs, b, (None, accumulate), parallel, isa()) {
        let dst = MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        };
        super::matmul::matmul(dst, lhs, rhs, 1.0, accumulate, parallel);
    }
}

/// [`gemm`] with the micro-kernel `isa` (AVX-512 only where the CPU has it).
pub(crate) fn gemm_with(
    dst: MatMut<'_>,
    a: Mat<'_>,
    b: BSource<'_>,
    bias: Option<&[f32]>,
    parallel: Option<bool>,
    isa: Isa,
) -> bool {
    gemm_job(dst, a, b, (bias, false), parallel, isa)
}

/// `dst = (bias, or dst when accumulating, or 0) + a @ b`.
fn gemm_job(
    dst: MatMut<'_>,
    a: Mat<'_>,
    b: BSource<'_>,
    (bias, accumulate): (Option<&[f32]>, bool),
    parallel: Option<bool>,
    isa: Isa,
) -> bool {
    if !available() {
        return false;
    }
    assert!(
        isa == Isa::Avx2 || avx512_supported(),
        "gemm: AVX-512 kernel asked for on a CPU without AVX-512F"
    );
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
    if let BSource::Rows(r) = b {
        assert!(
            r.offsets.iter().all(|&o| o + r.cols <= r.data.len()),
            "gemm: b row out of bounds"
        );
    }
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
        if accumulate {
            return true;
        }
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
        let mut own = AlignedVec::new();
        let mut held = cell.try_borrow_mut();
        let buf = match held.as_deref_mut() {
            Ok(buf) => buf.sized(len),
            Err(_) => own.sized(len),
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
            accumulate,
            isa,
        };
        job.run(parallel);
    });
    true
}

impl Job<'_> {
    /// Computes the whole destination: on this thread, or split into tasks by rows (many rows) or
    /// by columns.
    fn run(&self, parallel: Option<bool>) {
        let (m, k, n) = (self.m, self.k, self.b.cols());
        let panels = n.div_ceil(NR);
        let threads = rayon::current_num_threads();
        let work = m * n * k;
        let par = parallel.unwrap_or(work >= PAR_FLOPS) && threads > 1;
        if par && m / MC >= 2 * threads {
            // Enough rows for two tasks of at least MC rows per thread: each task reads its own
            // rows of packed A once. Split by columns, every task would read all of A (at 4112
            // rows x 3072 depths, 50 MB per task; `4112x768x3072` took 69-71 ms against 93-98, best of 9).
            let units = m.div_ceil(MR);
            let tasks = (4 * threads).min(m / MC);
            let edge = |t: usize| (t * units / tasks * MR).min(m);
            (0..tasks).into_par_iter().with_max_len(1).for_each(|t| {
                // SAFETY: as below; the tasks' row ranges are disjoint and start at multiples of MR.
                unsafe { self.part(edge(t)..edge(t + 1), 0..n) };
            });
            return;
        }
        if !par || panels < 2 {
            // SAFETY: `out` addresses the whole `m x n` destination (asserted by `gemm`), borrowed
            // mutably for the call, and nothing else writes it.
            unsafe { self.part(0..m, 0..n) };
            return;
        }
        // A few tasks per thread, so that a thread that finishes early (or is free because a
        // side-by-side task finished) takes over part of the rest; each at least TASK_FLOPS of work.
        // Tasks split whole units of panels as evenly as they divide (sizes differ by at most one
        // unit); the AVX-512 kernel's unit is a pair, so no task leaves a lone panel to AVX2.
        let unit = match self.isa {
            Isa::Avx512 => 2,
            Isa::Avx2 => 1,
        };
        let units = panels.div_ceil(unit);
        let tasks = (4 * threads).min(units).min((work / TASK_FLOPS).max(2));
        let edge = |t: usize| (t * units / tasks * unit * NR).min(n);
        (0..tasks).into_par_iter().with_max_len(1).for_each(|t| {
            // SAFETY: as above; the tasks' column ranges are disjoint.
            unsafe { self.part(0..m, edge(t)..edge(t + 1)) };
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

// SAFETY: an `Out` is only dereferenced by `Job::part`, whose callers hand each task its own
// rows and columns; the pointee outlives every task (`gemm` borrows it mutably for the whole call).
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
    /// Chains start from the destination's values ([`product`] with `accumulate`).
    accumulate: bool,
    isa: Isa,
}

impl Job<'_> {
    /// Computes the destination's rows `rows` (starting at a multiple of MR) and columns `cols`
    /// (starting at a multiple of 16) on this thread.
    ///
    /// # Safety
    /// `out` must address an `m x n` matrix with its strides, valid for reads and writes, that no
    /// other thread reads or writes in these rows and columns during the call.
    unsafe fn part(&self, rows: Range<usize>, cols: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller; `gemm` only gets here when AVX2 and FMA are available.
        unsafe {
            x86::part(self, rows, cols)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (rows, cols);
            unreachable!("gemm returns before this without AVX2")
        }
    }
}

#[cfg(test)]
mod tests;

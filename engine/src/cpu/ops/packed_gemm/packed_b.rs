//! B packed once ahead of time (nn.Linear weights, packed when they are loaded): f32, or bf16 for
//! bf16 weight storage. Both share one panel layout; the micro-kernels widen bf16 to f32 as they load
//! a panel row (exact), so the two give the same bits on the same (bf16) values.

use super::super::bf16::widen1;
#[cfg(target_arch = "x86_64")]
use super::{available, x86, Mat};
use super::{passes, NR};
use crate::cpu::ops::aligned::{AlignedVec, Plain};
use half::bf16;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::sync::OnceLock;

/// A value type packed B can hold.
///
/// # Safety
/// Every bit pattern is a valid value and the size divides 64 (as [`Plain`] promises).
pub(crate) unsafe trait Elem: Plain + PartialEq + Send + Sync + 'static {
    const ZERO: Self;

    /// The f32 of equal value.
    fn widen(self) -> f32;

    /// The value of a bf16's bits (exact in both types).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // tiles are x86_64 only
    fn from_bf16_bits(bits: u16) -> Self;

    /// Packs the full 16-column panels of one depth pass of `w^T` (`w` row-major `[n, k]`) into
    /// `block` faster than the plain loop of [`PackedB::from_rows`], if this type can; returns how
    /// many it packed (the plain loop packs the rest).
    fn pack_full_panels(
        w: &[Self],
        nk: (usize, usize),
        pass: (usize, usize),
        block: &mut [Self],
    ) -> usize {
        let _ = (w, nk, pass, block);
        0
    }

    /// `p` as a [`PackedRef`].
    fn wrap(p: &PackedB<Self>) -> PackedRef<'_>;
}

// SAFETY: 4 bytes, every bit pattern is an f32.
unsafe impl Elem for f32 {
    const ZERO: f32 = 0.0;

    fn widen(self) -> f32 {
        self
    }

    fn from_bf16_bits(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }

    /// With the per-call packing's in-register transposes (their layout is the same; none without
    /// AVX2).
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

    fn wrap(p: &PackedB<f32>) -> PackedRef<'_> {
        PackedRef::F32(p)
    }
}

// SAFETY: `half::bf16` is `repr(transparent)` over a u16 (2 bytes); every bit pattern is a bf16.
unsafe impl Elem for bf16 {
    const ZERO: bf16 = bf16::ZERO;

    fn widen(self) -> f32 {
        widen1(self)
    }

    fn from_bf16_bits(bits: u16) -> bf16 {
        bf16::from_bits(bits)
    }

    fn wrap(p: &PackedB<bf16>) -> PackedRef<'_> {
        PackedRef::Bf16(p)
    }
}

/// A `k x n` matrix B packed for [`gemm`](super::gemm): for each depth pass (see [`passes`])
/// `k0 .. k0 + kc`, at offset `k0 * n`, the pass's rows of each 16-column panel one panel after the
/// other, panel `p` (columns `16p .. 16p + w`, `w` = 16 or what is left) as `kc` rows of `w` values:
/// element `(k0 + kk, 16p + j)` at `k0*n + 16p*kc + kk*w + j`. Exactly `k * n` values, no padding,
/// and one pass of a run of panels is one contiguous stretch of memory.
pub(crate) struct PackedB<T: Elem = f32> {
    k: usize,
    n: usize,
    /// The values from a cache-line boundary (so the kernels' loads of a panel row never straddle
    /// two lines); none for a weight held only as tiles ([`PackedB::tiles_only`]).
    values: AlignedVec<T>,
    /// The same values as AMX tiles (see `amx.rs`), on a cache line: made by the first bf16 linear
    /// over this weight (`HBRIDGE_CPU_MATMUL=bf16`) and kept (without it each call repacked the
    /// weight, which took as long as the tiles' products at 512 rows), or at load for a weight held
    /// only as tiles.
    #[cfg(target_arch = "x86_64")]
    amx_tiles: OnceLock<AlignedVec<u16>>,
}

impl<T: Elem> PartialEq for PackedB<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.k, self.n) == (other.k, other.n)
            && if self.is_tiles_only() || other.is_tiles_only() {
                self.to_rows() == other.to_rows()
            } else {
                self.data() == other.data()
            }
    }
}

impl<T: Elem> std::fmt::Debug for PackedB<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("k", &self.k)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl<T: Elem> PackedB<T> {
    /// B = `w^T` for `w` row-major `[n, k]` (an nn.Linear weight `[out, in]`: `k` in, `n` out).
    pub(crate) fn from_rows(w: &[T], n: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "PackedB::from_rows: {n} x {k} from {} values",
            w.len()
        );
        let mut values = AlignedVec::<T>::zeroed(n * k);
        let data = &mut values[..];
        let (_, step) = passes(k);
        if n > 0 && k > 0 {
            // One task per depth pass.
            data.par_chunks_mut(step * n)
                .enumerate()
                .for_each(|(pass, block)| {
                    let k0 = pass * step;
                    let kc = block.len() / n;
                    let first = T::pack_full_panels(w, (n, k), (k0, kc), block);
                    for (p, panel) in block.chunks_mut(NR * kc).enumerate().skip(first) {
                        let width = panel.len() / kc;
                        if width == NR {
                            // Full panels: 16 weight rows read in step, the panel written in
                            // order (measured 1.2-1.8x faster for bf16 than the loop below).
                            let rows: [&[T]; NR] =
                                std::array::from_fn(|j| &w[(p * NR + j) * k + k0..][..kc]);
                            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                                for (d, row) in dst.iter_mut().zip(&rows) {
                                    *d = row[kk];
                                }
                            }
                            continue;
                        }
                        // The narrow last panel: each weight row in order; the writes stay within
                        // the panel's `kc * w` values (a few KiB, in L1).
                        for j in 0..width {
                            let row = &w[(p * NR + j) * k + k0..][..kc];
                            for (kk, &v) in row.iter().enumerate() {
                                panel[kk * width + j] = v;
                            }
                        }
                    }
                });
        }
        PackedB {
            k,
            n,
            values,
            #[cfg(target_arch = "x86_64")]
            amx_tiles: OnceLock::new(),
        }
    }

    /// Whether the values are held only as AMX tiles ([`PackedB::tiles_only`]): then only the AMX
    /// kernels read them.
    pub(crate) fn is_tiles_only(&self) -> bool {
        self.values.len() < self.n * self.k
    }

    /// `data()` for the kernels that read the panels.
    fn panels_data(&self) -> &[T] {
        assert!(
            !self.is_tiles_only(),
            "PackedB: a {} x {} weight held only as AMX tiles read as panels",
            self.k,
            self.n
        );
        self.data()
    }

    /// The row-major `[n, k]` matrix it was packed from (exact).
    pub(crate) fn to_rows(&self) -> Vec<T> {
        let (n, k) = (self.n, self.k);
        #[cfg(target_arch = "x86_64")]
        if self.is_tiles_only() {
            let tiles = self
                .amx_tiles
                .get()
                .expect("a tiles-only weight holds its tiles");
            return super::amx::rows_from_tiles(tiles, n, k)
                .into_iter()
                .map(T::from_bf16_bits)
                .collect();
        }
        let mut w = vec![T::ZERO; n * k];
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
    fn data(&self) -> &[T] {
        &self.values[..self.n * self.k]
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

    /// Bytes of the AMX tiles, once a bf16 linear has made them or if the weight is held only as tiles
    /// (else 0).
    pub(crate) fn tile_bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            self.amx_tiles.get().map_or(0, |t| 2 * t.len())
        }
        #[cfg(not(target_arch = "x86_64"))]
        0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (the values, and the padding of the last cache line).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.values.held_bytes()
    }

    /// This matrix as a [`PackedRef`] (what [`BSource::Packed`](super::BSource::Packed) takes).
    pub(crate) fn packed_ref(&self) -> PackedRef<'_> {
        T::wrap(self)
    }

    /// Rows `k0 .. k0 + kc` (one depth pass) of `count` full panels from column `j` (a multiple of
    /// 16), one after the other.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
    fn full_panels(&self, j: usize, k0: usize, kc: usize, count: usize) -> &[T] {
        assert!(
            j + count * NR <= self.n,
            "full_panels: columns {j}.. past {}",
            self.n
        );
        &self.panels_data()[k0 * self.n + j * kc..][..count * NR * kc]
    }

    /// Rows `k0 .. k0 + kc` (one depth pass) of the panel starting at column `j` (a multiple of 16),
    /// and its width.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
    fn panel(&self, j: usize, k0: usize, kc: usize) -> (&[T], usize) {
        let width = NR.min(self.n - j);
        (
            &self.panels_data()[k0 * self.n + j * kc..][..kc * width],
            width,
        )
    }
}

#[cfg(target_arch = "x86_64")]
impl PackedB<bf16> {
    /// B = `w^T` for `w` row-major `[n, k]`, held only as the AMX tiles the bf16 linears read (no
    /// panels): under bf16 compute on AMX every linear of a weight like this runs on the tiles or,
    /// with fewer than 32 rows, on [`amx::few_rows`](super::amx), so the panels would be a second
    /// copy that nothing reads.
    pub(crate) fn tiles_only(w: &[bf16], n: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "PackedB::tiles_only: {n} x {k} from {} values",
            w.len()
        );
        let tiles = super::amx::tiles_from_rows(w, n, k);
        PackedB {
            k,
            n,
            values: AlignedVec::new(),
            amx_tiles: OnceLock::from(tiles),
        }
    }
}

/// A packed B of either value type: what the GEMM and the executor pass around, so that one code
/// path serves f32 and bf16 weight storage.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PackedRef<'a> {
    F32(&'a PackedB<f32>),
    Bf16(&'a PackedB<bf16>),
}

/// Some packed values, with their type.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
#[derive(Clone, Copy)]
pub(super) enum Values<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
impl Values<'_> {
    /// Copies a panel of width `w < NR` (`kc` rows of `w`) into full-width f32 rows, zero-padded,
    /// widening bf16 (exact): edge panels then go through the f32 kernel.
    pub(super) fn widen_panel(self, w: usize, kc: usize, buf: &mut [f32]) {
        fn rows<T: Elem>(src: &[T], w: usize, kc: usize, buf: &mut [f32]) {
            for (dst, src) in buf[..kc * NR].chunks_exact_mut(NR).zip(src.chunks_exact(w)) {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s.widen();
                }
                dst[w..].fill(0.0);
            }
        }
        match self {
            Values::F32(v) => rows(v, w, kc, buf),
            Values::Bf16(v) => rows(v, w, kc, buf),
        }
    }
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
impl<'a> PackedRef<'a> {
    /// Rows of B (the linear's input features).
    pub(crate) fn k(self) -> usize {
        match self {
            PackedRef::F32(p) => p.k,
            PackedRef::Bf16(p) => p.k,
        }
    }

    /// Columns of B (the linear's output features).
    pub(crate) fn n(self) -> usize {
        match self {
            PackedRef::F32(p) => p.n,
            PackedRef::Bf16(p) => p.n,
        }
    }

    /// The row-major `[n, k]` matrix it was packed from, as f32 (exact).
    pub(crate) fn to_f32_rows(self) -> Vec<f32> {
        match self {
            PackedRef::F32(p) => p.to_rows(),
            PackedRef::Bf16(p) => p.to_rows().into_iter().map(widen1).collect(),
        }
    }

    /// See [`PackedB::full_panels`].
    pub(super) fn full_panels(self, j: usize, k0: usize, kc: usize, count: usize) -> Values<'a> {
        match self {
            PackedRef::F32(p) => Values::F32(p.full_panels(j, k0, kc, count)),
            PackedRef::Bf16(p) => Values::Bf16(p.full_panels(j, k0, kc, count)),
        }
    }

    /// Whether the values are held only as AMX tiles ([`PackedB::tiles_only`]).
    pub(crate) fn is_tiles_only(self) -> bool {
        match self {
            PackedRef::F32(p) => p.is_tiles_only(),
            PackedRef::Bf16(p) => p.is_tiles_only(),
        }
    }

    /// The AMX tile copy of these values, made by `make` on the first call and kept. `make` runs
    /// outside the cell's lock: it runs rayon tasks, and a thread waiting in them may take another
    /// task that asks for the same tiles (a parallel guidance branch), which would wait on itself
    /// inside `get_or_init`. Two threads may then both make the copy; the first stored is kept.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn amx_tiles(self, make: impl FnOnce() -> AlignedVec<u16>) -> &'a [u16] {
        let cell = match self {
            PackedRef::F32(p) => &p.amx_tiles,
            PackedRef::Bf16(p) => &p.amx_tiles,
        };
        if let Some(tiles) = cell.get() {
            return tiles;
        }
        let _ = cell.set(make());
        cell.get().expect("the tile copy was just stored")
    }

    /// See [`PackedB::panel`].
    pub(super) fn panel(self, j: usize, k0: usize, kc: usize) -> (Values<'a>, usize) {
        match self {
            PackedRef::F32(p) => {
                let (v, w) = p.panel(j, k0, kc);
                (Values::F32(v), w)
            }
            PackedRef::Bf16(p) => {
                let (v, w) = p.panel(j, k0, kc);
                (Values::Bf16(v), w)
            }
        }
    }
}

//! bf16 weights widened to f32 where a kernel reads them, into per-thread scratch buffers. Widening is
//! exact (a bf16 is the top half of an f32), so a kernel fed widened values computes exactly what it
//! computes on the same weights held as f32.

use super::simd::{at_level, level, Level};
use half::bf16;
use rayon::prelude::*;
use std::cell::Cell;

/// Below this many values a widen runs on the calling thread.
const PAR_WIDEN: usize = 1 << 16;

/// The f32 of equal value. A NaN gets its quiet bit set, as `bf16::to_f32` does, so the bits equal the
/// loader's f32 conversion; written without a branch so that loops over it vectorize.
#[inline(always)]
pub(crate) fn widen1(b: bf16) -> f32 {
    let bits = b.to_bits();
    let quiet = (((bits & 0x7FFF) > 0x7F80) as u16) << 6;
    f32::from_bits(((bits | quiet) as u32) << 16)
}

#[inline(always)]
fn widen_plain(src: &[bf16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = widen1(s);
    }
}

at_level!(widen_at = widen_plain(src: &[bf16], dst: &mut [f32]) -> ());

/// `dst[i] = src[i]` widened on the calling thread, at the CPU's vector width (AVX2 measured about
/// 1.7x the baseline x86-64 build on cached data; the packed GEMM widens panels it reuses with it).
pub(crate) fn widen_serial(src: &[bf16], dst: &mut [f32]) {
    widen_at(level(), src, dst)
}

/// `dst[i] = src[i]` widened; the two have equal lengths.
pub(crate) fn widen_into(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen: length mismatch");
    if dst.len() < 2 * PAR_WIDEN {
        widen_serial(src, dst);
    } else {
        dst.par_chunks_mut(PAR_WIDEN)
            .zip(src.par_chunks(PAR_WIDEN))
            .for_each(|(d, s)| widen_serial(s, d));
    }
}

/// Per-thread scratch buffers, one per use that can be live at the same time.
#[derive(Clone, Copy)]
pub(crate) enum Scratch {
    /// A widened block of a weight.
    Weight = 0,
    /// A kernel's output block before it is copied into place.
    Out = 1,
}

thread_local! {
    static SCRATCH: [Cell<Vec<f32>>; 2] = const { [Cell::new(Vec::new()), Cell::new(Vec::new())] };
}

/// Runs `f` on this thread's `which` buffer, `len` values long (contents unspecified). The buffer is
/// kept for the next call, so a kernel called per node does not pay for allocating and faulting in
/// megabytes each time; it is taken out of its cell rather than borrowed because rayon can run another
/// task on this thread while `f` waits inside gemm, and that task gets a fresh buffer instead of a
/// borrow panic.
pub(crate) fn with_scratch<R>(which: Scratch, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| s[which as usize].take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| {
        let cell = &s[which as usize];
        let other = cell.take();
        cell.set(if other.len() > buf.len() { other } else { buf });
    });
    r
}

/// A weight element type an embedding lookup copies rows from.
pub(crate) trait Widen: Copy + Send + Sync {
    fn widen_row(src: &[Self], dst: &mut [f32]);
}

impl Widen for f32 {
    fn widen_row(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Widen for bf16 {
    fn widen_row(src: &[bf16], dst: &mut [f32]) {
        widen_serial(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-identical results rest on this: every bf16, NaN payloads included.
    #[test]
    fn widening_matches_half_for_every_bf16() {
        for bits in 0..=u16::MAX {
            let b = bf16::from_bits(bits);
            assert_eq!(widen1(b).to_bits(), b.to_f32().to_bits(), "{bits:#06x}");
        }
    }

    #[test]
    fn scratch_survives_nesting() {
        let v = with_scratch(Scratch::Weight, 4, |a| {
            a.fill(1.0);
            let inner = with_scratch(Scratch::Weight, 8, |b| {
                b.fill(2.0);
                b.iter().sum::<f32>()
            });
            a.iter().sum::<f32>() + inner
        });
        assert_eq!(v, 20.0);
    }
}

//! Buffers that start on a 64-byte cache line, for the AMX kernels, the vector kernels' packed
//! operands and the packed weights: a tile is 16 rows of 64 bytes, and a TILELOADD or TILESTORED row (or a 64-byte vector
//! load) that straddles two lines touches both. A `Vec<u16>` from the
//! allocator starts wherever the allocator puts it: the tile copies of the mid preset's linear
//! weights all started 16 bytes past a line. With the weights' tiles, the packed activations, the
//! attention's K, V, Q, P and score buffers and the convolution's planes on lines, the mid preset's
//! 1024x1024 gen step (bf16, `--profile`, two alternating runs each) went from 692-709 to 556-558 ms
//! of linears and from 900 to 692-714 ms of attention.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// One cache line of storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Values any bit pattern of which is one (all zeros included), of a size that divides 64.
///
/// # Safety
/// Implement only for such plain types.
pub(crate) unsafe trait Plain: Copy {}
// SAFETY: plain numbers, 2 and 4 bytes.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}
// SAFETY: `half::bf16` is `repr(transparent)` over a u16.
unsafe impl Plain for half::bf16 {}

/// A growable run of `T` starting on a cache line.
pub(crate) struct AlignedVec<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _values: PhantomData<T>,
}

impl<T: Plain> AlignedVec<T> {
    /// Empty (allocates nothing).
    pub(crate) const fn new() -> Self {
        AlignedVec {
            lines: Vec::new(),
            len: 0,
            _values: PhantomData,
        }
    }

    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Self {
        let mut v = Self::new();
        v.sized(len);
        v
    }

    /// The first `len` values, grown with zeros if it holds fewer (values already held keep what
    /// they were).
    pub(crate) fn sized(&mut self, len: usize) -> &mut [T] {
        let lines = (len * std::mem::size_of::<T>()).div_ceil(64);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0; 64]));
        }
        self.len = self.len.max(len);
        &mut self[..len]
    }

    /// Bytes allocated: the values and the padding of the last line.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        64 * self.lines.len()
    }
}

impl<T: Plain> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Plain> Deref for AlignedVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds at least `len` values' bytes (`sized`), initialized (lines start as
        // zeros, a valid `T`), on a 64-byte boundary (so aligned for `T`, whose size divides 64).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, borrowed mutably for as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_grows_with_zeros_and_keeps_its_values() {
        let mut v = AlignedVec::<u16>::zeroed(33);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        assert!(v.iter().all(|&x| x == 0) && v.len() == 33);
        v[32] = 7;
        let grown = v.sized(1000);
        assert_eq!((grown.len(), grown[32], grown[999]), (1000, 7, 0));
        assert_eq!(v.as_ptr() as usize % 64, 0);
        assert_eq!(v.sized(10).len(), 10);
        assert_eq!(v.len(), 1000);
    }
}

//! Seeded test values for the kernels' unit tests: the same sequence on every machine.

/// `n` values in [-1, 1) from a xorshift generator seeded with `seed`.
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A NaN-filled output of `len` values, as `(buffer, start)`: it starts `misalign` values past a
/// 64-byte boundary (0: on one, as the arena's tensors are, so kernels may stream whole lines into
/// it; 1: off every line).
#[cfg(target_arch = "x86_64")] // used by the AMX kernels' tests
pub(crate) fn poisoned(len: usize, misalign: usize) -> (Vec<f32>, usize) {
    let buf = vec![f32::NAN; len + 32];
    let start = buf.as_ptr().align_offset(64) + misalign;
    (buf, start)
}

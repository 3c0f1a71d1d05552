//! A backend's ceilings, measured in the same run as a benchmark so that its percentages compare like
//! with like: compute (FLOP/s) and memory (a large copy, bytes read plus bytes written per second).
//! CUDA measures a large cuBLASLt GEMM and a device-to-device copy (`cuda::ceilings`); the CPU the
//! peak of its arithmetic unit (AMX tiles or vector FMAs) and a copy over every thread
//! (`cpu::ceilings`). Inputs are random, never zeros.

/// Measured ceilings, and what was measured for each.
#[derive(Debug, Clone, PartialEq)]
pub struct Ceilings {
    /// The compute ceiling (named for the GPU's, a GEMM's: `2 n^3` FLOPs over the best time).
    pub gemm_flops_per_s: f64,
    /// The copy's rate, counted as read + write.
    pub copy_bytes_per_s: f64,
    /// What the compute ceiling was, for the printed report (`"bf16 GEMM 8192^3 (cuBLASLt)"`).
    pub gemm: String,
    /// What the copy was (`"device copy 1 GiB"`).
    pub copy: String,
}

/// Random values in [-1, 1) (a small xorshift; quality is irrelevant here, only that they are not
/// zeros).
pub(crate) fn random_values(n: usize, mut seed: u64) -> impl Iterator<Item = f32> {
    (0..n).map(move |_| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

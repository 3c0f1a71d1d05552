//! The CPU's ceilings for `hbridge bench` ([`Ceilings`]):
//! - compute: the peak of the unit the compute-bound ops run on, every thread at once, on values
//!   already in registers: TDPBF16PS on resident tiles under `--cpu-compute bf16` on AMX, else twelve
//!   independent chains of vector FMAs (AVX-512, or AVX2). A CPU without either (another
//!   architecture) is held to this backend's own GEMM on a square product instead. (The CUDA backend's
//!   ceiling is a cuBLASLt GEMM, a practical one; on the CPU this backend's linears are the best
//!   GEMM there is, and some shapes beat a square one, so the CPU is held to its hardware.)
//! - memory: a copy over every thread (bytes read plus bytes written per second).
//!
//! Each grows until one run takes long enough to time or reaches its largest size, so that a slow or
//! emulated CPU (the test suite under qemu) spends a bounded time. On the build machine the copy
//! reaches its largest size: 1 GiB of traffic, more than its 480 MiB last-level cache holds.

use super::ops::linear;
use super::weight_data::PackedWeight;
use super::MatmulMode;
use crate::ceilings::{random_values, Ceilings};
use half::bf16;
use rayon::prelude::*;
use std::time::Instant;

/// The peak loops double while one run takes less than this.
const PEAK_GROW_BELOW_S: f64 = 0.05;
const PEAK_ROUNDS_MIN: usize = 1 << 12;
const PEAK_ROUNDS_MAX: usize = 1 << 28;
/// The GEMM doubles its side while one run takes less than this (the next would take about 8x).
const GEMM_GROW_BELOW_S: f64 = 0.0125;
const GEMM_SIDE_MIN: usize = 256;
const GEMM_SIDE_MAX: usize = 4096;
/// The copy doubles while one run takes less than this.
const COPY_GROW_BELOW_S: f64 = 0.1;
const COPY_BYTES_MIN: usize = 16 << 20;
/// Bytes copied at most (twice that moved, and held).
const COPY_BYTES_MAX: usize = 512 << 20;

/// Best of `iters` timings of `f` after one untimed call, in seconds.
fn best_time(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// One square GEMM of side `n` through the backend's linear: a closure running `y = x w^T`.
fn square_gemm(n: usize) -> impl FnMut() {
    let x: Vec<f32> = random_values(n * n, 0x9e37_79b9_7f4a_7c15).collect();
    let w: Vec<bf16> = random_values(n * n, 0x2545_f491_4f6c_dd1d)
        .map(bf16::from_f32)
        .collect();
    let mut y = vec![0f32; n * n];
    let packed = super::ops::packed_gemm::available().then(|| PackedWeight::from_rows(&w, n, n));
    let rows: Vec<f32> = if packed.is_some() {
        Vec::new()
    } else {
        w.iter().map(|v| v.to_f32()).collect()
    };
    move || match &packed {
        Some(p) => linear::linear_packed(&x, n, n, p.packed().packed_ref(), None, &mut y),
        None => linear::linear(&x, n, n, &rows, n, None, &mut y),
    }
}

/// `src` copied into `dst` in chunks over the thread pool.
fn copy(src: &[f32], dst: &mut [f32]) {
    let chunk = (src.len() / (8 * rayon::current_num_threads())).max(1 << 14);
    dst.par_chunks_mut(chunk)
        .zip(src.par_chunks(chunk))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// A peak loop (rounds -> a value to keep, so that nothing is optimized away), its FLOPs per round
/// on one thread, and its name.
type PeakKernel = (fn(usize) -> f64, f64, &'static str);

/// The compute peak on every thread at once and what it was, if this CPU has a unit to measure.
fn compute_peak() -> Option<(f64, String)> {
    let (kernel, flops_per_round, what) = peak_kernel()?;
    let threads = rayon::current_num_threads();
    // One run: every thread `rounds` rounds at once, timed from the first start to the last end.
    let run = |rounds: usize| {
        let t = Instant::now();
        let sink: f64 = rayon::broadcast(|_| kernel(rounds)).into_iter().sum();
        std::hint::black_box(sink);
        t.elapsed().as_secs_f64()
    };
    let mut rounds = PEAK_ROUNDS_MIN;
    let mut secs = run(rounds);
    while secs < PEAK_GROW_BELOW_S && rounds < PEAK_ROUNDS_MAX {
        rounds *= 2;
        secs = run(rounds);
    }
    secs = (0..2).map(|_| run(rounds)).fold(secs, f64::min);
    let rate = flops_per_round * (rounds * threads) as f64 / secs;
    Some((rate, format!("{what} peak over {threads} threads")))
}

/// The peak loop for the arithmetic the compute-bound ops run in.
#[cfg(target_arch = "x86_64")]
fn peak_kernel() -> Option<PeakKernel> {
    use std::arch::is_x86_feature_detected as has;
    if MatmulMode::current() == MatmulMode::Bf16Amx {
        // Four TDPBF16PS of 16 x 16 outputs over 32 depths.
        Some((
            peak::amx,
            4.0 * 16.0 * 16.0 * 32.0 * 2.0,
            "bf16 TDPBF16PS (AMX)",
        ))
    } else if has!("avx512f") {
        Some((peak::avx512, 12.0 * 16.0 * 2.0, "f32 FMA (AVX-512)"))
    } else if has!("avx2") && has!("fma") {
        Some((peak::avx2, 12.0 * 8.0 * 2.0, "f32 FMA (AVX2)"))
    } else {
        None
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn peak_kernel() -> Option<PeakKernel> {
    None
}

/// The peak loops: nothing but the unit's arithmetic on registers.
#[cfg(target_arch = "x86_64")]
mod peak {
    use crate::cpu::ops::amx_tiles;
    use std::arch::x86_64::*;

    /// Twelve independent FMA chains (more than the FMA latency times the FMA ports), on values
    /// that stay finite and nonzero.
    macro_rules! chains {
        ($name:ident, $feature:literal, $vec:ty, $set1:ident, $fmadd:ident, $store:ident, $lanes:literal) => {
            pub(super) fn $name(rounds: usize) -> f64 {
                #[target_feature(enable = $feature)]
                unsafe fn run(rounds: usize) -> f64 {
                    let (a, b) = ($set1(0.999_9), $set1(1e-4));
                    let mut acc: [$vec; 12] = std::array::from_fn(|i| $set1(0.5 + i as f32 / 16.0));
                    for _ in 0..rounds {
                        for x in acc.iter_mut() {
                            *x = $fmadd(*x, a, b);
                        }
                    }
                    let mut out = [0f32; $lanes];
                    let total = acc
                        .iter()
                        .fold($set1(0.0), |s, &x| $fmadd(x, $set1(1.0), s));
                    // SAFETY: `out` holds one vector.
                    unsafe { $store(out.as_mut_ptr(), total) };
                    out.iter().map(|&v| v as f64).sum()
                }
                // SAFETY: `peak_kernel` picked this loop only where the CPU has the feature.
                unsafe { run(rounds) }
            }
        };
    }
    chains!(
        avx512,
        "avx512f",
        __m512,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps,
        16
    );
    chains!(
        avx2,
        "avx2,fma",
        __m256,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps,
        8
    );

    /// `rounds` x four TDPBF16PS on tiles loaded with random bf16 values.
    pub(super) fn amx(rounds: usize) -> f64 {
        let operands: Vec<u16> = crate::ceilings::random_values(4 * amx_tiles::TILE, 0x5851_f42d)
            .map(amx_tiles::round_bf16)
            .collect();
        let mut c = vec![0f32; 4 * 256];
        let p = operands.as_ptr();
        // SAFETY: MatmulMode::Bf16Amx means AMX-BF16 is usable by this process; the loads read the
        // four whole tiles of `operands`, the store writes the four C tiles into `c` (32 x 32 f32).
        unsafe {
            amx_tiles::configure();
            amx_tiles::zero_c();
            amx_tiles::product(
                p,
                p.add(amx_tiles::TILE),
                p.add(2 * amx_tiles::TILE),
                p.add(3 * amx_tiles::TILE),
            );
            amx_tiles::products_in_place(rounds);
            amx_tiles::store_c(c.as_mut_ptr(), 32);
            amx_tiles::release();
        }
        c.iter().map(|&v| v as f64).sum()
    }
}

/// Measures both ceilings (about a second on the build machine; holds up to 1 GiB for the copy).
pub fn measure() -> Ceilings {
    let (gemm_flops_per_s, gemm) = compute_peak().unwrap_or_else(square_gemm_rate);

    let mut bytes = COPY_BYTES_MIN;
    let copy_s = loop {
        let len = bytes / 4;
        // Random values, a 1 MiB block of them repeated (generating them all costs more than the copy).
        let block: Vec<f32> = random_values(1 << 18, 0x853c_49e6_748f_ea9b).collect();
        let src: Vec<f32> = block.iter().copied().cycle().take(len).collect();
        // Faulted in before timing: the first write to fresh pages costs more than the copy.
        let mut dst = vec![1f32; len];
        let t = best_time(1, || copy(&src, &mut dst));
        if t >= COPY_GROW_BELOW_S || bytes >= COPY_BYTES_MAX {
            break t.min(best_time(3, || copy(&src, &mut dst)));
        }
        bytes *= 2;
    };
    Ceilings {
        gemm_flops_per_s,
        copy_bytes_per_s: 2.0 * bytes as f64 / copy_s,
        gemm,
        copy: format!(
            "host copy {} MiB over {} threads",
            bytes >> 20,
            rayon::current_num_threads()
        ),
    }
}

/// This backend's linear on the largest square product that runs quickly enough, and what it was.
fn square_gemm_rate() -> (f64, String) {
    let mut n = GEMM_SIDE_MIN;
    let mut gemm_s = best_time(1, square_gemm(n));
    while gemm_s < GEMM_GROW_BELOW_S && n < GEMM_SIDE_MAX {
        n *= 2;
        gemm_s = best_time(1, square_gemm(n));
    }
    gemm_s = gemm_s.min(best_time(3, square_gemm(n)));
    let arithmetic = match MatmulMode::current() {
        MatmulMode::Bf16Amx => "bf16 on AMX",
        _ => "f32",
    };
    (
        2.0 * (n as f64).powi(3) / gemm_s,
        format!("CPU GEMM {n}^3 ({arithmetic}, this backend's linear)"),
    )
}

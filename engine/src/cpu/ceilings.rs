//! The CPU's practical ceilings for `hbridge bench` ([`Ceilings`]), as the CUDA backend measures
//! cuBLASLt and a device copy:
//! - this backend's own GEMM on a square product, in the arithmetic its linears run in (f32 by
//!   default, bf16 on AMX under `--cpu-compute bf16`), its weight held as a checkpoint's bf16 linear
//!   weights are (packed, where the packed GEMM runs);
//! - a copy over every thread (bytes read plus bytes written per second).
//!
//! Each grows until one run takes long enough to time or reaches its largest size, so that a slow or
//! emulated CPU (the test suite under qemu) spends a bounded time. On the build machine both reach
//! their largest size: the copy's 1 GiB of traffic is more than its 480 MiB last-level cache holds.

use super::ops::linear;
use super::weight_data::PackedWeight;
use super::MatmulMode;
use crate::ceilings::{random_values, Ceilings};
use half::bf16;
use rayon::prelude::*;
use std::time::Instant;

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

/// Measures both ceilings (about a second on the build machine; holds up to 1 GiB for the copy and
/// 200 MB for the GEMM while it runs).
pub fn measure() -> Ceilings {
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
        gemm_flops_per_s: 2.0 * (n as f64).powi(3) / gemm_s,
        copy_bytes_per_s: 2.0 * bytes as f64 / copy_s,
        gemm: format!("CPU GEMM {n}^3 ({arithmetic}, this backend's linear)"),
        copy: format!(
            "host copy {} MiB over {} threads",
            bytes >> 20,
            rayon::current_num_threads()
        ),
    }
}

//! The GPU's practical ceilings ([`Ceilings`]): a large bf16 GEMM through cuBLASLt (FLOP/s) and a
//! large device-to-device copy (bytes read plus bytes written per second). Inputs are random, never
//! zeros (sparse-aware hardware and compressed memory make zeros flatter than real data).

use super::buffer::upload_bits;
use super::context::Gpu;
use super::error::{CudaError, CudaResult};
use super::ops::gemm::{gemm, GemmArgs, GemmShape};
use std::time::Instant;

pub use crate::ceilings::Ceilings;

pub const GEMM_SIZE: usize = 8192;
pub const COPY_BYTES: usize = 1 << 30;

/// Random bf16 bits in [-1, 1) without NaNs.
fn random_bits(n: usize, seed: u64) -> Vec<u16> {
    crate::ceilings::random_values(n, seed)
        .map(|v| half::bf16::from_f32(v).to_bits())
        .collect()
}

/// Best of `iters` timings of `f` after `warmup` untimed calls, in seconds (host clock around a
/// synchronized stream: the calls are milliseconds long, so the sync costs nothing measurable).
fn best_time(
    gpu: &Gpu,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> CudaResult<()>,
) -> CudaResult<f64> {
    for _ in 0..warmup {
        f()?;
    }
    gpu.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        gpu.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Measures both ceilings (about a second; allocates ~1.4 GB for the copy and ~400 MB for the GEMM).
pub fn measure(gpu: &Gpu) -> CudaResult<Ceilings> {
    let n = GEMM_SIZE;
    let a = upload_bits(gpu, &random_bits(n * n, 0x9e37_79b9_7f4a_7c15))?;
    let b = upload_bits(gpu, &random_bits(n * n, 0x2545_f491_4f6c_dd1d))?;
    let c = gpu.alloc_zeros::<u16>(n * n)?;
    let args = GemmArgs {
        shape: GemmShape {
            m: n,
            n,
            k: n,
            a_trans: false,
            lda: n,
            b_trans: true,
            ldb: n,
            ldc: n,
        },
        a: a.ptr(gpu),
        b: b.ptr(gpu),
        c: super::dev_ptr(&c, gpu.stream()),
        bias: None,
        accumulate: false,
    };
    let gemm_s = best_time(gpu, 3, 10, || gemm(gpu, &args))?;

    let elems = COPY_BYTES / 2;
    let src = upload_bits(gpu, &random_bits(elems, 0x853c_49e6_748f_ea9b))?;
    let dst = gpu.alloc_zeros::<u16>(elems)?;
    let (s, d) = (src.ptr(gpu), super::dev_ptr(&dst, gpu.stream()));
    let copy_s = best_time(gpu, 2, 10, || {
        // SAFETY: both allocations hold `elems` u16 values; the copy is ordered on the GPU's stream.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                d.0,
                s.0,
                COPY_BYTES,
                gpu.stream().cu_stream(),
            )
        }
        .map_err(|e| CudaError::driver("copying for the bandwidth ceiling", e))
    })?;
    Ok(Ceilings {
        gemm_flops_per_s: 2.0 * (n as f64).powi(3) / gemm_s,
        copy_bytes_per_s: 2.0 * COPY_BYTES as f64 / copy_s,
        gemm: format!("bf16 GEMM {n}^3 (cuBLASLt)"),
        copy: format!("device copy {} GiB", COPY_BYTES >> 30),
    })
}

//! Shared by the kernel tests: the GPU (or a skip), fresh random inputs, and error measures.

#![allow(dead_code)]

use hbridge_engine::cuda::buffer::{download_bf16, poison_bf16, upload_bf16, DeviceBf16};
use hbridge_engine::cuda::{DevPtr, Gpu};
use std::sync::{Arc, OnceLock};

/// bf16 paths must land within this relative L2 error of the f64 reference (DESIGN.md section 8).
pub const BF16_TOL: f64 = 1e-2;
/// f32 paths.
pub const F32_TOL: f64 = 1e-5;

fn required() -> bool {
    std::env::var("HBRIDGE_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The GPU, opened once per test binary; `None` (after printing SKIPPED) on a machine without one.
pub fn gpu(test: &str) -> Option<Arc<Gpu>> {
    static GPU: OnceLock<Result<Arc<Gpu>, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::new(0).map_err(|e| e.to_string())) {
        Ok(g) => Some(g.clone()),
        Err(e) => {
            assert!(
                !required(),
                "HBRIDGE_REQUIRE_GPU=1 but {test} found no GPU: {e}"
            );
            eprintln!("SKIPPED {test}: no GPU on this machine ({e}); runs on the GPU machine via scripts/gpu-check.sh");
            None
        }
    }
}

/// SplitMix64: a fresh seed per test (printed so a failure can be replayed with HBRIDGE_TEST_SEED).
pub struct Rng(u64);

impl Rng {
    pub fn fresh(test: &str) -> Rng {
        let seed = std::env::var("HBRIDGE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1);
                t ^ (test.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            });
        println!("{test}: seed {seed}");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller), rounded to bf16 so the reference sees what the GPU sees.
    pub fn normal_bf16(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1 = self.uniform().max(1e-300);
                let u2 = self.uniform();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                round_bf16((z * std) as f32)
            })
            .collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub fn round_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

/// `||got - want|| / ||want||`; infinite when `got` has a NaN (an unwritten, poisoned element) or the
/// lengths differ.
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - w).powi(2);
        den += w * w;
    }
    if den == 0.0 {
        return num.sqrt();
    }
    (num / den).sqrt()
}

/// Asserts `rel_l2(got, want) <= tol`, naming the case.
pub fn check(case: &str, got: &[f32], want: &[f64], tol: f64) {
    let err = rel_l2(got, want);
    println!("{case}: rel L2 {err:.3e} (tol {tol:.0e})");
    assert!(err <= tol, "{case}: rel L2 error {err:.3e} > {tol:.0e}");
}

/// Uploads f32 values as bf16.
pub fn up(gpu: &Gpu, v: &[f32]) -> DeviceBf16 {
    upload_bf16(gpu, v).expect("upload")
}

/// A poisoned bf16 output buffer of `n` elements.
pub fn out_buffer(gpu: &Gpu, n: usize) -> DeviceBf16 {
    let buf = up(gpu, &vec![0.0; n]);
    poison_bf16(gpu, buf.ptr(gpu), n).expect("poison");
    buf
}

/// Downloads `n` bf16 values as f32 (synchronizes, then checks the stream for a launch error).
pub fn down(gpu: &Gpu, p: DevPtr, n: usize) -> Vec<f32> {
    download_bf16(gpu, p, n).expect("download")
}

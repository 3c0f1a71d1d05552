//! Sinusoidal timestep features (kernels/cuda/timestep.cu).

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::unsupported;

/// `t` f32 `[1]` on the device (so a captured graph reads the step's value) -> `out` bf16 `[2*half]` =
/// `[cos e, sin e]`, `e_k = scale * t * exp(-ln(10000) * k / half)`, computed in f64.
pub fn timestep_features(gpu: &Gpu, t: DevPtr, out: DevPtr, half: usize, scale: f64) -> CudaResult<()> {
    let _ = (gpu, t, out, half, scale);
    Err(unsupported("timestep_features", "not implemented yet"))
}

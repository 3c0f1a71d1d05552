//! Sinusoidal timestep features (kernels/cuda/timestep.cu).

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::elementwise::{launch, to_i32};
use cudarc::driver::LaunchConfig;

/// `t` f32 `[1]` on the device (so a captured graph reads the step's value) -> `out` bf16 `[2*half]` =
/// `[cos e, sin e]`, `e_k = scale * t * exp(-ln(10000) * k / half)`, computed in f64.
pub fn timestep_features(
    gpu: &Gpu,
    t: DevPtr,
    out: DevPtr,
    half: usize,
    scale: f64,
) -> CudaResult<()> {
    if half == 0 {
        return Ok(());
    }
    let half_ = to_i32("timestep_features", "half", half)?;
    let cfg = LaunchConfig {
        grid_dim: (half.div_ceil(128).min(1024) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let (tp, op) = (t.0, out.0);
    launch!(
        gpu,
        "timestep",
        "timestep_features",
        cfg,
        [&tp, &op, &half_, &scale]
    )
}

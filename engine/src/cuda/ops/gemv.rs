//! Few-row linears (kernels/cuda/gemv.cu): `y [n, out] = x [n, in] @ w [out, in]^T (+ bias)` for
//! `n <= 4`, the und decode step's products, as one streaming pass over the weights instead of a
//! cuBLASLt GEMM at M = 1.
//!
//! Opt-in until checked on a GPU: `HBRIDGE_GEMV=1` routes qualifying `Op::Linear` launches here (see
//! [`gemm::linear`](super::gemm::linear)); the GPU tests and kernel benches call [`gemv`] directly.

use super::super::context::Gpu;
use super::super::error::CudaResult;
use super::elementwise::{launch, to_i32};
use super::gemm::LinearArgs;
use super::unsupported;
use cudarc::driver::LaunchConfig;
use std::sync::OnceLock;

/// Most rows of x one launch takes.
pub const MAX_ROWS: usize = 4;
/// Environment variable that routes qualifying linears here.
pub const ENV: &str = "HBRIDGE_GEMV";

/// Output features per block (gemv.cu's GEMV_WARPS x GEMV_ROWS).
const FEATURES_PER_BLOCK: usize = 8 * 2;

/// Whether `args` fits the kernel: 1 to [`MAX_ROWS`] rows, `in_features` a multiple of 8, x, w (and so
/// every weight row) 16-byte aligned. The bias and y need only bf16 alignment.
pub fn applies(args: &LinearArgs) -> bool {
    (1..=MAX_ROWS).contains(&args.n)
        && args.in_features > 0
        && args.in_features % 8 == 0
        && args.x.0 % 16 == 0
        && args.w.0 % 16 == 0
        && args.y.0 % 2 == 0
        && args.bias.is_none_or(|b| b.0 % 2 == 0)
}

/// Whether `HBRIDGE_GEMV=1` asks `gemm::linear` to use [`gemv`] where it [`applies`].
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(ENV).is_ok_and(|v| v == "1"))
}

/// Launches `gemv_n{n}`; an error when `args` does not fit (see [`applies`]).
pub fn gemv(gpu: &Gpu, args: &LinearArgs) -> CudaResult<()> {
    if args.out_features == 0 {
        return Ok(());
    }
    if !applies(args) {
        return Err(unsupported(
            "gemv",
            format!(
                "{} rows x {} in features (1 to {MAX_ROWS} rows, in a multiple of 8, x and w 16-byte aligned)",
                args.n, args.in_features
            ),
        ));
    }
    let in_ = to_i32("gemv", "in_features", args.in_features)?;
    let out = to_i32("gemv", "out_features", args.out_features)?;
    let cfg = LaunchConfig {
        grid_dim: (args.out_features.div_ceil(FEATURES_PER_BLOCK) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (x, w, y) = (args.x.0, args.w.0, args.y.0);
    let bias = args.bias.map_or(0u64, |b| b.0);
    let entry = format!("gemv_n{}", args.n);
    launch!(gpu, "gemv", &entry, cfg, [&x, &w, &bias, &y, &in_, &out])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::DevPtr;

    fn args(n: usize, inp: usize) -> LinearArgs {
        LinearArgs {
            x: DevPtr(0x1000),
            w: DevPtr(0x2000),
            bias: Some(DevPtr(0x3002)),
            y: DevPtr(0x4002),
            n,
            in_features: inp,
            out_features: 100,
        }
    }

    #[test]
    fn takes_only_what_the_kernel_handles() {
        assert!(applies(&args(1, 3584)));
        assert!(applies(&args(4, 8)));
        assert!(!applies(&args(0, 3584)));
        assert!(!applies(&args(5, 3584)));
        assert!(!applies(&args(1, 3580)));
        let mut a = args(1, 3584);
        a.x = DevPtr(0x1008);
        assert!(!applies(&a));
        let mut a = args(1, 3584);
        a.w = DevPtr(0x2002);
        assert!(!applies(&a));
        let mut a = args(1, 3584);
        a.bias = Some(DevPtr(0x3001));
        assert!(!applies(&a));
    }
}

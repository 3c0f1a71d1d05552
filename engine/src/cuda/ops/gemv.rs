//! Few-row linears (kernels/cuda/gemv.cu): `y [n, out] = x [n, in] @ w [out, in]^T (+ bias)` for
//! `n <= 4`, the und decode step's products, as one streaming pass over the weights instead of a
//! cuBLASLt GEMM at M = 1.
//!
//! Opt-in until checked on a GPU: `HBRIDGE_GEMV=1` routes qualifying `Op::Linear` launches here (see
//! [`gemm::linear`](super::gemm::linear)), and the launch-time fusion (`cuda::fuse`) runs a decode
//! step's q/k/v as one [`gemv_group`] and its gate/up/SwiGLU as one [`gemv_swiglu`]; the GPU tests and
//! kernel benches call them directly.

use super::super::context::{DevPtr, Gpu};
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

/// `blocks` blocks of gemv.cu's 256 threads (8 warps).
fn grid(blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Whether `args` fits the kernel: 1 to [`MAX_ROWS`] rows, `in_features` a multiple of 8, x, w (and so
/// every weight row) 16-byte aligned. The bias and y need only bf16 alignment.
pub fn applies(args: &LinearArgs) -> bool {
    (1..=MAX_ROWS).contains(&args.n)
        && args.in_features > 0
        && args.in_features.is_multiple_of(8)
        && args.x.0.is_multiple_of(16)
        && args.w.0.is_multiple_of(16)
        && args.y.0.is_multiple_of(2)
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
    let cfg = grid(args.out_features.div_ceil(FEATURES_PER_BLOCK));
    let (x, w, y) = (args.x.0, args.w.0, args.y.0);
    let bias = args.bias.map_or(0u64, |b| b.0);
    let entry = format!("gemv_n{}", args.n);
    launch!(gpu, "gemv", &entry, cfg, [&x, &w, &bias, &y, &in_, &out])
}

/// `gemv.cu`'s `GemvGroup`: up to three products of one x, segment s owning blocks
/// `[block0[s], block0[s + 1])` (pointers as addresses, an unused segment's null).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GroupParams {
    w: [u64; 3],
    bias: [u64; 3],
    y: [u64; 3],
    out: [i32; 3],
    block0: [i32; 4],
}

/// Whether `products` can run as one grouped launch: 1 to 3 products that each [`applies`], of the same
/// x (pointer, rows and in features).
pub fn group_fits(products: &[LinearArgs]) -> bool {
    let Some(first) = products.first() else {
        return false;
    };
    products.len() <= 3
        && products.iter().all(|p| {
            applies(p) && p.x == first.x && p.n == first.n && p.in_features == first.in_features
        })
}

/// [`gemv`] of up to three products of the same x in one launch (the decode step's q, k and v); an
/// error when they do not fit (see [`group_fits`]).
pub fn gemv_group(gpu: &Gpu, products: &[LinearArgs]) -> CudaResult<()> {
    if !group_fits(products) {
        return Err(unsupported(
            "gemv",
            format!(
                "a group of {} products (1 to 3 of one x, each as gemv takes it)",
                products.len()
            ),
        ));
    }
    let mut g = GroupParams {
        w: [0; 3],
        bias: [0; 3],
        y: [0; 3],
        out: [0; 3],
        block0: [0; 4],
    };
    let mut blocks = 0usize;
    for s in 0..3 {
        g.block0[s] = to_i32("gemv", "group block", blocks)?;
        if let Some(p) = products.get(s) {
            g.w[s] = p.w.0;
            g.bias[s] = p.bias.map_or(0, |b| b.0);
            g.y[s] = p.y.0;
            g.out[s] = to_i32("gemv", "out_features", p.out_features)?;
            blocks += p.out_features.div_ceil(FEATURES_PER_BLOCK);
        }
    }
    g.block0[3] = to_i32("gemv", "group blocks", blocks)?;
    if blocks == 0 {
        return Ok(());
    }
    let first = &products[0];
    let in_ = to_i32("gemv", "in_features", first.in_features)?;
    let cfg = grid(blocks);
    let x = first.x.0;
    let entry = format!("gemv_group_n{}", first.n);
    launch!(gpu, "gemv", &entry, cfg, [&x, &g, &in_])
}

/// Whether gate and up can run as one [`gemv_swiglu`]: each [`applies`], same x, rows, in and out
/// features.
pub fn swiglu_fits(gate: &LinearArgs, up: &LinearArgs) -> bool {
    applies(gate)
        && applies(up)
        && gate.x == up.x
        && gate.n == up.n
        && gate.in_features == up.in_features
        && gate.out_features == up.out_features
}

/// `y = silu(gate) * up` of the two products of one x (`y` as gate's output would be), without storing
/// either; an error when they do not fit (see [`swiglu_fits`]). `gate.y` and `up.y` are ignored.
pub fn gemv_swiglu(gpu: &Gpu, gate: &LinearArgs, up: &LinearArgs, y: DevPtr) -> CudaResult<()> {
    if gate.out_features == 0 {
        return Ok(());
    }
    if !swiglu_fits(gate, up) || !y.0.is_multiple_of(2) {
        return Err(unsupported(
            "gemv",
            format!(
                "a gate/up pair of {}x{} and {}x{} over {} rows (one x, the same sizes, each as gemv takes it)",
                gate.out_features, gate.in_features, up.out_features, up.in_features, gate.n
            ),
        ));
    }
    let in_ = to_i32("gemv", "in_features", gate.in_features)?;
    let out = to_i32("gemv", "out_features", gate.out_features)?;
    let cfg = grid(gate.out_features.div_ceil(FEATURES_PER_BLOCK));
    let (x, wg, wu, yp) = (gate.x.0, gate.w.0, up.w.0, y.0);
    let (bg, bu) = (
        gate.bias.map_or(0u64, |b| b.0),
        up.bias.map_or(0u64, |b| b.0),
    );
    let entry = format!("gemv_swiglu_n{}", gate.n);
    launch!(
        gpu,
        "gemv",
        &entry,
        cfg,
        [&x, &wg, &bg, &wu, &bu, &yp, &in_, &out]
    )
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
    fn groups_and_swiglu_pairs_share_one_x() {
        let (q, mut k) = (args(1, 3584), args(1, 3584));
        assert!(group_fits(&[q, k, q]));
        assert!(!group_fits(&[q, k, q, k]));
        assert!(!group_fits(&[]));
        k.x = DevPtr(0x5000);
        assert!(!group_fits(&[q, k]));
        let (gate, mut up) = (args(2, 64), args(2, 64));
        assert!(swiglu_fits(&gate, &up));
        up.out_features = 99;
        assert!(!swiglu_fits(&gate, &up));
        let mut up = args(2, 64);
        up.n = 3;
        assert!(!swiglu_fits(&gate, &up));
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

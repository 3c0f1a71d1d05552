//! The flash kernel on Hopper's warpgroup MMA (kernels/cuda/attention_sm90.cu, v2 of `attention.cu`'s
//! flash kernel): same parameters and semantics, 128 query rows per block in two warpgroups, 128-key
//! tiles, head dims padded to 64 or 128.
//!
//! v2 is chosen by [`FlashKernel`]: `Auto` takes it only on Hopper and only when `HBRIDGE_ATTENTION=sm90`
//! (head dims 33-128) or `sm90-all` (every head dim, for whole-model checks on the tiny models) is set,
//! because it has been compiled and assembled (ptxas, sm_90a: HGMMA in the SASS, no spills) but
//! not yet run against the f64 reference on a GPU. Once the GPU tests pass and the kernel benchmarks
//! show it faster, `Auto` turns it on by default.

use super::super::context::{DevPtr, Gpu};
use super::super::error::{CudaError, CudaResult};
use super::attention::{allow_dynamic_smem, launch_in, AttentionArgs, Params, MAX_HEAD_DIM};
use super::unsupported;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use hbridge_kernels::Arch;
use std::sync::OnceLock;

/// Which flash kernel version a launch uses (the split-KV decode and wide-head paths are unaffected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlashKernel {
    /// v2 on Hopper when the environment asks for it (`HBRIDGE_ATTENTION=sm90`), else v1.
    #[default]
    Auto,
    /// v1 (`attention.cu`, mma.sync): every sm_80+ GPU.
    V1,
    /// v2 (`attention_sm90.cu`, wgmma): Hopper only; an error elsewhere.
    Sm90,
}

/// Environment variable that opts `FlashKernel::Auto` into v2.
pub const ENV: &str = "HBRIDGE_ATTENTION";

const BM: usize = 128;
const BN: usize = 128;
const THREADS: u32 = 256;
/// Head dims up to this take v1 under `Auto` even when v2 is on: padding them to 64 wastes the MMAs.
const AUTO_MIN_HEAD_DIM: usize = 33;

fn bad(problem: impl Into<String>) -> CudaError {
    unsupported("attention", problem)
}

/// Head dim the v2 kernel instantiation works at (64 or 128).
pub fn padded_head_dim(head_dim: usize) -> Option<usize> {
    [64, 128].into_iter().find(|&d| head_dim <= d)
}

/// Dynamic shared memory of `attn_fwd_sm90_d{d_pad}` (mirrors `Sm90Smem` in the .cu file): Q of two
/// warpgroups, K and V in two stages, and 1024 bytes to align the swizzled tiles.
pub fn smem_bytes(d_pad: usize) -> usize {
    2 * 64 * d_pad * 2 + 4 * BN * d_pad * 2 + 1024
}

/// What `HBRIDGE_ATTENTION` asks of `Auto`: `sm90` (v2 for head dims 33-128), `sm90-all` (v2 for every
/// head dim up to 128: the tiny test models' heads are 12-24 wide, so whole-model checks need it), else
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvChoice {
    Off,
    Sm90,
    Sm90All,
}

fn env_choice() -> EnvChoice {
    static CHOICE: OnceLock<EnvChoice> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var(ENV).as_deref() {
        Ok(v) if v.eq_ignore_ascii_case("sm90") => EnvChoice::Sm90,
        Ok(v) if v.eq_ignore_ascii_case("sm90-all") => EnvChoice::Sm90All,
        _ => EnvChoice::Off,
    })
}

fn auto_takes_sm90(choice: EnvChoice, head_dim: usize) -> bool {
    match choice {
        EnvChoice::Off => false,
        EnvChoice::Sm90 => (AUTO_MIN_HEAD_DIM..=MAX_HEAD_DIM).contains(&head_dim),
        EnvChoice::Sm90All => (1..=MAX_HEAD_DIM).contains(&head_dim),
    }
}

/// Whether a flash launch of `head_dim` on a GPU of `arch` runs v2 under `kernel`; asking for v2
/// where it cannot run is an error rather than a silent fallback.
pub(super) fn chosen(arch: Arch, head_dim: usize, kernel: FlashKernel) -> CudaResult<bool> {
    let hopper = arch == Arch::HOPPER;
    match kernel {
        FlashKernel::V1 => Ok(false),
        FlashKernel::Auto => Ok(hopper && auto_takes_sm90(env_choice(), head_dim)),
        FlashKernel::Sm90 if !hopper => Err(bad(format!(
            "the sm90 flash kernel needs a Hopper GPU (compute capability 9.0), this one is {}.{}",
            arch.major, arch.minor
        ))),
        FlashKernel::Sm90 => Ok(true),
    }
}

/// Launches `attn_fwd_sm90_d{64,128}` with the parameters `attention::plan` built.
pub(super) fn launch(gpu: &Gpu, args: &AttentionArgs<'_>, params: &Params) -> CudaResult<()> {
    let d = padded_head_dim(args.head_dim).ok_or_else(|| {
        bad(format!(
            "head_dim {} (the sm90 flash kernel takes 1 to {MAX_HEAD_DIM})",
            args.head_dim
        ))
    })?;
    let cfg = LaunchConfig {
        grid_dim: (
            args.nq.div_ceil(BM) as u32,
            args.heads as u32,
            args.batch as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem_bytes(d) as u32,
    };
    launch_in(
        gpu,
        "attention_sm90",
        &format!("attn_fwd_sm90_d{d}"),
        params,
        cfg,
    )
}

/// Dynamic shared memory of `attn_sm90_probe_d{d}`.
fn probe_smem_bytes(d: usize) -> usize {
    64 * d * 2 + 2 * BN * d * 2 + 1024
}

/// The layout probe (one warpgroup, one tile, no softmax): `s_out = q k^T` (f32 `[64][128]`) and
/// `o_out = bf16(s_out) v` (f32 `[64][d]`) from dense bf16 `q [64][d]`, `k`/`v [128][d]`, `d` 64 or 128
/// and every pointer 16-byte aligned. Tests check it on its own, so a failure of the whole kernel can
/// be told apart from a layout mistake.
pub fn probe(
    gpu: &Gpu,
    d: usize,
    q: DevPtr,
    k: DevPtr,
    v: DevPtr,
    s_out: DevPtr,
    o_out: DevPtr,
) -> CudaResult<()> {
    if d != 64 && d != 128 {
        return Err(bad(format!("probe head dim {d} (64 or 128)")));
    }
    if gpu.arch() != Arch::HOPPER {
        return Err(bad("the sm90 probe needs a Hopper GPU"));
    }
    if [q, k, v, s_out, o_out]
        .iter()
        .any(|p| p.0 == 0 || p.0 % 16 != 0)
    {
        return Err(bad("probe pointers must be non-null and 16-byte aligned"));
    }
    let entry = format!("attn_sm90_probe_d{d}");
    let f = gpu.function("attention_sm90", &entry)?;
    let bytes = probe_smem_bytes(d);
    allow_dynamic_smem(&f, &entry, bytes)?;
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: bytes as u32,
    };
    let mut b = gpu.stream().launch_builder(&f);
    let (q, k, v, s_out, o_out) = (q.0, k.0, v.0, s_out.0, o_out.0);
    b.arg(&q).arg(&k).arg(&v).arg(&s_out).arg(&o_out);
    // SAFETY: five pointers as the kernel declares them, checked non-null and aligned; the caller
    // guarantees the sizes above.
    unsafe { b.launch(cfg) }.map_err(|e| CudaError::driver(format!("launching {entry}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_hopper() {
        // 227 KB per block on H100/H200.
        for d in [64, 128] {
            assert!(smem_bytes(d) <= 227 * 1024, "d{d}: {}", smem_bytes(d));
        }
        // The sizes attention_sm90.cu's header states (81 and 161 KB) and its `Sm90Smem` computes.
        assert_eq!(smem_bytes(64), 82_944);
        assert_eq!(smem_bytes(128), 164_864);
    }

    #[test]
    fn version_choice() {
        let ampere = Arch { major: 8, minor: 0 };
        assert_eq!(chosen(Arch::HOPPER, 128, FlashKernel::V1), Ok(false));
        assert_eq!(chosen(Arch::HOPPER, 128, FlashKernel::Sm90), Ok(true));
        assert!(chosen(ampere, 128, FlashKernel::Sm90).is_err());
        assert_eq!(chosen(ampere, 128, FlashKernel::Auto), Ok(false));
        // Auto follows the environment on Hopper; `sm90` leaves small heads to v1, `sm90-all` does not.
        assert_eq!(
            chosen(Arch::HOPPER, 120, FlashKernel::Auto),
            Ok(auto_takes_sm90(env_choice(), 120))
        );
        assert!(!auto_takes_sm90(EnvChoice::Off, 120));
        assert!(auto_takes_sm90(EnvChoice::Sm90, 120));
        assert!(!auto_takes_sm90(EnvChoice::Sm90, 16));
        assert!(auto_takes_sm90(EnvChoice::Sm90All, 16));
        assert!(!auto_takes_sm90(EnvChoice::Sm90All, 129));
        assert_eq!(padded_head_dim(120), Some(128));
        assert_eq!(padded_head_dim(40), Some(64));
        assert_eq!(padded_head_dim(129), None);
    }
}

//! The flash kernel on Hopper's warpgroup MMA (kernels/cuda/attention_sm90.cu, v2 of `attention.cu`'s
//! flash kernel): same parameters and semantics, 128 query rows per block in two warpgroups, 128-key
//! tiles, head dims padded to 64 or 128.
//!
//! The file has two versions: v2 (`attn_fwd_sm90_d*`) and v3 (`attn_fwd_sm90_pipe_d*`, each warpgroup's
//! softmax under its own P V MMAs, V in four stages). [`FlashKernel`] chooses: `Auto` takes a wgmma
//! version only on Hopper and only when `HBRIDGE_ATTENTION` asks (`sm90` / `sm90-pipe` for head dims
//! 33-128, `sm90-all` / `sm90-pipe-all` for every head dim, for whole-model checks on the tiny
//! models), because both have been compiled and assembled (ptxas, sm_90a: HGMMA in the SASS, no
//! spills, no serialized wgmma) but not yet run against the f64 reference on a GPU. Once the GPU tests
//! pass and the kernel benchmarks show one faster, `Auto` turns it on by default.

use super::super::super::context::{DevPtr, Gpu};
use super::super::super::error::{CudaError, CudaResult};
use super::super::unsupported;
use super::{allow_dynamic_smem, launch_in, AttentionArgs, Params, MAX_HEAD_DIM};
use cudarc::driver::LaunchConfig;
use hbridge_kernels::Arch;
use std::sync::OnceLock;

/// Which flash kernel version a launch uses (the split-KV decode and wide-head paths are unaffected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlashKernel {
    /// A wgmma version on Hopper when the environment asks for one (`HBRIDGE_ATTENTION`), else v1.
    #[default]
    Auto,
    /// v1 (`attention.cu`, mma.sync): every sm_80+ GPU.
    V1,
    /// v2 (`attn_fwd_sm90_d*`, wgmma): Hopper only; an error elsewhere.
    Sm90,
    /// v3 (`attn_fwd_sm90_pipe_d*`, wgmma with the softmax under the P V MMAs): Hopper only.
    Sm90Pipe,
}

/// The two wgmma versions of `attention_sm90.cu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wgmma {
    V2,
    V3,
}

impl Wgmma {
    fn entry(self, d: usize) -> String {
        match self {
            Wgmma::V2 => format!("attn_fwd_sm90_d{d}"),
            Wgmma::V3 => format!("attn_fwd_sm90_pipe_d{d}"),
        }
    }
}

/// Environment variable that opts `FlashKernel::Auto` into v2 or v3.
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

/// Dynamic shared memory of v2 at `d_pad` (mirrors `Sm90Smem<D, 2, 2>` in the .cu file): Q of two
/// warpgroups, K and V in two stages, and 1024 bytes to align the swizzled tiles.
pub fn smem_bytes(d_pad: usize) -> usize {
    stages_smem_bytes(d_pad, 2, 2)
}

/// Dynamic shared memory of v3 (`Sm90Smem<D, 2, 4>`): V in four stages.
pub fn pipe_smem_bytes(d_pad: usize) -> usize {
    stages_smem_bytes(d_pad, 2, 4)
}

fn stages_smem_bytes(d_pad: usize, k_stages: usize, v_stages: usize) -> usize {
    2 * 64 * d_pad * 2 + (k_stages + v_stages) * BN * d_pad * 2 + 1024
}

/// What `HBRIDGE_ATTENTION` asks of `Auto`: `sm90` / `sm90-pipe` (v2 / v3 for head dims 33-128),
/// `sm90-all` / `sm90-pipe-all` (for every head dim up to 128: the tiny test models' heads are 12-24
/// wide, so whole-model checks need it), else nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EnvChoice {
    version: Option<Wgmma>,
    every_head_dim: bool,
}

impl EnvChoice {
    const OFF: EnvChoice = EnvChoice {
        version: None,
        every_head_dim: false,
    };

    fn parse(value: &str) -> EnvChoice {
        let v = value.to_ascii_lowercase();
        let (base, every_head_dim) = match v.strip_suffix("-all") {
            Some(base) => (base, true),
            None => (v.as_str(), false),
        };
        let version = match base {
            "sm90" => Some(Wgmma::V2),
            "sm90-pipe" => Some(Wgmma::V3),
            _ => return EnvChoice::OFF,
        };
        EnvChoice {
            version,
            every_head_dim,
        }
    }

    /// The version `Auto` runs at `head_dim` on Hopper.
    fn takes(self, head_dim: usize) -> Option<Wgmma> {
        let min = if self.every_head_dim {
            1
        } else {
            AUTO_MIN_HEAD_DIM
        };
        self.version
            .filter(|_| (min..=MAX_HEAD_DIM).contains(&head_dim))
    }
}

fn env_choice() -> EnvChoice {
    static CHOICE: OnceLock<EnvChoice> = OnceLock::new();
    *CHOICE.get_or_init(|| std::env::var(ENV).map_or(EnvChoice::OFF, |v| EnvChoice::parse(&v)))
}

/// Which wgmma version (if any) a flash launch of `head_dim` on a GPU of `arch` runs under `kernel`;
/// asking for one where it cannot run is an error rather than a silent fallback.
pub(super) fn chosen(
    arch: Arch,
    head_dim: usize,
    kernel: FlashKernel,
) -> CudaResult<Option<Wgmma>> {
    let hopper = arch == Arch::HOPPER;
    let asked = match kernel {
        FlashKernel::V1 => return Ok(None),
        FlashKernel::Auto if hopper => return Ok(env_choice().takes(head_dim)),
        FlashKernel::Auto => return Ok(None),
        FlashKernel::Sm90 => Wgmma::V2,
        FlashKernel::Sm90Pipe => Wgmma::V3,
    };
    if !hopper {
        return Err(bad(format!(
            "the sm90 flash kernels need a Hopper GPU (compute capability 9.0), this one is {}.{}",
            arch.major, arch.minor
        )));
    }
    Ok(Some(asked))
}

/// Launches `version` (`attn_fwd_sm90[_pipe]_d{64,128}`) with the parameters `attention::plan` built.
pub(super) fn launch(
    gpu: &Gpu,
    version: Wgmma,
    args: &AttentionArgs<'_>,
    params: &Params,
) -> CudaResult<()> {
    let d = padded_head_dim(args.head_dim).ok_or_else(|| {
        bad(format!(
            "head_dim {} (the sm90 flash kernels take 1 to {MAX_HEAD_DIM})",
            args.head_dim
        ))
    })?;
    let smem = match version {
        Wgmma::V2 => smem_bytes(d),
        Wgmma::V3 => pipe_smem_bytes(d),
    };
    let cfg = LaunchConfig {
        grid_dim: (
            args.nq.div_ceil(BM) as u32,
            args.heads as u32,
            args.batch as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    launch_in(gpu, "attention_sm90", &version.entry(d), params, cfg)
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
    let (q, k, v, s_out, o_out) = (q.0, k.0, v.0, s_out.0, o_out.0);
    let mut args = [&q, &k, &v, &s_out, &o_out].map(super::super::elementwise::param);
    // SAFETY: five pointers as the kernel declares them, checked non-null and aligned; the caller
    // guarantees the sizes above.
    unsafe { crate::cuda::launch::launch_kernel(gpu, &f, cfg, &mut args) }
        .map_err(|e| CudaError::driver(format!("launching {entry}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_hopper() {
        // 227 KB per block on H100/H200.
        for d in [64, 128] {
            assert!(smem_bytes(d) <= 227 * 1024, "d{d}: {}", smem_bytes(d));
            assert!(
                pipe_smem_bytes(d) <= 227 * 1024,
                "d{d}: {}",
                pipe_smem_bytes(d)
            );
        }
        // The sizes attention_sm90.cu's header states (81 / 161 KB for v2, 113 / 225 KB for v3) and its
        // `Sm90Smem` computes.
        assert_eq!(smem_bytes(64), 82_944);
        assert_eq!(smem_bytes(128), 164_864);
        assert_eq!(pipe_smem_bytes(64), 115_712);
        assert_eq!(pipe_smem_bytes(128), 230_400);
    }

    #[test]
    fn version_choice() {
        let ampere = Arch { major: 8, minor: 0 };
        assert_eq!(chosen(Arch::HOPPER, 128, FlashKernel::V1), Ok(None));
        assert_eq!(
            chosen(Arch::HOPPER, 128, FlashKernel::Sm90),
            Ok(Some(Wgmma::V2))
        );
        assert_eq!(
            chosen(Arch::HOPPER, 16, FlashKernel::Sm90Pipe),
            Ok(Some(Wgmma::V3))
        );
        assert!(chosen(ampere, 128, FlashKernel::Sm90).is_err());
        assert!(chosen(ampere, 128, FlashKernel::Sm90Pipe).is_err());
        assert_eq!(chosen(ampere, 128, FlashKernel::Auto), Ok(None));
        // Auto follows the environment on Hopper; without `-all` small heads stay on v1.
        assert_eq!(
            chosen(Arch::HOPPER, 120, FlashKernel::Auto),
            Ok(env_choice().takes(120))
        );
        assert_eq!(EnvChoice::parse("off"), EnvChoice::OFF);
        assert_eq!(EnvChoice::OFF.takes(120), None);
        assert_eq!(EnvChoice::parse("sm90").takes(120), Some(Wgmma::V2));
        assert_eq!(EnvChoice::parse("SM90").takes(16), None);
        assert_eq!(EnvChoice::parse("sm90-all").takes(16), Some(Wgmma::V2));
        assert_eq!(EnvChoice::parse("sm90-all").takes(129), None);
        assert_eq!(EnvChoice::parse("sm90-pipe").takes(128), Some(Wgmma::V3));
        assert_eq!(EnvChoice::parse("sm90-pipe").takes(24), None);
        assert_eq!(EnvChoice::parse("sm90-pipe-all").takes(24), Some(Wgmma::V3));
        assert_eq!(EnvChoice::parse("sm90-pipes"), EnvChoice::OFF);
        assert_eq!(padded_head_dim(120), Some(128));
        assert_eq!(padded_head_dim(40), Some(64));
        assert_eq!(padded_head_dim(129), None);
    }
}

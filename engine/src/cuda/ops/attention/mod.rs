//! Flash attention (kernels/cuda/attention.cu): queries over one or two K/V segments, GQA, causal or
//! bidirectional, key padding per batch row, and a split-KV path for decode (few queries, long cache).
//!
//! The launcher validates everything it can on the host (returning `CudaError::Unsupported`, never
//! panicking), picks the kernel instantiation for the head dim padded to 16/32/64/80/128, and chooses
//! between the flash kernel and the split-KV decode kernels. The kernel parameters travel as one
//! `#[repr(C)]` struct whose layout `attention.cu` asserts with the same sizes.
//!
//! Heads wider than [`MAX_HEAD_DIM`] do not fit the flash kernel's registers; [`attention`] hands them to
//! `attention_wide` (scores and probabilities materialized in query blocks, GEMMs through cuBLASLt).

mod params;
mod plan;
pub mod sm90;
#[cfg(test)]
mod tests;
pub mod wide;

use super::super::context::{DevPtr, Gpu};
use super::super::error::{CudaError, CudaResult};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, LaunchConfig};
use params::Params;
use params::{
    decode_smem_bytes, flash_smem_bytes, COMBINE_THREADS, DECODE_WARPS, FLASH_BM, FLASH_THREADS,
};
pub use plan::decode_workspace_len;
use plan::validate;
use plan::{bad, plan, Path};
pub use sm90::FlashKernel;

/// Most K/V segments one launch walks (und cache + gen tokens).
pub const MAX_SEGMENTS: usize = 2;

/// Largest head dim the kernels take (padded head dims 16, 32, 64, 80, 128).
pub const MAX_HEAD_DIM: usize = 128;

/// One K/V segment: `len` keys of `kv_heads * head_dim` features, rows `row_stride` elements apart, batch
/// rows `batch_stride` elements apart (0 when batch == 1).
#[derive(Debug, Clone, Copy)]
pub struct KvSegmentArgs {
    pub k: DevPtr,
    pub v: DevPtr,
    pub len: usize,
    pub row_stride: usize,
    pub batch_stride: usize,
    pub kv_heads: usize,
    /// i32 `[batch]`: keys `>= valid_len[b]` of this segment are masked for batch row `b` (key padding).
    /// `None`: all `len` keys are valid.
    pub valid_len: Option<DevPtr>,
}

/// `out[b, i, h, :] = softmax_j(scale * q[b, i, h, :] . k[b, j, h/g, :]) v[b, j, h/g, :]` over the keys of all
/// segments in order (segment 0's keys first), `g = heads / kv_heads` per segment. Causal: query `i`
/// sees keys `0 ..= i + (total_keys - nq)`. A query with no visible key gets zeros.
#[derive(Debug, Clone)]
pub struct AttentionArgs<'a> {
    pub q: DevPtr,
    pub q_row_stride: usize,
    pub q_batch_stride: usize,
    pub out: DevPtr,
    pub out_row_stride: usize,
    pub out_batch_stride: usize,
    pub batch: usize,
    pub nq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub segments: &'a [KvSegmentArgs],
    pub causal: bool,
    pub scale: f32,
}

/// Lets `f` take `bytes` of dynamic shared memory (the default cap is 48 KB). Reads first, so the set
/// happens once per loaded module.
fn allow_dynamic_smem(f: &CudaFunction, entry: &str, bytes: usize) -> CudaResult<()> {
    if bytes <= 48 * 1024 {
        return Ok(());
    }
    let attr = CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    let during = || format!("allowing {entry} {bytes} B of dynamic shared memory");
    let current = f
        .get_attribute(attr)
        .map_err(|e| CudaError::driver(during(), e))?;
    if (current as usize) < bytes {
        f.set_attribute(attr, bytes as i32)
            .map_err(|e| CudaError::driver(during(), e))?;
    }
    Ok(())
}

fn launch(gpu: &Gpu, entry: &str, params: &Params, cfg: LaunchConfig) -> CudaResult<()> {
    launch_in(gpu, "attention", entry, params, cfg)
}

/// Launches `entry` of kernel file `file` with the single `AttnParams` parameter.
fn launch_in(
    gpu: &Gpu,
    file: &'static str,
    entry: &str,
    params: &Params,
    cfg: LaunchConfig,
) -> CudaResult<()> {
    let f = gpu.function(file, entry)?;
    allow_dynamic_smem(&f, entry, cfg.shared_mem_bytes as usize)?;
    let mut args = [super::elementwise::param(params)];
    // SAFETY: `params` matches the kernel's single `AttnParams` parameter; every pointer in it was checked
    // non-null where it is read, and the caller guarantees the buffers cover the strides and sizes given.
    unsafe { crate::cuda::launch::launch_kernel(gpu, &f, cfg, &mut args) }
        .map_err(|e| CudaError::driver(format!("launching {entry}"), e))
}

/// f32 elements of workspace [`attention`] needs for `args`: split-KV partials on the decode path, the
/// score and probability blocks of the wide-head path (head_dim > 128), else 0.
pub fn workspace_len(args: &AttentionArgs<'_>) -> usize {
    if args.head_dim > MAX_HEAD_DIM {
        wide::workspace_len(args)
    } else {
        decode_workspace_len(args)
    }
}

/// Launches the flash kernel, or the split-KV decode kernels when there are few queries per batch row
/// and many keys, or (head_dim > 128) the wide-head path of `attention_wide`. `workspace` is f32
/// scratch; see [`workspace_len`]. The wide-head path cannot run without it.
pub fn attention(
    gpu: &Gpu,
    args: &AttentionArgs<'_>,
    workspace: Option<(DevPtr, usize)>,
) -> CudaResult<()> {
    attention_with(gpu, args, workspace, FlashKernel::Auto)
}

/// [`attention`] with the flash kernel version chosen by the caller (tests and benchmarks compare
/// them); `FlashKernel::Sm90` / `Sm90Pipe` are errors where they cannot run (not Hopper, head_dim over 128). The
/// decode and wide-head paths do not depend on it.
pub fn attention_with(
    gpu: &Gpu,
    args: &AttentionArgs<'_>,
    workspace: Option<(DevPtr, usize)>,
    kernel: FlashKernel,
) -> CudaResult<()> {
    if args.head_dim > MAX_HEAD_DIM {
        if matches!(kernel, FlashKernel::Sm90 | FlashKernel::Sm90Pipe) {
            return Err(bad(format!(
                "head_dim {} with the sm90 flash kernel (it takes 1 to {MAX_HEAD_DIM})",
                args.head_dim
            )));
        }
        return wide::attention_wide(gpu, args, workspace);
    }
    let Some(plan) = plan(args, workspace)? else {
        return Ok(());
    };
    let d = plan.d_pad;
    match plan.path {
        Path::Flash => match sm90::chosen(gpu.arch(), args.head_dim, kernel)? {
            Some(version) => sm90::launch(gpu, version, args, &plan.params),
            None => {
                let cfg = LaunchConfig {
                    grid_dim: (
                        args.nq.div_ceil(FLASH_BM) as u32,
                        args.heads as u32,
                        args.batch as u32,
                    ),
                    block_dim: (FLASH_THREADS, 1, 1),
                    shared_mem_bytes: flash_smem_bytes(d) as u32,
                };
                launch(gpu, &format!("attn_fwd_d{d}"), &plan.params, cfg)
            }
        },
        Path::Decode(split) => {
            let kv_heads = args.segments[0].kv_heads;
            let cfg = LaunchConfig {
                grid_dim: (
                    split.nsplit.div_ceil(DECODE_WARPS) as u32,
                    kv_heads as u32,
                    args.batch as u32,
                ),
                block_dim: ((32 * DECODE_WARPS) as u32, 1, 1),
                shared_mem_bytes: decode_smem_bytes(d) as u32,
            };
            launch(gpu, &format!("attn_decode_d{d}"), &plan.params, cfg)?;
            let cfg = LaunchConfig {
                grid_dim: ((args.nq * args.heads) as u32, args.batch as u32, 1),
                block_dim: (COMBINE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            launch(gpu, "attn_decode_combine", &plan.params, cfg)
        }
    }
}

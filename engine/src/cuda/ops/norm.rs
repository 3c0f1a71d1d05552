//! Fused RMSNorm, LayerNorm and GroupNorm (kernels/cuda/norm.cu).

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::elementwise::{aligned16, launch, mul, to_i32, to_i64, MAX_BLOCKS, THREADS};
use super::unsupported;
use cudarc::driver::LaunchConfig;

/// Over each of `rows` rows of `dim` features:
/// `h = x (+ residual)`; `residual_out = h` if given;
/// `out = h * rsqrt(mean(h^2) + eps) * (weight or 1) * (1 + scale)` (scale: one row `[dim]`, the DiT's
/// modulation). Per-head QK-norm is `rows = tokens * heads`, `dim = head_dim`. Mean and rsqrt in f32. `out` may alias `x`.
///
/// With a residual, `h` is rounded to bf16 before the statistics (it is the bf16 residual stream that
/// `residual_out` stores), so fused and unfused execution agree. `residual_out` may alias `x` or
/// `residual`.
///
/// With `gated`, `out = gated.x + tanh(gated.gate) * y` where `y` is the norm above (unrounded): the
/// DiT's norm followed by its gated residual in one pass. `out` may alias `gated.x`. Needs
/// `dim % 8 == 0` and 16-byte aligned pointers (refused otherwise; see [`gated_fits`]).
#[derive(Debug, Clone, Copy)]
pub struct RmsNormArgs {
    pub x: DevPtr,
    pub residual: Option<DevPtr>,
    pub residual_out: Option<DevPtr>,
    pub weight: Option<DevPtr>,
    pub scale: Option<DevPtr>,
    pub gated: Option<Gated>,
    pub out: DevPtr,
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
}

/// Whether [`rmsnorm`] takes `gated` with these pointers and row length.
pub fn gated_fits(dim: usize, ptrs: &[DevPtr]) -> bool {
    dim.is_multiple_of(8) && aligned16(ptrs)
}

/// The gated-residual epilogue of a row norm: `x` `[rows, dim]` plus `tanh(gate)` (`gate` one row
/// `[dim]`) times the norm.
#[derive(Debug, Clone, Copy)]
pub struct Gated {
    pub x: DevPtr,
    pub gate: DevPtr,
}

/// LayerNorm without affine, optionally modulated: `out = (x - mean) * rsqrt(var + eps) * (1 + scale)`
/// (the DiT's `norm_out`), biased variance, stats in f32. `out` may alias `x`.
#[derive(Debug, Clone, Copy)]
pub struct LayerNormArgs {
    pub x: DevPtr,
    pub scale: Option<DevPtr>,
    pub out: DevPtr,
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
}

const MODE_RMS: i32 = 0;
const MODE_LAYER: i32 = 1;

/// Chunks per thread the kernels cache in registers (`C` of `rownorm<VEC, C, BLOCK>`).
const TEAM_V8_CHUNKS: usize = 4;
const TEAM_S_CHUNKS: usize = 8;
const BLOCK_V8_CHUNKS: usize = 4;
const BLOCK_S_CHUNKS: usize = 16;
/// Grid cap of the block-per-row kernels (grid-stride beyond).
const MAX_ROW_BLOCKS: usize = 32768;

struct RowNorm {
    mode: i32,
    x: DevPtr,
    residual: Option<DevPtr>,
    residual_out: Option<DevPtr>,
    weight: Option<DevPtr>,
    scale: Option<DevPtr>,
    gated: Option<Gated>,
    out: DevPtr,
    rows: usize,
    dim: usize,
    eps: f32,
}

/// Which row-norm kernel serves `dim`, with its launch: a team of lanes per row for small rows, a block
/// per row for large ones; 16-byte accesses when `vec`.
fn rownorm_launch(
    op: &'static str,
    rows: usize,
    dim: usize,
    vec: bool,
    max_row_blocks: usize,
) -> CudaResult<(&'static str, LaunchConfig, i32)> {
    let (chunks, team_chunks, block_chunks) = if vec {
        (dim / 8, TEAM_V8_CHUNKS, BLOCK_V8_CHUNKS)
    } else {
        (dim, TEAM_S_CHUNKS, BLOCK_S_CHUNKS)
    };
    if chunks <= 32 * team_chunks {
        let team = chunks.div_ceil(team_chunks).next_power_of_two();
        let rows_per_block = THREADS as usize / team;
        let cfg = LaunchConfig {
            grid_dim: (
                rows.div_ceil(rows_per_block).clamp(1, MAX_BLOCKS) as u32,
                1,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let entry = if vec {
            "rownorm_team_v8"
        } else {
            "rownorm_team_s"
        };
        return Ok((entry, cfg, team as i32));
    }
    // About two chunks per thread keeps a few loads in flight per thread without idling lanes.
    let threads = chunks.div_ceil(2).next_multiple_of(32).clamp(32, 1024);
    if chunks.div_ceil(threads) > block_chunks {
        return Err(unsupported(
            op,
            format!(
                "dim {dim} exceeds the {} features one block can hold in registers",
                1024 * block_chunks * if vec { 8 } else { 1 }
            ),
        ));
    }
    let cfg = LaunchConfig {
        grid_dim: (rows.clamp(1, max_row_blocks.max(1)) as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let entry = if vec {
        "rownorm_block_v8"
    } else {
        "rownorm_block_s"
    };
    Ok((entry, cfg, 0))
}

fn rownorm(gpu: &Gpu, op: &'static str, a: &RowNorm, max_row_blocks: usize) -> CudaResult<()> {
    if a.rows == 0 || a.dim == 0 {
        return Ok(());
    }
    mul(op, a.rows, a.dim)?;
    let (gate, gres) = (a.gated.map(|g| g.gate), a.gated.map(|g| g.x));
    let mut ptrs = vec![a.x, a.out];
    ptrs.extend(
        [a.residual, a.residual_out, a.weight, a.scale, gate, gres]
            .into_iter()
            .flatten(),
    );
    let vec = a.dim.is_multiple_of(8) && aligned16(&ptrs);
    if a.gated.is_some() && !vec {
        return Err(unsupported(
            op,
            format!(
                "the gated epilogue needs dim % 8 == 0 and 16-byte aligned pointers (dim {})",
                a.dim
            ),
        ));
    }
    let (entry, cfg, team) = rownorm_launch(op, a.rows, a.dim, vec, max_row_blocks)?;
    let ptr = |p: Option<DevPtr>| p.map_or(0u64, |p| p.0);
    let (x, res, res_out, w, s, out) = (
        a.x.0,
        ptr(a.residual),
        ptr(a.residual_out),
        ptr(a.weight),
        ptr(a.scale),
        a.out.0,
    );
    let (gate, gres) = (ptr(gate), ptr(gres));
    let rows = to_i64(op, "rows", a.rows)?;
    let dim = to_i32(op, "dim", a.dim)?;
    launch!(
        gpu,
        "norm",
        entry,
        cfg,
        [&a.mode, &x, &res, &res_out, &w, &s, &gate, &gres, &out, &rows, &dim, &a.eps, &team]
    )
}

pub fn rmsnorm(gpu: &Gpu, args: &RmsNormArgs) -> CudaResult<()> {
    rmsnorm_with_row_blocks(gpu, args, MAX_ROW_BLOCKS)
}

/// [`rmsnorm`] with the block-per-row kernels' grid capped at `max_row_blocks` (each block then walks
/// several rows): the kernel benches sweep it, since a block per row measured 70% of the copy
/// bandwidth at the gen shape and whether fewer, longer-lived blocks do better is a measurement.
pub fn rmsnorm_with_row_blocks(
    gpu: &Gpu,
    args: &RmsNormArgs,
    max_row_blocks: usize,
) -> CudaResult<()> {
    rownorm(
        gpu,
        "rmsnorm",
        &RowNorm {
            mode: MODE_RMS,
            x: args.x,
            residual: args.residual,
            residual_out: args.residual_out,
            weight: args.weight,
            scale: args.scale,
            gated: args.gated,
            out: args.out,
            rows: args.rows,
            dim: args.dim,
            eps: args.eps,
        },
        max_row_blocks,
    )
}

/// `(x - mean) * rsqrt(var + eps)` over each row of `dim`, biased variance, no affine; stats in f32.
pub fn layernorm(
    gpu: &Gpu,
    x: DevPtr,
    out: DevPtr,
    rows: usize,
    dim: usize,
    eps: f32,
) -> CudaResult<()> {
    layernorm_modulated(
        gpu,
        &LayerNormArgs {
            x,
            scale: None,
            out,
            rows,
            dim,
            eps,
        },
    )
}

/// See [`LayerNormArgs`].
pub fn layernorm_modulated(gpu: &Gpu, args: &LayerNormArgs) -> CudaResult<()> {
    rownorm(
        gpu,
        "layernorm",
        &RowNorm {
            mode: MODE_LAYER,
            x: args.x,
            residual: None,
            residual_out: None,
            weight: None,
            scale: args.scale,
            gated: None,
            out: args.out,
            rows: args.rows,
            dim: args.dim,
            eps: args.eps,
        },
        MAX_ROW_BLOCKS,
    )
}

/// Doubles of norm.cu's module scratch (`GN_SCRATCH_DOUBLES`).
const GN_SCRATCH_DOUBLES: usize = 32768;
/// Elements one stats block reduces (256 threads x 8 vectors of 8).
const GN_ELEMS_PER_PART: usize = 16384;
const GN_MAX_PARTS: usize = 1024;

/// GroupNorm of `[channels, hw]`: `groups` groups of `channels / groups` channels, affine `weight`/`bias`
/// `[channels]`; stats in f32.
///
/// Three launches (partial sums, per-group mean/rstd, normalisation); the statistics go through a
/// module-level scratch buffer of norm.cu, which is safe because all launches are ordered on the GPU's
/// one stream. `out` may alias `x`. At most 8191 groups.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    gpu: &Gpu,
    x: DevPtr,
    weight: DevPtr,
    bias: DevPtr,
    out: DevPtr,
    channels: usize,
    hw: usize,
    groups: usize,
    eps: f32,
) -> CudaResult<()> {
    const OP: &str = "group_norm";
    if channels == 0 || hw == 0 {
        return Ok(());
    }
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(unsupported(
            OP,
            format!("{channels} channels do not split into {groups} groups"),
        ));
    }
    mul(OP, channels, hw)?;
    let cpg = channels / groups;
    let group_len = cpg * hw;
    let max_parts = ((GN_SCRATCH_DOUBLES / groups).saturating_sub(2) / 2).min(GN_MAX_PARTS);
    if max_parts == 0 || groups > 65535 {
        return Err(unsupported(
            OP,
            format!("{groups} groups exceed the statistics scratch"),
        ));
    }
    let parts = group_len.div_ceil(GN_ELEMS_PER_PART).clamp(1, max_parts);
    let ws = 0u64; // null: the kernels use norm.cu's module scratch
    let xp = x.0;
    let group_len_ = to_i64(OP, "group length", group_len)?;
    let parts_ = parts as i32;

    let stats_vec = (group_len.is_multiple_of(8) && aligned16(&[x])) as i32;
    let cfg = LaunchConfig {
        grid_dim: (parts as u32, groups as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        gpu,
        "norm",
        "group_norm_stats",
        cfg,
        [&xp, &group_len_, &parts_, &stats_vec, &ws]
    )?;

    let cfg = LaunchConfig {
        grid_dim: (groups as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        gpu,
        "norm",
        "group_norm_finalize",
        cfg,
        [&xp, &group_len_, &parts_, &eps, &ws]
    )?;

    let vec = (hw.is_multiple_of(8) && aligned16(&[x, out])) as i32;
    let units = if vec == 1 { hw / 8 } else { hw };
    let grid_y = channels.min(65535);
    let grid_x = units
        .div_ceil(THREADS as usize * 4)
        .clamp(1, (MAX_BLOCKS / grid_y).max(1));
    let cfg = LaunchConfig {
        grid_dim: (grid_x as u32, grid_y as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (wp, bp, op_) = (weight.0, bias.0, out.0);
    let channels_ = to_i32(OP, "channels", channels)?;
    let hw_ = to_i64(OP, "hw", hw)?;
    let cpg_ = cpg as i32;
    launch!(
        gpu,
        "norm",
        "group_norm_apply",
        cfg,
        [&xp, &wp, &bp, &op_, &channels_, &hw_, &cpg_, &parts_, &vec, &ws]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rownorm_picks_a_kernel_that_holds_the_row() {
        for dim in [
            1usize, 8, 12, 16, 24, 72, 120, 128, 256, 257, 1024, 1032, 1280, 2520, 3584, 3592,
            16384, 32768,
        ] {
            for vec in [false, true] {
                if (vec && dim % 8 != 0) || (!vec && dim > 16384) {
                    continue;
                }
                let (entry, cfg, team) = rownorm_launch("t", 7, dim, vec, MAX_ROW_BLOCKS)
                    .unwrap_or_else(|e| panic!("{dim}: {e}"));
                let chunks = if vec { dim / 8 } else { dim };
                let cap = match entry {
                    "rownorm_team_v8" => team as usize * TEAM_V8_CHUNKS,
                    "rownorm_team_s" => team as usize * TEAM_S_CHUNKS,
                    "rownorm_block_v8" => cfg.block_dim.0 as usize * BLOCK_V8_CHUNKS,
                    _ => cfg.block_dim.0 as usize * BLOCK_S_CHUNKS,
                };
                assert!(chunks <= cap, "{dim} {vec}: {entry} holds {cap} chunks");
                if entry.contains("team") {
                    assert!(team.count_ones() == 1 && team <= 32);
                } else {
                    assert_eq!(cfg.block_dim.0 % 32, 0);
                }
            }
        }
        assert!(rownorm_launch("t", 1, 16385, false, MAX_ROW_BLOCKS).is_err());
        assert!(rownorm_launch("t", 1, 32776, true, MAX_ROW_BLOCKS).is_err());
    }
}

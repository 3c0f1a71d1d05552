//! Attention for heads wider than the flash kernel's 128 (the VAE mid-block: one head of 512 over up to
//! 16K tokens, once per image). The flash kernel keeps a query tile's output in registers, which does
//! not fit at D = 512, so this path materializes the scores of a block of queries instead:
//! `S = scale * Q K^T` through cuBLASLt with f32 output, `P = softmax(S)` in bf16 (`softmax.cu`), then
//! `O = P V` through cuBLASLt straight into the output rows. The query block is sized so that S and P
//! stay within [`WIDE_SCRATCH_BYTES`] of the executor's attention workspace. Everything is
//! stream-ordered with no allocation, so a graph using it can still be captured.
//!
//! Supported: one K/V segment without key padding, GQA, causal or not, any batch. Two segments or
//! padding are refused with `CudaError::Unsupported` (no graph asks for them at these widths).

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::attention::AttentionArgs;
use super::gemm::{gemm, gemm_f32_out, GemmArgs, GemmShape};
use super::unsupported;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Upper bound of the scores (f32) plus probabilities (bf16) of one query block.
pub const WIDE_SCRATCH_BYTES: usize = 256 << 20;
/// Widest head this path takes (the GEMMs would take more; nothing needs it).
pub const MAX_WIDE_HEAD_DIM: usize = 1024;
const SOFTMAX_THREADS: u32 = 256;

fn bad(problem: impl Into<String>) -> super::super::error::CudaError {
    unsupported("attention (wide head)", problem)
}

/// Query rows per block for `nq` queries over `nk` keys: as many as fit the scratch bound, a multiple
/// of 16 (whole tensor-core tiles) unless all queries fit.
pub fn query_block(nq: usize, nk: usize) -> usize {
    let fit = (WIDE_SCRATCH_BYTES / (nk.max(1) * 6)).max(16) / 16 * 16;
    fit.min(nq).max(1)
}

/// Offset of P and total f32 elements of S plus P for blocks of `qb` queries over `nk` keys.
fn scratch_layout(qb: usize, nk: usize) -> (usize, usize) {
    // P (bf16) starts 256-byte aligned after S.
    let p_off = (qb * nk).div_ceil(64) * 64;
    (p_off, p_off + (qb * nk).div_ceil(2))
}

fn keys(a: &AttentionArgs<'_>) -> usize {
    a.segments.iter().map(|s| s.len).sum()
}

/// Workspace (f32 elements) the wide path needs for `a`; 0 when `a` is not a wide-head attention.
pub fn workspace_len(a: &AttentionArgs<'_>) -> usize {
    if a.head_dim <= super::attention::MAX_HEAD_DIM || a.nq == 0 || keys(a) == 0 {
        return 0;
    }
    scratch_layout(query_block(a.nq, keys(a)), keys(a)).1
}

/// Runs `a` (head_dim > 128) through GEMM, softmax, GEMM. `workspace`: f32 scratch of at least
/// [`workspace_len`] elements.
pub fn attention_wide(
    gpu: &Gpu,
    a: &AttentionArgs<'_>,
    workspace: Option<(DevPtr, usize)>,
) -> CudaResult<()> {
    let qb = query_block(a.nq, keys(a));
    attention_wide_blocked(gpu, a, workspace, qb)
}

/// [`attention_wide`] with `qb` query rows per block (tests force several blocks on small inputs);
/// the workspace must hold [`workspace_len_blocked`] f32 elements.
pub fn attention_wide_blocked(
    gpu: &Gpu,
    a: &AttentionArgs<'_>,
    workspace: Option<(DevPtr, usize)>,
    qb: usize,
) -> CudaResult<()> {
    if qb == 0 {
        return Err(bad("a query block of 0 rows"));
    }
    if a.head_dim > MAX_WIDE_HEAD_DIM {
        return Err(bad(format!(
            "head_dim {} (supported: up to {MAX_WIDE_HEAD_DIM})",
            a.head_dim
        )));
    }
    let [seg] = a.segments else {
        return Err(bad(format!(
            "{} K/V segments (supported: 1)",
            a.segments.len()
        )));
    };
    if seg.valid_len.is_some() {
        return Err(bad("key padding (valid_len)"));
    }
    if a.heads == 0 || seg.kv_heads == 0 || a.heads % seg.kv_heads != 0 {
        return Err(bad(format!(
            "{} heads over {} kv heads",
            a.heads, seg.kv_heads
        )));
    }
    if !a.scale.is_finite() {
        return Err(bad(format!("scale {} is not finite", a.scale)));
    }
    let (nq, nk, d) = (a.nq, seg.len, a.head_dim);
    if nq == 0 || a.batch == 0 {
        return Ok(());
    }
    if nk == 0 {
        return Err(bad("no keys (a query with no key has no softmax)"));
    }
    if i32::try_from(nk).is_err() || i32::try_from(nq).is_err() {
        return Err(bad(format!(
            "{nq} queries over {nk} keys do not fit 32-bit indices"
        )));
    }
    let (p_off, need) = scratch_layout(qb, nk);
    let Some((ws, _)) = workspace.filter(|(p, len)| p.0 != 0 && *len >= need) else {
        return Err(bad(format!(
            "needs {need} f32 elements of attention workspace"
        )));
    };
    let (s_ptr, p_ptr) = (ws, ws.offset(p_off, 4));
    let group = a.heads / seg.kv_heads;
    let softmax = gpu.function("softmax", "softmax_rows_f32_bf16")?;
    for b in 0..a.batch {
        for h in 0..a.heads {
            let kvh = h / group;
            let k = seg.k.offset(b * seg.batch_stride + kvh * d, 2);
            let v = seg.v.offset(b * seg.batch_stride + kvh * d, 2);
            for q0 in (0..nq).step_by(qb) {
                let rows = qb.min(nq - q0);
                let q =
                    a.q.offset(b * a.q_batch_stride + q0 * a.q_row_stride + h * d, 2);
                let out = a
                    .out
                    .offset(b * a.out_batch_stride + q0 * a.out_row_stride + h * d, 2);
                // S [rows, nk] = scale * Q [rows, d] K[nk, d]^T
                let s_shape = GemmShape {
                    m: rows,
                    n: nk,
                    k: d,
                    a_trans: false,
                    lda: a.q_row_stride,
                    b_trans: true,
                    ldb: seg.row_stride,
                    ldc: nk,
                };
                gemm_f32_out(gpu, &s_shape, q, k, s_ptr, a.scale)?;
                let cfg = LaunchConfig {
                    grid_dim: (rows.min(65535) as u32, 1, 1),
                    block_dim: (SOFTMAX_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                let (ld, rows_i, nk_i, causal, row0, nq_i) = (
                    nk as i64,
                    rows as i32,
                    nk as i32,
                    a.causal as i32,
                    q0 as i32,
                    nq as i32,
                );
                let mut l = gpu.stream().launch_builder(&softmax);
                l.arg(&s_ptr.0)
                    .arg(&ld)
                    .arg(&p_ptr.0)
                    .arg(&ld)
                    .arg(&rows_i)
                    .arg(&nk_i);
                l.arg(&causal).arg(&row0).arg(&nq_i);
                // SAFETY: the arguments match `softmax_rows_f32_bf16`'s signature in order and type; S
                // and P lie in the workspace checked above (rows * nk values each).
                unsafe { l.launch(cfg) }.map_err(|e| {
                    super::super::error::CudaError::driver("launching softmax_rows_f32_bf16", e)
                })?;
                // O [rows, d] = P [rows, nk] V [nk, d]
                gemm(
                    gpu,
                    &GemmArgs {
                        shape: GemmShape {
                            m: rows,
                            n: d,
                            k: nk,
                            a_trans: false,
                            lda: nk,
                            b_trans: false,
                            ldb: seg.row_stride,
                            ldc: a.out_row_stride,
                        },
                        a: p_ptr,
                        b: v,
                        c: out,
                        bias: None,
                        accumulate: false,
                    },
                )?;
            }
        }
    }
    Ok(())
}

/// Workspace (f32 elements) of [`attention_wide_blocked`] with `qb` rows per block over `nk` keys.
pub fn workspace_len_blocked(qb: usize, nk: usize) -> usize {
    scratch_layout(qb, nk).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_blocks_respect_the_scratch_bound() {
        // The VAE at 1024x1024: 16384 tokens.
        let qb = query_block(16384, 16384);
        assert_eq!(qb % 16, 0);
        assert!(qb * 16384 * 6 <= WIDE_SCRATCH_BYTES, "{qb}");
        assert!(qb >= 1024, "{qb}");
        // Few queries: one block of all of them.
        assert_eq!(query_block(10, 100), 10);
        // Huge key counts still get a tile's worth of rows.
        assert_eq!(query_block(1 << 20, 1 << 26), 16);
        let qb = query_block(4113, 4113);
        let (p_off, total) = scratch_layout(qb, 4113);
        assert!(p_off >= qb * 4113 && p_off % 64 == 0);
        assert!(total * 4 >= p_off * 4 + qb * 4113 * 2);
    }
}

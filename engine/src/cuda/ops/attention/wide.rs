//! Attention for heads wider than the flash kernel's 128 (the VAE mid-block: one head of 512 over up to
//! 16K tokens, once per image). The flash kernel keeps a query tile's output in registers, which does
//! not fit at D = 512, so this path materializes the scores of a block of query rows instead, per batch
//! row and head: `S = Q K^T` through cuBLASLt with f32 output (each K/V segment into its own column
//! range of S), `P = softmax(scale * S)` in bf16 with the causal and key-padding masks
//! (`kernels/cuda/softmax.cu`), then `O = P V` through cuBLASLt straight into the output rows (the second
//! segment's product accumulated onto the first's). The query block is sized so that S and P stay
//! within [`WIDE_SCRATCH_BYTES`] of the executor's attention workspace. Nothing allocates or waits on
//! the host, so a graph using it can be captured (cuBLASLt plans its shapes on the eager first run).
//!
//! Same semantics as the flash path: one or two segments, GQA, causal or not, key padding, any batch.
//! Refused: a launch with no keys at all (nothing to take a softmax over).

use super::super::super::context::{DevPtr, Gpu};
use super::super::super::error::{CudaError, CudaResult};
use super::super::elementwise::launch;
use super::super::gemm::{gemm, gemm_f32_out, GemmArgs, GemmShape};
use super::super::unsupported;
use super::{validate, AttentionArgs, MAX_HEAD_DIM};
use cudarc::driver::LaunchConfig;

/// Upper bound of the scores (f32) plus probabilities (bf16) of one query block.
pub const WIDE_SCRATCH_BYTES: usize = 256 << 20;
/// Widest head this path takes (the GEMMs would take more; nothing needs it).
pub const MAX_WIDE_HEAD_DIM: usize = 1024;
/// Bytes per score column of one query row: f32 S plus bf16 P.
const BYTES_PER_SCORE: usize = 6;

fn bad(problem: impl Into<String>) -> CudaError {
    unsupported("attention (wide head)", problem)
}

/// Where the keys of a launch sit in a row of S (and of P, which has the same layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreLayout {
    /// First column of segment 1: segment 0's length rounded up to 8, so that each segment's GEMM
    /// operand starts 32 bytes into the row (16 for bf16 P) and cuBLASLt keeps its aligned kernels.
    pub off1: usize,
    /// Columns the softmax covers (the end of the last segment).
    pub ncols: usize,
    /// Row stride of S and P in elements, a multiple of 8 (the kernel's 4-column accesses stay aligned).
    pub ld: usize,
    /// Query rows per block.
    pub rows: usize,
}

impl ScoreLayout {
    /// Element offset of P (bf16) in the workspace, counted in f32: right after S.
    pub fn p_offset(&self) -> usize {
        self.rows * self.ld
    }

    /// f32 elements of workspace: S plus P.
    pub fn workspace_len(&self) -> usize {
        self.rows * self.ld + self.rows * self.ld / 2
    }
}

/// Query rows per block for `nq` queries over score rows of `ld` columns: as many as fit
/// [`WIDE_SCRATCH_BYTES`], a multiple of 16 (whole tensor-core tiles) unless fewer fit or all queries
/// do; 0 when not even one row fits.
pub fn query_block(nq: usize, ld: usize) -> usize {
    let fit = WIDE_SCRATCH_BYTES / (ld.max(1) * BYTES_PER_SCORE);
    let fit = if fit >= 16 { fit / 16 * 16 } else { fit };
    fit.min(nq)
}

/// The score layout of `a` (validated) with `rows` query rows per block (`None`: [`query_block`]).
fn layout(a: &AttentionArgs<'_>, rows: Option<usize>) -> CudaResult<ScoreLayout> {
    let len0 = a.segments.first().map_or(0, |s| s.len);
    let (off1, ncols) = match a.segments.get(1) {
        Some(s1) => {
            let off1 = len0.next_multiple_of(8);
            (off1, off1 + s1.len)
        }
        None => (len0, len0),
    };
    if ncols == 0 {
        return Err(bad("no keys to attend to (every K/V segment is empty)"));
    }
    let ld = ncols.next_multiple_of(8);
    let rows = match rows {
        Some(0) => return Err(bad("a query block of 0 rows")),
        Some(r) => r.min(a.nq),
        None => query_block(a.nq, ld),
    };
    if rows == 0 {
        return Err(bad(format!(
            "one query row of scores over {ncols} keys exceeds the {WIDE_SCRATCH_BYTES}-byte scratch bound"
        )));
    }
    Ok(ScoreLayout {
        off1,
        ncols,
        ld,
        rows,
    })
}

/// Every check of [`attention_wide_blocked`] that needs no device; `Ok(None)`: nothing to compute.
fn plan(a: &AttentionArgs<'_>, rows: Option<usize>) -> CudaResult<Option<ScoreLayout>> {
    if a.head_dim <= MAX_HEAD_DIM || a.head_dim > MAX_WIDE_HEAD_DIM {
        return Err(bad(format!(
            "head_dim {} (this path takes {} to {MAX_WIDE_HEAD_DIM})",
            a.head_dim,
            MAX_HEAD_DIM + 1
        )));
    }
    if !validate(a)? {
        return Ok(None);
    }
    layout(a, rows).map(Some)
}

/// f32 elements of workspace the wide path needs for `a`; 0 when `a` is not a wide-head attention it
/// can run (the launch then reports why).
pub fn workspace_len(a: &AttentionArgs<'_>) -> usize {
    match plan(a, None) {
        Ok(Some(l)) => l.workspace_len(),
        _ => 0,
    }
}

/// Workspace of [`attention_wide_blocked`] with `rows` query rows per block (0 when it cannot run).
pub fn workspace_len_blocked(a: &AttentionArgs<'_>, rows: usize) -> usize {
    match plan(a, Some(rows)) {
        Ok(Some(l)) => l.workspace_len(),
        _ => 0,
    }
}

/// Runs `a` (128 < head_dim <= 1024) through GEMM, softmax, GEMM. `workspace`: f32 scratch of at least
/// [`workspace_len`] elements, 16-byte aligned.
pub fn attention_wide(
    gpu: &Gpu,
    a: &AttentionArgs<'_>,
    workspace: Option<(DevPtr, usize)>,
) -> CudaResult<()> {
    run(gpu, a, workspace, None)
}

/// [`attention_wide`] with `rows` query rows per block (tests force several blocks on small inputs);
/// the workspace must hold [`workspace_len_blocked`] f32 elements.
pub fn attention_wide_blocked(
    gpu: &Gpu,
    a: &AttentionArgs<'_>,
    workspace: Option<(DevPtr, usize)>,
    rows: usize,
) -> CudaResult<()> {
    run(gpu, a, workspace, Some(rows))
}

/// The leading dimension cuBLASLt is given: a single row may have any stride (the flash path accepts
/// that), but cuBLASLt insists that ld covers a row.
fn ld_of(rows: usize, stride: usize, row_len: usize) -> usize {
    if rows <= 1 {
        stride.max(row_len)
    } else {
        stride
    }
}

fn to_i32(v: usize, what: &str) -> CudaResult<i32> {
    i32::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit the kernel's 32-bit index")))
}

fn run(
    gpu: &Gpu,
    a: &AttentionArgs<'_>,
    workspace: Option<(DevPtr, usize)>,
    rows: Option<usize>,
) -> CudaResult<()> {
    let Some(l) = plan(a, rows)? else {
        return Ok(());
    };
    let need = l.workspace_len();
    let ws = match workspace {
        Some((p, len)) if p.0 != 0 && p.0 % 16 == 0 && len >= need => p,
        Some((p, len)) => {
            return Err(bad(format!(
                "needs {need} f32 elements of 16-byte aligned workspace, got {len} at {:#x}",
                p.0
            )))
        }
        None => {
            return Err(bad(format!(
                "needs {need} f32 elements of workspace, got none"
            )))
        }
    };
    let (s_ptr, p_ptr) = (ws, ws.offset(l.p_offset(), 4));
    let d = a.head_dim;
    let seg = |i: usize| a.segments.get(i);
    let total: usize = a.segments.iter().map(|s| s.len).sum();
    let col = [0, l.off1];

    let threads = (l.ncols.div_ceil(4).next_power_of_two()).clamp(32, 256) as u32;
    let (sp, pp) = (s_ptr.0, p_ptr.0);
    let ld = l.ld as i64;
    let ncols = to_i32(l.ncols, "score columns")?;
    let len0 = to_i32(seg(0).map_or(0, |s| s.len), "segment length")?;
    let off1 = to_i32(l.off1, "segment offset")?;
    let len1 = to_i32(seg(1).map_or(0, |s| s.len), "segment length")?;
    let valid0 = seg(0).and_then(|s| s.valid_len).map_or(0, |p| p.0);
    let valid1 = seg(1).and_then(|s| s.valid_len).map_or(0, |p| p.0);
    let (nq, total_i) = (to_i32(a.nq, "query count")?, to_i32(total, "key count")?);
    let causal = a.causal as i32;
    let scale_log2 = a.scale * std::f32::consts::LOG2_E;

    for b in 0..a.batch {
        let batch_row = b as i32;
        for h in 0..a.heads {
            for q0 in (0..a.nq).step_by(l.rows) {
                let m = l.rows.min(a.nq - q0);
                let q =
                    a.q.offset(b * a.q_batch_stride + q0 * a.q_row_stride + h * d, 2);
                let out = a
                    .out
                    .offset(b * a.out_batch_stride + q0 * a.out_row_stride + h * d, 2);
                for (i, s) in a.segments.iter().enumerate().filter(|(_, s)| s.len > 0) {
                    let kvh = h / (a.heads / s.kv_heads);
                    let k = s.k.offset(b * s.batch_stride + kvh * d, 2);
                    let shape = GemmShape {
                        m,
                        n: s.len,
                        k: d,
                        a_trans: false,
                        lda: ld_of(m, a.q_row_stride, d),
                        b_trans: true,
                        ldb: ld_of(s.len, s.row_stride, d),
                        ldc: l.ld,
                    };
                    gemm_f32_out(gpu, &shape, q, k, s_ptr.offset(col[i], 4), 1.0)?;
                }
                let cfg = LaunchConfig {
                    grid_dim: (m as u32, 1, 1),
                    block_dim: (threads, 1, 1),
                    shared_mem_bytes: 0,
                };
                let q0_ = q0 as i64;
                launch!(
                    gpu,
                    "softmax",
                    "softmax_rows",
                    cfg,
                    [
                        &sp,
                        &pp,
                        &ld,
                        &ncols,
                        &len0,
                        &valid0,
                        &off1,
                        &len1,
                        &valid1,
                        &batch_row,
                        &q0_,
                        &nq,
                        &total_i,
                        &causal,
                        &scale_log2
                    ]
                )?;
                let mut accumulate = false;
                for (i, s) in a.segments.iter().enumerate().filter(|(_, s)| s.len > 0) {
                    let kvh = h / (a.heads / s.kv_heads);
                    let v = s.v.offset(b * s.batch_stride + kvh * d, 2);
                    let shape = GemmShape {
                        m,
                        n: d,
                        k: s.len,
                        a_trans: false,
                        lda: l.ld,
                        b_trans: false,
                        ldb: ld_of(s.len, s.row_stride, d),
                        ldc: ld_of(m, a.out_row_stride, d),
                    };
                    let args = GemmArgs {
                        shape,
                        a: p_ptr.offset(col[i], 2),
                        b: v,
                        c: out,
                        bias: None,
                        accumulate,
                    };
                    gemm(gpu, &args)?;
                    accumulate = true;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super as attention;
    use super::super::tests::{args, seg};
    use super::*;

    fn problem(r: CudaResult<Option<ScoreLayout>>) -> String {
        match r {
            Err(CudaError::Unsupported { problem, .. }) => problem,
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn query_blocks_respect_the_scratch_bound() {
        // The VAE at 1024x1024: 16384 tokens, one 512-wide head.
        let s = [seg(16384, 1, 512)];
        let a = args(&s, 16384, 1, 512);
        let l = plan(&a, None).unwrap().unwrap();
        assert_eq!((l.ld, l.ncols, l.off1), (16384, 16384, 16384));
        assert_eq!(l.rows % 16, 0);
        assert!(l.rows >= 1024, "{}", l.rows);
        assert!(l.workspace_len() * 4 <= WIDE_SCRATCH_BYTES);
        assert!((l.rows + 16) * l.ld * BYTES_PER_SCORE > WIDE_SCRATCH_BYTES);
        assert_eq!(workspace_len(&a), l.workspace_len());
        // What the executor sizes its workspace by: the wide path's need, never the decode path's.
        assert_eq!(attention::workspace_len(&a), l.workspace_len());
        assert_eq!(attention::decode_workspace_len(&args(&s, 1, 1, 512)), 0);
        // Few queries: one block of all of them, workspace for exactly those rows.
        let s = [seg(4113, 1, 512)];
        let a = args(&s, 1000, 1, 512);
        let l = plan(&a, None).unwrap().unwrap();
        assert_eq!((l.rows, l.ld), (1000, 4120));
        assert_eq!(l.workspace_len(), 1000 * 4120 * 3 / 2);
        // Fewer than 16 rows fit: as many as do; none fit: refused, never over the bound.
        assert_eq!(query_block(1000, WIDE_SCRATCH_BYTES / 6 / 5), 5);
        assert_eq!(query_block(1000, WIDE_SCRATCH_BYTES / 6 + 8), 0);
        // A forced block never exceeds the query count.
        assert_eq!(workspace_len_blocked(&a, 5000), l.workspace_len());
        assert_eq!(workspace_len_blocked(&a, 0), 0);
    }

    #[test]
    fn two_segments_start_aligned_and_p_follows_s() {
        let s = [seg(1001, 1, 256), seg(37, 1, 256)];
        let a = args(&s, 300, 2, 256);
        let l = plan(&a, Some(64)).unwrap().unwrap();
        assert_eq!((l.off1, l.ncols, l.ld, l.rows), (1008, 1045, 1048, 64));
        // P is bf16 right after S: 16-byte aligned, and S + P fit the reported workspace.
        assert_eq!(l.p_offset() * 4 % 16, 0);
        assert!(l.p_offset() * 4 + l.rows * l.ld * 2 <= l.workspace_len() * 4);
        // One segment: no gap.
        let s = [seg(13, 1, 256)];
        let l = plan(&args(&s, 3, 1, 256), None).unwrap().unwrap();
        assert_eq!((l.off1, l.ncols, l.ld, l.rows), (13, 13, 16, 3));
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let s = [seg(10, 1, 512)];
        let a = args(&s, 5, 1, 2048);
        assert!(problem(plan(&a, None)).contains("head_dim 2048"));
        let a = args(&s, 5, 1, 64);
        assert!(problem(plan(&a, None)).contains("head_dim 64"));
        let empty = [seg(0, 1, 512), seg(0, 1, 512)];
        assert!(problem(plan(&args(&empty, 5, 1, 512), None)).contains("no keys"));
        assert_eq!(workspace_len(&args(&empty, 5, 1, 512)), 0);
        let three = [seg(4, 1, 512), seg(4, 1, 512), seg(4, 1, 512)];
        assert!(problem(plan(&args(&three, 5, 1, 512), None)).contains("3 K/V segments"));
        let gqa = [seg(10, 3, 512)];
        assert!(problem(plan(&args(&gqa, 5, 4, 512), None)).contains("not a multiple"));
        // Nothing to compute is not an error, and needs no workspace.
        assert_eq!(plan(&args(&s, 0, 1, 512), None), Ok(None));
        assert_eq!(workspace_len(&args(&s, 0, 1, 512)), 0);
    }
}

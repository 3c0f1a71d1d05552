//! Flash attention (kernels/cuda/attention.cu): queries over one or two K/V segments, GQA, causal or
//! bidirectional, key padding per batch row, and a split-KV path for decode (few queries, long cache).

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::unsupported;

/// Most K/V segments one launch walks (und cache + gen tokens).
pub const MAX_SEGMENTS: usize = 2;

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

/// Launches the flash kernel, or the split-KV decode kernels when there are few queries per batch row
/// and many keys. `workspace` is f32 scratch for split-KV partials; see [`decode_workspace_len`].
pub fn attention(gpu: &Gpu, args: &AttentionArgs<'_>, workspace: Option<(DevPtr, usize)>) -> CudaResult<()> {
    let _ = (gpu, workspace);
    Err(unsupported("attention", format!("not implemented yet (head_dim {})", args.head_dim)))
}

/// f32 elements of scratch the decode path needs for `args` (0 when it would take the flash path).
pub fn decode_workspace_len(args: &AttentionArgs<'_>) -> usize {
    let _ = args;
    0
}

//! Everything `attention` decides on the host, without the GPU: the arguments checked (errors, never
//! panics), the head dim's kernel instantiation, the flash or split-KV decode path, and the parameter
//! block filled in.

use super::super::super::context::DevPtr;
use super::super::super::error::{CudaError, CudaResult};
use super::super::unsupported;
use super::params::{Params, SegParams, DECODE_BN, DECODE_MAX_ROWS};
use super::{AttentionArgs, MAX_HEAD_DIM, MAX_SEGMENTS};

// --- split-KV heuristics -------------------------------------------------------------------------------

/// Below this many keys the flash kernel's single pass is as fast as splitting.
const DECODE_MIN_KEYS: usize = 256;
/// Fewest keys per split (two decode tiles), so each warp's loads overlap its compute at least once.
const DECODE_MIN_SPLIT_KEYS: usize = 2 * DECODE_BN;
/// Warps the split grid aims for: ~8 per SM on a 132-SM H100 keeps enough K/V bytes in flight to
/// stream at full bandwidth. A constant (not the device's SM count) so that `decode_workspace_len` needs
/// no GPU and the caller can size the workspace once.
const DECODE_TARGET_WARPS: usize = 1024;
const DECODE_MAX_SPLITS: usize = 1024;

/// Largest sequence length / query count, so that every index the kernels form in 32 bits
/// (`query + total_keys`, `key + tile`) stays far from overflow.
const MAX_TOKENS: usize = (i32::MAX / 4) as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DecodeSplit {
    pub(super) nsplit: usize,
    pub(super) split_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    Flash,
    Decode(DecodeSplit),
}

/// What `attention` launches, decided on the host without touching the GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Plan {
    pub(super) d_pad: usize,
    pub(super) path: Path,
    pub(super) params: Params,
}
/// The kernel instantiation a head dim runs in.
pub(super) fn padded_head_dim(head_dim: usize) -> Option<usize> {
    [16, 32, 64, 80, 128].into_iter().find(|&d| head_dim <= d)
}

pub(super) fn bad(problem: impl Into<String>) -> CudaError {
    unsupported("attention", problem)
}

fn to_i32(v: usize, what: &str) -> CudaResult<i32> {
    i32::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit the kernel's 32-bit index")))
}

fn to_i64(v: usize, what: &str) -> CudaResult<i64> {
    i64::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit a 64-bit element offset")))
}
/// Every check that does not need the device, shared with the wide-head path (the flash kernels' head
/// dim limit is checked by `plan`). `Ok(false)`: valid but nothing to compute.
pub(crate) fn validate(a: &AttentionArgs<'_>) -> CudaResult<bool> {
    let nseg = a.segments.len();
    if nseg == 0 || nseg > MAX_SEGMENTS {
        return Err(bad(format!(
            "{nseg} K/V segments (supported: 1 to {MAX_SEGMENTS})"
        )));
    }
    if a.head_dim == 0 {
        return Err(bad("head_dim 0"));
    }
    if a.heads == 0 || a.heads > 65535 {
        return Err(bad(format!("{} heads (supported: 1 to 65535)", a.heads)));
    }
    if a.batch > 65535 {
        return Err(bad(format!("batch {} (supported: up to 65535)", a.batch)));
    }
    if !a.scale.is_finite() {
        return Err(bad(format!("scale {} is not finite", a.scale)));
    }
    if a.nq > MAX_TOKENS {
        return Err(bad(format!(
            "{} queries (supported: up to {MAX_TOKENS})",
            a.nq
        )));
    }
    let width = a.heads * a.head_dim;
    if a.nq > 1 && a.q_row_stride < width {
        return Err(bad(format!(
            "q row stride {} is less than heads*head_dim = {width}",
            a.q_row_stride
        )));
    }
    if a.nq > 1 && a.out_row_stride < width {
        return Err(bad(format!(
            "out row stride {} is less than heads*head_dim = {width}",
            a.out_row_stride
        )));
    }
    let mut total = 0usize;
    for (s, seg) in a.segments.iter().enumerate() {
        if seg.kv_heads == 0 || !a.heads.is_multiple_of(seg.kv_heads) {
            return Err(bad(format!(
                "segment {s}: {} heads are not a multiple of its {} kv heads",
                a.heads, seg.kv_heads
            )));
        }
        if seg.len > 1 && seg.row_stride < seg.kv_heads * a.head_dim {
            return Err(bad(format!(
                "segment {s}: row stride {} is less than kv_heads*head_dim = {}",
                seg.row_stride,
                seg.kv_heads * a.head_dim
            )));
        }
        if seg.len > 0 && (seg.k.0 == 0 || seg.v.0 == 0) {
            return Err(bad(format!("segment {s}: null K or V pointer")));
        }
        if seg.k.0 % 2 != 0 || seg.v.0 % 2 != 0 {
            return Err(bad(format!(
                "segment {s}: K/V pointers are not 2-byte aligned (bf16)"
            )));
        }
        if let Some(p) = seg.valid_len {
            if p.0 == 0 || p.0 % 4 != 0 {
                return Err(bad(format!(
                    "segment {s}: valid_len pointer is null or not 4-byte aligned (i32)"
                )));
            }
        }
        to_i64(seg.row_stride, "segment row stride")?;
        to_i64(seg.batch_stride, "segment batch stride")?;
        total += seg.len;
        if total > MAX_TOKENS {
            return Err(bad(format!("more than {MAX_TOKENS} keys")));
        }
    }
    for (v, what) in [
        (a.q_row_stride, "q row stride"),
        (a.q_batch_stride, "q batch stride"),
        (a.out_row_stride, "out row stride"),
        (a.out_batch_stride, "out batch stride"),
    ] {
        to_i64(v, what)?;
    }
    if a.batch == 0 || a.nq == 0 {
        return Ok(false);
    }
    if a.q.0 == 0 || a.out.0 == 0 {
        return Err(bad("null q or out pointer"));
    }
    if !a.q.0.is_multiple_of(2) || !a.out.0.is_multiple_of(2) {
        return Err(bad("q/out pointers are not 2-byte aligned (bf16)"));
    }
    Ok(true)
}

/// Whether every row a kernel addresses as `base + b*batch_stride + i*row_stride + head*head_dim` starts on
/// a 16-byte boundary (then loads and stores move 16-byte chunks; otherwise single elements).
fn rows_aligned(
    base: DevPtr,
    row_stride: usize,
    rows: usize,
    batch_stride: usize,
    batch: usize,
    heads: usize,
    head_dim: usize,
) -> bool {
    base.0.is_multiple_of(16)
        && (rows <= 1 || row_stride.is_multiple_of(8))
        && (batch <= 1 || batch_stride.is_multiple_of(8))
        && (heads <= 1 || head_dim.is_multiple_of(8))
}

/// The split of the keys for the decode path, or `None` when the flash kernel is the better (or only)
/// choice. Assumes `validate` passed.
pub(super) fn decode_split(a: &AttentionArgs<'_>) -> Option<DecodeSplit> {
    let kv_heads = a.segments.first()?.kv_heads;
    // One warp packs the nq x g query rows of a kv head, so every segment must group heads the same way.
    if a.segments.iter().any(|s| s.kv_heads != kv_heads) {
        return None;
    }
    let g = a.heads / kv_heads;
    if a.nq * g > DECODE_MAX_ROWS {
        return None;
    }
    let total: usize = a.segments.iter().map(|s| s.len).sum();
    if total < DECODE_MIN_KEYS {
        return None;
    }
    let pairs = (a.batch * kv_heads).max(1);
    let want = DECODE_TARGET_WARPS.div_ceil(pairs);
    let most = total.div_ceil(DECODE_MIN_SPLIT_KEYS);
    let n = want.min(most).min(DECODE_MAX_SPLITS);
    if n < 2 {
        return None;
    }
    let split_len = total.div_ceil(n).next_multiple_of(DECODE_BN);
    let nsplit = total.div_ceil(split_len);
    (nsplit >= 2).then_some(DecodeSplit { nsplit, split_len })
}

fn workspace_len_for(a: &AttentionArgs<'_>, split: DecodeSplit) -> usize {
    a.batch * split.nsplit * a.nq * a.heads * (a.head_dim + 1)
}

/// f32 elements of scratch the decode path needs for `args` (0 when it would take the flash path, or when
/// the arguments are invalid).
pub fn decode_workspace_len(args: &AttentionArgs<'_>) -> usize {
    if args.head_dim > MAX_HEAD_DIM {
        return 0;
    }
    match validate(args) {
        Ok(true) => decode_split(args).map_or(0, |s| workspace_len_for(args, s)),
        _ => 0,
    }
}

pub(super) fn plan(
    a: &AttentionArgs<'_>,
    workspace: Option<(DevPtr, usize)>,
) -> CudaResult<Option<Plan>> {
    let d_pad = padded_head_dim(a.head_dim).ok_or_else(|| {
        bad(format!(
            "head_dim {} (the flash kernels take 1 to {MAX_HEAD_DIM})",
            a.head_dim
        ))
    })?;
    if !validate(a)? {
        return Ok(None);
    }
    let mut path = Path::Flash;
    let mut ws = 0u64;
    if let (Some(split), Some((ptr, len))) = (decode_split(a), workspace) {
        if ptr.0 % 4 != 0 {
            return Err(bad("workspace pointer is not 4-byte aligned (f32)"));
        }
        // Too small a workspace is not an error: the flash kernel computes the same thing.
        if ptr.0 != 0 && len >= workspace_len_for(a, split) {
            path = Path::Decode(split);
            ws = ptr.0;
        }
    }
    let mut seg = [SegParams {
        group: 1,
        ..Default::default()
    }; MAX_SEGMENTS];
    let mut total = 0usize;
    for (p, s) in seg.iter_mut().zip(a.segments) {
        let aligned = |base| {
            rows_aligned(
                base,
                s.row_stride,
                s.len,
                s.batch_stride,
                a.batch,
                s.kv_heads,
                a.head_dim,
            )
        };
        let vec = aligned(s.k) && aligned(s.v);
        *p = SegParams {
            k: s.k.0,
            v: s.v.0,
            valid_len: s.valid_len.map_or(0, |v| v.0),
            row_stride: to_i64(s.row_stride, "segment row stride")?,
            batch_stride: to_i64(s.batch_stride, "segment batch stride")?,
            len: to_i32(s.len, "segment length")?,
            kv_heads: to_i32(s.kv_heads, "kv heads")?,
            group: to_i32(a.heads / s.kv_heads, "GQA group")?,
            vec: vec as i32,
        };
        total += s.len;
    }
    let (nsplit, split_len) = match path {
        Path::Decode(s) => (s.nsplit, s.split_len),
        Path::Flash => (0, 0),
    };
    let params = Params {
        q: a.q.0,
        out: a.out.0,
        ws,
        q_row_stride: to_i64(a.q_row_stride, "q row stride")?,
        q_batch_stride: to_i64(a.q_batch_stride, "q batch stride")?,
        out_row_stride: to_i64(a.out_row_stride, "out row stride")?,
        out_batch_stride: to_i64(a.out_batch_stride, "out batch stride")?,
        seg,
        nseg: a.segments.len() as i32,
        batch: to_i32(a.batch, "batch")?,
        nq: to_i32(a.nq, "query count")?,
        heads: to_i32(a.heads, "heads")?,
        head_dim: to_i32(a.head_dim, "head_dim")?,
        total_keys: to_i32(total, "key count")?,
        causal: a.causal as i32,
        q_vec: rows_aligned(
            a.q,
            a.q_row_stride,
            a.nq,
            a.q_batch_stride,
            a.batch,
            a.heads,
            a.head_dim,
        ) as i32,
        out_vec: rows_aligned(
            a.out,
            a.out_row_stride,
            a.nq,
            a.out_batch_stride,
            a.batch,
            a.heads,
            a.head_dim,
        ) as i32,
        nsplit: to_i32(nsplit, "split count")?,
        split_len: to_i32(split_len, "split length")?,
        scale_log2: a.scale * std::f32::consts::LOG2_E,
    };
    Ok(Some(Plan {
        d_pad,
        path,
        params,
    }))
}

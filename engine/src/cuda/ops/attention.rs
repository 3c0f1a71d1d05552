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

use super::super::context::{DevPtr, Gpu};
use super::super::error::{CudaError, CudaResult};
use super::attention_sm90;
pub use super::attention_sm90::FlashKernel;
use super::unsupported;
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig};

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

// --- constants shared with attention.cu (change both together) ---------------------------------------

/// Flash kernel: query rows per block (4 warps x 16) and threads per block.
const FLASH_BM: usize = 64;
const FLASH_THREADS: u32 = 128;
/// Decode kernel: keys per tile, independent warps per block, packed query rows per warp.
const DECODE_BN: usize = 32;
const DECODE_WARPS: usize = 2;
const DECODE_MAX_ROWS: usize = 16;
const COMBINE_THREADS: u32 = 128;

/// Flash kernel dynamic shared memory: Q [64][D+8] + K, V [2][64][D+8] bf16.
fn flash_smem_bytes(d_pad: usize) -> usize {
    (FLASH_BM + 4 * 64) * (d_pad + 8) * 2
}

/// Decode kernel dynamic shared memory: per warp Q [16][D+8] + K, V [2][32][D+8] bf16.
fn decode_smem_bytes(d_pad: usize) -> usize {
    DECODE_WARPS * (16 + 4 * DECODE_BN) * (d_pad + 8) * 2
}

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

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SegParams {
    k: u64,
    v: u64,
    valid_len: u64,
    row_stride: i64,
    batch_stride: i64,
    len: i32,
    kv_heads: i32,
    group: i32,
    vec: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Params {
    q: u64,
    out: u64,
    ws: u64,
    q_row_stride: i64,
    q_batch_stride: i64,
    out_row_stride: i64,
    out_batch_stride: i64,
    seg: [SegParams; MAX_SEGMENTS],
    nseg: i32,
    batch: i32,
    nq: i32,
    heads: i32,
    head_dim: i32,
    total_keys: i32,
    causal: i32,
    q_vec: i32,
    out_vec: i32,
    nsplit: i32,
    split_len: i32,
    scale_log2: f32,
}

// attention.cu static_asserts the same sizes for AttnSeg / AttnParams.
const _: () = assert!(std::mem::size_of::<SegParams>() == 56);
const _: () = assert!(std::mem::size_of::<Params>() == 216);

// SAFETY: `Params` is `#[repr(C)]`, plain old data, and matches `AttnParams` in attention.cu field by
// field (sizes asserted on both sides).
unsafe impl DeviceRepr for Params {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DecodeSplit {
    nsplit: usize,
    split_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Flash,
    Decode(DecodeSplit),
}

/// What `attention` launches, decided on the host without touching the GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plan {
    d_pad: usize,
    path: Path,
    params: Params,
}

/// The kernel instantiation a head dim runs in.
fn padded_head_dim(head_dim: usize) -> Option<usize> {
    [16, 32, 64, 80, 128].into_iter().find(|&d| head_dim <= d)
}

fn bad(problem: impl Into<String>) -> CudaError {
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
pub(super) fn validate(a: &AttentionArgs<'_>) -> CudaResult<bool> {
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
fn decode_split(a: &AttentionArgs<'_>) -> Option<DecodeSplit> {
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

fn plan(a: &AttentionArgs<'_>, workspace: Option<(DevPtr, usize)>) -> CudaResult<Option<Plan>> {
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
        let vec = rows_aligned(
            s.k,
            s.row_stride,
            s.len,
            s.batch_stride,
            a.batch,
            s.kv_heads,
            a.head_dim,
        ) && rows_aligned(
            s.v,
            s.row_stride,
            s.len,
            s.batch_stride,
            a.batch,
            s.kv_heads,
            a.head_dim,
        );
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

/// Lets `f` take `bytes` of dynamic shared memory (the default cap is 48 KB). Reads first, so the set
/// happens once per loaded module.
pub(super) fn allow_dynamic_smem(f: &CudaFunction, entry: &str, bytes: usize) -> CudaResult<()> {
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
pub(super) fn launch_in(
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
        super::attention_wide::workspace_len(args)
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
        return super::attention_wide::attention_wide(gpu, args, workspace);
    }
    let Some(plan) = plan(args, workspace)? else {
        return Ok(());
    };
    let d = plan.d_pad;
    match plan.path {
        Path::Flash => match attention_sm90::chosen(gpu.arch(), args.head_dim, kernel)? {
            Some(version) => attention_sm90::launch(gpu, version, args, &plan.params),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(len: usize, kv_heads: usize, d: usize) -> KvSegmentArgs {
        KvSegmentArgs {
            k: DevPtr(0x1000),
            v: DevPtr(0x9000),
            len,
            row_stride: kv_heads * d,
            batch_stride: len * kv_heads * d,
            kv_heads,
            valid_len: None,
        }
    }

    fn args<'a>(
        segments: &'a [KvSegmentArgs],
        nq: usize,
        heads: usize,
        d: usize,
    ) -> AttentionArgs<'a> {
        AttentionArgs {
            q: DevPtr(0x10000),
            q_row_stride: heads * d,
            q_batch_stride: nq * heads * d,
            out: DevPtr(0x20000),
            out_row_stride: heads * d,
            out_batch_stride: nq * heads * d,
            batch: 1,
            nq,
            heads,
            head_dim: d,
            segments,
            causal: false,
            scale: 0.125,
        }
    }

    fn problem(r: CudaResult<Option<Plan>>) -> String {
        match r {
            Err(CudaError::Unsupported { problem, .. }) => problem,
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn rejects_what_the_kernels_cannot_do() {
        let s = [seg(10, 2, 64)];
        let mut a = args(&s, 5, 4, 64);
        a.head_dim = 0;
        assert!(problem(plan(&a, None)).contains("head_dim 0"));
        a.head_dim = 129;
        assert!(problem(plan(&a, None)).contains("head_dim 129"));
        let s3 = [seg(10, 3, 64)];
        let a = args(&s3, 5, 4, 64);
        assert!(problem(plan(&a, None)).contains("not a multiple"));
        let a = args(&[], 5, 4, 64);
        assert!(problem(plan(&a, None)).contains("0 K/V segments"));
        let many = [seg(1, 1, 64), seg(1, 1, 64), seg(1, 1, 64)];
        let a = args(&many, 5, 4, 64);
        assert!(problem(plan(&a, None)).contains("3 K/V segments"));
        let mut a = args(&s, 5, 4, 64);
        a.scale = f32::NAN;
        assert!(problem(plan(&a, None)).contains("not finite"));
        let mut a = args(&s, 5, 4, 64);
        a.q_row_stride = 100;
        assert!(problem(plan(&a, None)).contains("q row stride"));
        let mut narrow = [seg(10, 2, 64)];
        narrow[0].row_stride = 64;
        let a = args(&narrow, 5, 4, 64);
        assert!(problem(plan(&a, None)).contains("segment 0: row stride"));
        let mut a = args(&s, 5, 4, 64);
        a.out = DevPtr(0x20001);
        assert!(problem(plan(&a, None)).contains("2-byte"));
    }

    #[test]
    fn empty_work_is_a_no_op() {
        let s = [seg(10, 2, 64)];
        let mut a = args(&s, 0, 4, 64);
        assert_eq!(plan(&a, None), Ok(None));
        a.nq = 3;
        a.batch = 0;
        assert_eq!(plan(&a, None), Ok(None));
    }

    #[test]
    fn pads_head_dims_and_packs_params() {
        for (hd, pad) in [
            (1, 16),
            (12, 16),
            (16, 16),
            (24, 32),
            (40, 64),
            (64, 64),
            (80, 80),
            (96, 128),
            (120, 128),
            (128, 128),
        ] {
            let s = [seg(70, 2, hd)];
            let p = plan(&args(&s, 9, 4, hd), None).unwrap().unwrap();
            assert_eq!(p.d_pad, pad, "head_dim {hd}");
            assert_eq!(p.path, Path::Flash);
        }
        let s = [seg(45, 2, 12), seg(70, 3, 12)];
        let p = plan(&args(&s, 9, 6, 12), None).unwrap().unwrap().params;
        assert_eq!(
            (p.nseg, p.total_keys, p.seg[0].group, p.seg[1].group),
            (2, 115, 3, 2)
        );
        // head_dim 12: head h starts 24*h bytes in, not 16-byte aligned.
        assert_eq!((p.q_vec, p.seg[0].vec, p.seg[1].vec), (0, 0, 0));
        let s = [seg(45, 2, 64)];
        let p = plan(&args(&s, 9, 4, 64), None).unwrap().unwrap().params;
        assert_eq!(
            (
                p.q_vec,
                p.out_vec,
                p.seg[0].vec,
                p.seg[1].group,
                p.seg[1].len
            ),
            (1, 1, 1, 1, 0)
        );
    }

    #[test]
    fn decode_takes_the_split_path_only_with_enough_workspace() {
        let s = [seg(4096, 4, 128)];
        let mut a = args(&s, 1, 28, 128);
        a.causal = true;
        let need = decode_workspace_len(&a);
        assert!(need > 0);
        let split = decode_split(&a).unwrap();
        assert!(split.nsplit >= 2 && split.split_len.is_multiple_of(DECODE_BN));
        assert!(
            split.nsplit * split.split_len >= 4096 && (split.nsplit - 1) * split.split_len < 4096
        );
        assert_eq!(need, split.nsplit * 28 * 129);
        let p = plan(&a, Some((DevPtr(0x40000), need))).unwrap().unwrap();
        assert_eq!(p.path, Path::Decode(split));
        assert_eq!(p.params.ws, 0x40000);
        let p = plan(&a, Some((DevPtr(0x40000), need - 1)))
            .unwrap()
            .unwrap();
        assert_eq!(p.path, Path::Flash);
        let p = plan(&a, None).unwrap().unwrap();
        assert_eq!(p.path, Path::Flash);
        // Too many packed rows (3 queries x 7 heads > 16), too few keys, or different kv heads: flash.
        assert_eq!(decode_workspace_len(&args(&s, 3, 28, 128)), 0);
        let short = [seg(100, 4, 128)];
        assert_eq!(decode_workspace_len(&args(&short, 1, 28, 128)), 0);
        let mixed = [seg(2048, 4, 128), seg(2048, 2, 128)];
        assert_eq!(decode_workspace_len(&args(&mixed, 1, 28, 128)), 0);
        let two = [seg(3000, 2, 120), seg(700, 2, 120)];
        assert!(decode_workspace_len(&args(&two, 2, 14, 120)) > 0);
    }

    #[test]
    fn shared_memory_fits_hopper() {
        for d in [16, 32, 64, 80, 128] {
            assert!(flash_smem_bytes(d) <= 227 * 1024);
            assert!(decode_smem_bytes(d) <= 227 * 1024);
        }
        assert_eq!(flash_smem_bytes(128), 87040);
        assert_eq!(decode_smem_bytes(128), 78336);
    }
}

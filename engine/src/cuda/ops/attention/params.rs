//! The contract with `kernels/cuda/attention.cu` (and `attention_sm90.cu`, which takes the same
//! parameters): block shapes, dynamic shared memory sizes, and the `#[repr(C)]` parameter block whose
//! layout the kernels assert with the same sizes. Change both sides together.

use super::MAX_SEGMENTS;
use cudarc::driver::DeviceRepr;

/// Flash kernel: query rows per block (4 warps x 16) and threads per block.
pub(super) const FLASH_BM: usize = 64;
pub(super) const FLASH_THREADS: u32 = 128;
/// Decode kernel: keys per tile, independent warps per block, packed query rows per warp.
pub(super) const DECODE_BN: usize = 32;
pub(super) const DECODE_WARPS: usize = 2;
pub(super) const DECODE_MAX_ROWS: usize = 16;
pub(super) const COMBINE_THREADS: u32 = 128;

/// Flash kernel dynamic shared memory: Q [64][D+8] + K, V [2][64][D+8] bf16.
pub(super) fn flash_smem_bytes(d_pad: usize) -> usize {
    (FLASH_BM + 4 * 64) * (d_pad + 8) * 2
}

/// Decode kernel dynamic shared memory: per warp Q [16][D+8] + K, V [2][32][D+8] bf16.
pub(super) fn decode_smem_bytes(d_pad: usize) -> usize {
    DECODE_WARPS * (16 + 4 * DECODE_BN) * (d_pad + 8) * 2
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct SegParams {
    pub(super) k: u64,
    pub(super) v: u64,
    pub(super) valid_len: u64,
    pub(super) row_stride: i64,
    pub(super) batch_stride: i64,
    pub(super) len: i32,
    pub(super) kv_heads: i32,
    pub(super) group: i32,
    pub(super) vec: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Params {
    pub(super) q: u64,
    pub(super) out: u64,
    pub(super) ws: u64,
    pub(super) q_row_stride: i64,
    pub(super) q_batch_stride: i64,
    pub(super) out_row_stride: i64,
    pub(super) out_batch_stride: i64,
    pub(super) seg: [SegParams; MAX_SEGMENTS],
    pub(super) nseg: i32,
    pub(super) batch: i32,
    pub(super) nq: i32,
    pub(super) heads: i32,
    pub(super) head_dim: i32,
    pub(super) total_keys: i32,
    pub(super) causal: i32,
    pub(super) q_vec: i32,
    pub(super) out_vec: i32,
    pub(super) nsplit: i32,
    pub(super) split_len: i32,
    pub(super) scale_log2: f32,
}

// attention.cu static_asserts the same sizes for AttnSeg / AttnParams.
const _: () = assert!(std::mem::size_of::<SegParams>() == 56);
const _: () = assert!(std::mem::size_of::<Params>() == 216);

// SAFETY: `Params` is `#[repr(C)]`, plain old data, and matches `AttnParams` in attention.cu field by
// field (sizes asserted on both sides).
unsafe impl DeviceRepr for Params {}

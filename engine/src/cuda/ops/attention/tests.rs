//! The host-side plan: what is refused, what is a no-op, head dim padding, the parameter block, and when
//! decode takes the split-KV path.

use super::params::{decode_smem_bytes, flash_smem_bytes, DECODE_BN};
use super::plan::{decode_split, plan, Path, Plan};
use super::*;
use crate::cuda::error::{CudaError, CudaResult};

pub(super) fn seg(len: usize, kv_heads: usize, d: usize) -> KvSegmentArgs {
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

pub(super) fn args<'a>(
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
    assert!(split.nsplit * split.split_len >= 4096 && (split.nsplit - 1) * split.split_len < 4096);
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

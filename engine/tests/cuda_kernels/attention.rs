//! GPU tests of kernels/cuda/attention.cu against an f64 reference: every padded head dim (and the tiny
//! test dims), query and key counts that are not multiples of the tiles, two segments with different
//! layouts (segment 1 a column slice of a fused K|V buffer), GQA 1/2/3/7 (also different per segment),
//! causal and bidirectional, batch 2 with key padding, rows that see no key, unaligned pointers and
//! strides (element-load path), and the split-KV decode path against the flash path. Heads wider than
//! 128 take the GEMM-softmax-GEMM path of `attention_wide` (softmax.cu), checked the same way.

use super::common::{self, Rng, BF16_TOL};
use hbridge_engine::cuda::buffer::{poison_bf16, upload};
use hbridge_engine::cuda::ops::attention::wide as attention_wide;
use hbridge_engine::cuda::ops::attention::{
    attention, attention_with, decode_workspace_len, workspace_len, AttentionArgs, FlashKernel,
    KvSegmentArgs,
};
use hbridge_engine::cuda::{dev_ptr, Gpu};
use hbridge_kernels::Arch;

/// How one segment is laid out in memory.
#[derive(Clone)]
pub(super) struct Seg {
    pub(super) len: usize,
    pub(super) kv_heads: usize,
    /// K and V share one buffer `[len, 2*kv_heads*d + pad]` (V at column kv_heads*d), like a fused
    /// projection output; otherwise separate buffers `[len, kv_heads*d + pad]`.
    pub(super) fused: bool,
    /// Extra elements per row.
    pub(super) pad: usize,
    /// Extra elements between batch rows.
    pub(super) batch_gap: usize,
    /// Per-batch valid key counts (key padding).
    pub(super) valid: Option<Vec<i32>>,
    /// Start K (and V) one element past a 16-byte boundary (element-load path).
    pub(super) misalign: bool,
    /// Key row j is scaled by 1 + ramp * j / len: with ramp > 0 each tile's scores outgrow the last
    /// tile's (the running max keeps moving), with ramp < 0 they shrink.
    pub(super) ramp: f32,
}

impl Seg {
    pub(super) fn plain(len: usize, kv_heads: usize) -> Seg {
        Seg {
            len,
            kv_heads,
            fused: false,
            pad: 0,
            batch_gap: 0,
            valid: None,
            misalign: false,
            ramp: 0.0,
        }
    }

    pub(super) fn fused(len: usize, kv_heads: usize) -> Seg {
        Seg {
            fused: true,
            ..Seg::plain(len, kv_heads)
        }
    }
}

#[derive(Clone)]
pub(super) struct Case {
    pub(super) name: String,
    pub(super) batch: usize,
    pub(super) nq: usize,
    pub(super) heads: usize,
    pub(super) d: usize,
    pub(super) segs: Vec<Seg>,
    pub(super) causal: bool,
    pub(super) q_pad: usize,
    pub(super) out_pad: usize,
    pub(super) q_misalign: bool,
}

impl Case {
    pub(super) fn new(
        name: impl Into<String>,
        nq: usize,
        heads: usize,
        d: usize,
        segs: Vec<Seg>,
        causal: bool,
    ) -> Case {
        Case {
            name: name.into(),
            batch: 1,
            nq,
            heads,
            d,
            segs,
            causal,
            q_pad: 0,
            out_pad: 0,
            q_misalign: false,
        }
    }
}

/// Host copy of one segment: the buffer(s) and how to index them.
struct HostSeg {
    k: Vec<f32>,
    v: Vec<f32>,
    k_off: usize,
    v_off: usize,
    row_stride: usize,
    batch_stride: usize,
}

impl HostSeg {
    fn new(rng: &mut Rng, s: &Seg, batch: usize, d: usize) -> HostSeg {
        let width = s.kv_heads * d;
        let row_stride = if s.fused { 2 * width } else { width } + s.pad;
        let batch_stride = s.len * row_stride + s.batch_gap;
        let mis = s.misalign as usize;
        // Never empty: an empty segment still needs a valid (unused) pointer.
        let n = (batch * batch_stride + mis).max(8);
        let mut k = rng.normal_bf16(n, 1.0);
        if s.ramp != 0.0 {
            for b in 0..batch {
                for j in 0..s.len {
                    let f = 1.0 + s.ramp * j as f32 / s.len as f32;
                    let row = mis + b * batch_stride + j * row_stride;
                    for x in &mut k[row..row + width] {
                        *x = common::round_bf16(*x * f);
                    }
                }
            }
        }
        let (v, v_off) = if s.fused {
            (Vec::new(), mis + width)
        } else {
            (rng.normal_bf16(n, 1.0), mis)
        };
        HostSeg {
            k,
            v,
            k_off: mis,
            v_off,
            row_stride,
            batch_stride,
        }
    }

    fn key(&self, b: usize, j: usize, kvh: usize, d: usize, e: usize) -> f64 {
        self.k[self.k_off + b * self.batch_stride + j * self.row_stride + kvh * d + e] as f64
    }

    fn value(&self, b: usize, j: usize, kvh: usize, d: usize, e: usize) -> f64 {
        let buf = if self.v.is_empty() { &self.k } else { &self.v };
        buf[self.v_off + b * self.batch_stride + j * self.row_stride + kvh * d + e] as f64
    }
}

/// f64 reference, `[batch][nq][heads*d]`.
fn reference(
    c: &Case,
    q: &[f32],
    q_off: usize,
    q_rs: usize,
    q_bs: usize,
    segs: &[HostSeg],
) -> Vec<f64> {
    let total: usize = c.segs.iter().map(|s| s.len).sum();
    let scale = (c.d as f64).powf(-0.5);
    let mut out = vec![0f64; c.batch * c.nq * c.heads * c.d];
    // One query row per task: the model-shape cases are GFLOPs of f64 work, and the GPU machine's
    // cores are idle while it runs.
    use rayon::prelude::*;
    out.par_chunks_mut(c.heads * c.d)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (b, i) = (row / c.nq, row % c.nq);
            for h in 0..c.heads {
                let qrow = &q[q_off + b * q_bs + i * q_rs + h * c.d..][..c.d];
                // (segment, key) pairs visible to this query, with their scores.
                let mut scores = Vec::new();
                let mut start = 0usize;
                for (s, (spec, hs)) in c.segs.iter().zip(segs).enumerate() {
                    let kvh = h / (c.heads / spec.kv_heads);
                    let valid = spec
                        .valid
                        .as_ref()
                        .map_or(spec.len, |v| (v[b].max(0) as usize).min(spec.len));
                    for j in 0..valid {
                        let global = start + j;
                        if c.causal && global as i64 > i as i64 + total as i64 - c.nq as i64 {
                            continue;
                        }
                        let dot: f64 = (0..c.d)
                            .map(|e| qrow[e] as f64 * hs.key(b, j, kvh, c.d, e))
                            .sum();
                        scores.push((s, j, kvh, dot * scale));
                    }
                    start += spec.len;
                }
                if scores.is_empty() {
                    continue; // no visible key: zeros
                }
                let m = scores.iter().map(|x| x.3).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x.3 - m).exp()).sum();
                let o = &mut out_row[h * c.d..][..c.d];
                for &(s, j, kvh, sc) in &scores {
                    let p = (sc - m).exp() / z;
                    for (e, oe) in o.iter_mut().enumerate() {
                        *oe += p * segs[s].value(b, j, kvh, c.d, e);
                    }
                }
            }
        });
    out
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Want {
    Flash,
    /// The flash kernel's v2 (attention_sm90.cu, wgmma); skipped with a note on a GPU that is not Hopper.
    Sm90,
    /// v3 (attention_sm90.cu's pipelined mainloop), likewise Hopper only.
    Sm90Pipe,
    Decode,
    /// The wide-head path with this many query rows per block.
    Wide(usize),
    /// `attention()` on a wide head, with the workspace `attention::workspace_len` asks for (what the
    /// executor allocates).
    WideDefault,
}

/// Runs `c` once per path in `paths` on fresh inputs and checks each result against the reference, and
/// that nothing outside the output's columns was written.
pub(super) fn run(gpu: &Gpu, rng: &mut Rng, c: &Case, paths: &[Want]) {
    let (hd, d) = (c.heads * c.d, c.d);
    let q_rs = hd + c.q_pad;
    let q_bs = c.nq * q_rs + 8;
    let q_off = c.q_misalign as usize;
    let q = rng.normal_bf16(c.batch * q_bs + q_off, 1.5);
    let hsegs: Vec<HostSeg> = c
        .segs
        .iter()
        .map(|s| HostSeg::new(rng, s, c.batch, d))
        .collect();
    let want = reference(c, &q, q_off, q_rs, q_bs, &hsegs);

    let dq = common::up(gpu, &q);
    let mut keep = Vec::new();
    let mut valid_bufs = Vec::new();
    let mut dsegs = Vec::new();
    for (s, hs) in c.segs.iter().zip(&hsegs) {
        let dk = common::up(gpu, &hs.k);
        let kp = dk.ptr(gpu);
        let vp = if hs.v.is_empty() {
            kp
        } else {
            let dv = common::up(gpu, &hs.v);
            let p = dv.ptr(gpu);
            keep.push(dv);
            p
        };
        keep.push(dk);
        let valid_len = s.valid.as_ref().map(|v| {
            let buf = upload(gpu, v).expect("upload valid_len");
            let p = dev_ptr(&buf, gpu.stream());
            valid_bufs.push(buf);
            p
        });
        dsegs.push(KvSegmentArgs {
            k: kp.offset(hs.k_off, 2),
            v: vp.offset(hs.v_off, 2),
            len: s.len,
            row_stride: hs.row_stride,
            batch_stride: hs.batch_stride,
            kv_heads: s.kv_heads,
            valid_len,
        });
    }

    let o_rs = hd + c.out_pad;
    let o_bs = c.nq * o_rs;
    let n_out = c.batch * o_bs;
    for &path in paths {
        if matches!(path, Want::Sm90 | Want::Sm90Pipe) && gpu.arch() != Arch::HOPPER {
            eprintln!("{}: sm90 path skipped: this GPU is not Hopper", c.name);
            continue;
        }
        let out = common::out_buffer(gpu, n_out);
        let args = AttentionArgs {
            q: dq.ptr(gpu).offset(q_off, 2),
            q_row_stride: q_rs,
            q_batch_stride: q_bs,
            out: out.ptr(gpu),
            out_row_stride: o_rs,
            out_batch_stride: o_bs,
            batch: c.batch,
            nq: c.nq,
            heads: c.heads,
            head_dim: d,
            segments: &dsegs,
            causal: c.causal,
            scale: (d as f32).powf(-0.5),
        };
        let ws_len = match path {
            Want::Wide(qb) => attention_wide::workspace_len_blocked(&args, qb),
            Want::WideDefault => workspace_len(&args),
            _ => decode_workspace_len(&args),
        };
        let ws = match path {
            Want::Flash | Want::Sm90 | Want::Sm90Pipe => None,
            Want::Wide(_) | Want::WideDefault => {
                assert!(ws_len > 0, "{}: the wide path wants no workspace", c.name);
                let buf = gpu.alloc_zeros::<f32>(ws_len).expect("workspace");
                poison_bf16(gpu, dev_ptr(&buf, gpu.stream()), 2 * ws_len)
                    .expect("poison workspace");
                Some(buf)
            }
            Want::Decode => {
                assert!(ws_len > 0, "{}: expected the decode path to apply", c.name);
                let buf = gpu.alloc_zeros::<f32>(ws_len).expect("workspace");
                // NaN everywhere: a partial the combine reads but no warp wrote shows up in the output.
                poison_bf16(gpu, dev_ptr(&buf, gpu.stream()), 2 * ws_len)
                    .expect("poison workspace");
                Some(buf)
            }
        };
        let ws_arg = ws.as_ref().map(|b| (dev_ptr(b, gpu.stream()), ws_len));
        match path {
            Want::Wide(qb) => attention_wide::attention_wide_blocked(gpu, &args, ws_arg, qb),
            Want::Flash => attention_with(gpu, &args, ws_arg, FlashKernel::V1),
            Want::Sm90 => attention_with(gpu, &args, ws_arg, FlashKernel::Sm90),
            Want::Sm90Pipe => attention_with(gpu, &args, ws_arg, FlashKernel::Sm90Pipe),
            _ => attention(gpu, &args, ws_arg),
        }
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let all = common::down(gpu, out.ptr(gpu), n_out);
        let mut got = Vec::with_capacity(want.len());
        for row in all.chunks(o_rs) {
            got.extend_from_slice(&row[..hd]);
            assert!(
                row[hd..].iter().all(|v| v.is_nan()),
                "{} ({path:?}): wrote into the row padding past heads*head_dim",
                c.name
            );
        }
        common::check(&format!("{} ({path:?})", c.name), &got, &want, BF16_TOL);
        drop(ws);
    }
}

#[test]
fn attention_every_head_dim() {
    let Some(gpu) = common::gpu("attention_every_head_dim") else {
        return;
    };
    let mut rng = Rng::fresh("attention_every_head_dim");
    // Two segments with different GQA groups (6 heads over 2 and 3 kv heads); segment 1 a column slice
    // of a fused K|V buffer with padded rows. 77 queries, 45 + 70 keys: no multiple of 64 anywhere.
    for (n, d) in [12, 16, 24, 40, 64, 80, 96, 120, 128]
        .into_iter()
        .enumerate()
    {
        let mut s1 = Seg::fused(70, 3);
        s1.pad = 8;
        let c = Case::new(
            format!("d{d}"),
            77,
            6,
            d,
            vec![Seg::plain(45, 2), s1],
            n % 2 == 1,
        );
        run(&gpu, &mut rng, &c, &[Want::Flash]);
        let c = Case {
            causal: !c.causal,
            name: format!("d{d} causal={}", !c.causal),
            ..c
        };
        run(&gpu, &mut rng, &c, &[Want::Flash]);
    }
}

#[test]
fn attention_gqa_groups() {
    let Some(gpu) = common::gpu("attention_gqa_groups") else {
        return;
    };
    let mut rng = Rng::fresh("attention_gqa_groups");
    for (heads, kv) in [(4, 4), (4, 2), (6, 2), (14, 2)] {
        for causal in [false, true] {
            let c = Case::new(
                format!("gqa {heads}/{kv} causal={causal}"),
                50,
                heads,
                64,
                vec![Seg::plain(130, kv)],
                causal,
            );
            run(&gpu, &mut rng, &c, &[Want::Flash]);
        }
    }
}

#[test]
fn attention_batch_key_padding() {
    let Some(gpu) = common::gpu("attention_batch_key_padding") else {
        return;
    };
    let mut rng = Rng::fresh("attention_batch_key_padding");
    for (d, causal) in [(128, false), (128, true), (120, false), (24, true)] {
        let mut s0 = Seg::plain(45, 2);
        s0.valid = Some(vec![30, 45]);
        s0.batch_gap = 16;
        let mut s1 = Seg::fused(70, 2);
        s1.valid = Some(vec![70, 12]);
        let mut c = Case::new(
            format!("batch2 padding d{d} causal={causal}"),
            33,
            4,
            d,
            vec![s0, s1],
            causal,
        );
        c.batch = 2;
        c.q_pad = 8;
        c.out_pad = 16;
        run(&gpu, &mut rng, &c, &[Want::Flash]);
    }
}

#[test]
fn attention_rows_without_keys_are_zero() {
    let Some(gpu) = common::gpu("attention_rows_without_keys_are_zero") else {
        return;
    };
    let mut rng = Rng::fresh("attention_rows_without_keys_are_zero");
    // Causal with more queries than keys: queries 0..19 see nothing (offset total - nq = -20).
    for d in [24, 64] {
        let c = Case::new(
            format!("causal nq>keys d{d}"),
            40,
            2,
            d,
            vec![Seg::plain(20, 1)],
            true,
        );
        run(&gpu, &mut rng, &c, &[Want::Flash]);
    }
    // Batch row 1 has every key padded away; batch row 0 keeps some.
    let mut s0 = Seg::plain(30, 2);
    s0.valid = Some(vec![17, 0]);
    let mut s1 = Seg::plain(25, 2);
    s1.valid = Some(vec![25, 0]);
    let mut c = Case::new("all keys padded", 21, 4, 64, vec![s0, s1], false);
    c.batch = 2;
    run(&gpu, &mut rng, &c, &[Want::Flash]);
    // An empty first segment.
    let c = Case::new(
        "empty segment 0",
        19,
        4,
        32,
        vec![Seg::plain(0, 2), Seg::plain(90, 4)],
        true,
    );
    run(&gpu, &mut rng, &c, &[Want::Flash]);
}

#[test]
fn attention_unaligned_and_partial_chunks() {
    let Some(gpu) = common::gpu("attention_unaligned_and_partial_chunks") else {
        return;
    };
    let mut rng = Rng::fresh("attention_unaligned_and_partial_chunks");
    // Pointers one element past 16 bytes and odd row strides: every load takes the element path.
    let mut s0 = Seg::plain(70, 2);
    s0.misalign = true;
    let mut s1 = Seg::plain(40, 2);
    s1.pad = 1;
    let mut c = Case::new("unaligned d64", 45, 4, 64, vec![s0, s1], true);
    c.q_misalign = true;
    c.out_pad = 1;
    run(&gpu, &mut rng, &c, &[Want::Flash]);
    // One head, aligned rows, head dims that end mid-chunk (24 and 40 bytes): 16-byte cp.async with a
    // partial source size.
    for d in [12usize, 20] {
        let pad = d.next_multiple_of(8) - d;
        let mut s = Seg::plain(100, 1);
        s.pad = pad + 8;
        let mut c = Case::new(format!("partial chunk d{d}"), 70, 1, d, vec![s], false);
        c.q_pad = pad;
        c.out_pad = pad;
        run(&gpu, &mut rng, &c, &[Want::Flash]);
    }
}

#[test]
fn attention_long_sequences() {
    let Some(gpu) = common::gpu("attention_long_sequences") else {
        return;
    };
    let mut rng = Rng::fresh("attention_long_sequences");
    for causal in [false, true] {
        let c = Case::new(
            format!("long d128 causal={causal}"),
            300,
            4,
            128,
            vec![Seg::plain(1000, 2), Seg::fused(37, 2)],
            causal,
        );
        run(&gpu, &mut rng, &c, &[Want::Flash]);
    }
}

#[test]
fn attention_decode_split_kv() {
    let Some(gpu) = common::gpu("attention_decode_split_kv") else {
        return;
    };
    let mut rng = Rng::fresh("attention_decode_split_kv");
    // The und decode step: 1 query, 28 heads over 4 kv heads, a 4096-key cache.
    let c = Case::new(
        "decode nq1 4096 keys",
        1,
        28,
        128,
        vec![Seg::plain(4096, 4)],
        true,
    );
    run(&gpu, &mut rng, &c, &[Want::Decode, Want::Flash]);
    // Two segments, key padding, batch 2, 2 queries x 7 heads = 14 packed rows, causal.
    let mut s0 = Seg::plain(3000, 2);
    s0.valid = Some(vec![2500, 3000]);
    let mut s1 = Seg::fused(700, 2);
    s1.valid = Some(vec![700, 333]);
    let mut c = Case::new("decode two segments d120", 2, 14, 120, vec![s0, s1], true);
    c.batch = 2;
    run(&gpu, &mut rng, &c, &[Want::Decode, Want::Flash]);
    // Tiny head dim through the element-load path, no GQA, 9 queries, bidirectional.
    let c = Case::new("decode d12", 9, 1, 12, vec![Seg::plain(600, 1)], false);
    run(&gpu, &mut rng, &c, &[Want::Decode, Want::Flash]);
    // Batch row 1 fully padded: every split of it is empty.
    let mut s = Seg::plain(1500, 2);
    s.valid = Some(vec![1111, 0]);
    let mut c = Case::new("decode padded-out batch row d64", 1, 8, 64, vec![s], false);
    c.batch = 2;
    run(&gpu, &mut rng, &c, &[Want::Decode, Want::Flash]);
}

/// Heads wider than the flash kernel's 128 (the VAE mid-block's single 512-wide head) take the
/// GEMM-softmax-GEMM path: one and several query blocks (block sizes that do not divide the query
/// count), causal with more keys than queries, GQA, batch 2 with padded rows, and the launcher's own
/// dispatch through `attention` with its default block.
#[test]
fn attention_wide_heads() {
    let Some(gpu) = common::gpu("attention_wide_heads") else {
        return;
    };
    let mut rng = Rng::fresh("attention_wide_heads");
    let c = Case::new(
        "wide d512 1 head",
        1000,
        1,
        512,
        vec![Seg::plain(1000, 1)],
        false,
    );
    run(&gpu, &mut rng, &c, &[Want::Wide(1000), Want::Wide(96)]);
    let c = Case::new(
        "wide d256 gqa 2/1 causal",
        333,
        2,
        256,
        vec![Seg::plain(517, 1)],
        true,
    );
    run(&gpu, &mut rng, &c, &[Want::Wide(333), Want::Wide(48)]);
    let mut c = Case::new(
        "wide d192 batch 2 padded rows",
        130,
        3,
        192,
        vec![Seg::plain(211, 3)],
        false,
    );
    c.batch = 2;
    c.q_pad = 8;
    c.out_pad = 16;
    c.segs[0].pad = 8;
    c.segs[0].batch_gap = 24;
    run(&gpu, &mut rng, &c, &[Want::Wide(64)]);

    // Through `attention` itself (the executor's entry point), default block, enough workspace.
    let c = Case::new(
        "wide d512 via attention()",
        700,
        1,
        512,
        vec![Seg::plain(900, 1)],
        false,
    );
    run(&gpu, &mut rng, &c, &[Want::WideDefault]);
}

/// The VAE mid-block's shape at a size the f64 reference can afford: one 512-wide head over 4113
/// tokens (a multiple of no block), as one block (the default) and as blocks of 1000 rows.
#[test]
fn attention_wide_long_single_head() {
    let Some(gpu) = common::gpu("attention_wide_long_single_head") else {
        return;
    };
    let mut rng = Rng::fresh("attention_wide_long_single_head");
    let c = Case::new(
        "wide d512 4113 tokens",
        4113,
        1,
        512,
        vec![Seg::plain(4113, 1)],
        false,
    );
    run(&gpu, &mut rng, &c, &[Want::WideDefault, Want::Wide(1000)]);
}

/// Two segments (segment 0's length not a multiple of 8, so segment 1's scores start after a gap;
/// segment 1 a column slice of a fused K|V buffer), key padding per batch row (one row fully padded in
/// segment 1, one row with no key at all), GQA 2/1 bidirectional, causal rows that see no key.
#[test]
fn attention_wide_segments_and_padding() {
    let Some(gpu) = common::gpu("attention_wide_segments_and_padding") else {
        return;
    };
    let mut rng = Rng::fresh("attention_wide_segments_and_padding");
    for causal in [false, true] {
        let c = Case::new(
            format!("wide d256 gqa 2/1 two segments causal={causal}"),
            150,
            2,
            256,
            vec![Seg::plain(93, 1), Seg::fused(61, 1)],
            causal,
        );
        run(&gpu, &mut rng, &c, &[Want::WideDefault, Want::Wide(32)]);
    }
    for causal in [false, true] {
        let mut s0 = Seg::plain(77, 2);
        s0.valid = Some(vec![50, 77, 0]);
        s0.batch_gap = 16;
        let mut s1 = Seg::fused(40, 2);
        s1.valid = Some(vec![0, 33, 0]);
        let mut c = Case::new(
            format!("wide d320 batch 3 key padding causal={causal}"),
            45,
            4,
            320,
            vec![s0, s1],
            causal,
        );
        c.batch = 3;
        c.q_pad = 8;
        c.out_pad = 8;
        run(&gpu, &mut rng, &c, &[Want::WideDefault, Want::Wide(16)]);
    }
    // Causal with more queries than keys: the first 30 queries see nothing and get zeros.
    let c = Case::new(
        "wide d512 causal nq>keys",
        70,
        1,
        512,
        vec![Seg::plain(40, 1)],
        true,
    );
    run(&gpu, &mut rng, &c, &[Want::WideDefault]);
    // An empty first segment: only segment 1's GEMMs run.
    let c = Case::new(
        "wide d256 empty segment 0",
        33,
        2,
        256,
        vec![Seg::plain(0, 1), Seg::plain(50, 2)],
        false,
    );
    run(&gpu, &mut rng, &c, &[Want::WideDefault]);
}

/// Q, K, V and out at 2-byte alignment with odd row strides: cuBLASLt is told the weaker alignment and
/// must still find an algorithm (the softmax only touches the 16-byte aligned workspace).
#[test]
fn attention_wide_unaligned() {
    let Some(gpu) = common::gpu("attention_wide_unaligned") else {
        return;
    };
    let mut rng = Rng::fresh("attention_wide_unaligned");
    let mut s = Seg::plain(85, 1);
    s.misalign = true;
    s.pad = 1;
    let mut c = Case::new("wide d200 unaligned", 57, 2, 200, vec![s], true);
    c.q_misalign = true;
    c.q_pad = 3;
    c.out_pad = 1;
    run(&gpu, &mut rng, &c, &[Want::WideDefault]);
}

//! GPU tests of the flash kernel's v2 (kernels/cuda/attention_sm90.cu, wgmma on Hopper): first the layout
//! probe (Q K^T and P V of one tile against the CPU, so a descriptor or fragment mistake is named
//! apart from the softmax), then the whole kernel against the same f64 reference as v1 (attention.rs):
//! every head dim up to 128, two segments with their own GQA groups and strides, key padding, rows that
//! see no key, unaligned pointers, and the hbridge-7b4b shapes cut to a test's size. Each case runs v2
//! and v3 (the pipelined mainloop, whose lazy rescale gets its own cases: scores that keep growing
//! tile after tile, and shrinking ones).

use super::attention::{run, Case, Seg, Want};
use super::common::{self, Rng};
use hbridge_engine::cuda::buffer::{download, poison_bf16};
use hbridge_engine::cuda::ops::attention::sm90::probe;
use hbridge_engine::cuda::{dev_ptr, Gpu};
use hbridge_kernels::Arch;

/// Both wgmma versions: v2 and the pipelined v3.
const SM90: &[Want] = &[Want::Sm90, Want::Sm90Pipe];

fn hopper(gpu: &Gpu, test: &str) -> bool {
    let ok = gpu.arch() == Arch::HOPPER;
    if !ok {
        eprintln!("SKIPPED {test}: the sm90 kernel needs a Hopper GPU");
    }
    ok
}

#[test]
fn attention_sm90_probe_layouts() {
    let Some(gpu) = common::gpu("attention_sm90_probe_layouts") else {
        return;
    };
    if !hopper(&gpu, "attention_sm90_probe_layouts") {
        return;
    }
    let mut rng = Rng::fresh("attention_sm90_probe_layouts");
    for d in [64usize, 128] {
        let q = rng.normal_bf16(64 * d, 1.0);
        let k = rng.normal_bf16(128 * d, 1.0);
        let v = rng.normal_bf16(128 * d, 1.0);
        let (dq, dk, dv) = (
            common::up(&gpu, &q),
            common::up(&gpu, &k),
            common::up(&gpu, &v),
        );
        let s_buf = gpu.alloc_zeros::<f32>(64 * 128).expect("alloc");
        let o_buf = gpu.alloc_zeros::<f32>(64 * d).expect("alloc");
        let (sp, op) = (dev_ptr(&s_buf, gpu.stream()), dev_ptr(&o_buf, gpu.stream()));
        // NaN in f32 too: an element the kernel never writes fails the comparison.
        poison_bf16(&gpu, sp, 2 * 64 * 128).expect("poison");
        poison_bf16(&gpu, op, 2 * 64 * d).expect("poison");
        probe(&gpu, d, dq.ptr(&gpu), dk.ptr(&gpu), dv.ptr(&gpu), sp, op)
            .unwrap_or_else(|e| panic!("probe d{d}: {e}"));
        let s: Vec<f32> = download(&gpu, sp, 64 * 128).expect("download S");
        let o: Vec<f32> = download(&gpu, op, 64 * d).expect("download O");

        let mut want_s = vec![0f64; 64 * 128];
        for i in 0..64 {
            for j in 0..128 {
                want_s[i * 128 + j] = (0..d)
                    .map(|e| q[i * d + e] as f64 * k[j * d + e] as f64)
                    .sum();
            }
        }
        // P V from the kernel's own S rounded to bf16 (what it feeds the second MMA), so only the P V
        // product is judged here.
        let mut want_o = vec![0f64; 64 * d];
        for i in 0..64 {
            for j in 0..128 {
                let p = common::round_bf16(s[i * 128 + j]) as f64;
                for e in 0..d {
                    want_o[i * d + e] += p * v[j * d + e] as f64;
                }
            }
        }
        // f32 accumulation of bf16 products: far inside 1e-4 when the layouts are right, O(1) when not.
        common::check(&format!("probe d{d}: S = Q K^T"), &s, &want_s, 1e-4);
        common::check(&format!("probe d{d}: O = P V"), &o, &want_o, 1e-4);
    }
}

#[test]
fn attention_sm90_every_head_dim() {
    let Some(gpu) = common::gpu("attention_sm90_every_head_dim") else {
        return;
    };
    let mut rng = Rng::fresh("attention_sm90_every_head_dim");
    // As v1's test: two segments with different GQA groups (6 heads over 2 and 3 kv heads), segment 1 a
    // column slice of a fused K|V buffer with padded rows; 77 queries, 45 + 70 keys.
    for (n, d) in [12, 40, 64, 80, 96, 120, 128].into_iter().enumerate() {
        let mut s1 = Seg::fused(70, 3);
        s1.pad = 8;
        let c = Case::new(
            format!("sm90 d{d}"),
            77,
            6,
            d,
            vec![Seg::plain(45, 2), s1],
            n % 2 == 1,
        );
        run(&gpu, &mut rng, &c, SM90);
        let c = Case {
            causal: !c.causal,
            name: format!("sm90 d{d} causal={}", !c.causal),
            ..c
        };
        run(&gpu, &mut rng, &c, SM90);
    }
}

#[test]
fn attention_sm90_padding_gqa_and_empty_rows() {
    let Some(gpu) = common::gpu("attention_sm90_padding_gqa_and_empty_rows") else {
        return;
    };
    let mut rng = Rng::fresh("attention_sm90_padding_gqa_and_empty_rows");
    for (heads, kv) in [(4, 4), (14, 2), (21, 7)] {
        let c = Case::new(
            format!("sm90 gqa {heads}/{kv}"),
            200,
            heads,
            64,
            vec![Seg::plain(300, kv)],
            true,
        );
        run(&gpu, &mut rng, &c, SM90);
    }
    for (d, causal) in [(128, false), (120, true)] {
        let mut s0 = Seg::plain(45, 2);
        s0.valid = Some(vec![30, 45]);
        s0.batch_gap = 16;
        let mut s1 = Seg::fused(170, 2);
        s1.valid = Some(vec![170, 12]);
        let mut c = Case::new(
            format!("sm90 batch2 padding d{d} causal={causal}"),
            133,
            4,
            d,
            vec![s0, s1],
            causal,
        );
        c.batch = 2;
        c.q_pad = 8;
        c.out_pad = 16;
        run(&gpu, &mut rng, &c, SM90);
    }
    // Causal with more queries than keys: the first queries see nothing and must be zeros.
    let c = Case::new(
        "sm90 causal nq>keys",
        150,
        2,
        64,
        vec![Seg::plain(20, 1)],
        true,
    );
    run(&gpu, &mut rng, &c, SM90);
    // Batch row 1 with every key padded away.
    let mut s0 = Seg::plain(30, 2);
    s0.valid = Some(vec![17, 0]);
    let mut c = Case::new("sm90 all keys padded", 21, 4, 128, vec![s0], false);
    c.batch = 2;
    run(&gpu, &mut rng, &c, SM90);
    // Pointers one element past 16 bytes and odd strides: the element-load and element-store paths.
    let mut s0 = Seg::plain(70, 2);
    s0.misalign = true;
    let mut s1 = Seg::plain(140, 2);
    s1.pad = 1;
    let mut c = Case::new("sm90 unaligned d64", 45, 4, 64, vec![s0, s1], true);
    c.q_misalign = true;
    c.out_pad = 1;
    run(&gpu, &mut rng, &c, SM90);
    // One head of odd size in 16-byte aligned rows: the paired bf16 store is taken (the host checks
    // head_dim % 8 only for several heads), so the last column must not write one past the head into
    // the poisoned row padding.
    for d in [13usize, 45, 77] {
        let mut c = Case::new(
            format!("sm90 one head d{d}"),
            40,
            1,
            d,
            vec![Seg::plain(90, 1)],
            false,
        );
        c.out_pad = d.next_multiple_of(8) - d;
        run(&gpu, &mut rng, &c, SM90);
    }
}

/// The hbridge-7b4b attention shapes at a test's size, v2 beside v1 on the same inputs: gen
/// self-attention (D 120, GQA 3), the bridge (two segments: und keys then gen keys, D 128, GQA 7) and a
/// causal prefill.
#[test]
fn attention_sm90_model_shapes() {
    let Some(gpu) = common::gpu("attention_sm90_model_shapes") else {
        return;
    };
    let mut rng = Rng::fresh("attention_sm90_model_shapes");
    let c = Case::new(
        "sm90 gen self 1040 d120 gqa3",
        1040,
        6,
        120,
        vec![Seg::plain(1040, 2)],
        false,
    );
    run(
        &gpu,
        &mut rng,
        &c,
        &[Want::Sm90, Want::Sm90Pipe, Want::Flash],
    );
    let c = Case::new(
        "sm90 bridge 1040 q over 200 + 1040 keys d128 gqa7",
        1040,
        7,
        128,
        vec![Seg::plain(200, 1), Seg::fused(1040, 1)],
        false,
    );
    run(
        &gpu,
        &mut rng,
        &c,
        &[Want::Sm90, Want::Sm90Pipe, Want::Flash],
    );
    let c = Case::new(
        "sm90 und prefill 515 causal d128 gqa7",
        515,
        7,
        128,
        vec![Seg::plain(515, 1)],
        true,
    );
    run(
        &gpu,
        &mut rng,
        &c,
        &[Want::Sm90, Want::Sm90Pipe, Want::Flash],
    );
}

/// v3 keeps O relative to a reference max that moves only when a row's max grows by 2^8: keys whose
/// scores grow along the sequence move it in many tiles (each move waits for the MMAs in flight and
/// rescales), shrinking ones never after the first tile; both against the f64 reference, with v2
/// beside it.
#[test]
fn attention_sm90_pipe_moving_max() {
    let Some(gpu) = common::gpu("attention_sm90_pipe_moving_max") else {
        return;
    };
    let mut rng = Rng::fresh("attention_sm90_pipe_moving_max");
    for (ramp, d, causal) in [(6.0, 128, false), (6.0, 64, true), (-0.9, 128, false)] {
        let mut s0 = Seg::plain(1100, 2);
        s0.ramp = ramp;
        let c = Case::new(
            format!("sm90 ramp {ramp} d{d} causal={causal}"),
            300,
            4,
            d,
            vec![s0],
            causal,
        );
        run(&gpu, &mut rng, &c, SM90);
    }
    // A ramp across two segments: the max moves at the segment switch too.
    let mut s0 = Seg::plain(260, 1);
    s0.ramp = 2.0;
    let mut s1 = Seg::fused(700, 1);
    s1.ramp = 8.0;
    let c = Case::new(
        "sm90 ramp two segments d120",
        190,
        7,
        120,
        vec![s0, s1],
        false,
    );
    run(&gpu, &mut rng, &c, SM90);
}

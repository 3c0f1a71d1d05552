use crate::common::*;
use hbridge_graph::{KvSegment, Op};

struct Case {
    nq: usize,
    seg_lens: Vec<usize>,
    heads: usize,
    kv_heads: usize,
    d: usize,
    causal: bool,
}

/// Naive f64 softmax attention over the concatenated segments.
fn attn_ref(q: &[f32], k: &[f32], v: &[f32], c: &Case, scale: f64) -> Vec<f64> {
    let nk: usize = c.seg_lens.iter().sum();
    let (hd, kd, g) = (c.heads * c.d, c.kv_heads * c.d, c.heads / c.kv_heads);
    let mut out = vec![0f64; c.nq * hd];
    for i in 0..c.nq {
        let last = if c.causal { i + nk - c.nq } else { nk - 1 };
        for h in 0..c.heads {
            let j = h / g;
            let s: Vec<f64> = (0..=last)
                .map(|t| {
                    (0..c.d)
                        .map(|e| q[i * hd + h * c.d + e] as f64 * k[t * kd + j * c.d + e] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = p.iter().sum();
            for e in 0..c.d {
                out[i * hd + h * c.d + e] = (0..=last)
                    .map(|t| p[t] / z * v[t * kd + j * c.d + e] as f64)
                    .sum();
            }
        }
    }
    out
}

/// Runs the case with its segments as given, and again with one concatenated segment.
fn run_case(seed: u64, c: &Case) {
    let mut r = Rng::new(seed);
    let nk: usize = c.seg_lens.iter().sum();
    let (hd, kd) = (c.heads * c.d, c.kv_heads * c.d);
    let q = r.vec(c.nq * hd, 1.0);
    let (k, v) = (r.vec(nk * kd, 1.0), r.vec(nk * kd, 1.0));
    let scale = (c.d as f32).powf(-0.5);
    let want = attn_ref(&q, &k, &v, c, scale as f64);
    let mut results = Vec::new();
    for lens in [c.seg_lens.clone(), vec![nk]] {
        let mut t = OneOp::new();
        let qi = t.f32("q", &[c.nq, hd], q.clone());
        let mut segments = Vec::new();
        let mut start = 0;
        for (s, &len) in lens.iter().enumerate() {
            let ki = t.f32(
                &format!("k{s}"),
                &[len, kd],
                k[start * kd..(start + len) * kd].to_vec(),
            );
            let vi = t.f32(
                &format!("v{s}"),
                &[len, kd],
                v[start * kd..(start + len) * kd].to_vec(),
            );
            segments.push(KvSegment::new(ki, vi));
            start += len;
        }
        let op = Op::Attention {
            q: qi,
            segments,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.d,
            causal: c.causal,
            scale,
        };
        let got = t.run_shaped(op, &[c.nq, hd]);
        assert_close(
            &format!(
                "attention {lens:?} nq {} h {}/{} d {} causal {}",
                c.nq, c.heads, c.kv_heads, c.d, c.causal
            ),
            &got,
            &want,
            1e-6,
        );
        results.push(got);
    }
    // Splitting the keys into segments changes nothing but the GEMM boundaries.
    assert_close(
        "segments vs concatenated",
        &results[0],
        &to64(&results[1]),
        1e-6,
    );
}

#[test]
fn self_attention_causal_gqa() {
    run_case(
        51,
        &Case {
            nq: 13,
            seg_lens: vec![13],
            heads: 6,
            kv_heads: 2,
            d: 16,
            causal: true,
        },
    );
}

#[test]
fn causal_with_more_keys_than_queries_two_segments() {
    // Decode-like: a cache segment then this step's keys; query i sees keys 0..=i + (nk - nq).
    run_case(
        52,
        &Case {
            nq: 5,
            seg_lens: vec![18, 5],
            heads: 4,
            kv_heads: 1,
            d: 24,
            causal: true,
        },
    );
    run_case(
        53,
        &Case {
            nq: 1,
            seg_lens: vec![30, 1],
            heads: 4,
            kv_heads: 2,
            d: 16,
            causal: true,
        },
    );
}

#[test]
fn bidirectional_two_segments_gqa() {
    // Bridge-like: und context keys then gen keys, head_dim 120 (not a power of two).
    run_case(
        54,
        &Case {
            nq: 29,
            seg_lens: vec![11, 29],
            heads: 3,
            kv_heads: 1,
            d: 120,
            causal: false,
        },
    );
    run_case(
        55,
        &Case {
            nq: 7,
            seg_lens: vec![9, 0, 14],
            heads: 4,
            kv_heads: 4,
            d: 8,
            causal: false,
        },
    );
}

#[test]
fn many_query_bands() {
    // Enough queries for several parallel bands, causal boundaries inside bands, three segments.
    run_case(
        56,
        &Case {
            nq: 150,
            seg_lens: vec![40, 61, 70],
            heads: 2,
            kv_heads: 1,
            d: 32,
            causal: true,
        },
    );
    run_case(
        57,
        &Case {
            nq: 203,
            seg_lens: vec![203],
            heads: 1,
            kv_heads: 1,
            d: 64,
            causal: false,
        },
    );
}

#[test]
fn large_scores_are_stable() {
    // Scores in the hundreds: without max subtraction exp overflows.
    let mut r = Rng::new(58);
    let c = Case {
        nq: 9,
        seg_lens: vec![12],
        heads: 2,
        kv_heads: 1,
        d: 16,
        causal: false,
    };
    let q: Vec<f32> = r.vec(9 * 32, 6.0);
    let (k, v) = (r.vec(12 * 16, 6.0), r.vec(12 * 16, 1.0));
    let want = attn_ref(&q, &k, &v, &c, 1.0);
    let mut t = OneOp::new();
    let qi = t.f32("q", &[9, 32], q);
    let (ki, vi) = (t.f32("k", &[12, 16], k), t.f32("v", &[12, 16], v));
    let got = t.run(Op::Attention {
        q: qi,
        segments: vec![KvSegment::new(ki, vi)],
        heads: 2,
        kv_heads: 1,
        head_dim: 16,
        causal: false,
        scale: 1.0,
    });
    assert_close("large scores", &got, &want, 1e-5);
}

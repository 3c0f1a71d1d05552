//! The bf16 linear against the f32 one on the same values through the executor, with and without bias,
//! split into panels and not, on both sides of the thresholds at which gemm changes kernel or
//! k-blocking (the unit tests in ops/linear_bf16.rs split at the smallest allowed panels); and the
//! bf16 embedding lookup.

use crate::common::*;
use half::bf16;
use hbridge_engine::HostTensor;
use hbridge_graph::Op;
use hbridge_loader::Part;

fn rounded(r: &mut Rng, n: usize, scale: f64) -> Vec<bf16> {
    r.vec(n, scale).into_iter().map(bf16::from_f32).collect()
}

fn widened(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|b| b.to_f32()).collect()
}

/// `x [n, k] @ w^T (+ b)` with `w` held as bf16 (`as_bf16`) or as its exact f32 values.
fn run_linear(
    x: &[f32],
    w: &[bf16],
    b: Option<&[f32]>,
    [n, k, out]: [usize; 3],
    as_bf16: bool,
) -> HostTensor {
    let mut t = OneOp::new();
    let xi = t.f32("x", &[n, k], x.to_vec());
    let bi = b.map(|b| t.f32("b", &[out], b.to_vec()));
    if as_bf16 {
        t.weights
            .insert_bf16(Part::Und, "w", &[out, k], w.to_vec())
            .unwrap();
    } else {
        t.weights
            .insert(Part::Und, "w", &[out, k], widened(w))
            .unwrap();
    }
    let wi = t.g.weight(Part::Und, "w", &[out, k]);
    t.try_run(Op::Linear {
        x: xi,
        w: wi,
        bias: bi,
    })
    .unwrap()
}

#[test]
fn panelled_linear_is_bit_identical_to_f32() {
    let mut r = Rng::new(77);
    // (rows, k, out). With k >= ~4096 the output rows split into panels (decode, 3 rows, 70 rows,
    // many rows with k > 512); the rest run as one panel: decode rows, k <= 2, rows either side of 64,
    // empty products.
    for &(n, k, out) in &[
        (1, 4096, 600),
        (3, 4100, 600),
        (70, 4096, 700),
        (600, 2100, 1200),
        (1, 600, 1100),
        (1, 2, 700),
        (2, 100, 300),
        (4, 1, 600),
        (5, 1030, 140),
        (64, 50, 600),
        (65, 700, 300),
        (300, 17, 1),
        (7, 0, 600),
        (0, 8, 600),
    ] {
        for bias in [false, true] {
            let x = r.vec(n * k, 1.0);
            let w = rounded(&mut r, out * k, 0.1);
            let b = bias.then(|| r.vec(out, 1.0));
            let f = run_linear(&x, &w, b.as_deref(), [n, k, out], false);
            let h = run_linear(&x, &w, b.as_deref(), [n, k, out], true);
            assert_eq!(f.shape, h.shape);
            let (f, h) = (f.as_f32().unwrap(), h.as_f32().unwrap());
            let diff = (0..f.len()).find(|&i| f[i].to_bits() != h[i].to_bits());
            assert!(
                diff.is_none(),
                "{n}x{k}->{out} bias {bias}: first difference at {diff:?}"
            );
        }
    }
}

#[test]
fn bf16_embedding_is_bit_identical_to_f32() {
    let mut r = Rng::new(78);
    let (vocab, d, n) = (300, 1100, 40);
    let table = rounded(&mut r, vocab * d, 1.0);
    let ids = r.ints(n, vocab);
    let run = |as_bf16: bool| {
        let mut t = OneOp::new();
        let ii = t.i32("ids", &[n], ids.clone());
        if as_bf16 {
            t.weights
                .insert_bf16(Part::Und, "e", &[vocab, d], table.clone())
                .unwrap();
        } else {
            t.weights
                .insert(Part::Und, "e", &[vocab, d], widened(&table))
                .unwrap();
        }
        let ti = t.g.weight(Part::Und, "e", &[vocab, d]);
        t.run_shaped(Op::Embed { table: ti, ids: ii }, &[n, d])
    };
    let (f, h) = (run(false), run(true));
    assert!(f.iter().zip(&h).all(|(a, b)| a.to_bits() == b.to_bits()));
}

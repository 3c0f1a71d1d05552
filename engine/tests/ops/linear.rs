use crate::common::*;
use hbridge_graph::Op;

fn linear_ref(x: &[f32], n: usize, k: usize, w: &[f32], out: usize, b: Option<&[f32]>) -> Vec<f64> {
    let mut y = vec![0f64; n * out];
    for i in 0..n {
        for o in 0..out {
            let dot: f64 = (0..k)
                .map(|j| x[i * k + j] as f64 * w[o * k + j] as f64)
                .sum();
            y[i * out + o] = dot + b.map_or(0.0, |b| b[o] as f64);
        }
    }
    y
}

#[test]
fn linear_with_and_without_bias() {
    let mut r = Rng::new(21);
    // Small (single-threaded gemm), one row (gemv), and large enough for gemm's rayon path.
    for &(n, k, out) in &[
        (37usize, 53usize, 29usize),
        (1, 64, 77),
        (130, 257, 190),
        (5, 1, 3),
    ] {
        for bias in [true, false] {
            let (x, w, b) = (r.vec(n * k, 1.0), r.vec(out * k, 0.1), r.vec(out, 1.0));
            let mut t = OneOp::new();
            let (xi, wi) = (
                t.f32("x", &[n, k], x.clone()),
                t.f32("w", &[out, k], w.clone()),
            );
            let bi = bias.then(|| t.f32("b", &[out], b.clone()));
            let got = t.run_shaped(
                Op::Linear {
                    x: xi,
                    w: wi,
                    bias: bi,
                },
                &[n, out],
            );
            let want = linear_ref(&x, n, k, &w, out, bias.then_some(b.as_slice()));
            assert_close(
                &format!("linear {n}x{k}->{out} bias {bias}"),
                &got,
                &want,
                1e-6,
            );
        }
    }
}

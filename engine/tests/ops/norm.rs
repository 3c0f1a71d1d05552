use crate::common::*;
use hbridge_graph::Op;

fn rms_ref(x: &[f32], w: Option<&[f32]>, dim: usize, eps: f32) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for (j, &v) in row.iter().enumerate() {
            out.push(v as f64 * inv * w.map_or(1.0, |w| w[j] as f64));
        }
    }
    out
}

#[test]
fn rmsnorm_rows_and_per_head() {
    let mut r = Rng::new(11);
    let (n, heads, hd) = (37, 3, 24);
    let x = r.vec(n * heads * hd, 1.5);
    // dim = the whole row, then dim = head_dim on the same [n, heads*hd] tensor, with and without weight.
    for dim in [heads * hd, hd] {
        for weighted in [true, false] {
            let w = r.vec(dim, 1.0);
            let mut t = OneOp::new();
            let xi = t.f32("x", &[n, heads * hd], x.clone());
            let wi = weighted.then(|| t.f32("w", &[dim], w.clone()));
            let got = t.run_shaped(
                Op::RmsNorm {
                    x: xi,
                    weight: wi,
                    dim,
                    eps: 1e-6,
                },
                &[n, heads * hd],
            );
            let want = rms_ref(&x, weighted.then_some(w.as_slice()), dim, 1e-6);
            assert_close(
                &format!("rmsnorm dim {dim} weighted {weighted}"),
                &got,
                &want,
                1e-6,
            );
        }
    }
}

#[test]
fn layernorm_no_affine() {
    let mut r = Rng::new(12);
    let (n, d) = (43, 72);
    // An offset mean checks the variance is computed around it, not as E[x^2] - E[x]^2 in f32.
    let x: Vec<f32> = r.vec(n * d, 1.0).iter().map(|v| v + 30.0).collect();
    let mut t = OneOp::new();
    let xi = t.f32("x", &[n, d], x.clone());
    let got = t.run(Op::LayerNorm {
        x: xi,
        dim: d,
        eps: 1e-6,
    });
    let mut want = Vec::new();
    for row in x.chunks(d) {
        let m = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / d as f64;
        want.extend(row.iter().map(|&v| (v as f64 - m) / (var + 1e-6).sqrt()));
    }
    assert_close("layernorm", &got, &want, 1e-6);
}

#[test]
fn groupnorm_affine() {
    let mut r = Rng::new(13);
    for &(c, h, w, groups) in &[
        (12usize, 5usize, 7usize, 4usize),
        (8, 9, 3, 8),
        (6, 4, 4, 1),
    ] {
        let x: Vec<f32> = r.vec(c * h * w, 2.0).iter().map(|v| v - 1.0).collect();
        let (wt, b) = (r.vec(c, 1.0), r.vec(c, 1.0));
        let mut t = OneOp::new();
        let xi = t.f32("x", &[c, h, w], x.clone());
        let (wi, bi) = (t.f32("w", &[c], wt.clone()), t.f32("b", &[c], b.clone()));
        let got = t.run_shaped(
            Op::GroupNorm {
                x: xi,
                weight: wi,
                bias: bi,
                groups,
                eps: 1e-6,
            },
            &[c, h, w],
        );
        let (cpg, hw) = (c / groups, h * w);
        let mut want = vec![0f64; c * hw];
        for g in 0..groups {
            let xs = &x[g * cpg * hw..(g + 1) * cpg * hw];
            let m = xs.iter().map(|&v| v as f64).sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / xs.len() as f64;
            for i in 0..cpg * hw {
                let ch = g * cpg + i / hw;
                want[g * cpg * hw + i] =
                    (xs[i] as f64 - m) / (var + 1e-6).sqrt() * wt[ch] as f64 + b[ch] as f64;
            }
        }
        assert_close(
            &format!("groupnorm {c}x{h}x{w}/{groups}"),
            &got,
            &want,
            1e-6,
        );
    }
}

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

/// GroupNorm in f64: `[c, hw]` in `groups` groups, per-channel affine.
fn group_norm_ref(x: &[f32], (wt, b): (&[f32], &[f32]), hw: usize, groups: usize) -> Vec<f64> {
    let c = wt.len();
    let cpg = c / groups;
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
    want
}

/// A GroupNorm whose only reader is a SiLU runs fused (the norm's apply pass writes the SiLU); read
/// elsewhere too, the two run apart. Both against f64, also on a mean far from zero (centering in
/// f32 must not lose the mean's low bits).
#[test]
fn groupnorm_then_silu_fused_and_apart() {
    let mut r = Rng::new(17);
    for &(c, h, w, groups, offset) in &[
        (12usize, 5usize, 7usize, 4usize, 0.0f32),
        (8, 72, 65, 2, 300.0),
        (6, 4, 4, 1, -40.0),
    ] {
        let x: Vec<f32> = r
            .vec(c * h * w, 2.0)
            .iter()
            .map(|v| v - 1.0 + offset)
            .collect();
        let (wt, b) = (r.vec(c, 1.0), r.vec(c, 1.0));
        let norm = group_norm_ref(&x, (&wt, &b), h * w, groups);
        let silu: Vec<f64> = norm.iter().map(|&v| v / (1.0 + (-v).exp())).collect();
        for norm_is_output in [false, true] {
            let mut t = OneOp::new();
            let xi = t.f32("x", &[c, h, w], x.clone());
            let (wi, bi) = (t.f32("w", &[c], wt.clone()), t.f32("b", &[c], b.clone()));
            let op = Op::GroupNorm {
                x: xi,
                weight: wi,
                bias: bi,
                groups,
                eps: 1e-6,
            };
            let n = t.g.push(op, "norm").unwrap();
            let s = t.g.push(Op::Silu { x: n }, "act").unwrap();
            t.g.mark_output("act", s);
            if norm_is_output {
                t.g.mark_output("norm", n);
            }
            let fused = hbridge_graph::fusion::groups(&t.g)[0].is_some();
            assert_eq!(fused, !norm_is_output);
            let plan = hbridge_graph::plan::plan_memory(&t.g);
            let out = hbridge_engine::execute(&t.g, &plan, &t.weights, &t.inputs).unwrap();
            let what = format!("groupnorm+silu {c}x{h}x{w}/{groups} offset {offset} fused {fused}");
            let got = out["act"].as_f32().unwrap();
            assert_close(&what, got, &silu, 1e-6);
            if norm_is_output {
                assert_close(&what, out["norm"].as_f32().unwrap(), &norm, 1e-6);
            }
        }
    }
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
        let want = group_norm_ref(&x, (&wt, &b), h * w, groups);
        assert_close(
            &format!("groupnorm {c}x{h}x{w}/{groups}"),
            &got,
            &want,
            1e-6,
        );
    }
}

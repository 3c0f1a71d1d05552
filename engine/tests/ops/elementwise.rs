use crate::common::*;
use hbridge_graph::Op;

const TOL: f64 = 1e-6;

fn unary(
    seed: u64,
    make: impl Fn(hbridge_graph::TensorId) -> Op,
    f: impl Fn(f64) -> f64,
    what: &str,
) {
    let mut r = Rng::new(seed);
    // Large enough to take the parallel path of the elementwise helpers.
    for &(n, d) in &[(7usize, 13usize), (301, 131)] {
        let x = r.vec(n * d, 2.0);
        let mut t = OneOp::new();
        let xi = t.f32("x", &[n, d], x.clone());
        let got = t.run_shaped(make(xi), &[n, d]);
        let want: Vec<f64> = x.iter().map(|&v| f(v as f64)).collect();
        assert_close(what, &got, &want, TOL);
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// erfc independent of libm: Taylor series of erf for |y| < 2, the continued fraction of erfc beyond
/// (evaluated bottom-up; converged to f64 precision for y >= 2).
fn erfc_ref(y: f64) -> f64 {
    if y.abs() < 2.0 {
        let (mut term, mut sum, mut n) = (y, y, 0f64);
        while term.abs() > 1e-18 {
            n += 1.0;
            term *= -y * y / n;
            sum += term / (2.0 * n + 1.0);
        }
        return 1.0 - sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    let a = y.abs();
    let mut f = a;
    for n in (1..200).rev() {
        f = a + (n as f64 / 2.0) / f;
    }
    let c = (-a * a).exp() / std::f64::consts::PI.sqrt() / f;
    if y > 0.0 {
        c
    } else {
        2.0 - c
    }
}

fn erf_ref(y: f64) -> f64 {
    1.0 - erfc_ref(y)
}

/// `x/2 * (1 + erf(x/sqrt 2))`, written with erfc so it keeps its relative accuracy for negative x.
fn gelu_ref(x: f64) -> f64 {
    0.5 * x * erfc_ref(-x / 2f64.sqrt())
}

#[test]
fn erf_reference_is_sane() {
    for (x, want) in [
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (-0.3, -0.328_626_759_459_127_4),
        (3.5, 0.999_999_256_901_627_7),
    ] {
        assert!(
            (erf_ref(x) - want).abs() < 1e-15,
            "erf({x}) = {} != {want}",
            erf_ref(x)
        );
    }
    // erfc(3) and erfc(5), relative.
    for (x, want) in [
        (3.0, 2.209_049_699_858_544e-5),
        (5.0, 1.537_459_794_428_035e-12),
    ] {
        assert!(
            (erfc_ref(x) / want - 1.0).abs() < 1e-13,
            "erfc({x}) = {} != {want}",
            erfc_ref(x)
        );
    }
}

#[test]
fn silu() {
    unary(1, |x| Op::Silu { x }, |v| v * sigmoid(v), "silu");
}

#[test]
fn gelu_exact_erf() {
    unary(2, |x| Op::Gelu { x }, gelu_ref, "gelu");
    // Pointwise, the f64 evaluation leaves only the f32 rounding.
    let mut t = OneOp::new();
    let xs: Vec<f32> = (-1000..=600).map(|i| i as f32 / 100.0).collect();
    let xi = t.f32("x", &[xs.len()], xs.clone());
    let got = t.run(Op::Gelu { x: xi });
    for (x, g) in xs.iter().zip(got) {
        let w = gelu_ref(*x as f64);
        assert!(
            (g as f64 - w).abs() <= 1e-7 * w.abs().max(1e-3),
            "gelu({x}) = {g} vs {w}"
        );
    }
}

#[test]
fn affine() {
    unary(
        3,
        |x| Op::Affine {
            x,
            scale: 2.769_316,
            shift: 0.1159,
        },
        |v| v * 2.769_316f32 as f64 + 0.1159f32 as f64,
        "affine",
    );
}

#[test]
fn add_same_shape_and_broadcast_rows() {
    let mut r = Rng::new(4);
    let (n, d) = (29, 37);
    let a = r.vec(n * d, 1.0);
    for b_shape in [vec![n, d], vec![d], vec![1, d]] {
        let b = r.vec(b_shape.iter().product(), 1.0);
        let mut t = OneOp::new();
        let (ai, bi) = (
            t.f32("a", &[n, d], a.clone()),
            t.f32("b", &b_shape, b.clone()),
        );
        let got = t.run_shaped(Op::Add { a: ai, b: bi }, &[n, d]);
        let want: Vec<f64> = (0..n * d)
            .map(|i| a[i] as f64 + b[if b.len() == d { i % d } else { i }] as f64)
            .collect();
        assert_close(&format!("add {b_shape:?}"), &got, &want, TOL);
    }
}

#[test]
fn modulate_and_gate_residual() {
    let mut r = Rng::new(5);
    let (n, d) = (31, 72);
    let (x, y) = (r.vec(n * d, 1.0), r.vec(n * d, 1.0));
    for s_shape in [vec![d], vec![1, d]] {
        let s = r.vec(d, 0.5);
        let mut t = OneOp::new();
        let (xi, si) = (
            t.f32("x", &[n, d], x.clone()),
            t.f32("s", &s_shape, s.clone()),
        );
        let got = t.run_shaped(Op::Modulate { x: xi, scale: si }, &[n, d]);
        let want: Vec<f64> = (0..n * d)
            .map(|i| x[i] as f64 * (1.0 + s[i % d] as f64))
            .collect();
        assert_close("modulate", &got, &want, TOL);

        let mut t = OneOp::new();
        let (xi, gi, yi) = (
            t.f32("x", &[n, d], x.clone()),
            t.f32("g", &s_shape, s.clone()),
            t.f32("y", &[n, d], y.clone()),
        );
        let got = t.run(Op::GateResidual {
            x: xi,
            gate: gi,
            y: yi,
        });
        let want: Vec<f64> = (0..n * d)
            .map(|i| x[i] as f64 + (s[i % d] as f64).tanh() * y[i] as f64)
            .collect();
        assert_close("gate_residual", &got, &want, TOL);
    }
}

#[test]
fn swiglu() {
    let mut r = Rng::new(6);
    let (n, d) = (17, 53);
    let (g, u) = (r.vec(n * d, 2.0), r.vec(n * d, 1.0));
    let mut t = OneOp::new();
    let (gi, ui) = (
        t.f32("g", &[n, d], g.clone()),
        t.f32("u", &[n, d], u.clone()),
    );
    let got = t.run(Op::SwiGlu { gate: gi, up: ui });
    let want: Vec<f64> = (0..n * d)
        .map(|i| g[i] as f64 * sigmoid(g[i] as f64) * u[i] as f64)
        .collect();
    assert_close("swiglu", &got, &want, TOL);
}

#[test]
fn timestep_features_f64() {
    for &(t, half, scale) in &[
        (0.37f32, 128usize, 1000.0f64),
        (0.999, 128, 1000.0),
        (0.0, 128, 1000.0),
        (0.61, 7, 1.0),
    ] {
        let mut g = OneOp::new();
        let ti = g.f32("t", &[1], vec![t]);
        let got = g.run_shaped(Op::TimestepFeatures { t: ti, half, scale }, &[2 * half]);
        let mut want = vec![0f64; 2 * half];
        for k in 0..half {
            let e = scale * t as f64 * (-(10000f64).ln() * k as f64 / half as f64).exp();
            want[k] = e.cos();
            want[half + k] = e.sin();
        }
        // Each value is the f32 rounding of the f64 result.
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(*g, *w as f32, "t {t}");
        }
    }
}

#[test]
fn embed_rows() {
    let mut r = Rng::new(7);
    let (v, d, n) = (23, 19, 41);
    let table = r.vec(v * d, 1.0);
    let mut ids = r.ints(n, v);
    ids[0] = 0;
    ids[n - 1] = v as i32 - 1;
    let mut t = OneOp::new();
    let ti = t.f32("table", &[v, d], table.clone());
    let ii = t.i32("ids", &[n], ids.clone());
    let got = t.run_shaped(Op::Embed { table: ti, ids: ii }, &[n, d]);
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(
            &got[i * d..(i + 1) * d],
            &table[id as usize * d..(id as usize + 1) * d]
        );
    }
}

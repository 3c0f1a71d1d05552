use crate::common::*;
use hbridge_graph::Op;

#[test]
fn slices_and_concat() {
    let mut r = Rng::new(31);
    let (n, c) = (11, 17);
    let x = r.vec(n * c, 1.0);
    let mut t = OneOp::new();
    let xi = t.f32("x", &[n, c], x.clone());
    let got = t.run_shaped(
        Op::SliceCols {
            x: xi,
            start: 5,
            len: 9,
        },
        &[n, 9],
    );
    for i in 0..n {
        assert_eq!(&got[i * 9..(i + 1) * 9], &x[i * c + 5..i * c + 14]);
    }
    let mut t = OneOp::new();
    let xi = t.f32("x", &[n, c], x.clone());
    let got = t.run_shaped(
        Op::SliceRows {
            x: xi,
            start: 3,
            len: 6,
        },
        &[6, c],
    );
    assert_eq!(got, &x[3 * c..9 * c]);

    let (a, b) = (r.vec(4 * c, 1.0), r.vec(7 * c, 1.0));
    let mut t = OneOp::new();
    let ai = t.f32("a", &[4, c], a.clone());
    let bi = t.f32("b", &[7, c], b.clone());
    let got = t.run_shaped(
        Op::ConcatRows {
            parts: vec![ai, bi, ai],
        },
        &[15, c],
    );
    assert_eq!(got, [a.clone(), b, a].concat());
}

#[test]
fn patchify_matches_einops_and_unpatchify_inverts() {
    let mut r = Rng::new(32);
    let (c, h, w, p) = (3, 6, 10, 2);
    let x = r.vec(c * h * w, 1.0);
    let mut t = OneOp::new();
    let xi = t.f32("x", &[c, h, w], x.clone());
    let (hp, wp) = (h / p, w / p);
    let tokens = t.run_shaped(Op::Patchify { x: xi, patch: p }, &[hp * wp, p * p * c]);
    // 'c (h p1) (w p2) -> (h w) (p1 p2 c)'
    for hi in 0..hp {
        for wi in 0..wp {
            for p1 in 0..p {
                for p2 in 0..p {
                    for ch in 0..c {
                        let got = tokens[(hi * wp + wi) * p * p * c + (p1 * p + p2) * c + ch];
                        assert_eq!(got, x[ch * h * w + (hi * p + p1) * w + wi * p + p2]);
                    }
                }
            }
        }
    }
    let mut t = OneOp::new();
    let ti = t.f32("t", &[hp * wp, p * p * c], tokens);
    let back = t.run_shaped(
        Op::Unpatchify {
            x: ti,
            patch: p,
            channels: c,
            height: h,
            width: w,
        },
        &[c, h, w],
    );
    assert_eq!(back, x);
}

#[test]
fn transpose_and_reshape() {
    let mut r = Rng::new(33);
    for &(a, b) in &[(7usize, 13usize), (131, 45), (1, 9)] {
        let x = r.vec(a * b, 1.0);
        let mut t = OneOp::new();
        let xi = t.f32("x", &[a, b], x.clone());
        let got = t.run_shaped(Op::Transpose { x: xi }, &[b, a]);
        for i in 0..a {
            for j in 0..b {
                assert_eq!(got[j * a + i], x[i * b + j]);
            }
        }
    }
    let x = r.vec(60, 1.0);
    let mut t = OneOp::new();
    let xi = t.f32("x", &[3, 4, 5], x.clone());
    assert_eq!(
        t.run_shaped(
            Op::Reshape {
                x: xi,
                shape: vec![12, 5]
            },
            &[12, 5]
        ),
        x
    );
}

#[test]
fn upsample_nearest() {
    let mut r = Rng::new(34);
    let (c, h, w) = (3, 5, 7);
    let x = r.vec(c * h * w, 1.0);
    let mut t = OneOp::new();
    let xi = t.f32("x", &[c, h, w], x.clone());
    let got = t.run_shaped(Op::Upsample2x { x: xi }, &[c, 2 * h, 2 * w]);
    for ch in 0..c {
        for y in 0..2 * h {
            for xx in 0..2 * w {
                assert_eq!(
                    got[(ch * 2 * h + y) * 2 * w + xx],
                    x[(ch * h + y / 2) * w + xx / 2]
                );
            }
        }
    }
}

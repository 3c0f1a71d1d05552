use crate::common::*;
use hbridge_graph::Op;

struct Case {
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    br_only: bool,
    bias: bool,
}

fn conv_ref(x: &[f32], wt: &[f32], b: Option<&[f32]>, c: &Case) -> (Vec<f64>, usize, usize) {
    let (top, extra) = if c.br_only {
        (0, c.pad)
    } else {
        (c.pad, 2 * c.pad)
    };
    let hout = (c.h + extra - c.k) / c.stride + 1;
    let wout = (c.w + extra - c.k) / c.stride + 1;
    let mut out = vec![0f64; c.cout * hout * wout];
    for co in 0..c.cout {
        for oy in 0..hout {
            for ox in 0..wout {
                let mut acc = b.map_or(0.0, |b| b[co] as f64);
                for ci in 0..c.cin {
                    for ky in 0..c.k {
                        for kx in 0..c.k {
                            let iy = (oy * c.stride + ky) as isize - top as isize;
                            let ix = (ox * c.stride + kx) as isize - top as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < c.h && (ix as usize) < c.w {
                                acc += wt[((co * c.cin + ci) * c.k + ky) * c.k + kx] as f64
                                    * x[(ci * c.h + iy as usize) * c.w + ix as usize] as f64;
                            }
                        }
                    }
                }
                out[(co * hout + oy) * wout + ox] = acc;
            }
        }
    }
    (out, hout, wout)
}

fn run(seed: u64, c: Case) {
    let mut r = Rng::new(seed);
    let x = r.vec(c.cin * c.h * c.w, 1.0);
    let wt = r.vec(c.cout * c.cin * c.k * c.k, 0.2);
    let b = r.vec(c.cout, 1.0);
    let (want, hout, wout) = conv_ref(&x, &wt, c.bias.then_some(b.as_slice()), &c);
    let mut t = OneOp::new();
    let xi = t.f32("x", &[c.cin, c.h, c.w], x);
    let wi = t.f32("w", &[c.cout, c.cin, c.k, c.k], wt);
    let bi = c.bias.then(|| t.f32("b", &[c.cout], b));
    let op = Op::Conv2d {
        x: xi,
        w: wi,
        bias: bi,
        stride: c.stride,
        pad: c.pad,
        pad_bottom_right_only: c.br_only,
    };
    let got = t.run_shaped(op, &[c.cout, hout, wout]);
    assert_close(
        &format!(
            "conv {}x{}x{} k{} s{} p{} br {}",
            c.cin, c.h, c.w, c.k, c.stride, c.pad, c.br_only
        ),
        &got,
        &want,
        1e-6,
    );
}

#[test]
fn conv3x3_same_padding() {
    run(
        61,
        Case {
            cin: 5,
            h: 9,
            w: 11,
            cout: 7,
            k: 3,
            stride: 1,
            pad: 1,
            bias: true,
            br_only: false,
        },
    );
    run(
        62,
        Case {
            cin: 3,
            h: 6,
            w: 5,
            cout: 4,
            k: 3,
            stride: 1,
            pad: 1,
            bias: false,
            br_only: false,
        },
    );
}

#[test]
fn conv_stride2_and_bottom_right_padding() {
    run(
        63,
        Case {
            cin: 4,
            h: 9,
            w: 12,
            cout: 6,
            k: 3,
            stride: 2,
            pad: 1,
            bias: true,
            br_only: false,
        },
    );
    // diffusers' Downsample2D: pad (0,1,0,1), then stride 2, pad 0.
    run(
        64,
        Case {
            cin: 4,
            h: 8,
            w: 12,
            cout: 4,
            k: 3,
            stride: 2,
            pad: 1,
            bias: true,
            br_only: true,
        },
    );
    run(
        65,
        Case {
            cin: 3,
            h: 7,
            w: 9,
            cout: 2,
            k: 3,
            stride: 2,
            pad: 1,
            bias: false,
            br_only: true,
        },
    );
}

#[test]
fn conv1x1_and_unpadded() {
    run(
        66,
        Case {
            cin: 16,
            h: 7,
            w: 9,
            cout: 8,
            k: 1,
            stride: 1,
            pad: 0,
            bias: true,
            br_only: false,
        },
    );
    run(
        67,
        Case {
            cin: 6,
            h: 10,
            w: 8,
            cout: 3,
            k: 5,
            stride: 1,
            pad: 0,
            bias: true,
            br_only: false,
        },
    );
    run(
        68,
        Case {
            cin: 2,
            h: 5,
            w: 5,
            cout: 3,
            k: 5,
            stride: 1,
            pad: 2,
            bias: true,
            br_only: false,
        },
    );
}

#[test]
fn conv_in_several_row_bands() {
    // 32*9 column rows x 130*130 positions exceeds the column budget, so output rows come in bands.
    run(
        69,
        Case {
            cin: 32,
            h: 130,
            w: 130,
            cout: 5,
            k: 3,
            stride: 1,
            pad: 1,
            bias: true,
            br_only: false,
        },
    );
}

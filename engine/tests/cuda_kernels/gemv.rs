//! GPU tests of kernels/cuda/gemv.cu (the decode step's few-row linears) against an f64 reference on
//! bf16 inputs: 1 to 4 rows, the hbridge-7b4b decode shapes and odd ones (out not a multiple of the
//! block's features, in not a multiple of the warp's stride), with and without bias, outputs poisoned.
//! Also the same product through `gemm::linear` (cuBLASLt), so the two paths agree; and the grouped
//! launch (q, k and v of one x) and the gate/up launch with the SwiGLU in its epilogue, each against
//! the separate launches it replaces, bit for bit.

use super::common::{self, Rng, BF16_TOL};
use hbridge_engine::cuda::buffer::DeviceBf16;
use hbridge_engine::cuda::ops::gemm::{self, LinearArgs};
use hbridge_engine::cuda::ops::gemv;

#[test]
fn gemv_matches_f64_and_cublaslt() {
    let Some(gpu) = common::gpu("gemv::gemv_matches_f64_and_cublaslt") else {
        return;
    };
    let mut rng = Rng::fresh("gemv::gemv_matches_f64_and_cublaslt");
    // (rows, in, out, bias): the und decode's q (3584 -> 3584), k (3584 -> 512) and down (18944 -> 3584)
    // projections, then odd sizes.
    let cases = [
        (1usize, 3584usize, 3584usize, true),
        (1, 3584, 512, true),
        (1, 18944, 3584, false),
        (2, 8, 3, true),
        (3, 1000, 37, false),
        (4, 264, 1001, true),
    ];
    for (n, inp, out, with_bias) in cases {
        let name = format!("gemv n{n} {inp}->{out} bias={with_bias}");
        let x = rng.normal_bf16(n * inp, 1.0);
        let w = rng.normal_bf16(out * inp, (inp as f64).powf(-0.5));
        let b = rng.normal_bf16(out, 0.5);
        let (dx, dw, db) = (
            common::up(&gpu, &x),
            common::up(&gpu, &w),
            common::up(&gpu, &b),
        );
        let mut want = vec![0f64; n * out];
        for i in 0..n {
            for o in 0..out {
                let dot: f64 = (0..inp)
                    .map(|e| x[i * inp + e] as f64 * w[o * inp + e] as f64)
                    .sum();
                want[i * out + o] = dot + if with_bias { b[o] as f64 } else { 0.0 };
            }
        }
        for (path, direct) in [("gemv", true), ("cuBLASLt", false)] {
            let y = common::out_buffer(&gpu, n * out);
            let args = LinearArgs {
                x: dx.ptr(&gpu),
                w: dw.ptr(&gpu),
                bias: with_bias.then(|| db.ptr(&gpu)),
                y: y.ptr(&gpu),
                n,
                in_features: inp,
                out_features: out,
            };
            assert!(
                gemv::applies(&args),
                "{name}: expected the gemv kernel to apply"
            );
            if direct {
                gemv::gemv(&gpu, &args).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else {
                gemm::linear(&gpu, &args).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            let got = common::down(&gpu, y.ptr(&gpu), n * out);
            common::check(&format!("{name} ({path})"), &got, &want, BF16_TOL);
        }
    }
}

/// Products of one x as `gemv_group` and as separate `gemv` launches: the same bits (the group runs the
/// same warps over the same rows). Then gate/up/SwiGLU as `gemv_swiglu` against gemv, gemv and the
/// elementwise SwiGLU kernel: the same bits too (each product is rounded to bf16 before the SwiGLU).
#[test]
fn grouped_and_swiglu_gemv_equal_the_separate_launches() {
    use hbridge_engine::cuda::ops::elementwise;
    let Some(gpu) = common::gpu("gemv::grouped_and_swiglu_gemv_equal_the_separate_launches") else {
        return;
    };
    let mut rng = Rng::fresh("gemv::grouped_and_swiglu_gemv_equal_the_separate_launches");
    // (rows, in, outs): the und decode's q/k/v, then odd sizes (segments not multiples of a block).
    for (n, inp, outs) in [
        (1usize, 3584usize, vec![3584usize, 512, 512]),
        (3, 264, vec![37, 1001]),
        (4, 64, vec![17]),
    ] {
        let name = format!("gemv_group n{n} {inp}->{outs:?}");
        let x = common::up(&gpu, &rng.normal_bf16(n * inp, 1.0));
        let ws: Vec<_> = outs
            .iter()
            .map(|&o| common::up(&gpu, &rng.normal_bf16(o * inp, (inp as f64).powf(-0.5))))
            .collect();
        let bs: Vec<_> = outs
            .iter()
            .map(|&o| common::up(&gpu, &rng.normal_bf16(o, 0.5)))
            .collect();
        let run = |grouped: bool| -> Vec<Vec<f32>> {
            let ys: Vec<_> = outs
                .iter()
                .map(|&o| common::out_buffer(&gpu, n * o))
                .collect();
            let products: Vec<LinearArgs> = (0..outs.len())
                .map(|s| LinearArgs {
                    x: x.ptr(&gpu),
                    w: ws[s].ptr(&gpu),
                    // The second segment without bias: a null bias among non-null ones.
                    bias: (s != 1).then(|| bs[s].ptr(&gpu)),
                    y: ys[s].ptr(&gpu),
                    n,
                    in_features: inp,
                    out_features: outs[s],
                })
                .collect();
            if grouped {
                assert!(gemv::group_fits(&products), "{name}");
                gemv::gemv_group(&gpu, &products).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else {
                for p in &products {
                    gemv::gemv(&gpu, p).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
            (0..outs.len())
                .map(|s| common::down(&gpu, ys[s].ptr(&gpu), n * outs[s]))
                .collect()
        };
        let (grouped, separate) = (run(true), run(false));
        for (s, (g, e)) in grouped.iter().zip(&separate).enumerate() {
            assert!(
                g.iter().zip(e).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: segment {s} differs from its own launch"
            );
        }
    }

    for (n, inp, out) in [(1usize, 3584usize, 18944usize), (2, 72, 288), (4, 40, 1001)] {
        let name = format!("gemv_swiglu n{n} {inp}->{out}");
        let x = common::up(&gpu, &rng.normal_bf16(n * inp, 1.0));
        let scale = (inp as f64).powf(-0.5);
        let (wg, wu) = (
            common::up(&gpu, &rng.normal_bf16(out * inp, scale)),
            common::up(&gpu, &rng.normal_bf16(out * inp, scale)),
        );
        let bg = common::up(&gpu, &rng.normal_bf16(out, 0.5));
        let args = |w: &DeviceBf16, y| LinearArgs {
            x: x.ptr(&gpu),
            w: w.ptr(&gpu),
            bias: None,
            y,
            n,
            in_features: inp,
            out_features: out,
        };
        let (gate_y, up_y, want_y, got_y) = (
            common::out_buffer(&gpu, n * out),
            common::out_buffer(&gpu, n * out),
            common::out_buffer(&gpu, n * out),
            common::out_buffer(&gpu, n * out),
        );
        let gate = LinearArgs {
            bias: Some(bg.ptr(&gpu)),
            ..args(&wg, gate_y.ptr(&gpu))
        };
        let up = args(&wu, up_y.ptr(&gpu));
        gemv::gemv(&gpu, &gate).unwrap();
        gemv::gemv(&gpu, &up).unwrap();
        elementwise::swiglu(
            &gpu,
            gate_y.ptr(&gpu),
            up_y.ptr(&gpu),
            want_y.ptr(&gpu),
            n * out,
        )
        .unwrap();
        gemv::gemv_swiglu(&gpu, &gate, &up, got_y.ptr(&gpu))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (want, got) = (
            common::down(&gpu, want_y.ptr(&gpu), n * out),
            common::down(&gpu, got_y.ptr(&gpu), n * out),
        );
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: differs from gemv, gemv and the SwiGLU kernel"
        );
        assert!(want.iter().any(|v| *v != 0.0), "{name}: all zeros");
    }
}

//! GPU tests of kernels/cuda/gemv.cu (the decode step's few-row linears) against an f64 reference on
//! bf16 inputs: 1 to 4 rows, the hbridge-7b4b decode shapes and odd ones (out not a multiple of the
//! block's features, in not a multiple of the warp's stride), with and without bias, outputs poisoned.
//! Also the same product through `gemm::linear` (cuBLASLt), so the two paths agree.

use super::common::{self, Rng, BF16_TOL};
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

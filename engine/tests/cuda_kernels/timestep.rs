//! GPU tests of kernels/cuda/timestep.cu: the sinusoidal features from a device-side t, in f64.

use super::common::{self, round_bf16, Rng, BF16_TOL};
use super::elementwise::poisoned;
use hbridge_engine::cuda::buffer;
use hbridge_engine::cuda::dev_ptr;
use hbridge_engine::cuda::ops::timestep;

#[test]
fn timestep_features_match_f64() {
    let Some(gpu) = common::gpu("timestep::timestep_features_match_f64") else {
        return;
    };
    let mut rng = Rng::fresh("timestep::timestep_features_match_f64");
    let ts = [
        0.0f32,
        1.0,
        rng.uniform() as f32,
        0.015625,
        rng.uniform() as f32,
    ];
    for &(half, scale) in &[
        (128usize, 1000.0f64),
        (128, 1.0),
        (3, 1000.0),
        (300, 1000.0),
    ] {
        for &t in &ts {
            let tb = buffer::upload(&gpu, &[t]).expect("upload t");
            let tp = dev_ptr(&tb, gpu.stream());
            let out = poisoned(&gpu, 2 * half, 0);
            timestep::timestep_features(&gpu, tp, out.ptr, half, scale).unwrap();
            let got = common::down(&gpu, out.ptr, 2 * half);
            let ln = 10000f64.ln();
            let mut want = vec![0.0f64; 2 * half];
            for k in 0..half {
                let e = scale * t as f64 * (-ln * k as f64 / half as f64).exp();
                want[k] = e.cos();
                want[half + k] = e.sin();
            }
            let case = format!("timestep half={half} scale={scale} t={t}");
            common::check(&case, &got, &want, BF16_TOL);
            // Each value is the f64 result rounded to f32 then bf16: within half a bf16 step of it.
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let step = (round_bf16(w as f32) - w as f32).abs() as f64;
                assert!(
                    (g as f64 - w).abs() <= step + 1e-6,
                    "{case}: element {i}: {g} vs {w}"
                );
            }
        }
    }
}

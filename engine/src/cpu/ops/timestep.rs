//! Sinusoidal timestep features (DESIGN.md 3): in f32 the arguments at timestep_scale 1000 lose ~1e-4, so
//! everything is f64 until the final rounding.

/// `[cos e, sin e]`, `e_k = scale * t * exp(-ln(10000) * k / half)`.
pub(crate) fn timestep_features(t: f32, half: usize, scale: f64, out: &mut [f32]) {
    let st = scale * t as f64;
    let ln = 10000f64.ln();
    for k in 0..half {
        let e = st * (-ln * k as f64 / half as f64).exp();
        out[k] = e.cos() as f32;
        out[half + k] = e.sin() as f32;
    }
}

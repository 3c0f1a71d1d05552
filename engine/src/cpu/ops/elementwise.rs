//! Elementwise ops and their one-row broadcasts (the DiT's modulation and gated residual).

use super::{for_rows, map_indexed};

/// `a + b`, `b` either a's size or one row broadcast over a's rows.
pub(crate) fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    if b.len() == a.len() {
        map_indexed(out, |i| a[i] + b[i]);
    } else {
        let d = b.len();
        for_rows(out, d, 1, |r, o| {
            let a = &a[r * d..(r + 1) * d];
            o.iter_mut()
                .zip(a)
                .zip(b)
                .for_each(|((o, a), b)| *o = a + b);
        });
    }
}

/// `x * (1 + scale)`, scale one row.
pub(crate) fn modulate(x: &[f32], scale: &[f32], out: &mut [f32]) {
    let d = scale.len();
    for_rows(out, d, 1, |r, o| {
        let x = &x[r * d..(r + 1) * d];
        o.iter_mut()
            .zip(x)
            .zip(scale)
            .for_each(|((o, x), s)| *o = x * (1.0 + s));
    });
}

/// `x + tanh(gate) * y`, gate one row.
pub(crate) fn gate_residual(x: &[f32], gate: &[f32], y: &[f32], out: &mut [f32]) {
    let d = gate.len();
    let g: Vec<f32> = gate.iter().map(|g| g.tanh()).collect();
    for_rows(out, d, 1, |r, o| {
        let (x, y) = (&x[r * d..(r + 1) * d], &y[r * d..(r + 1) * d]);
        for j in 0..d {
            o[j] = x[j] + g[j] * y[j];
        }
    });
}

pub(crate) fn affine(x: &[f32], scale: f32, shift: f32, out: &mut [f32]) {
    map_indexed(out, |i| x[i] * scale + shift);
}

/// Chunks of `len` values of an elementwise kernel, in parallel when large.
fn in_chunks(
    len: usize,
    out: &mut [f32],
    f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync + Send,
) {
    const CHUNK: usize = 1 << 14;
    debug_assert_eq!(len, out.len());
    for_rows(out, CHUNK.min(len), 4, |c, o| {
        f(c * CHUNK..c * CHUNK + o.len(), o)
    });
}

/// `x / (1 + e^-x)` on a vectorized exp (fast_exp): the VAE's many large SiLUs.
pub(crate) fn silu(x: &[f32], out: &mut [f32]) {
    in_chunks(x.len(), out, |r, o| super::fast_exp::silu(&x[r], o));
}

/// Exact GELU `x/2 * (1 + erf(x/sqrt 2))`, evaluated in f64 as `x/2 * erfc(-x/sqrt 2)`: libm's erfc is
/// within an ulp of f64 and, unlike `1 + erf`, keeps its relative accuracy for negative x, so the only
/// error left is the final rounding to f32.
pub(crate) fn gelu(x: &[f32], out: &mut [f32]) {
    map_indexed(out, |i| {
        let v = x[i] as f64;
        (0.5 * v * libm::erfc(-v * std::f64::consts::FRAC_1_SQRT_2)) as f32
    });
}

pub(crate) fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    in_chunks(gate.len(), out, |r, o| {
        super::fast_exp::swiglu(&gate[r.clone()], &up[r], o)
    });
}

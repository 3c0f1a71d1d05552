//! f64 sums of f32 rows for the norms' statistics. A plain `.sum::<f64>()` is one chain of dependent
//! adds (about 4 cycles per element): on the mid config's gen step the RMSNorms ran at 3.7 GB/s on two
//! cores, bound by that chain. Eight partial sums in a fixed order vectorize and give the same total on
//! every build.

use super::simd::{at_level, level, Level};

/// `sum f(x_i)` in f64, eight lanes over consecutive elements, the lanes added in order at the end.
#[inline(always)]
fn lanes(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v as f64);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(v as f64);
    }
    acc.iter().sum()
}

#[inline(always)]
fn sum_body(x: &[f32]) -> f64 {
    lanes(x, |v| v)
}

#[inline(always)]
fn sum_sq_body(x: &[f32]) -> f64 {
    lanes(x, |v| v * v)
}

#[inline(always)]
fn sum_sq_dev_body(x: &[f32], mean: f64) -> f64 {
    lanes(x, |v| (v - mean) * (v - mean))
}

at_level!(sum_at = sum_body(x: &[f32]) -> f64);
at_level!(sum_sq_at = sum_sq_body(x: &[f32]) -> f64);
at_level!(sum_sq_dev_at = sum_sq_dev_body(x: &[f32], mean: f64) -> f64);

/// Sum of the elements.
pub(crate) fn sum(x: &[f32]) -> f64 {
    sum_at(level(), x)
}

/// Sum of the squares.
pub(crate) fn sum_sq(x: &[f32]) -> f64 {
    sum_sq_at(level(), x)
}

/// Sum of the squared deviations from `mean`.
pub(crate) fn sum_sq_dev(x: &[f32], mean: f64) -> f64 {
    sum_sq_dev_at(level(), x, mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_the_sequential_sums() {
        for n in [0usize, 1, 7, 8, 9, 100, 1001] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 29) % 17) as f32 * 0.37 - 2.0)
                .collect();
            let seq: f64 = x.iter().map(|&v| v as f64).sum();
            let sq: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
            let mean = if n > 0 { seq / n as f64 } else { 0.0 };
            let dev: f64 = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
            assert!(close(sum(&x), seq), "{n}");
            assert!(close(sum_sq(&x), sq), "{n}");
            assert!(close(sum_sq_dev(&x, mean), dev), "{n}");
        }
    }
}

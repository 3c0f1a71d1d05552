//! Seeded standard-normal noise for the sampler's initial latent: the same seed gives the same bytes on
//! every machine (SplitMix64 + Box-Muller in f64, no platform RNG).

/// Seeded standard-normal generator: SplitMix64 uniforms through Box-Muller (both outputs of a pair are
/// used), all in f64.
pub struct NormalRng {
    state: u64,
    spare: Option<f64>,
}

impl NormalRng {
    /// A generator whose stream depends only on `seed` (an image request's `seed`).
    pub fn new(seed: u64) -> Self {
        NormalRng {
            state: seed ^ 0x6a09e667f3bcc909,
            spare: None,
        }
    }

    /// The raw SplitMix64 stream (also what benchmarks draw random token ids from).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// The next standard-normal sample (mean 0, variance 1).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

/// `n` standard-normal f32 values from `seed`.
pub fn normal_noise(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = NormalRng::new(seed);
    (0..n).map(|_| rng.normal() as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_standard() {
        assert_eq!(normal_noise(7, 1000), normal_noise(7, 1000));
        assert_ne!(normal_noise(7, 10), normal_noise(8, 10));
        let v = normal_noise(1, 200_000);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }
}

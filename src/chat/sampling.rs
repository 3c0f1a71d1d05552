//! Token choice: greedy, and temperature + nucleus (top-p) sampling from a seeded generator.
//!
//! Runs on the host once per generated token, over the whole vocabulary (151,936 logits for
//! Qwen2.5-VL), so it is written to stay well under a GPU decode step (~6 ms on hbridge-7b4b): the
//! weights come from the CPU backend's vectorized exp, and the nucleus is found by a radix select over
//! the weights' bits instead of a sort of the vocabulary (which alone took 6.6 ms per token).

mod nucleus;

use hbridge_engine::cpu::exp_shifted_sum;

/// Deterministic SplitMix64 random numbers: the same seed gives the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose sequence depends only on `seed` (a chat request's `seed`).
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The next 64 uniformly distributed bits (one SplitMix64 step).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Index of the largest logit (the first on ties; NaN never wins; 0 for an empty, all-NaN or
/// all-minus-infinity row).
pub fn argmax(logits: &[f32]) -> u32 {
    // Eight running maxima in lanes (a comparison keeps the lane on NaN), so the pass vectorizes; then
    // the first index holding the maximum.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = logits.chunks_exact(8);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    if max == f32::NEG_INFINITY {
        return 0;
    }
    logits.iter().position(|&x| x == max).unwrap_or(0) as u32
}

/// Picks the next token from one row of logits: argmax at temperature 0, else a draw from
/// `softmax(logits / temperature)` restricted to the top-`top_p` nucleus: every token whose probability
/// is at least that of the least likely token needed for the most likely tokens' mass to reach `top_p`
/// (ties at the boundary are all kept). Probabilities are computed in f32 (relative to the most likely
/// token) and summed in f64; tokens under about 1e-38 of the most likely one are never drawn.
/// Expects parameters that passed [`ChatRequest::validate`](crate::chat::ChatRequest::validate);
/// degenerate rows (all NaN, infinities) fall back to argmax.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut Rng) -> u32 {
    if temperature <= 0.0 || logits.is_empty() || temperature.is_nan() {
        return argmax(logits);
    }
    let best = argmax(logits);
    let max = logits[best as usize];
    if !max.is_finite() {
        return best;
    }
    let (weights, total) = weights(logits, max, temperature);
    if !(total.is_finite() && total > 0.0) {
        return best;
    }
    let draw = rng.next_f64();
    let (floor, kept) = if top_p >= 1.0 {
        (f32::MIN_POSITIVE, total)
    } else {
        nucleus::floor(&weights, top_p as f64 * total)
    };
    pick(&weights, floor, kept, draw).unwrap_or(best)
}

/// `w = exp((x - max) / temperature)` for every logit (NaN -> 0, results under f32's smallest normal
/// -> 0) and their sum.
fn weights(logits: &[f32], max: f32, temperature: f32) -> (Vec<f32>, f64) {
    let mut w: Vec<f32> = logits
        .iter()
        .map(|&x| {
            let d = (x - max) / temperature;
            if d.is_nan() {
                f32::NEG_INFINITY
            } else {
                d
            }
        })
        .collect();
    // The clamped exp turns -inf into ~1.2e-38, not 0; a total >= 1 (the most likely token weighs 1)
    // cannot tell them apart from 0, and the pass below makes them 0 for the draw.
    let total = exp_shifted_sum(&mut w, 0.0);
    for v in &mut w {
        *v = if *v < f32::MIN_POSITIVE { 0.0 } else { *v };
    }
    (w, total)
}

/// The first token, in index order among those weighing at least `floor`, at which the running mass
/// exceeds `draw * kept` (`kept`: the mass of those tokens).
fn pick(weights: &[f32], floor: f32, kept: f64, draw: f64) -> Option<u32> {
    let target = draw * kept;
    let mut acc = 0.0f64;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if w < floor || w <= 0.0 {
            continue;
        }
        acc += w as f64;
        last = Some(i as u32);
        if acc > target {
            return last;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The old definition: the first strictly largest, NaN never wins.
    fn argmax_scalar(logits: &[f32]) -> u32 {
        let mut best = (0usize, f32::NEG_INFINITY);
        for (i, &x) in logits.iter().enumerate() {
            if x > best.1 {
                best = (i, x);
            }
        }
        best.0 as u32
    }

    #[test]
    fn argmax_matches_the_scalar_definition() {
        let mut rng = Rng::new(11);
        for len in [0usize, 1, 7, 8, 9, 33, 1000] {
            for _ in 0..20 {
                let row: Vec<f32> = (0..len)
                    .map(|_| match rng.next_u64() % 10 {
                        0 => f32::NAN,
                        1 => f32::NEG_INFINITY,
                        2 => 3.0, // ties
                        _ => rng.next_f64() as f32 * 6.0 - 3.0,
                    })
                    .collect();
                assert_eq!(argmax(&row), argmax_scalar(&row), "{row:?}");
            }
        }
        assert_eq!(argmax(&[f32::NAN; 9]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 9]), 0);
        assert_eq!(argmax(&[1.0, f32::INFINITY, f32::INFINITY]), 1);
    }

    #[test]
    fn draws_follow_the_nucleus_probabilities() {
        // Weights e^2, e^1, e^0.5, 1, e^-1 (total 13.12): the top two hold 10.11 < 0.8 * 13.12, the top
        // three 11.76, so the nucleus is tokens 0-2, renormalized.
        let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0];
        let w: Vec<f64> = logits[..3].iter().map(|&x| (x as f64).exp()).collect();
        let kept: f64 = w.iter().sum();
        let mut rng = Rng::new(42);
        let n = 40_000;
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[sample(&logits, 1.0, 0.8, &mut rng) as usize] += 1;
        }
        assert_eq!(
            &counts[3..],
            &[0, 0],
            "tokens outside the nucleus were drawn"
        );
        for (c, w) in counts.iter().zip(&w) {
            let (got, want) = (*c as f64 / n as f64, w / kept);
            assert!((got - want).abs() < 0.01, "{counts:?}: {got} vs {want}");
        }
        // top_p 1: every token, in proportion.
        let total: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[sample(&logits, 1.0, 1.0, &mut rng) as usize] += 1;
        }
        for (c, &x) in counts.iter().zip(&logits) {
            let (got, want) = (*c as f64 / n as f64, (x as f64).exp() / total);
            assert!((got - want).abs() < 0.01, "{counts:?}: {got} vs {want}");
        }
    }

    #[test]
    fn weights_are_relative_to_the_largest_and_zero_where_masked() {
        let (w, total) = weights(&[0.0, 2.0, f32::NEG_INFINITY, f32::NAN, -200.0], 2.0, 1.0);
        assert_eq!(w[1], 1.0);
        assert!((w[0] as f64 - (-2.0f64).exp()).abs() < 1e-7);
        assert_eq!(&w[2..], &[0.0, 0.0, 0.0]);
        assert!((total - 1.0 - (-2.0f64).exp()).abs() < 1e-6);
    }
}

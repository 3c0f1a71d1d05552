//! Token choice: greedy, and temperature + nucleus (top-p) sampling from a seeded generator.

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

/// Index of the largest logit (the first on ties; NaN never wins; 0 for an empty or all-NaN row).
pub fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0 as u32
}

/// Picks the next token from one row of logits: argmax at temperature 0, else a draw from
/// `softmax(logits / temperature)` restricted to the top-`top_p` nucleus. Expects parameters that passed
/// [`ChatRequest::validate`](crate::chat::ChatRequest::validate); degenerate rows (all NaN,
/// infinities) fall back to argmax.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut Rng) -> u32 {
    if temperature <= 0.0 || logits.is_empty() || temperature.is_nan() {
        return argmax(logits);
    }
    let best = argmax(logits);
    let max = logits[best as usize];
    if !max.is_finite() {
        return best;
    }
    let t = temperature as f64;
    let probs: Vec<f64> = logits
        .iter()
        .map(|&x| {
            if x.is_nan() {
                0.0
            } else {
                ((x as f64 - max as f64) / t).exp()
            }
        })
        .collect();
    let total: f64 = probs.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return best;
    }
    let draw = rng.next_f64();
    if top_p >= 1.0 {
        return pick(probs.iter().copied().enumerate(), total, draw).unwrap_or(best);
    }
    // The nucleus: the most likely tokens (ties by index) until their mass reaches top_p.
    let mut order: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] > 0.0).collect();
    order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let target = top_p as f64 * total;
    let mut mass = 0.0;
    let mut keep = 0;
    for &i in &order {
        mass += probs[i];
        keep += 1;
        if mass >= target {
            break;
        }
    }
    order.truncate(keep.max(1));
    let kept: f64 = order.iter().map(|&i| probs[i]).sum();
    pick(order.iter().map(|&i| (i, probs[i])), kept, draw).unwrap_or(best)
}

/// The entry where the running mass first exceeds `draw * total`.
fn pick(items: impl Iterator<Item = (usize, f64)>, total: f64, draw: f64) -> Option<u32> {
    let target = draw * total;
    let mut acc = 0.0;
    let mut last = None;
    for (i, p) in items {
        if p <= 0.0 {
            continue;
        }
        acc += p;
        last = Some(i as u32);
        if acc > target {
            return last;
        }
    }
    last
}

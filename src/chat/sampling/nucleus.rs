//! The nucleus boundary of top-p sampling without sorting the vocabulary.
//!
//! The nucleus keeps every token weighing at least `floor`, the weight of the least likely token
//! needed for the most likely tokens' mass to reach the target. Only that value is needed (ties at the
//! boundary are all kept, and the draw walks the kept tokens in index order), so a radix select finds
//! it: positive f32 weights order like their bit patterns, and each pass histograms the candidates'
//! mass by one byte of the bits, highest byte first, and keeps only the bucket where the running mass
//! (largest first) crosses the target. A peaked distribution leaves a few candidates after the first
//! pass; a flat one narrows by a byte per pass.

/// Below this many candidates a sort is cheaper than another histogram pass.
const SORT_BELOW: usize = 256;

/// `(floor, kept)`: the nucleus' smallest weight and the mass of all weights `>= floor`. `weights` holds at least one positive weight; zeros are never
/// kept; `target` is below the total mass.
pub(super) fn floor(weights: &[f32], target: f64) -> (f32, f64) {
    let (digit, mut above) = select_digit(weights, 24, 0.0, target);
    let mut cand: Vec<f32> = weights
        .iter()
        .copied()
        .filter(|&w| w > 0.0 && w.to_bits() >> 24 == digit)
        .collect();
    for shift in [16u32, 8, 0] {
        if cand.len() <= SORT_BELOW {
            break;
        }
        let (d, a) = select_digit(&cand, shift, above, target);
        above = a;
        cand.retain(|w| (w.to_bits() >> shift) & 0xFF == d);
    }
    // Largest first; the boundary is the first weight at which the mass reaches the target.
    cand.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut floor = cand.last().copied().unwrap_or(f32::MIN_POSITIVE);
    for &w in &cand {
        above += w as f64;
        if above >= target {
            floor = w;
            break;
        }
    }
    (floor, mass_at_least(weights, floor.max(f32::MIN_POSITIVE)))
}

/// The mass of the weights `>= floor`, in eight partial sums (vectorizable; the draw's running sum is
/// sequential, so it may end a rounding step off this, and falls back to its last kept token then).
fn mass_at_least(weights: &[f32], floor: f32) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = weights.chunks_exact(8);
    for c in &mut chunks {
        for (l, &w) in lanes.iter_mut().zip(c) {
            *l += if w >= floor { w as f64 } else { 0.0 };
        }
    }
    let rest: f64 = chunks
        .remainder()
        .iter()
        .filter(|&&w| w >= floor)
        .map(|&w| w as f64)
        .sum();
    lanes.iter().sum::<f64>() + rest
}

/// The byte `(bits >> shift) & 0xFF` of the bucket where the mass, walked from the largest bucket
/// down and starting at `above`, first reaches `target`, and the mass above that bucket. Zero weights
/// land in bucket 0 and add nothing.
fn select_digit(weights: &[f32], shift: u32, above: f64, target: f64) -> (u32, f64) {
    // Eight interleaved histograms: a flat distribution puts consecutive weights in one bucket, and a
    // single histogram would chain every add on the previous one's latency.
    let mut mass = [[0f64; 256]; 8];
    let digit = |w: f32| ((w.to_bits() >> shift) & 0xFF) as usize;
    let mut chunks = weights.chunks_exact(8);
    for c in &mut chunks {
        for (h, &w) in mass.iter_mut().zip(c) {
            h[digit(w)] += w as f64;
        }
    }
    for &w in chunks.remainder() {
        mass[0][digit(w)] += w as f64;
    }
    let mut above = above;
    let mut lowest = None;
    for d in (0..256).rev() {
        let m: f64 = mass.iter().map(|h| h[d]).sum();
        if m == 0.0 {
            continue;
        }
        if above + m >= target {
            return (d as u32, above);
        }
        above += m;
        lowest = Some((d as u32, m));
    }
    // Rounding kept the walk under the target: the last nonempty bucket holds the boundary.
    match lowest {
        Some((d, m)) => (d, above - m),
        None => (0, above),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Rng;
    use super::*;

    /// The definition: sort descending, the first weight at which the running mass reaches the target.
    fn floor_by_sorting(weights: &[f32], target: f64) -> f32 {
        let mut w: Vec<f32> = weights.iter().copied().filter(|&w| w > 0.0).collect();
        w.sort_by(|a, b| b.total_cmp(a));
        let mut acc = 0.0;
        for &v in &w {
            acc += v as f64;
            if acc >= target {
                return v;
            }
        }
        *w.last().unwrap()
    }

    fn rows(rng: &mut Rng) -> Vec<Vec<f32>> {
        let n = 5000;
        let mut u = || rng.next_f64() as f32;
        vec![
            // flat: every weight in [0.9, 1]
            (0..n).map(|_| 0.9 + 0.1 * u()).collect(),
            // peaked: a few near 1, a long tail over many octaves
            (0..n)
                .map(|_| {
                    let x = u();
                    if x > 0.998 {
                        x
                    } else {
                        (-30.0 * u()).exp()
                    }
                })
                .collect(),
            // many exact ties and zeros
            (0..n)
                .map(|_| [0.0, 0.25, 0.5, 1.0][(u() * 4.0) as usize % 4])
                .collect(),
            // weights that differ only in the lowest bits
            (0..n)
                .map(|_| f32::from_bits(0x3F00_0000 + (u() * 300.0) as u32))
                .collect(),
        ]
    }

    #[test]
    fn matches_the_sorted_definition() {
        let mut rng = Rng::new(5);
        for row in rows(&mut rng) {
            let total: f64 = row.iter().map(|&w| w as f64).sum();
            for p in [1e-6, 0.1, 0.5, 0.9, 0.95, 0.999, 0.999_999] {
                let target = p * total;
                let (f, kept) = floor(&row, target);
                let want = floor_by_sorting(&row, target);
                assert_eq!(f, want, "top_p {p}");
                // The kept set reaches the target, and the set strictly above the floor does not.
                let above: f64 = row.iter().filter(|&&w| w > f).map(|&w| w as f64).sum();
                let rel = 1e-12 * total;
                assert!(kept >= target - rel && above < target + rel, "top_p {p}");
            }
        }
    }

    #[test]
    fn a_single_positive_weight_is_the_nucleus() {
        assert_eq!(floor(&[0.0, 0.0, 1.0, 0.0], 0.5), (1.0, 1.0));
    }
}

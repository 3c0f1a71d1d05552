//! A row norm and the elementwise op that is its only reader, in one pass over the rows (the graph's
//! `NormModulate` and `NormGate` groups): each row is normalized into the output, where it is still
//! in L1, and finished there. Run apart, the norm's output went out to memory and came back (at the
//! mid preset's 1024x1024 gen step, 12.6 MB each way per pair). The arithmetic is the two ops'
//! own, in their order, so the bits are theirs.

use super::for_rows;
use super::norm::RowNorm;

/// `norm(x) * (1 + scale)` over rows of `dim` (`scale` one row): the DiT's modulated norm.
pub(crate) fn norm_modulate(
    x: &[f32],
    norm: RowNorm<'_>,
    dim: usize,
    scale: &[f32],
    out: &mut [f32],
) {
    for_rows(out, dim, 5, |r, o| {
        norm.apply(&x[r * dim..(r + 1) * dim], o);
        o.iter_mut().zip(scale).for_each(|(o, s)| *o *= 1.0 + s);
    });
}

/// `res + tanh(gate) * norm(y)` over rows of `dim` (`gate` one row): the DiT's gated residual of a
/// normed branch.
pub(crate) fn norm_gate(
    y: &[f32],
    norm: RowNorm<'_>,
    dim: usize,
    (res, gate): (&[f32], &[f32]),
    out: &mut [f32],
) {
    let g: Vec<f32> = gate.iter().map(|g| g.tanh()).collect();
    for_rows(out, dim, 5, |r, o| {
        norm.apply(&y[r * dim..(r + 1) * dim], o);
        let res = &res[r * dim..(r + 1) * dim];
        for j in 0..dim {
            o[j] = res[j] + g[j] * o[j];
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::elementwise::{gate_residual, modulate};
    use super::super::norm::{layer_norm, rms_norm};
    use super::*;
    use crate::cpu::ops::test_values::values;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Each fused pass gives the bits of the norm then its consumer, for both norms, with and
    /// without a weight, over enough rows to run in parallel.
    #[test]
    fn fused_norms_give_the_two_ops_bits() {
        for &(rows, dim) in &[(3, 72), (700, 768)] {
            let x = values(rows * dim, 1);
            let res = values(rows * dim, 2);
            let scale = values(dim, 3);
            let gate = values(dim, 4);
            let weight = values(dim, 5);
            let eps = 1e-6;
            let norms = [
                RowNorm::Rms {
                    weight: Some(&weight),
                    eps,
                },
                RowNorm::Rms { weight: None, eps },
                RowNorm::Layer { eps },
            ];
            for (i, norm) in norms.into_iter().enumerate() {
                let mut normed = vec![0.0; x.len()];
                match norm {
                    RowNorm::Rms { weight, eps } => rms_norm(&x, weight, dim, eps, &mut normed),
                    RowNorm::Layer { eps } => layer_norm(&x, dim, eps, &mut normed),
                }
                let mut want = vec![0.0; x.len()];
                let mut got = vec![f32::NAN; x.len()];
                modulate(&normed, &scale, &mut want);
                norm_modulate(&x, norm, dim, &scale, &mut got);
                assert_eq!(bits(&got), bits(&want), "norm_modulate {i} {rows}x{dim}");
                gate_residual(&res, &gate, &normed, &mut want);
                got.fill(f32::NAN);
                norm_gate(&x, norm, dim, (&res, &gate), &mut got);
                assert_eq!(bits(&got), bits(&want), "norm_gate {i} {rows}x{dim}");
            }
        }
    }
}

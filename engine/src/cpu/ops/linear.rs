//! nn.Linear: `y = x @ w^T + b`.

use super::matmul::{matmul, Mat, MatMut};

/// x `[n, k]`, w `[out, k]`, bias `[out]` -> y `[n, out]`.
pub(crate) fn linear(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    out_features: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    if let Some(b) = bias {
        // Seeding y with the bias lets gemm add it in the same pass (accumulate), as torch's addmm does.
        for row in y.chunks_mut(out_features.max(1)) {
            row.copy_from_slice(b);
        }
    }
    matmul(
        MatMut::rm(y, n, out_features),
        Mat::rm(x, n, k),
        Mat::rm_t(w, k, out_features),
        1.0,
        bias.is_some(),
        None,
    );
}

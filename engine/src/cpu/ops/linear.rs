//! nn.Linear: `y = x @ w^T + b`.
//!
//! On x86_64 with AVX2 and FMA both entry points go through [`packed_gemm`]: `linear_packed` with a
//! weight packed when it was loaded (f32, or bf16 widened in the micro-kernels), `linear` packing
//! each call's weight panels as it goes. Both sum each output as one FMA chain from the bias in the
//! same order, so they give the same bits (and so does the row-major bf16 linear, which calls
//! `linear` on widened panels). Elsewhere the `gemm` crate.

use super::matmul::{matmul, Mat, MatMut};
use super::packed_gemm::{self, BSource, PackedRef};

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
    let w_t = Mat::rm_t(w, k, out_features);
    let dst = MatMut::rm(y, n, out_features);
    if packed_gemm::gemm(dst, Mat::rm(x, n, k), BSource::View(w_t), bias, None) {
        return;
    }
    if let Some(b) = bias {
        // Seeding y with the bias lets gemm add it in the same pass (accumulate), as torch's addmm does.
        for row in y.chunks_mut(out_features.max(1)) {
            row.copy_from_slice(b);
        }
    }
    matmul(
        MatMut::rm(y, n, out_features),
        Mat::rm(x, n, k),
        w_t,
        1.0,
        bias.is_some(),
        None,
    );
}

/// x `[n, k]`, w packed from `[out, k]` (f32 or bf16), bias `[out]` -> y `[n, out]`; the same bits
/// as `linear` on the unpacked (widened) weight, except under `HBRIDGE_CPU_MATMUL=bf16` on AMX
/// ([`MatmulMode`](crate::cpu::MatmulMode)), where 32 or more rows are computed in bf16.
pub(crate) fn linear_packed(
    x: &[f32],
    n: usize,
    k: usize,
    w: PackedRef<'_>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let out_features = w.n();
    assert_eq!(
        w.k(),
        k,
        "linear_packed: weight depth {} for {k} inputs",
        w.k()
    );
    #[cfg(target_arch = "x86_64")]
    if n >= packed_gemm::amx::MIN_ROWS && super::amx_tiles::enabled() {
        packed_gemm::amx::linear(x, n, w, bias, y);
        return;
    }
    // Held only as tiles (bf16 compute on AMX): fewer rows go over the tiles too.
    #[cfg(target_arch = "x86_64")]
    if w.is_tiles_only() {
        packed_gemm::amx::linear_few_rows(x, n, w, bias, y);
        return;
    }
    let dst = MatMut::rm(y, n, out_features);
    if !packed_gemm::gemm(dst, Mat::rm(x, n, k), BSource::Packed(w), bias, None) {
        // Weights are only packed where the packed GEMM runs; this is for completeness.
        linear(x, n, k, &w.to_f32_rows(), out_features, bias, y);
    }
}

/// Whether [`gate_up_swiglu`] runs `rows` rows of input over `gate` and `up`: bf16 compute on AMX
/// with 32 or more rows (where each linear alone would run on the tiles) and weights of one shape.
/// Elsewhere the graph's three nodes run one by one.
pub(crate) fn gate_up_fusable(rows: usize, gate: PackedRef<'_>, up: PackedRef<'_>) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (gate.k(), gate.n()) == (up.k(), up.n())
            && rows >= packed_gemm::amx::MIN_ROWS
            && super::amx_tiles::enabled()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, gate, up);
        false
    }
}

/// `y = silu(x @ wg^T + bg) * (x @ wu^T + bu)`: the graph's gate and up linears and their SwiGLU in
/// one pass, with the same bits as the three run one by one. Only where [`gate_up_fusable`].
///
/// # Panics
/// Where not [`gate_up_fusable`].
pub(crate) fn gate_up_swiglu(
    x: &[f32],
    n: usize,
    gate: (PackedRef<'_>, Option<&[f32]>),
    up: (PackedRef<'_>, Option<&[f32]>),
    y: &mut [f32],
) {
    assert!(
        gate_up_fusable(n, gate.0, up.0),
        "gate_up_swiglu: {n} rows of a {} x {} gate and a {} x {} up on this CPU",
        gate.0.k(),
        gate.0.n(),
        up.0.k(),
        up.0.n()
    );
    #[cfg(target_arch = "x86_64")]
    packed_gemm::amx::gate_up::gate_up_swiglu(x, n, gate, up, y);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, y);
}

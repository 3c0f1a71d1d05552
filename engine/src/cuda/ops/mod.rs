//! Launchers: one module per kernel file of `kernels/cuda/` (plus `gemm` for cuBLASLt). Each takes raw
//! device addresses and sizes, checks what it can on the host (sizes, supported head dims), launches on
//! the GPU's stream and returns without synchronizing. All tensors are bf16 row-major unless a doc says
//! otherwise; `*_stride` arguments count elements between consecutive rows.

pub mod attention;
pub mod bridge;
pub mod elementwise;
pub mod gemm;
pub mod gemv;
pub mod layout;
pub mod norm;
pub mod rope;
pub mod timestep;

use super::error::CudaError;

/// The error a launcher returns for an argument it cannot handle.
pub(crate) fn unsupported(op: &'static str, problem: impl Into<String>) -> CudaError {
    CudaError::Unsupported {
        op,
        label: String::new(),
        problem: problem.into(),
    }
}

//! GEMMs through cuBLASLt: bf16 operands, f32 accumulation, bias fused in the epilogue where cuBLASLt
//! offers it.

use super::super::context::{DevPtr, Gpu};
use super::super::error::CudaResult;
use super::unsupported;

/// `y [n, out] = x [n, in] @ w[out, in]^T (+ bias [out])`, all bf16 row-major (nn.Linear layout).
#[derive(Debug, Clone, Copy)]
pub struct LinearArgs {
    pub x: DevPtr,
    pub w: DevPtr,
    pub bias: Option<DevPtr>,
    pub y: DevPtr,
    pub n: usize,
    pub in_features: usize,
    pub out_features: usize,
}

pub fn linear(gpu: &Gpu, args: &LinearArgs) -> CudaResult<()> {
    let _ = (gpu, args);
    Err(unsupported("linear", "not implemented yet"))
}

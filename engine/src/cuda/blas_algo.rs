//! Which cuBLASLt algorithm a matmul plan runs. By default the heuristic's first choice. With
//! `HBRIDGE_GEMM_TUNE=1` the heuristic's best few candidates are timed on the shape's first call (the
//! eager run every graph gets before it is captured) and the fastest is kept: cuBLASLt's ranking is a
//! model of the GPU, and shapes like the gen expert's N = 2520 (not a multiple of the common tile
//! widths) are where a model and a measurement can disagree. A call whose output it accumulates into
//! (beta != 0), or one made during a stream capture, is never timed: repeated runs would change the
//! result, and a capture cannot synchronize.

use super::blas::Matmul;
use super::context::Gpu;
use super::error::CudaResult;
use cudarc::cublaslt::{result::CublasError, sys};
use std::sync::OnceLock;
use std::time::Instant;

/// Environment variable that turns the timing on (`1`).
pub const TUNE_ENV: &str = "HBRIDGE_GEMM_TUNE";

/// Candidates asked of the heuristic when tuning.
const CANDIDATES: usize = 8;
/// Timed runs per candidate (after one untimed); the fastest counts.
const RUNS: usize = 3;

fn tuning() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(TUNE_ENV).as_deref() == Ok("1"))
}

/// The heuristic's algorithms for a plan (the best first; one unless tuning), keeping those that ran
/// its check and fit in `max_workspace` bytes.
///
/// # Safety
/// Every handle must be a live cuBLASLt object of the plan being made.
pub(super) unsafe fn heuristics(
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    pref: sys::cublasLtMatmulPreference_t,
    max_workspace: usize,
) -> Result<Vec<sys::cublasLtMatmulAlgo_t>, CublasError> {
    let wanted = if tuning() { CANDIDATES } else { 1 };
    // SAFETY: plain-old-data results, written by cuBLASLt up to `returned`.
    let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> =
        vec![unsafe { std::mem::zeroed() }; wanted];
    let mut returned = 0i32;
    let [a, b, d] = layouts;
    // SAFETY: the caller guarantees the handles; the results buffer holds `wanted` entries.
    unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            handle,
            desc,
            a,
            b,
            d,
            d,
            pref,
            wanted as i32,
            results.as_mut_ptr(),
            &mut returned,
        )
    }
    .result()?;
    results.truncate(returned.max(0) as usize);
    Ok(results
        .into_iter()
        .filter(|r| {
            r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && r.workspaceSize <= max_workspace
        })
        .map(|r| r.algo)
        .collect())
}

/// Whether `mm`'s first call may time the candidates (see the module documentation).
pub(super) fn may_time(gpu: &Gpu, mm: &Matmul) -> bool {
    tuning()
        && mm.beta == 0.0
        && matches!(
            gpu.stream().capture_status(),
            Ok(cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
        )
}

/// The fastest of `candidates` (the heuristic's choice first) by `run`'s wall time, each run
/// synchronized; a candidate that fails to run is skipped. Every run writes the same output.
pub(super) fn fastest(
    gpu: &Gpu,
    candidates: &[sys::cublasLtMatmulAlgo_t],
    mut run: impl FnMut(&sys::cublasLtMatmulAlgo_t) -> CudaResult<()>,
) -> CudaResult<sys::cublasLtMatmulAlgo_t> {
    let mut best = (f64::INFINITY, candidates[0]);
    gpu.synchronize()?;
    for algo in candidates {
        if run(algo).and_then(|_| gpu.synchronize()).is_err() {
            continue;
        }
        let mut t_min = f64::INFINITY;
        for _ in 0..RUNS {
            let t = Instant::now();
            run(algo)?;
            gpu.synchronize()?;
            t_min = t_min.min(t.elapsed().as_secs_f64());
        }
        if t_min < best.0 {
            best = (t_min, *algo);
        }
    }
    Ok(best.1)
}

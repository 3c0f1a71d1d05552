//! The GPU tests of the root crate: they run where a GPU is usable, say SKIPPED and pass where none is
//! (CI), and fail instead of skipping under `HBRIDGE_REQUIRE_GPU=1`, which the GPU machine's session
//! (`scripts/gpu-check.sh`) sets.
#![allow(dead_code)]

/// Whether a usable GPU is here; without one prints why and returns false (a failure with
/// `HBRIDGE_REQUIRE_GPU=1`).
pub fn gpu_or_skip() -> bool {
    match hbridge_engine::device::cuda_probe() {
        Ok(_) => true,
        Err(why) => {
            assert!(
                std::env::var("HBRIDGE_REQUIRE_GPU").as_deref() != Ok("1"),
                "HBRIDGE_REQUIRE_GPU=1 but {why}"
            );
            println!("SKIPPED (no GPU: {why}); runs on the GPU machine via scripts/gpu-check.sh");
            false
        }
    }
}

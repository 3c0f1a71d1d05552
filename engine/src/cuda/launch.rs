//! Every hand-written kernel launch goes through [`launch_kernel`], so one place decides how kernels
//! follow each other on the stream: by default `cuLaunchKernel`, as cudarc's launch builder does. With
//! programmatic dependent launch (PDL, Hopper; opt-in with `HBRIDGE_PDL=1` until a GPU run has
//! measured it) `cuLaunchKernelEx` with the programmatic-stream-serialization attribute: a kernel's
//! blocks may be scheduled while the kernel ahead of it drains, and wait in `hb_pdl_entry()`
//! (kernels/cuda/common.cuh, the first statement of every kernel) until that kernel has finished and
//! its writes are visible. A step of hundreds of small kernels (the und decode step: ~450 kernels per
//! token) then pays less than one launch latency per kernel. cuBLASLt's kernels are launched by
//! cuBLASLt, without the attribute: the kernel after one of them still waits for it in
//! `hb_pdl_entry()`, and the GEMM after one of ours waits as usual.

use super::context::Gpu;
use cudarc::driver::{sys, CudaFunction, DriverError, LaunchConfig};
use std::ffi::c_void;
use std::sync::OnceLock;

/// Environment variable that turns programmatic dependent launch on (`1`) on Hopper or newer.
pub const PDL_ENV: &str = "HBRIDGE_PDL";

/// Whether the environment asks for programmatic dependent launch.
pub(crate) fn pdl_requested() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(PDL_ENV).as_deref() == Ok("1"))
}

/// The programmatic-stream-serialization launch attribute, allowed.
fn pdl_attribute() -> sys::CUlaunchAttribute {
    // SAFETY: a zeroed launch attribute is a valid value (an all-padding union); the id and the one
    // field read for it are set below.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    attr
}

/// `cuLaunchKernelEx`'s configuration for `cfg` on `stream`, with `attr` as its one attribute if given.
fn launch_config(
    cfg: LaunchConfig,
    stream: sys::CUstream,
    attr: Option<&mut sys::CUlaunchAttribute>,
) -> sys::CUlaunchConfig {
    let (attrs, num_attrs) = match attr {
        Some(a) => (a as *mut sys::CUlaunchAttribute, 1),
        None => (std::ptr::null_mut(), 0),
    };
    sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream,
        attrs,
        numAttrs: num_attrs,
    }
}

/// Launches `func` on the GPU's stream; `params` holds a pointer to each kernel argument, in order.
///
/// # Safety
/// `params` must match the kernel's parameter list in number, order and type, and every device pointer
/// among the arguments must cover what the kernel reads and writes at this launch configuration.
pub(crate) unsafe fn launch_kernel(
    gpu: &Gpu,
    func: &CudaFunction,
    cfg: LaunchConfig,
    params: &mut [*mut c_void],
) -> Result<(), DriverError> {
    gpu.context().bind_to_thread()?;
    let stream = gpu.stream().cu_stream();
    if !gpu.pdl() {
        // SAFETY: the caller guarantees the parameters (the launch cudarc's own builder makes).
        return unsafe {
            cudarc::driver::result::launch_kernel(
                func.cu_function(),
                cfg.grid_dim,
                cfg.block_dim,
                cfg.shared_mem_bytes,
                stream,
                params,
            )
        };
    }
    let mut attr = pdl_attribute();
    let config = launch_config(cfg, stream, Some(&mut attr));
    // SAFETY: the caller guarantees the parameters; the config and attribute outlive the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            func.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_carries_the_attribute_only_with_pdl() {
        let cfg = LaunchConfig {
            grid_dim: (3, 4, 5),
            block_dim: (256, 1, 2),
            shared_mem_bytes: 1234,
        };
        let plain = launch_config(cfg, std::ptr::null_mut(), None);
        assert_eq!((plain.gridDimX, plain.gridDimY, plain.gridDimZ), (3, 4, 5));
        assert_eq!(
            (plain.blockDimX, plain.blockDimY, plain.blockDimZ),
            (256, 1, 2)
        );
        assert_eq!(plain.sharedMemBytes, 1234);
        assert_eq!(plain.numAttrs, 0);
        assert!(plain.attrs.is_null());

        let mut attr = pdl_attribute();
        let with = launch_config(cfg, std::ptr::null_mut(), Some(&mut attr));
        assert_eq!(with.numAttrs, 1);
        // SAFETY: `attrs` points at `attr`, alive here.
        let a = unsafe { &*with.attrs };
        assert_eq!(
            a.id,
            sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        );
        // SAFETY: the field this attribute id defines.
        assert_eq!(unsafe { a.value.programmaticStreamSerializationAllowed }, 1);
    }
}

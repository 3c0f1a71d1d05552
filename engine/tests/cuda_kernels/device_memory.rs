//! Device memory as the engine allocates it (`Gpu::alloc_zeros`): more than the GPU holds fails with a
//! typed error carrying the sizes (the C ABI's `HBRIDGE_STATUS_MEMORY`), after which the GPU still
//! works; an allocation while the stream is captured is refused instead of being recorded.

use super::common;
use hbridge_engine::cuda::CudaError;

#[test]
fn an_allocation_beyond_the_gpu_is_a_device_memory_error_with_its_sizes() {
    let Some(gpu) = common::gpu("an_allocation_beyond_the_gpu_is_a_device_memory_error") else {
        return;
    };
    let _exclusive = gpu.exclusive();
    let (free, total) = gpu.memory_info().expect("cuMemGetInfo");
    assert!(free <= total && total > 0, "free {free} of total {total}");
    let n = (total + (1 << 30)) as usize;
    match gpu.alloc_zeros::<u8>(n) {
        Err(CudaError::DeviceMemory {
            need,
            total: reported,
            ..
        }) => {
            assert_eq!(need, n as u64);
            assert_eq!(reported, total);
        }
        Err(other) => panic!("expected DeviceMemory for {n} bytes, got {other}"),
        Ok(_) => panic!("{n} bytes on a GPU of {total} were allocated"),
    }
    let after = gpu
        .alloc_zeros::<f32>(1 << 20)
        .expect("a small allocation after the failure");
    drop(after);
    gpu.synchronize().expect("the stream after the failure");
}

#[test]
fn allocating_while_the_stream_is_captured_is_refused() {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let Some(gpu) = common::gpu("allocating_while_the_stream_is_captured_is_refused") else {
        return;
    };
    // Held for the capture: a launch from another test thread would be recorded into it (the GPU
    // session runs this binary with one test thread besides).
    let _exclusive = gpu.exclusive();
    gpu.stream()
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .expect("begin capture");
    let refused = gpu.alloc_zeros::<f32>(256);
    let ended = gpu.stream().end_capture(CUgraphInstantiate_flags(0));
    match refused {
        Err(CudaError::Driver { message, .. }) => {
            assert!(message.contains("being captured"), "{message}")
        }
        Err(other) => panic!("expected the capture refusal, got {other}"),
        Ok(_) => panic!("an allocation was recorded into a stream capture"),
    }
    ended.expect("end capture");
    let after = gpu
        .alloc_zeros::<f32>(256)
        .expect("allocating after the capture");
    drop(after);
    gpu.synchronize().expect("the stream after the capture");
}

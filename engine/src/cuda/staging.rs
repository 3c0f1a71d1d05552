//! Host -> device uploads through pinned staging buffers: two page-locked buffers used in turn, so the
//! host fills one (reading the memory map, converting to bf16) while the DMA engine drains the other.
//! Pageable copies would be staged by the driver through its own small pinned buffer, serially.

use super::context::{DevPtr, Gpu};
use super::error::{CudaError, CudaResult};
use cudarc::driver::{result, CudaEvent};
use std::ffi::c_void;

/// Bytes per staging buffer.
pub const STAGE_BYTES: usize = 16 << 20;

struct Buffer {
    ptr: *mut u8,
    len: usize,
    /// Recorded after the copy out of this buffer; waited on before the host refills it.
    drained: CudaEvent,
}

/// Two pinned buffers and which one is next. Freed (after the stream drains) on drop.
pub struct Staging<'g> {
    gpu: &'g Gpu,
    buffers: Vec<Buffer>,
    next: usize,
}

impl<'g> Staging<'g> {
    /// Allocates the pinned buffers; an error (page-locked memory can be scarce) lets the caller fall
    /// back to pageable copies.
    pub fn new(gpu: &'g Gpu) -> CudaResult<Staging<'g>> {
        let mut staging = Staging {
            gpu,
            buffers: Vec::new(),
            next: 0,
        };
        for _ in 0..2 {
            let drained = gpu
                .context()
                .new_event(None)
                .map_err(|e| CudaError::driver("creating a staging event", e))?;
            // SAFETY: plain page-locked allocation, freed in `drop`.
            let ptr = unsafe { result::malloc_host(STAGE_BYTES, 0) }
                .map_err(|e| CudaError::driver("allocating pinned staging memory", e))?;
            staging.buffers.push(Buffer {
                ptr: ptr as *mut u8,
                len: STAGE_BYTES,
                drained,
            });
        }
        Ok(staging)
    }

    /// Copies `elems` elements of `elem_bytes` each to `dst`: `fill(first, out)` writes the bytes of
    /// elements `first ..` into `out` (a whole number of elements). Asynchronous: the copies are ordered
    /// on the GPU's stream; the host only waits for a buffer it is about to refill.
    pub fn upload(
        &mut self,
        dst: DevPtr,
        elems: usize,
        elem_bytes: usize,
        mut fill: impl FnMut(usize, &mut [u8]),
    ) -> CudaResult<()> {
        let per_chunk = STAGE_BYTES / elem_bytes;
        let mut first = 0;
        while first < elems {
            let n = per_chunk.min(elems - first);
            let buf = &self.buffers[self.next];
            self.next = (self.next + 1) % self.buffers.len();
            buf.drained
                .synchronize()
                .map_err(|e| CudaError::driver("waiting for a staging buffer", e))?;
            // SAFETY: the buffer is `buf.len` bytes we own, and no copy reads it any more (its event
            // completed).
            let host = unsafe { std::slice::from_raw_parts_mut(buf.ptr, buf.len) };
            let bytes = &mut host[..n * elem_bytes];
            fill(first, bytes);
            let stream = self.gpu.stream();
            // SAFETY: `dst` addresses `elems` live elements (the caller's allocation); the source is
            // pinned and stays untouched until `drained` completes.
            unsafe {
                result::memcpy_htod_async(
                    dst.0 + (first * elem_bytes) as u64,
                    &*bytes,
                    stream.cu_stream(),
                )
            }
            .map_err(|e| CudaError::driver("copying a staged chunk to the device", e))?;
            buf.drained
                .record(stream)
                .map_err(|e| CudaError::driver("recording a staging event", e))?;
            first += n;
        }
        Ok(())
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        // The DMA engine may still read the buffers: wait for every copy before freeing them.
        let _ = self.gpu.synchronize();
        for b in &self.buffers {
            // SAFETY: allocated by `malloc_host` in `new`, freed once, no copy in flight.
            unsafe {
                let _ = result::free_host(b.ptr as *mut c_void);
            }
        }
    }
}

/// Copies `bytes` from pageable host memory to `dst` (the fallback without staging). The driver stages
/// the copy itself and returns once `bytes` may be reused.
pub fn upload_pageable(gpu: &Gpu, dst: DevPtr, bytes: &[u8]) -> CudaResult<()> {
    // SAFETY: `dst` addresses at least `bytes.len()` bytes of a live allocation (the caller's).
    unsafe { result::memcpy_htod_async(dst.0, bytes, gpu.stream().cu_stream()) }
        .map_err(|e| CudaError::driver(format!("uploading {} bytes", bytes.len()), e))
}

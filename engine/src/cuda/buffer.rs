//! Host <-> device transfers with the bf16 conversion the backend's storage needs. Conversions round to
//! nearest even on the host (`half`), the same rounding as the kernels' `cvt.rn.bf16.f32`.

use super::context::{dev_ptr, DevPtr, Gpu};
use super::error::{CudaError, CudaResult};
use cudarc::driver::CudaSlice;
use half::bf16;

/// A bf16 device buffer with its element count (an allocation may be longer).
pub struct DeviceBf16 {
    pub data: CudaSlice<u16>,
    pub len: usize,
}

impl DeviceBf16 {
    pub fn ptr(&self, gpu: &Gpu) -> DevPtr {
        dev_ptr(&self.data, gpu.stream())
    }
}

pub fn f32_to_bf16_bits(values: &[f32]) -> Vec<u16> {
    values
        .iter()
        .map(|&v| bf16::from_f32(v).to_bits())
        .collect()
}

pub fn bf16_bits_to_f32(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
}

/// Uploads f32 values as bf16.
pub fn upload_bf16(gpu: &Gpu, values: &[f32]) -> CudaResult<DeviceBf16> {
    upload_bits(gpu, &f32_to_bf16_bits(values))
}

/// Uploads raw bf16 bits.
pub fn upload_bits(gpu: &Gpu, bits: &[u16]) -> CudaResult<DeviceBf16> {
    let data = gpu
        .stream()
        .clone_htod(bits)
        .map_err(|e| CudaError::driver(format!("uploading {} bf16 values", bits.len()), e))?;
    Ok(DeviceBf16 {
        data,
        len: bits.len(),
    })
}

/// Uploads any plain values (i32 positions, f32 timesteps).
pub fn upload<T: cudarc::driver::DeviceRepr>(gpu: &Gpu, values: &[T]) -> CudaResult<CudaSlice<T>> {
    gpu.stream()
        .clone_htod(values)
        .map_err(|e| CudaError::driver(format!("uploading {} values", values.len()), e))
}

/// Copies `len` bf16 values at `ptr` back to the host as f32 (synchronizes the stream).
pub fn download_bf16(gpu: &Gpu, ptr: DevPtr, len: usize) -> CudaResult<Vec<f32>> {
    let mut bits = vec![0u16; len];
    if len > 0 {
        gpu.synchronize()?;
        // SAFETY: the caller guarantees `ptr` addresses `len` live bf16 values; the stream is idle.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_sync(&mut bits, ptr.0)
                .map_err(|e| CudaError::driver(format!("downloading {len} bf16 values"), e))?;
        }
    }
    Ok(bf16_bits_to_f32(&bits))
}

/// Copies `len` plain values at `ptr` back to the host (synchronizes the stream).
pub fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
    gpu: &Gpu,
    ptr: DevPtr,
    len: usize,
) -> CudaResult<Vec<T>> {
    let mut out = vec![T::default(); len];
    if len > 0 {
        gpu.synchronize()?;
        // SAFETY: as in `download_bf16`.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_sync(&mut out, ptr.0)
                .map_err(|e| CudaError::driver(format!("downloading {len} values"), e))?;
        }
    }
    Ok(out)
}

/// Fills `len` bf16 values at `ptr` with a NaN pattern, so a test can tell unwritten outputs.
pub fn poison_bf16(gpu: &Gpu, ptr: DevPtr, len: usize) -> CudaResult<()> {
    // 0xffff is a NaN in bf16 (and in i32 it is -1): an unwritten element cannot pass a comparison.
    // SAFETY: the caller guarantees `ptr` addresses `len` live bf16 values.
    unsafe {
        cudarc::driver::result::memset_d8_async(ptr.0, 0xff, len * 2, gpu.stream().cu_stream())
            .map_err(|e| CudaError::driver("poisoning an output", e))
    }
}

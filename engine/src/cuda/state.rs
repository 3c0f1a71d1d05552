//! Request-owned device tensors (a graph's `Source::State`): a decode request's K/V cache lives here, in
//! bf16 like every activation, for the whole request. A graph reads them in place and its state writes
//! update them on the device, so a decode step moves no cache bytes over PCIe and, its addresses being
//! fixed for the request, can be captured once and replayed for every token.
//!
//! Every method that puts work on the stream holds `Gpu::exclusive` while it does: another request's
//! executor may be capturing the stream, and a copy or allocation enqueued meanwhile would become a
//! node of that request's CUDA graph (and a pageable copy or a synchronize would break its capture).
//! None of them may be called while the caller holds it (the guard is not reentrant).

use super::buffer::{download_bf16, f32_to_bf16_bits};
use super::context::{dev_ptr, DevPtr, Gpu};
use super::error::{CudaError, CudaResult};
use crate::cpu::{state_rows, EngineError, HostTensor};
use cudarc::driver::{result, CudaSlice};
use hbridge_graph::{Graph, Source};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

struct StateBuffer {
    shape: Vec<usize>,
    data: CudaSlice<u16>,
}

/// Named device tensors `[rows, cols]` (bf16) kept across runs. Dropping it frees them, under the
/// GPU's exclusive lock (cudarc frees on the stream), so it must not be dropped while holding it.
#[derive(Default)]
pub struct CudaStates {
    buffers: HashMap<String, StateBuffer>,
    /// `Gpu::exclusive`'s lock, from the first allocation.
    exclusive: Option<Arc<Mutex<()>>>,
}

impl Drop for CudaStates {
    fn drop(&mut self) {
        if let Some(lock) = self.exclusive.take() {
            let _exclusive = lock.lock().unwrap_or_else(|p| p.into_inner());
            self.buffers.clear();
        }
    }
}

impl std::fmt::Debug for CudaStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.buffers.keys().collect();
        names.sort();
        f.debug_struct("CudaStates")
            .field("names", &names)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl CudaStates {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) state `name` of `shape`, zero-filled.
    pub fn alloc(&mut self, gpu: &Gpu, name: &str, shape: &[usize]) -> CudaResult<()> {
        let n: usize = shape.iter().product();
        self.exclusive.get_or_insert_with(|| gpu.exclusive_lock());
        let _exclusive = gpu.exclusive();
        let data = gpu.alloc_zeros::<u16>(n.max(1))?;
        // The buffer this replaces is freed here, under the lock.
        self.buffers.insert(
            name.to_string(),
            StateBuffer {
                shape: shape.to_vec(),
                data,
            },
        );
        Ok(())
    }

    /// A copy of host tensors (F32, rounded to bf16), e.g. a test's states.
    pub fn from_host(gpu: &Gpu, states: &HashMap<String, HostTensor>) -> Result<Self, EngineError> {
        let mut s = CudaStates::new();
        for (name, t) in states {
            s.alloc(gpu, name, &t.shape)?;
            let values = t.as_f32().ok_or_else(|| EngineError::InputDtype {
                name: name.clone(),
                expected: hbridge_graph::DataType::F32,
                found: t.dtype(),
            })?;
            t.check_len(name)?;
            s.write_rows(gpu, name, 0, values)?;
        }
        Ok(s)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.buffers.get(name).map(|b| b.shape.as_slice())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.buffers.keys().map(String::as_str)
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.buffers.values().map(|b| b.data.len() * 2).sum()
    }

    pub(crate) fn ptr(&self, gpu: &Gpu, name: &str) -> Option<DevPtr> {
        self.buffers
            .get(name)
            .map(|b| dev_ptr(&b.data, gpu.stream()))
    }

    /// Copies `values` (whole rows of f32, rounded to bf16) into state `name` from row `row` on
    /// (stream-ordered, so it lands before any later launch reads it).
    pub fn write_rows(
        &mut self,
        gpu: &Gpu,
        name: &str,
        row: usize,
        values: &[f32],
    ) -> Result<(), EngineError> {
        let b = self.buffer(name)?;
        let range = state_rows(name, &b.shape, row, values.len())?;
        if values.is_empty() {
            return Ok(());
        }
        let bits = f32_to_bf16_bits(values);
        let _exclusive = gpu.exclusive();
        let dst = dev_ptr(&b.data, gpu.stream()).offset(range.start, 2);
        // A raw driver call: the context must be current on this thread (cudarc's own calls bind it).
        gpu.context()
            .bind_to_thread()
            .map_err(|e| CudaError::driver("binding the context", e))?;
        // SAFETY: rows [row, row + rows) lie inside the buffer (checked above); a pageable async copy
        // returns once the host data is staged, so `bits` may drop right after.
        unsafe { result::memcpy_htod_async(dst.0, &bits, gpu.stream().cu_stream()) }
            .map_err(|e| CudaError::driver(format!("writing state `{name}`"), e))?;
        Ok(())
    }

    /// Makes state `name` here a copy of `from`'s (allocated or reshaped as needed): a stream-ordered
    /// device-to-device copy, so work launched after it reads the copy.
    pub fn copy_from(
        &mut self,
        gpu: &Gpu,
        from: &CudaStates,
        name: &str,
    ) -> Result<(), EngineError> {
        let src = from.buffer(name)?;
        if self.shape(name) != Some(src.shape.as_slice()) {
            self.alloc(gpu, name, &src.shape)?;
        }
        let n: usize = src.shape.iter().product();
        if n == 0 {
            return Ok(());
        }
        let dst = self.buffer(name)?;
        let _exclusive = gpu.exclusive();
        let (d, s) = (
            dev_ptr(&dst.data, gpu.stream()),
            dev_ptr(&src.data, gpu.stream()),
        );
        // A raw driver call: the context must be current on this thread (cudarc's own calls bind it).
        gpu.context()
            .bind_to_thread()
            .map_err(|e| CudaError::driver("binding the context", e))?;
        // SAFETY: both buffers hold `n` bf16 values (same shape, checked above) and are distinct
        // allocations (two states objects never share one).
        unsafe { result::memcpy_dtod_async(d.0, s.0, n * 2, gpu.stream().cu_stream()) }
            .map_err(|e| CudaError::driver(format!("copying state `{name}`"), e))?;
        Ok(())
    }

    /// State `name` as f32 on the host (synchronizes).
    pub fn read(&self, gpu: &Gpu, name: &str) -> Result<HostTensor, EngineError> {
        let b = self.buffer(name)?;
        let n: usize = b.shape.iter().product();
        let _exclusive = gpu.exclusive();
        let values = download_bf16(gpu, dev_ptr(&b.data, gpu.stream()), n)?;
        Ok(HostTensor::f32(b.shape.clone(), values))
    }

    fn buffer(&self, name: &str) -> Result<&StateBuffer, EngineError> {
        self.buffers
            .get(name)
            .ok_or_else(|| EngineError::MissingState {
                name: name.to_string(),
            })
    }

    /// Checks that state `name` exists with `shape` (the executor's validation hook).
    pub(crate) fn require(&self, name: &str, shape: &[usize]) -> Result<(), EngineError> {
        let found = &self.buffer(name)?.shape;
        if found != shape {
            return Err(EngineError::StateShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        Ok(())
    }

    /// The addresses `graph`'s states are bound to, hashed: a capture over them is only valid for
    /// states at the same addresses.
    pub(crate) fn fingerprint(&self, gpu: &Gpu, graph: &Graph) -> u64 {
        let mut h = DefaultHasher::new();
        for t in &graph.tensors {
            if let Source::State(name) = &t.source {
                name.hash(&mut h);
                self.ptr(gpu, name).map(|p| p.0).hash(&mut h);
            }
        }
        h.finish()
    }
}

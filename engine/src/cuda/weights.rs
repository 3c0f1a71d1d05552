//! Checkpoint weights on the GPU as bf16, uploaded once per engine and shared by every graph and run.
//!
//! Sources are the same as the CPU backend's (`hbridge_loader::Checkpoint`, tensors by part and stored
//! name). Every tensor a graph needs is validated (part, name, shape, dtype, byte length) before the
//! first byte is uploaded, with the CPU backend's error variants. Stored bf16 is copied as raw bits (no
//! round trip through f32); f32 and f16 are rounded to bf16 (nearest even) on the host, while staging.

use super::buffer::{f32_to_bf16_bits, upload_bits, DeviceBf16};
use super::context::{dev_ptr, DevPtr, Gpu};
use super::error::{CudaError, CudaResult};
use super::staging::{upload_pageable, Staging};
use crate::cpu::EngineError;
use crate::weight_table::{check_len, check_shape, slot, Shaped, WeightTable};
use half::{bf16, f16};
use hbridge_graph::{Graph, Source};
use hbridge_loader::{Checkpoint, DType, Part, TensorView};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// One weight on the device: bf16, row-major, with its shape.
pub struct CudaWeight {
    pub shape: Vec<usize>,
    data: DeviceBf16,
}

impl CudaWeight {
    pub fn numel(&self) -> usize {
        self.data.len
    }

    /// The device address of the first element.
    pub fn ptr(&self, gpu: &Gpu) -> DevPtr {
        dev_ptr(&self.data.data, gpu.stream())
    }
}

impl std::fmt::Debug for CudaWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaWeight({:?})", self.shape)
    }
}

/// Where an upload stands, reported after each tensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadProgress {
    pub tensors_done: usize,
    pub tensors_total: usize,
    /// bf16 bytes written to the device so far, and in all.
    pub bytes_done: usize,
    pub bytes_total: usize,
}

/// What one `load_*` call uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UploadReport {
    pub tensors: usize,
    /// bf16 bytes on the device.
    pub bytes: usize,
    pub seconds: f64,
    /// Whether pinned staging was used (false: pageable copies, after a failed page-locked allocation).
    pub pinned: bool,
}

/// bf16 weights on one GPU, keyed by (part, stored name).
pub struct CudaWeights {
    gpu: Arc<Gpu>,
    /// Distinguishes weight sets in CUDA-graph keys: a captured graph bakes in these addresses.
    id: u64,
    // Part is not Hash, so one map per part (as CpuWeights).
    parts: WeightTable<CudaWeight>,
}

impl std::fmt::Debug for CudaWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaWeights({} tensors, {} bytes on {:?})",
            self.len(),
            self.bytes(),
            self.gpu
        )
    }
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Bytes per stored element of a weight dtype we can upload.
fn stored_bytes(dtype: &DType) -> Option<usize> {
    match dtype {
        DType::BF16 | DType::F16 => Some(2),
        DType::F32 => Some(4),
        DType::Other(_) => None,
    }
}

/// Writes the bf16 bits (little-endian) of stored elements `first ..` into `out` (2 bytes each).
fn to_bf16_bytes(dtype: &DType, stored: &[u8], first: usize, out: &mut [u8]) {
    let n = out.len() / 2;
    match dtype {
        // Raw bits: what the checkpoint holds is exactly what the kernels read.
        DType::BF16 => out.copy_from_slice(&stored[first * 2..(first + n) * 2]),
        DType::F32 => {
            for (o, b) in out
                .chunks_exact_mut(2)
                .zip(stored[first * 4..(first + n) * 4].chunks_exact(4))
            {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                o.copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, b) in out
                .chunks_exact_mut(2)
                .zip(stored[first * 2..(first + n) * 2].chunks_exact(2))
            {
                let v = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                o.copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        DType::Other(_) => unreachable!("validated before upload"),
    }
}

impl CudaWeights {
    pub fn new(gpu: Arc<Gpu>) -> Self {
        CudaWeights {
            gpu,
            id: next_id(),
            parts: Default::default(),
        }
    }

    /// Every weight `graph` references, uploaded from the checkpoint.
    pub fn from_graph(gpu: Arc<Gpu>, ckpt: &Checkpoint, graph: &Graph) -> Result<Self> {
        let mut w = Self::new(gpu);
        w.load_graph(ckpt, graph, |_| {})?;
        Ok(w)
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// A number unique to this weight set in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Adds the weights `graph` references that are not uploaded yet (one `CudaWeights` serves the
    /// prefill, decode, gen-step and VAE graphs of an engine); already uploaded ones are checked against
    /// the graph's declared shape. `progress` is called after each tensor.
    pub fn load_graph(
        &mut self,
        ckpt: &Checkpoint,
        graph: &Graph,
        progress: impl FnMut(UploadProgress),
    ) -> Result<UploadReport> {
        let list: Vec<(Part, &str, &[usize])> = graph
            .tensors
            .iter()
            .filter_map(|t| match &t.source {
                Source::Weight { part, name } => Some((*part, name.as_str(), t.shape.as_slice())),
                _ => None,
            })
            .collect();
        self.load_list(ckpt, list, progress)
    }

    /// Adds the listed weights `(part, stored name, expected shape)`. All of them are validated before
    /// anything is uploaded.
    pub fn load_list<'a>(
        &mut self,
        ckpt: &Checkpoint,
        list: impl IntoIterator<Item = (Part, &'a str, &'a [usize])>,
        mut progress: impl FnMut(UploadProgress),
    ) -> Result<UploadReport> {
        let start = Instant::now();
        let mut todo = Vec::new();
        for (part, name, shape) in list {
            match self.get(part, name) {
                Some(w) => check_shape(part, name, shape, &w.shape)?,
                None => todo.push((part, name, shape)),
            }
        }
        todo.sort_unstable_by_key(|(p, n, _)| (slot(*p), *n));
        todo.dedup_by_key(|(p, n, _)| (slot(*p), *n));
        // Derived weights: formed in f32 on the host, uploaded as bf16.
        let mut derived = Vec::new();
        todo.retain(
            |&(part, name, shape)| match crate::derived::values(ckpt, name, shape) {
                Some(values) => {
                    derived.push((part, name, shape, values));
                    false
                }
                None => true,
            },
        );
        let derived = derived
            .into_iter()
            .map(|(part, name, shape, values)| Ok((part, name, shape, values?)))
            .collect::<Result<Vec<_>>>()?;
        let views = todo
            .iter()
            .map(|&(part, name, shape)| validate(ckpt, part, name, shape))
            .collect::<Result<Vec<_>>>()?;

        let mut p = UploadProgress {
            tensors_total: views.len(),
            bytes_total: views.iter().map(|v| v.numel() * 2).sum(),
            ..Default::default()
        };
        let gpu = self.gpu.clone();
        let _exclusive = gpu.exclusive();
        if !views.is_empty() {
            // Synchronized first: the stream-ordered pool gives freed memory back to the device at
            // a synchronization, and cuMemGetInfo counts only what it gave back.
            gpu.synchronize()?;
            let derived_bytes = derived.iter().map(|d| d.3.len() as u64 * 2).sum::<u64>();
            let need = p.bytes_total as u64 + derived_bytes;
            check_upload_fits(views.len() + derived.len(), need, gpu.memory_info()?)?;
        }
        let mut staging = Staging::new(&gpu).ok();
        let pinned = staging.is_some();
        let mut uploaded = Vec::with_capacity(views.len());
        for (&(part, name, _), view) in todo.iter().zip(&views) {
            let n = view.numel();
            let data = gpu.stream().alloc_zeros::<u16>(n.max(1)).map_err(|e| {
                gpu.alloc_error(format!("allocating weight `{name}`"), n as u64 * 2, e)
            })?;
            let dst = dev_ptr(&data, gpu.stream());
            let fill =
                |first: usize, out: &mut [u8]| to_bf16_bytes(view.dtype, view.bytes, first, out);
            match staging.as_mut() {
                Some(s) => s.upload(dst, n, 2, fill)?,
                None => {
                    let mut bytes = vec![0u8; n * 2];
                    to_bf16_bytes(view.dtype, view.bytes, 0, &mut bytes);
                    upload_pageable(&gpu, dst, &bytes)?;
                }
            }
            uploaded.push((
                part,
                name.to_string(),
                CudaWeight {
                    shape: view.shape.to_vec(),
                    data: DeviceBf16 { data, len: n },
                },
            ));
            p.tensors_done += 1;
            p.bytes_done += n * 2;
            progress(p);
        }
        drop(staging); // waits for the last copies
        gpu.synchronize()?;
        drop(_exclusive);
        for (part, name, w) in uploaded {
            self.parts.insert(part, name, w);
        }
        for (part, name, shape, values) in derived {
            self.insert(part, name, shape, &values)?;
            p.tensors_done += 1;
            p.bytes_done += values.len() * 2;
            p.tensors_total += 1;
            p.bytes_total += values.len() * 2;
            progress(p);
        }
        Ok(UploadReport {
            tensors: p.tensors_done,
            bytes: p.bytes_total,
            seconds: start.elapsed().as_secs_f64(),
            pinned,
        })
    }

    /// Adds one weight given as f32 values, rounded to bf16 (tests, synthetic weights).
    pub fn insert(
        &mut self,
        part: Part,
        name: impl Into<String>,
        shape: &[usize],
        data: &[f32],
    ) -> Result<()> {
        let name = name.into();
        check_len(&name, shape, data.len())?;
        let _exclusive = self.gpu.exclusive();
        let buf = upload_bits(&self.gpu, &f32_to_bf16_bits(data))?;
        self.gpu.synchronize()?;
        if self.parts.get(part, &name).is_some() {
            // A replaced weight's memory is freed: captures keyed on the old set id would replay on it.
            self.id = next_id();
        }
        self.parts.insert(
            part,
            name,
            CudaWeight {
                shape: shape.to_vec(),
                data: buf,
            },
        );
        Ok(())
    }

    pub fn get(&self, part: Part, name: &str) -> Option<&CudaWeight> {
        self.parts.get(part, name)
    }

    /// The weight `graph` declares at `(part, name)` with `shape`, or why it cannot be used.
    pub fn require(&self, part: Part, name: &str, shape: &[usize]) -> Result<&CudaWeight> {
        self.parts.require(part, name, shape)
    }

    /// Checks that every weight `graph` references is uploaded with the declared shape.
    pub fn check_graph(&self, graph: &Graph) -> Result<()> {
        self.parts.check_graph(graph)
    }

    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of bf16 data on the device.
    pub fn bytes(&self) -> usize {
        self.parts.values().map(|w| w.numel() * 2).sum()
    }
}

/// The stored tensor behind `(part, name)`, checked like the CPU backend checks it: the part exists, the
/// tensor exists with the expected shape, its dtype is a float weight, its bytes match its shape.
/// Refuses an upload of `tensors` weights (`need` bytes) that the device's free memory cannot hold,
/// before anything is converted or allocated: the allocation would fail partway, after minutes of
/// conversion. [`IGNORE_ENV`](crate::cpu::host_memory::IGNORE_ENV) skips it.
fn check_upload_fits(tensors: usize, need: u64, (free, total): (u64, u64)) -> CudaResult<()> {
    let ignore = crate::cpu::host_memory::IGNORE_ENV;
    if need <= free || std::env::var(ignore).as_deref() == Ok("1") {
        return Ok(());
    }
    Err(CudaError::DeviceMemory {
        during: format!("uploading {tensors} weight tensor(s) as bf16"),
        need,
        free,
        total,
        hint: format!(
            " (another process may hold the rest; `nvidia-smi` lists them); set {ignore}=1 to try anyway"
        ),
    })
}

fn validate<'c>(
    ckpt: &'c Checkpoint,
    part: Part,
    name: &str,
    shape: &[usize],
) -> Result<TensorView<'c>> {
    let store = ckpt.part(part).ok_or_else(|| EngineError::MissingPart {
        part,
        name: name.to_string(),
    })?;
    let view = store.get(name).ok_or_else(|| EngineError::MissingWeight {
        part,
        name: name.to_string(),
    })?;
    check_shape(part, name, shape, view.shape)?;
    let size = stored_bytes(view.dtype).ok_or_else(|| EngineError::WeightDtype {
        part,
        name: name.to_string(),
        file: view.file.to_string(),
        dtype: view.dtype.to_string(),
    })?;
    if view.bytes.len() != view.numel() * size {
        return Err(EngineError::DataLength {
            name: name.to_string(),
            shape: view.shape.to_vec(),
            expected: view.numel(),
            found: view.bytes.len() / size,
        });
    }
    Ok(view)
}

impl Shaped for CudaWeight {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converted(dtype: DType, stored: &[u8], n: usize) -> Vec<u16> {
        let mut out = vec![0u8; n * 2];
        to_bf16_bytes(&dtype, stored, 0, &mut out);
        out.chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    #[test]
    fn bf16_is_copied_bit_for_bit() {
        // Including a NaN payload and a subnormal: no f32 round trip may touch them.
        let bits: [u16; 4] = [0x3f80, 0x7fc1, 0x0001, 0xc2f7];
        let stored: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        assert_eq!(converted(DType::BF16, &stored, 4), bits);
    }

    #[test]
    fn f32_and_f16_round_to_nearest_even() {
        #[allow(clippy::excessive_precision)] // exact bf16 values, written out in full
        let vals = [1.0f32, 1.00390625, 1.01171875, -3.140625e-3, 65504.0];
        let stored: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let want: Vec<u16> = vals.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        assert_eq!(converted(DType::F32, &stored, vals.len()), want);
        // 1 + 2^-8 is a tie between bf16 neighbours: even wins (1.0).
        assert_eq!(want[1], 0x3f80);
        let stored16: Vec<u8> = vals
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        let want16: Vec<u16> = vals
            .iter()
            .map(|&v| bf16::from_f32(f16::from_f32(v).to_f32()).to_bits())
            .collect();
        assert_eq!(converted(DType::F16, &stored16, vals.len()), want16);
    }

    #[test]
    fn uploads_beyond_free_device_memory_are_refused_with_both_sizes() {
        let gib = 1u64 << 30;
        assert_eq!(check_upload_fits(3, 10 * gib, (10 * gib, 80 * gib)), Ok(()));
        if std::env::var(crate::cpu::host_memory::IGNORE_ENV).as_deref() == Ok("1") {
            return; // the check is off in this environment
        }
        let e = check_upload_fits(330, 25 * gib, (20 * gib, 80 * gib)).unwrap_err();
        let CudaError::DeviceMemory {
            need, free, total, ..
        } = &e
        else {
            panic!("expected DeviceMemory, got {e:?}");
        };
        assert_eq!((*need, *free, *total), (25 * gib, 20 * gib, 80 * gib));
        let text = e.to_string();
        for part in ["330 weight tensor(s)", "26.84 GB", "21.47 GB", "85.90 GB"] {
            assert!(text.contains(part), "`{part}` missing from: {text}");
        }
        assert!(text.contains(crate::cpu::host_memory::IGNORE_ENV), "{text}");
    }

    #[test]
    fn chunks_start_at_their_first_element() {
        let vals: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let stored: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![0u8; 6];
        to_bf16_bytes(&DType::F32, &stored, 7, &mut out);
        let got: Vec<f32> = out
            .chunks_exact(2)
            .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect();
        assert_eq!(got, [7.0, 8.0, 9.0]);
    }
}

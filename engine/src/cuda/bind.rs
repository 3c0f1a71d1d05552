//! Device memory of a run and every tensor's address in it: the executor's shared scratch (arena, im2col
//! columns, attention partials), one graph's input buffers, and the per-tensor address table the
//! dispatcher reads. Addresses are fixed before the first launch, which is what lets a CUDA graph be
//! captured over them and replayed.

use super::context::{dev_ptr, DevPtr, Gpu};
use super::error::{CudaError, CudaResult};
use super::prepare::{InputRepr, Needs};
use super::state::CudaStates;
use super::weights::CudaWeights;
use crate::cpu::validate::Place;
use crate::cpu::{EngineError, HostData, HostTensor};
use cudarc::driver::{result, CudaSlice, DeviceRepr, ValidAsZeroBits};
use hbridge_graph::{Graph, Source, TensorId};
use std::collections::HashMap;

/// The executor's buffers shared by every graph it runs. They only grow; a growth moves them, which
/// invalidates every captured graph (the executor then drops its captures).
#[derive(Default)]
pub struct Scratch {
    pub arena: Option<CudaSlice<u16>>,
    pub cols: Option<CudaSlice<u16>>,
    pub attn: Option<CudaSlice<f32>>,
}

/// Grows `slot` to at least `len` elements; true if it (re)allocated.
fn grow<T: DeviceRepr + ValidAsZeroBits>(
    gpu: &Gpu,
    slot: &mut Option<CudaSlice<T>>,
    len: usize,
    what: &str,
) -> CudaResult<bool> {
    if len == 0 || slot.as_ref().is_some_and(|s| s.len() >= len) {
        return Ok(false);
    }
    // Free the old buffer first: the new one may need its memory.
    *slot = None;
    *slot = Some(
        gpu.alloc_zeros::<T>(len)
            .map_err(|e| with_during(e, &format!("allocating the {what}")))?,
    );
    Ok(true)
}

fn with_during(e: CudaError, what: &str) -> CudaError {
    match e {
        CudaError::Driver { during, message } => CudaError::Driver {
            during: format!("{what} ({during})"),
            message,
        },
        e => e,
    }
}

impl Scratch {
    /// Makes room for a graph with `arena_len` arena elements and `needs`; true if anything moved.
    pub fn reserve(&mut self, gpu: &Gpu, arena_len: usize, needs: &Needs) -> CudaResult<bool> {
        let a = grow(gpu, &mut self.arena, arena_len, "activation arena")?;
        let c = grow(gpu, &mut self.cols, needs.cols, "im2col scratch")?;
        let w = grow(
            gpu,
            &mut self.attn,
            needs.attn_workspace,
            "attention workspace",
        )?;
        Ok(a || c || w)
    }

    pub fn arena_ptr(&self, gpu: &Gpu) -> DevPtr {
        self.arena
            .as_ref()
            .map_or(DevPtr(0), |a| dev_ptr(a, gpu.stream()))
    }

    pub fn arena_len(&self) -> usize {
        self.arena.as_ref().map_or(0, CudaSlice::len)
    }

    fn region<T>(gpu: &Gpu, s: &Option<CudaSlice<T>>) -> Option<(DevPtr, usize)> {
        s.as_ref().map(|s| (dev_ptr(s, gpu.stream()), s.len()))
    }
}

enum SlotData {
    Bf16(CudaSlice<u16>),
    F32(CudaSlice<f32>),
    I32(CudaSlice<i32>),
}

struct Slot {
    id: TensorId,
    data: SlotData,
}

/// One graph's input buffers and build-time index lists. An eager run allocates a fresh set; a captured
/// graph keeps its own (the graph bakes in their addresses) and the host copies each run's values into
/// them before the replay.
pub struct InputBuffers {
    slots: Vec<Slot>,
    gathers: Vec<(usize, CudaSlice<i32>)>,
}

impl InputBuffers {
    /// Allocates every input buffer `needs` lists and uploads the gather index lists.
    pub fn new(gpu: &Gpu, graph: &Graph, needs: &Needs) -> CudaResult<InputBuffers> {
        let mut slots = Vec::with_capacity(needs.inputs.len());
        for &(id, repr) in &needs.inputs {
            let n = graph.tensor(id).numel();
            let data = match repr {
                InputRepr::Bf16 => SlotData::Bf16(gpu.alloc_zeros(n)?),
                InputRepr::F32 => SlotData::F32(gpu.alloc_zeros(n)?),
                InputRepr::I32 => SlotData::I32(gpu.alloc_zeros(n)?),
            };
            slots.push(Slot { id, data });
        }
        let mut gathers = Vec::with_capacity(needs.gathers.len());
        for (node, rows) in &needs.gathers {
            gathers.push((*node, super::buffer::upload(gpu, rows)?));
        }
        Ok(InputBuffers { slots, gathers })
    }

    /// Copies this run's input values in (stream-ordered, before any launch that reads them). F32 inputs
    /// are rounded to bf16 on the host, except the f32 copies.
    pub fn upload(
        &mut self,
        gpu: &Gpu,
        graph: &Graph,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<(), EngineError> {
        // Raw driver calls below: the context must be current on this thread (a replay may be the
        // thread's first CUDA work, and cudarc binds only in its own calls).
        gpu.context()
            .bind_to_thread()
            .map_err(|e| CudaError::driver("binding the context", e))?;
        let stream = gpu.stream().cu_stream();
        for slot in &mut self.slots {
            let t = graph.tensor(slot.id);
            let Source::Input(name) = &t.source else {
                continue;
            };
            let host = inputs
                .get(name)
                .ok_or_else(|| EngineError::MissingInput { name: name.clone() })?;
            let during = || format!("uploading input `{name}`");
            // SAFETY (each arm): the slot holds `numel` elements and validation checked that the host
            // tensor has exactly `numel` values of this dtype. Pageable async copies return once the host
            // data has been staged, so the temporaries may drop right after.
            match (&mut slot.data, &host.data) {
                (SlotData::Bf16(d), HostData::F32(v)) => {
                    let bits = super::buffer::f32_to_bf16_bits(v);
                    let dst = dev_ptr(d, gpu.stream());
                    unsafe { result::memcpy_htod_async(dst.0, &bits, stream) }
                        .map_err(|e| CudaError::driver(during(), e))?;
                }
                (SlotData::F32(d), HostData::F32(v)) => {
                    let dst = dev_ptr(d, gpu.stream());
                    unsafe { result::memcpy_htod_async(dst.0, v.as_slice(), stream) }
                        .map_err(|e| CudaError::driver(during(), e))?;
                }
                (SlotData::I32(d), HostData::I32(v)) => {
                    let dst = dev_ptr(d, gpu.stream());
                    unsafe { result::memcpy_htod_async(dst.0, v.as_slice(), stream) }
                        .map_err(|e| CudaError::driver(during(), e))?;
                }
                _ => {
                    return Err(EngineError::InputDtype {
                        name: name.clone(),
                        expected: t.dtype,
                        found: host.dtype(),
                    })
                }
            }
        }
        Ok(())
    }
}

/// Every tensor's device address for one run.
#[derive(Debug, Clone, Default)]
pub struct Bindings {
    /// Per tensor: bf16 data for F32 tensors, i32 data for I32 ones; `None` when not on the device
    /// (unwritten activations, inputs no node reads).
    pub ptr: Vec<Option<DevPtr>>,
    /// Per tensor: the f32 copy of an input that `TimestepFeatures` reads as `t`.
    pub f32: Vec<Option<DevPtr>>,
    /// Per node index: the i32 row list of a `GatherRows`.
    pub gathers: HashMap<usize, DevPtr>,
    /// im2col scratch (bf16) and attention scratch (f32; split-KV partials or wide-head score blocks):
    /// address and length in elements.
    pub cols: Option<(DevPtr, usize)>,
    pub attn_workspace: Option<(DevPtr, usize)>,
}

fn unbound(graph: &Graph, id: TensorId, what: &str) -> CudaError {
    CudaError::Unsupported {
        op: "bind",
        label: graph
            .tensors
            .get(id.index())
            .map_or_else(|| format!("tensor {}", id.0), |t| t.label.clone()),
        problem: format!("has no {what} on the device"),
    }
}

impl Bindings {
    /// Addresses from the validated `places`: weights from `weights`, inputs from `inputs`, states from
    /// `states`, activations at their plan offsets (bf16 elements) in the arena.
    pub fn new(
        gpu: &Gpu,
        graph: &Graph,
        places: &[Place],
        weights: &CudaWeights,
        inputs: &InputBuffers,
        states: &CudaStates,
        scratch: &Scratch,
    ) -> Result<Bindings, EngineError> {
        let arena = scratch.arena_ptr(gpu);
        let mut b = Bindings {
            ptr: vec![None; graph.tensors.len()],
            f32: vec![None; graph.tensors.len()],
            gathers: HashMap::new(),
            cols: Scratch::region(gpu, &scratch.cols),
            attn_workspace: Scratch::region(gpu, &scratch.attn),
        };
        for (i, (place, t)) in places.iter().zip(&graph.tensors).enumerate() {
            b.ptr[i] = match (place, &t.source) {
                (Place::Weight, Source::Weight { part, name }) => {
                    Some(weights.require(*part, name, &t.shape)?.ptr(gpu))
                }
                (Place::State, Source::State(name)) => Some(
                    states
                        .ptr(gpu, name)
                        .ok_or_else(|| EngineError::MissingState { name: name.clone() })?,
                ),
                (Place::Arena(off), _) => Some(arena.offset(*off, 2)),
                _ => None,
            };
        }
        for slot in &inputs.slots {
            let i = slot.id.index();
            match &slot.data {
                SlotData::Bf16(d) => b.ptr[i] = Some(dev_ptr(d, gpu.stream())),
                SlotData::I32(d) => b.ptr[i] = Some(dev_ptr(d, gpu.stream())),
                SlotData::F32(d) => b.f32[i] = Some(dev_ptr(d, gpu.stream())),
            }
        }
        for (node, rows) in &inputs.gathers {
            b.gathers.insert(*node, dev_ptr(rows, gpu.stream()));
        }
        Ok(b)
    }

    /// The device address of tensor `id` (bf16, or i32 for I32 tensors).
    pub fn get(&self, graph: &Graph, id: TensorId) -> CudaResult<DevPtr> {
        self.ptr
            .get(id.index())
            .copied()
            .flatten()
            .ok_or_else(|| unbound(graph, id, "data"))
    }

    /// The f32 copy of input `id`.
    pub fn get_f32(&self, graph: &Graph, id: TensorId) -> CudaResult<DevPtr> {
        self.f32
            .get(id.index())
            .copied()
            .flatten()
            .ok_or_else(|| unbound(graph, id, "f32 copy"))
    }
}

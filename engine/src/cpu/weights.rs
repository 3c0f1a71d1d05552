//! Checkpoint weights, converted once per engine and shared by every graph and execution: as f32, or
//! with [`WeightStorage::Bf16`] the large matrices as bf16 (half the memory), widened where they are used.
//!
//! Converting up front (instead of per op) keeps the executor's inner loops free of dtype dispatch
//! except in the two kernels that read bf16 (linear and embedding), which widen it block by block.
//!
//! On x86_64 with AVX2 and FMA, a matrix that only linear ops read (as their weight) is held packed
//! for the CPU GEMM instead of row-major: [`WeightData::PackedF32`] under f32 storage,
//! [`WeightData::PackedBf16`] under bf16 storage (the kernels widen it as they load it). The same
//! values and bytes, packed once here instead of on every product. A matrix any other op reads stays
//! row-major (under bf16 storage an embedding table stays row-major bf16), and one held packed that a
//! later graph reads otherwise is unpacked (exactly) again.

use super::error::{EngineError, Result};
use super::ops::packed_gemm;
use super::validate::widens_bf16;
use super::weight_data::{
    from_view, pack, packed_from_view, PackedWeight, WeightData, WeightStorage,
};
use crate::weight_table::{check_len, check_shape, slot, Shaped, WeightTable};
use half::bf16;
use hbridge_graph::{Graph, Op, Source, TensorId};
use hbridge_loader::{Checkpoint, Part};
use rayon::prelude::*;
use std::sync::Arc;

/// What one `load_*` call converted: tensors, the bytes they are held in, and the wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadReport {
    pub tensors: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// The form a graph wants a weight in. Row-major f32 sorts first and row-major bf16 before packed
/// bf16, so a weight wanted two ways is loaded row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Want {
    F32,
    Packed,
    Bf16,
    PackedBf16,
}

/// Whether `op` reads its input `id` as a linear op's weight and nowhere else.
fn linear_weight(op: &Op, id: TensorId) -> bool {
    matches!(op, Op::Linear { x, w, bias } if *w == id && *x != id && *bias != Some(id))
}

/// For each tensor of `graph`: whether every node that reads it reads it only as a linear weight
/// (and it is not a graph output), i.e. whether it may be held packed.
pub(crate) fn linear_only(graph: &Graph) -> Vec<bool> {
    let mut only = vec![true; graph.tensors.len()];
    for node in &graph.nodes {
        for id in node.op.inputs() {
            if !linear_weight(&node.op, id) {
                if let Some(f) = only.get_mut(id.index()) {
                    *f = false;
                }
            }
        }
    }
    for (_, id) in &graph.outputs {
        if let Some(f) = only.get_mut(id.index()) {
            *f = false;
        }
    }
    only
}

/// One weight with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    pub shape: Vec<usize>,
    pub data: WeightData,
}

/// Weights keyed by (part, stored name).
#[derive(Debug, Clone, Default)]
pub struct CpuWeights {
    parts: WeightTable<WeightTensor>,
    storage: WeightStorage,
}

impl CpuWeights {
    /// Empty, loading checkpoint weights as f32.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty, loading checkpoint weights in `storage` (see [`WeightStorage`] for which weights and
    /// what it does to results). Weights given directly (`insert`, `insert_bf16`) keep their own dtype.
    pub fn with_storage(storage: WeightStorage) -> Self {
        CpuWeights {
            storage,
            ..Self::default()
        }
    }

    /// The storage checkpoint weights are loaded in.
    pub fn storage(&self) -> WeightStorage {
        self.storage
    }

    /// Every weight `graph` references, converted from the checkpoint.
    pub fn from_graph(ckpt: &Checkpoint, graph: &Graph) -> Result<Self> {
        let mut w = Self::new();
        w.load_graph(ckpt, graph)?;
        Ok(w)
    }

    /// Adds the weights `graph` references that are not loaded yet (so one `CpuWeights` can serve the
    /// prefill, decode, gen-step and VAE graphs of an engine). Already loaded weights are checked against
    /// the graph's declared shape; one held as bf16 that `graph` reads other than as a linear weight or
    /// an embedding table is loaded again as f32, and one held packed that `graph` reads other than as
    /// a linear weight is unpacked.
    pub fn load_graph(&mut self, ckpt: &Checkpoint, graph: &Graph) -> Result<LoadReport> {
        self.load_graph_with(ckpt, graph, |_, _| {})
    }

    /// [`load_graph`](Self::load_graph), calling `starting(tensors, bytes)` before converting
    /// anything (not at all when everything is loaded): converting gigabytes takes seconds, which a
    /// caller may want to say.
    pub fn load_graph_with(
        &mut self,
        ckpt: &Checkpoint,
        graph: &Graph,
        starting: impl FnOnce(usize, u64),
    ) -> Result<LoadReport> {
        let mut widens = vec![true; graph.tensors.len()];
        for node in &graph.nodes {
            for id in node.op.inputs() {
                if !widens_bf16(&node.op, id) {
                    if let Some(f) = widens.get_mut(id.index()) {
                        *f = false;
                    }
                }
            }
        }
        let pack = packed_gemm::available();
        // Under `Exact` a weight wanted as bf16 is held as bf16 only if the checkpoint has it so
        // (resolved per tensor when it is converted).
        let bf16 = self.storage != WeightStorage::F32;
        let list = graph
            .tensors
            .iter()
            .zip(widens)
            .zip(linear_only(graph))
            .filter_map(|((t, widens), linear_only)| match &t.source {
                Source::Weight { part, name } => {
                    let matrix = t.shape.len() == 2;
                    // Read only as a linear weight implies read only by widening kernels.
                    let want = match (pack && linear_only && matrix, bf16 && widens && matrix) {
                        (true, true) => Want::PackedBf16,
                        (true, false) => Want::Packed,
                        (false, true) => Want::Bf16,
                        (false, false) => Want::F32,
                    };
                    Some((*part, name.as_str(), t.shape.as_slice(), want))
                }
                _ => None,
            })
            .collect();
        self.load_wanted(ckpt, list, starting)
    }

    /// Adds the listed weights `(part, stored name, expected shape)`, converting in parallel. They are
    /// loaded as row-major f32 whatever the storage, since nothing here says which ops read them.
    pub fn load_list<'a>(
        &mut self,
        ckpt: &Checkpoint,
        list: impl IntoIterator<Item = (Part, &'a str, &'a [usize])>,
    ) -> Result<LoadReport> {
        let list = list
            .into_iter()
            .map(|(p, n, s)| (p, n, s, Want::F32))
            .collect();
        self.load_wanted(ckpt, list, |_, _| {})
    }

    /// Packs the row-major matrices held that `graph` reads only as linear weights, in their own
    /// dtype (f32 or bf16), as `load_graph` does for checkpoint weights (for weights given with
    /// `insert` or `insert_bf16`). Does nothing where the packed CPU GEMM does not run (not x86_64
    /// with AVX2 and FMA). Returns how many it packed.
    pub fn pack_linear_weights(&mut self, graph: &Graph) -> usize {
        if !packed_gemm::available() {
            return 0;
        }
        let mut packed = 0;
        for (t, only) in graph.tensors.iter().zip(linear_only(graph)) {
            let Source::Weight { part, name } = &t.source else {
                continue;
            };
            let Some(w) = self.parts.get(*part, name) else {
                continue;
            };
            let &[out, inp] = w.shape.as_slice() else {
                continue;
            };
            if !only || t.shape != w.shape {
                continue;
            }
            if let Some(data) = pack(&w.data, out, inp) {
                let shape = w.shape.clone();
                self.parts
                    .insert(*part, name.clone(), WeightTensor { shape, data });
                packed += 1;
            }
        }
        packed
    }

    fn load_wanted(
        &mut self,
        ckpt: &Checkpoint,
        list: Vec<(Part, &str, &[usize], Want)>,
        starting: impl FnOnce(usize, u64),
    ) -> Result<LoadReport> {
        let start = std::time::Instant::now();
        let mut todo = Vec::new();
        let mut unpack = Vec::new();
        for (part, name, shape, want) in list {
            match self.get(part, name) {
                Some(w) => {
                    check_shape(part, name, shape, &w.shape)?;
                    match (want, &w.data) {
                        (
                            Want::F32 | Want::Packed,
                            WeightData::Bf16(_) | WeightData::PackedBf16(_),
                        ) => todo.push((part, name, shape, want)),
                        (Want::F32, WeightData::PackedF32(_))
                        | (Want::Bf16, WeightData::PackedBf16(_) | WeightData::PackedF32(_)) => {
                            unpack.push((part, name))
                        }
                        _ => {}
                    }
                }
                None => todo.push((part, name, shape, want)),
            }
        }
        for (part, name) in unpack {
            if let Some(w) = self.get(part, name) {
                let w = WeightTensor {
                    shape: w.shape.clone(),
                    data: w.data.unpacked(),
                };
                self.parts.insert(part, name.to_string(), w);
            }
        }
        // Row-major sorts first, so a weight wanted two ways is loaded row-major.
        todo.sort_unstable_by_key(|(p, n, _, w)| (slot(*p), *n, *w));
        todo.dedup_by_key(|(p, n, _, _)| (slot(*p), *n));
        let bytes = self.check_host_memory(ckpt, &todo, super::host_memory::available())?;
        let tensors = todo.len();
        if tensors > 0 {
            starting(tensors, bytes);
        }
        let loaded: Vec<(Part, String, WeightTensor)> = todo
            .into_par_iter()
            .map(|(part, name, shape, want)| {
                Ok((
                    part,
                    name.to_string(),
                    convert(ckpt, part, name, shape, want, self.storage)?,
                ))
            })
            .collect::<Result<_>>()?;
        for (part, name, w) in loaded {
            self.parts.insert(part, name, w);
        }
        Ok(LoadReport {
            tensors,
            bytes,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Adds one weight given as f32 values (tests, synthetic weights).
    pub fn insert(
        &mut self,
        part: Part,
        name: impl Into<String>,
        shape: &[usize],
        data: Vec<f32>,
    ) -> Result<()> {
        self.insert_data(part, name.into(), shape, WeightData::F32(data.into()))
    }

    /// Adds one weight given as bf16 values, held as bf16 whatever the storage (tests, synthetic
    /// weights). Only a linear op (as its weight) or an embedding (as its table) can read it.
    pub fn insert_bf16(
        &mut self,
        part: Part,
        name: impl Into<String>,
        shape: &[usize],
        data: Vec<bf16>,
    ) -> Result<()> {
        self.insert_data(part, name.into(), shape, WeightData::Bf16(data.into()))
    }

    fn insert_data(
        &mut self,
        part: Part,
        name: String,
        shape: &[usize],
        data: WeightData,
    ) -> Result<()> {
        check_len(&name, shape, data.len())?;
        self.parts.insert(
            part,
            name,
            WeightTensor {
                shape: shape.to_vec(),
                data,
            },
        );
        Ok(())
    }

    /// Builds from an in-memory map `(part, name) -> (shape, values)`.
    pub fn from_map(
        map: impl IntoIterator<Item = ((Part, String), (Vec<usize>, Vec<f32>))>,
    ) -> Result<Self> {
        let mut w = Self::new();
        for ((part, name), (shape, data)) in map {
            w.insert(part, name, &shape, data)?;
        }
        Ok(w)
    }

    pub fn get(&self, part: Part, name: &str) -> Option<&WeightTensor> {
        self.parts.get(part, name)
    }

    /// The weight `graph` declares at `(part, name)` with `shape`, or why it cannot be used.
    pub fn require(&self, part: Part, name: &str, shape: &[usize]) -> Result<&WeightTensor> {
        self.parts.require(part, name, shape)
    }

    /// The bytes `todo` will be held in (each tensor at its element size), refusing to convert it
    /// when they exceed `available` (the host's, [`super::host_memory::available`]; `None`: no
    /// check).
    fn check_host_memory(
        &self,
        ckpt: &Checkpoint,
        todo: &[(Part, &str, &[usize], Want)],
        available: Option<u64>,
    ) -> Result<u64> {
        let (mut need, mut at_f32_halvable) = (0u64, 0u64);
        for &(part, name, shape, want) in todo {
            let numel = shape.iter().product::<usize>() as u64;
            let dtype = ckpt.tensor(part, name).map(|v| v.dtype.clone());
            let derived = hbridge_graph::derived::recipe(name).is_some();
            let bf16 = matches!(want, Want::Bf16 | Want::PackedBf16)
                && !derived
                && dtype.is_some_and(|d| self.storage.for_dtype(&d) == WeightStorage::Bf16);
            need += numel * if bf16 { 2 } else { 4 };
            // What bf16 storage would hold as bf16: the matrices (a few read by other ops stay
            // f32, so this is about).
            if shape.len() == 2 && !derived && !bf16 {
                at_f32_halvable += numel;
            }
        }
        let Some(available) = available.filter(|&a| need > a) else {
            return Ok(need);
        };
        let hint = if self.storage != WeightStorage::Bf16 && at_f32_halvable > 0 {
            format!(
                " (bf16 storage, `--weight-dtype bf16`, would need about {:.2} GB)",
                (need - 2 * at_f32_halvable) as f64 / 1e9
            )
        } else {
            String::new()
        };
        Err(EngineError::HostMemory {
            tensors: todo.len(),
            need,
            available,
            storage: match self.storage {
                WeightStorage::F32 => "f32".into(),
                WeightStorage::Bf16 => "bf16 (the large matrices)".into(),
                WeightStorage::Exact => {
                    "f32, the large matrices bf16 where the checkpoint has them so".into()
                }
            },
            hint,
        })
    }

    /// Checks that every weight `graph` references is loaded with the declared shape.
    pub fn check_graph(&self, graph: &Graph) -> Result<()> {
        self.parts.check_graph(graph)
    }

    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of weight values held (4 per f32 value, 2 per bf16 value, packed or not).
    pub fn bytes(&self) -> usize {
        self.parts.values().map(|w| w.data.bytes()).sum()
    }

    /// Bytes per weight value as held, rounded to the nearer of bf16 (2) and f32 (4): what a weight
    /// read costs under this storage (`Exact` depends on the checkpoint; the small f32 tensors of bf16
    /// storage do not move it). 4 while nothing is loaded.
    pub fn elem_bytes(&self) -> usize {
        let values: usize = self.parts.values().map(|w| w.data.len()).sum();
        if values > 0 && self.bytes() < 3 * values {
            2
        } else {
            4
        }
    }
}

fn convert(
    ckpt: &Checkpoint,
    part: Part,
    name: &str,
    shape: &[usize],
    want: Want,
    storage: WeightStorage,
) -> Result<WeightTensor> {
    if let Some(values) = crate::derived::values(ckpt, name, shape) {
        return Ok(WeightTensor {
            shape: shape.to_vec(),
            data: derived_data(values?, shape, want),
        });
    }
    let store = ckpt.part(part).ok_or_else(|| EngineError::MissingPart {
        part,
        name: name.to_string(),
    })?;
    let view = store.get(name).ok_or_else(|| EngineError::MissingWeight {
        part,
        name: name.to_string(),
    })?;
    check_shape(part, name, shape, view.shape)?;
    let data = match want {
        Want::F32 => from_view(part, name, &view, WeightStorage::F32)?,
        Want::Bf16 => from_view(part, name, &view, storage)?,
        Want::Packed => packed_from_view(part, name, &view, WeightStorage::F32)?,
        Want::PackedBf16 => packed_from_view(part, name, &view, storage)?,
    };
    Ok(WeightTensor {
        shape: view.shape.to_vec(),
        data,
    })
}

impl Shaped for WeightTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// A derived weight's f32 values, packed for the GEMM where `want` asks. Always f32, whatever the
/// storage: the product of two bf16 matrices is no bf16 tensor, and rounding it would break bf16
/// storage's promise of the f32 results on a bf16 checkpoint.
fn derived_data(values: Vec<f32>, shape: &[usize], want: Want) -> WeightData {
    match (want, shape) {
        (Want::Packed | Want::PackedBf16, &[out, inp]) => {
            WeightData::PackedF32(Arc::new(PackedWeight::from_rows(&values, out, inp)))
        }
        _ => WeightData::F32(values.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The estimate counts each tensor at the size it will be held in, refuses only past the
    /// available bytes, and says what bf16 storage would need.
    #[test]
    fn host_memory_check_counts_held_bytes() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/model");
        let ck = Checkpoint::open(&dir).unwrap();
        let name = "layers.0.attn.to_k.weight";
        let shape = [24usize, 72];
        let view = ck.tensor(Part::Gen, name).unwrap();
        assert_eq!(view.dtype.to_string().to_lowercase(), "bf16");
        let todo = |want| vec![(Part::Gen, name, &shape[..], want)];
        let f32s = CpuWeights::with_storage(WeightStorage::F32);
        let at_f32 = (24 * 72 * 4) as u64;
        f32s.check_host_memory(&ck, &todo(Want::Packed), Some(at_f32))
            .unwrap();
        f32s.check_host_memory(&ck, &todo(Want::Packed), None)
            .unwrap();
        let err = f32s
            .check_host_memory(&ck, &todo(Want::Packed), Some(at_f32 - 1))
            .unwrap_err();
        match &err {
            EngineError::HostMemory {
                tensors,
                need,
                available,
                hint,
                ..
            } => {
                assert_eq!((*tensors, *need, *available), (1, at_f32, at_f32 - 1));
                assert!(hint.contains("--weight-dtype bf16"), "{hint}");
            }
            other => panic!("expected HostMemory, got {other:?}"),
        }
        assert!(
            err.to_string()
                .contains(super::super::host_memory::IGNORE_ENV),
            "{err}"
        );
        // Held as bf16 (the checkpoint's own dtype): half the bytes, and no hint.
        let exact = CpuWeights::with_storage(WeightStorage::Exact);
        exact
            .check_host_memory(&ck, &todo(Want::PackedBf16), Some(at_f32 / 2))
            .unwrap();
        match exact.check_host_memory(&ck, &todo(Want::PackedBf16), Some(at_f32 / 2 - 1)) {
            Err(EngineError::HostMemory { need, hint, .. }) => {
                assert_eq!(need, at_f32 / 2);
                assert!(hint.is_empty(), "{hint}");
            }
            other => panic!("expected HostMemory, got {other:?}"),
        }
    }
}

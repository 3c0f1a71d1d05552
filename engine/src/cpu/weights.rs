//! Checkpoint weights as f32, converted once per engine and shared by every graph and execution.
//!
//! Converting up front (instead of per op) keeps the executor's inner loops free of dtype dispatch; the
//! cost is f32 memory for what bf16 stores in half, which the CPU reference backend accepts.

use super::error::{EngineError, Result};
use crate::weight_table::{check_shape, slot, Shaped, WeightTable};
use hbridge_graph::{Graph, Source};
use hbridge_loader::{Checkpoint, Part};
use rayon::prelude::*;
use std::sync::Arc;

/// One weight as f32, with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    pub shape: Vec<usize>,
    pub data: Arc<[f32]>,
}

/// f32 weights keyed by (part, stored name).
#[derive(Debug, Clone, Default)]
pub struct CpuWeights {
    parts: WeightTable<WeightTensor>,
}

impl CpuWeights {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every weight `graph` references, converted from the checkpoint.
    pub fn from_graph(ckpt: &Checkpoint, graph: &Graph) -> Result<Self> {
        let mut w = Self::new();
        w.load_graph(ckpt, graph)?;
        Ok(w)
    }

    /// Adds the weights `graph` references that are not loaded yet (so one `CpuWeights` can serve the
    /// prefill, decode, gen-step and VAE graphs of an engine). Already loaded weights are checked against
    /// the graph's declared shape.
    pub fn load_graph(&mut self, ckpt: &Checkpoint, graph: &Graph) -> Result<()> {
        let list: Vec<(Part, &str, &[usize])> = graph
            .tensors
            .iter()
            .filter_map(|t| match &t.source {
                Source::Weight { part, name } => Some((*part, name.as_str(), t.shape.as_slice())),
                _ => None,
            })
            .collect();
        self.load_list(ckpt, list)
    }

    /// Adds the listed weights `(part, stored name, expected shape)`, converting in parallel.
    pub fn load_list<'a>(
        &mut self,
        ckpt: &Checkpoint,
        list: impl IntoIterator<Item = (Part, &'a str, &'a [usize])>,
    ) -> Result<()> {
        let mut todo = Vec::new();
        for (part, name, shape) in list {
            match self.get(part, name) {
                Some(w) => check_shape(part, name, shape, &w.shape)?,
                None => todo.push((part, name, shape)),
            }
        }
        todo.sort_unstable_by_key(|(p, n, _)| (slot(*p), *n));
        todo.dedup_by_key(|(p, n, _)| (slot(*p), *n));
        let loaded: Vec<(Part, String, WeightTensor)> = todo
            .into_par_iter()
            .map(|(part, name, shape)| {
                Ok((part, name.to_string(), convert(ckpt, part, name, shape)?))
            })
            .collect::<Result<_>>()?;
        for (part, name, w) in loaded {
            self.parts.insert(part, name, w);
        }
        Ok(())
    }

    /// Adds one weight given as f32 values (tests, synthetic weights).
    pub fn insert(
        &mut self,
        part: Part,
        name: impl Into<String>,
        shape: &[usize],
        data: Vec<f32>,
    ) -> Result<()> {
        let name = name.into();
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(EngineError::DataLength {
                name,
                shape: shape.to_vec(),
                expected,
                found: data.len(),
            });
        }
        self.parts.insert(
            part,
            name,
            WeightTensor {
                shape: shape.to_vec(),
                data: data.into(),
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

    /// Bytes of f32 data held.
    pub fn bytes(&self) -> usize {
        self.parts.values().map(|w| w.data.len() * 4).sum()
    }
}

fn convert(ckpt: &Checkpoint, part: Part, name: &str, shape: &[usize]) -> Result<WeightTensor> {
    let store = ckpt.part(part).ok_or_else(|| EngineError::MissingPart {
        part,
        name: name.to_string(),
    })?;
    let view = store.get(name).ok_or_else(|| EngineError::MissingWeight {
        part,
        name: name.to_string(),
    })?;
    check_shape(part, name, shape, view.shape)?;
    let data = view.to_f32().ok_or_else(|| EngineError::WeightDtype {
        part,
        name: name.to_string(),
        file: view.file.to_string(),
        dtype: view.dtype.to_string(),
    })?;
    if data.len() != view.numel() {
        return Err(EngineError::DataLength {
            name: name.to_string(),
            shape: view.shape.to_vec(),
            expected: view.numel(),
            found: data.len(),
        });
    }
    Ok(WeightTensor {
        shape: view.shape.to_vec(),
        data: data.into(),
    })
}

impl Shaped for WeightTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

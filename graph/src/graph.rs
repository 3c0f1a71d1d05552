//! The graph container: tensors with fixed shapes, nodes in execution order, named inputs and outputs.

use crate::op::Op;
use crate::shape::infer_shape;
use hbridge_loader::Part;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

impl TensorId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    F32,
    /// Token ids and positions.
    I32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A checkpoint tensor, by part and full stored name.
    Weight { part: Part, name: String },
    /// Fed by the caller before execution, by name.
    Input(String),
    /// Owned by the caller across runs, by name (a request's K/V cache): read like an input, and
    /// updated in place by the graph's [`StateWrite`]s after every node has run. Keeping it out of the
    /// inputs is what lets a backend hold it where the compute is (device memory) for a whole request.
    State(String),
    /// Written by a node.
    Activation,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorDesc {
    pub shape: Vec<usize>,
    pub dtype: DataType,
    pub source: Source,
    /// What the tensor is in the model's words, for traces and errors (e.g. `gen.layers.3.attn.q`).
    pub label: String,
}

impl TensorDesc {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub out: TensorId,
}

/// After every node has run, `src` `[n, C]` is copied into rows `[row[0], row[0] + n)` of `state`
/// `[capacity, C]` (`row` an I32 `[1]`; a row range past the capacity is an error, and nothing is
/// written). A write happens after all reads, so a node never sees a half-updated state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateWrite {
    pub state: TensorId,
    pub src: TensorId,
    pub row: TensorId,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub tensors: Vec<TensorDesc>,
    pub nodes: Vec<Node>,
    /// Named results the caller reads after execution.
    pub outputs: Vec<(String, TensorId)>,
    /// In-place updates of state tensors, applied in order after the last node.
    pub state_writes: Vec<StateWrite>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    #[error("building {label}: {op} {problem}")]
    Shape {
        label: String,
        op: &'static str,
        problem: String,
    },
    #[error("{0}")]
    Request(String),
}

impl Graph {
    pub fn tensor(&self, id: TensorId) -> &TensorDesc {
        &self.tensors[id.index()]
    }

    pub fn output(&self, name: &str) -> Option<TensorId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }

    /// Tensors fed by the caller, with their names.
    pub fn inputs(&self) -> impl Iterator<Item = (TensorId, &str)> {
        self.tensors
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match &t.source {
                Source::Input(name) => Some((TensorId(i as u32), name.as_str())),
                _ => None,
            })
    }

    /// Tensors owned by the caller across runs, with their names.
    pub fn states(&self) -> impl Iterator<Item = (TensorId, &str)> {
        self.tensors
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match &t.source {
                Source::State(name) => Some((TensorId(i as u32), name.as_str())),
                _ => None,
            })
    }

    pub fn weights(&self) -> impl Iterator<Item = (TensorId, Part, &str)> {
        self.tensors
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match &t.source {
                Source::Weight { part, name } => Some((TensorId(i as u32), *part, name.as_str())),
                _ => None,
            })
    }

    /// Declares a checkpoint tensor (deduplicated by part and name).
    pub fn weight(&mut self, part: Part, name: impl Into<String>, shape: &[usize]) -> TensorId {
        let name = name.into();
        if let Some(i) = self.tensors.iter().position(|t| matches!(&t.source, Source::Weight { part: p, name: n } if *p == part && *n == name)) {
            return TensorId(i as u32);
        }
        self.add_tensor(TensorDesc {
            shape: shape.to_vec(),
            dtype: DataType::F32,
            source: Source::Weight {
                part,
                name: name.clone(),
            },
            label: name,
        })
    }

    pub fn input(&mut self, name: impl Into<String>, shape: &[usize], dtype: DataType) -> TensorId {
        let name = name.into();
        self.add_tensor(TensorDesc {
            shape: shape.to_vec(),
            dtype,
            source: Source::Input(name.clone()),
            label: name,
        })
    }

    /// Declares a caller-owned state tensor (F32), e.g. one layer's K cache `[capacity, kv_dim]`.
    pub fn state(&mut self, name: impl Into<String>, shape: &[usize]) -> TensorId {
        let name = name.into();
        self.add_tensor(TensorDesc {
            shape: shape.to_vec(),
            dtype: DataType::F32,
            source: Source::State(name.clone()),
            label: name,
        })
    }

    /// Adds a [`StateWrite`] of `src` into `state` at row `row[0]`, checking the shapes.
    pub fn write_state(
        &mut self,
        state: TensorId,
        src: TensorId,
        row: TensorId,
    ) -> Result<(), GraphError> {
        let t = |id: TensorId| self.tensors.get(id.index());
        let (Some(st), Some(sr), Some(rw)) = (t(state), t(src), t(row)) else {
            return Err(GraphError::Request(
                "a state write names a tensor that does not exist".into(),
            ));
        };
        let problem = if !matches!(st.source, Source::State(_)) {
            Some(format!("`{}` is not a state tensor", st.label))
        } else if st.shape.len() != 2 || sr.shape.len() != 2 || st.shape[1] != sr.shape[1] {
            Some(format!(
                "`{}` {:?} into state {:?}: both must be [rows, C] with the same C",
                sr.label, sr.shape, st.shape
            ))
        } else if sr.shape[0] > st.shape[0] {
            Some(format!(
                "`{}` has {} rows, more than the state's capacity {}",
                sr.label, sr.shape[0], st.shape[0]
            ))
        } else if rw.shape != [1] || rw.dtype != DataType::I32 {
            Some(format!("row `{}` must be I32 [1]", rw.label))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(GraphError::Shape {
                label: st.label.clone(),
                op: "state_write",
                problem,
            });
        }
        self.state_writes.push(StateWrite { state, src, row });
        Ok(())
    }

    fn add_tensor(&mut self, desc: TensorDesc) -> TensorId {
        self.tensors.push(desc);
        TensorId(self.tensors.len() as u32 - 1)
    }

    /// Appends a node; its output shape is inferred and every input shape checked.
    pub fn push(&mut self, op: Op, label: impl Into<String>) -> Result<TensorId, GraphError> {
        let label = label.into();
        let shape = infer_shape(&op, |id| &self.tensors[id.index()].shape).map_err(|problem| {
            GraphError::Shape {
                label: label.clone(),
                op: op.name(),
                problem,
            }
        })?;
        let out = self.add_tensor(TensorDesc {
            shape,
            dtype: DataType::F32,
            source: Source::Activation,
            label,
        });
        self.nodes.push(Node { op, out });
        Ok(out)
    }

    pub fn mark_output(&mut self, name: impl Into<String>, id: TensorId) {
        self.outputs.push((name.into(), id));
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for node in &self.nodes {
            let t = self.tensor(node.out);
            let inputs: Vec<String> = node
                .op
                .inputs()
                .iter()
                .map(|i| self.tensor(*i).label.clone())
                .collect();
            writeln!(
                f,
                "{} {:?} = {}({})",
                t.label,
                t.shape,
                node.op.name(),
                inputs.join(", ")
            )?;
        }
        Ok(())
    }
}

//! Everything checked before any compute: the graph is well formed (re-inferred shapes, dtypes, execution
//! order), the plan places every activation inside the arena, every input and weight is present with the
//! declared shape and dtype, and every token id is inside its table. After this, kernels only see
//! consistent shapes, so index arithmetic cannot go out of bounds.

use super::error::{EngineError, Result};
use super::ops::packed_gemm::PackedRef;
use super::tensor::{HostData, HostTensor};
use super::weight_data::WeightData;
use super::weights::{linear_only, CpuWeights};
use half::bf16;
use hbridge_graph::plan::MemoryPlan;
use hbridge_graph::{infer_shape, DataType, Graph, Op, RopeKind, Source, TensorId};
use hbridge_loader::Part;
use std::collections::HashMap;

/// A borrowed tensor living outside the arena.
#[derive(Clone, Copy)]
pub(crate) enum View<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
    /// A weight held as bf16; only the ops [`widens_bf16`] names read it.
    Bf16(&'a [bf16]),
    /// A linear weight held packed for the CPU GEMM (f32 or bf16); only linear ops read it (as their
    /// weight).
    Packed(PackedRef<'a>),
}

/// Whether `op` reads its input `id` through a kernel that widens bf16 (the weight of a linear, the
/// table of an embedding) and reads it nowhere else.
pub(crate) fn widens_bf16(op: &Op, id: TensorId) -> bool {
    match op {
        Op::Linear { x, w, bias } => *w == id && *x != id && *bias != Some(id),
        Op::Embed { table, ids } => *table == id && *ids != id,
        _ => false,
    }
}

/// Where each tensor's values are during execution.
#[derive(Clone, Copy)]
pub(crate) enum Loc<'a> {
    /// An activation at this offset of the arena.
    Arena(usize),
    /// A weight or a caller's input.
    Host(View<'a>),
    /// An activation no node writes (left behind by pruning); nothing may read it.
    Unwritten,
}

fn graph_err(label: &str, problem: impl Into<String>) -> EngineError {
    EngineError::Graph {
        label: label.to_string(),
        problem: problem.into(),
    }
}

/// The dtype each input of `op` must have, in `op.inputs()` order.
fn input_dtypes(op: &Op) -> Vec<DataType> {
    let mut d = vec![DataType::F32; op.inputs().len()];
    match op {
        Op::Embed { .. } | Op::Rope { .. } => d[1] = DataType::I32,
        Op::Attention { segments, .. } => {
            // Inputs are q, then each segment's k, v and (optional) length.
            let mut i = 1;
            for s in segments {
                i += 2;
                if s.len.is_some() {
                    d[i] = DataType::I32;
                    i += 1;
                }
            }
        }
        _ => {}
    }
    d
}

/// What the kernels rely on that `infer_shape` does not check.
fn beyond_shape_inference(op: &Op) -> Option<String> {
    match op {
        // Pairs are (2k, 2k+1) from each axis start: an odd axis would shift every later pair and leave
        // a dimension unrotated (and unwritten).
        Op::Rope {
            kind: RopeKind::Interleaved3 { axes, .. },
            ..
        } if axes.iter().any(|a| a % 2 != 0) => {
            Some(format!("interleaved rope axes {axes:?} must all be even"))
        }
        _ => None,
    }
}

/// Where a tensor lives, backend-neutral: the result of [`check`], which each backend turns into its own
/// locations (host slices on the CPU, device addresses on CUDA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// A checkpoint weight, present with the declared shape.
    Weight,
    /// A caller's input, present with the declared shape, dtype and length.
    Input,
    /// A caller's state, present with the declared shape.
    State,
    /// An activation at this offset (in elements) of the arena.
    Arena(usize),
    /// An activation no node writes (left behind by pruning); nothing may read it.
    Unwritten,
}

/// Checks everything and returns each tensor's location.
pub(crate) fn resolve<'a>(
    graph: &Graph,
    plan: &MemoryPlan,
    weights: &'a CpuWeights,
    inputs: &'a HashMap<String, HostTensor>,
    states: &'a HashMap<String, HostTensor>,
) -> Result<Vec<Loc<'a>>> {
    let places = check(
        graph,
        plan,
        inputs,
        |part, name, shape| weights.require(part, name, shape).map(|_| ()),
        |name, shape| host_state(states, name, shape).map(|_| ()),
    )?;
    let linear_only = linear_only(graph);
    let locs = places
        .iter()
        .zip(&graph.tensors)
        .zip(linear_only)
        .map(|((place, t), linear_only)| {
            Ok(match (place, &t.source) {
                (Place::Weight, Source::Weight { part, name }) => {
                    Loc::Host(match &weights.require(*part, name, &t.shape)?.data {
                        WeightData::F32(v) => View::F32(v),
                        WeightData::Bf16(v) => View::Bf16(v),
                        // Read otherwise by this graph (loaded packed for another): row-major.
                        WeightData::PackedF32(p) if !linear_only => View::F32(p.rows()),
                        WeightData::PackedBf16(p) if !linear_only => View::Bf16(p.rows()),
                        WeightData::PackedF32(p) => View::Packed(p.packed().packed_ref()),
                        WeightData::PackedBf16(p) => View::Packed(p.packed().packed_ref()),
                    })
                }
                (Place::Input, Source::Input(name)) => Loc::Host(match &inputs[name].data {
                    HostData::F32(v) => View::F32(v),
                    HostData::I32(v) => View::I32(v),
                }),
                (Place::State, Source::State(name)) => {
                    Loc::Host(View::F32(host_state(states, name, &t.shape)?))
                }
                (Place::Arena(off), _) => Loc::Arena(*off),
                _ => Loc::Unwritten,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    check_bf16_readers(graph, &locs)?;
    Ok(locs)
}

/// The f32 values of state `name`, checked to have `shape`.
pub(crate) fn host_state<'a>(
    states: &'a HashMap<String, HostTensor>,
    name: &str,
    shape: &[usize],
) -> Result<&'a [f32]> {
    let s = states.get(name).ok_or_else(|| EngineError::MissingState {
        name: name.to_string(),
    })?;
    if s.shape != shape {
        return Err(EngineError::StateShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            found: s.shape.clone(),
        });
    }
    s.check_len(name)?;
    s.as_f32().ok_or_else(|| EngineError::InputDtype {
        name: name.to_string(),
        expected: DataType::F32,
        found: s.dtype(),
    })
}

/// A bf16 weight read by an op without a widening kernel is an error before any compute rather than a
/// failure halfway through. (A graph output that is a bf16 weight is widened when returned.)
fn check_bf16_readers(graph: &Graph, locs: &[Loc<'_>]) -> Result<()> {
    let is_bf16 = |id: TensorId| matches!(locs.get(id.index()), Some(Loc::Host(View::Bf16(_))));
    // Graphs run many times over f32 weights; they skip the walk over every node's inputs.
    if !locs.iter().any(|l| matches!(l, Loc::Host(View::Bf16(_)))) {
        return Ok(());
    }
    let storage_err = |id: TensorId, op: &str| match &graph.tensor(id).source {
        Source::Weight { part, name } => EngineError::WeightStorage {
            part: *part,
            name: name.clone(),
            op: op.to_string(),
        },
        _ => graph_err(&graph.tensor(id).label, "bf16 data outside the weights"),
    };
    for node in &graph.nodes {
        if let Some(id) = node
            .op
            .inputs()
            .into_iter()
            .find(|&id| is_bf16(id) && !widens_bf16(&node.op, id))
        {
            return Err(storage_err(id, node.op.name()));
        }
    }
    Ok(())
}

/// Checks everything a backend relies on before any compute, in a fixed order (weights and inputs in
/// tensor order, then every node in execution order, then the outputs and state writes), and returns
/// each tensor's place. `weight` checks that the backend holds `(part, name)` with the given shape,
/// `state` that the caller's state `name` has the given shape.
pub(crate) fn check(
    graph: &Graph,
    plan: &MemoryPlan,
    inputs: &HashMap<String, HostTensor>,
    mut weight: impl FnMut(Part, &str, &[usize]) -> Result<()>,
    mut state: impl FnMut(&str, &[usize]) -> Result<()>,
) -> Result<Vec<Place>> {
    let nt = graph.tensors.len();
    if plan.offsets.len() != nt {
        return Err(EngineError::Plan(format!(
            "{} offsets for {nt} tensors",
            plan.offsets.len()
        )));
    }
    let mut places = Vec::with_capacity(nt);
    for t in &graph.tensors {
        places.push(match &t.source {
            Source::Weight { part, name } => {
                if t.dtype != DataType::F32 {
                    return Err(graph_err(&t.label, "weights must be F32"));
                }
                weight(*part, name, &t.shape)?;
                Place::Weight
            }
            Source::Input(name) => {
                let h = inputs
                    .get(name)
                    .ok_or_else(|| EngineError::MissingInput { name: name.clone() })?;
                if h.dtype() != t.dtype {
                    return Err(EngineError::InputDtype {
                        name: name.clone(),
                        expected: t.dtype,
                        found: h.dtype(),
                    });
                }
                if h.shape != t.shape {
                    return Err(EngineError::InputShape {
                        name: name.clone(),
                        expected: t.shape.clone(),
                        found: h.shape.clone(),
                    });
                }
                h.check_len(name)?;
                Place::Input
            }
            Source::State(name) => {
                if t.dtype != DataType::F32 {
                    return Err(graph_err(&t.label, "states must be F32"));
                }
                state(name, &t.shape)?;
                Place::State
            }
            Source::Activation => Place::Unwritten,
        });
    }

    let shape_of = |id: TensorId| graph.tensors[id.index()].shape.as_slice();
    for node in &graph.nodes {
        let out = node.out;
        let label = graph
            .tensors
            .get(out.index())
            .map_or("?", |t| t.label.as_str());
        if out.index() >= nt {
            return Err(graph_err(
                label,
                format!("output tensor {} does not exist", out.0),
            ));
        }
        let desc = &graph.tensors[out.index()];
        if desc.source != Source::Activation || desc.dtype != DataType::F32 {
            return Err(graph_err(label, "a node must write an F32 activation"));
        }
        if places[out.index()] != Place::Unwritten {
            return Err(graph_err(label, "written by two nodes"));
        }
        let ins = node.op.inputs();
        for (id, want) in ins.iter().zip(input_dtypes(&node.op)) {
            let Some(t) = graph.tensors.get(id.index()) else {
                return Err(graph_err(
                    label,
                    format!("reads tensor {} which does not exist", id.0),
                ));
            };
            if places[id.index()] == Place::Unwritten {
                return Err(graph_err(
                    label,
                    format!("reads `{}` before any node writes it", t.label),
                ));
            }
            if t.dtype != want {
                return Err(graph_err(
                    label,
                    format!(
                        "input `{}` is {:?}, {} needs {want:?}",
                        t.label,
                        t.dtype,
                        node.op.name()
                    ),
                ));
            }
        }
        let shape = infer_shape(&node.op, shape_of)
            .map_err(|p| graph_err(label, format!("{}: {p}", node.op.name())))?;
        if let Some(problem) = beyond_shape_inference(&node.op) {
            return Err(graph_err(label, problem));
        }
        if shape != desc.shape {
            return Err(graph_err(
                label,
                format!(
                    "declared shape {:?}, {} gives {shape:?}",
                    desc.shape,
                    node.op.name()
                ),
            ));
        }
        if let Op::Embed { table, ids } = &node.op {
            check_ids(graph, inputs, *table, *ids)?;
        }
        if let Op::Attention { segments, .. } = &node.op {
            for s in segments {
                if let Some(len) = s.len {
                    let rows = graph.tensor(s.k).shape[0];
                    let (input, v) = i32_value(graph, inputs, len, label)?;
                    if v < 0 || v as usize > rows {
                        return Err(EngineError::SegmentLength {
                            label: label.to_string(),
                            input,
                            len: v.into(),
                            rows,
                        });
                    }
                }
            }
        }
        let off = plan.offsets[out.index()]
            .ok_or_else(|| EngineError::Plan(format!("`{label}` has no offset")))?;
        if off
            .checked_add(desc.numel())
            .is_none_or(|end| end > plan.arena_len)
        {
            return Err(EngineError::Plan(format!(
                "`{label}` at {off} + {} exceeds the arena of {}",
                desc.numel(),
                plan.arena_len
            )));
        }
        places[out.index()] = Place::Arena(off);
    }
    for (name, id) in &graph.outputs {
        match places.get(id.index()) {
            None | Some(Place::Unwritten) => {
                return Err(graph_err(name, "output is never written"))
            }
            _ => {}
        }
    }
    for w in &graph.state_writes {
        check_state_write(graph, inputs, &places, w)?;
    }
    Ok(places)
}

/// The single value of an I32 `[1]` tensor, which (I32 tensors being caller inputs) is known before any
/// compute; with the input's name.
fn i32_value(
    graph: &Graph,
    inputs: &HashMap<String, HostTensor>,
    id: TensorId,
    label: &str,
) -> Result<(String, i32)> {
    let t = graph.tensor(id);
    let value = match &t.source {
        Source::Input(name) if t.shape == [1] && t.dtype == DataType::I32 => inputs
            .get(name)
            .and_then(HostTensor::as_i32)
            .and_then(|v| v.first())
            .map(|v| (name.clone(), *v)),
        _ => None,
    };
    value.ok_or_else(|| {
        graph_err(
            label,
            format!("`{}` must be a caller's I32 [1] input", t.label),
        )
    })
}

/// A state write reads a written F32 `[n, C]` and an I32 row, into a state `[capacity, C]` with room.
fn check_state_write(
    graph: &Graph,
    inputs: &HashMap<String, HostTensor>,
    places: &[Place],
    w: &hbridge_graph::StateWrite,
) -> Result<()> {
    let exists = |id: TensorId| id.index() < graph.tensors.len();
    if !(exists(w.state) && exists(w.src) && exists(w.row)) {
        return Err(graph_err(
            "state write",
            "names a tensor that does not exist",
        ));
    }
    let (st, src) = (graph.tensor(w.state), graph.tensor(w.src));
    let label = st.label.as_str();
    if places[w.state.index()] != Place::State {
        return Err(graph_err(label, "a state write must target a state tensor"));
    }
    if places[w.src.index()] == Place::Unwritten || src.dtype != DataType::F32 {
        return Err(graph_err(
            label,
            format!("writes `{}`, which is not a written F32 tensor", src.label),
        ));
    }
    if st.shape.len() != 2 || src.shape.len() != 2 || st.shape[1] != src.shape[1] {
        return Err(graph_err(
            label,
            format!(
                "writes `{}` {:?} into {:?}: both must be [rows, C] with the same C",
                src.label, src.shape, st.shape
            ),
        ));
    }
    let (input, row) = i32_value(graph, inputs, w.row, label)?;
    let (rows, capacity) = (src.shape[0], st.shape[0]);
    if row < 0 || row as usize + rows > capacity {
        return Err(EngineError::StateRow {
            state: label.to_string(),
            input,
            row: row.into(),
            rows,
            capacity,
        });
    }
    Ok(())
}

/// Token ids are always caller inputs (activations are F32), so they are checked before any compute.
fn check_ids(
    graph: &Graph,
    inputs: &HashMap<String, HostTensor>,
    table: TensorId,
    ids: TensorId,
) -> Result<()> {
    let vocab = graph.tensor(table).shape[0];
    let values = match &graph.tensor(ids).source {
        Source::Input(name) => inputs.get(name).and_then(HostTensor::as_i32),
        _ => None,
    };
    if let Some(v) = values {
        if let Some((position, &id)) = v
            .iter()
            .enumerate()
            .find(|(_, &id)| id < 0 || id as usize >= vocab)
        {
            return Err(EngineError::TokenOutOfRange {
                tensor: graph.tensor(ids).label.clone(),
                position,
                id: id as i64,
                vocab,
            });
        }
    }
    Ok(())
}

//! The executor: validates, then runs a graph's nodes in order over one f32 arena laid out by the graph's
//! memory plan. The arena is kept between runs, so the diffusion loop (the same gen-step graph fifty times)
//! allocates it once.

use super::arena::ArenaSplit;
use super::dispatch::{self, Inputs};
use super::error::Result;
use super::ops::bf16::widen_into;
use super::tensor::HostTensor;
use super::validate::{resolve, Loc, View};
use super::weights::CpuWeights;
use hbridge_graph::plan::MemoryPlan;
use hbridge_graph::{Graph, Op, Source};
use std::collections::HashMap;

/// Runs graphs on the CPU, owning the activation arena across runs.
#[derive(Debug, Default)]
pub struct Executor {
    arena: Vec<f32>,
}

/// Runs `graph` once with a fresh arena. See [`Executor::run`].
pub fn execute(
    graph: &Graph,
    plan: &MemoryPlan,
    weights: &CpuWeights,
    inputs: &HashMap<String, HostTensor>,
) -> Result<HashMap<String, HostTensor>> {
    Executor::new().run(graph, plan, weights, inputs)
}

impl Executor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Current arena size in f32 values (grows to the largest plan seen, never shrinks).
    pub fn arena_len(&self) -> usize {
        self.arena.len()
    }

    /// Runs every node of `graph` and returns every graph output by name. Inputs are looked up by the
    /// graph's input names (extra entries are ignored). Nothing is computed unless every input, weight,
    /// token id and plan offset checks out.
    pub fn run(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CpuWeights,
        inputs: &HashMap<String, HostTensor>,
    ) -> Result<HashMap<String, HostTensor>> {
        self.run_with_states(graph, plan, weights, inputs, &mut HashMap::new())
    }

    /// [`run`](Self::run) for a graph with state tensors: they are read from `states` (by name, each
    /// F32 with the declared shape) and the graph's state writes update them in place after the last
    /// node. Nothing is computed or written unless everything, the write rows included, checks out.
    pub fn run_with_states(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CpuWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &mut HashMap<String, HostTensor>,
    ) -> Result<HashMap<String, HostTensor>> {
        let locs = resolve(graph, plan, weights, inputs, states)?;
        if self.arena.len() < plan.arena_len {
            self.arena.resize(plan.arena_len, 0.0);
        }
        for node in &graph.nodes {
            let out_len = graph.tensor(node.out).numel();
            let Loc::Arena(out_off) = locs[node.out.index()] else {
                unreachable!("validated: every node output is in the arena")
            };
            if let Op::Reshape { x, .. } = &node.op {
                self.reshape(locs[x.index()], out_off, out_len);
                continue;
            }
            let ins = node.op.inputs();
            let mut split = ArenaSplit::new(&mut self.arena, graph, &locs, &ins, out_off, out_len);
            let (out, items) = split.split(&ins, out_off, out_len);
            dispatch::run(graph, &node.op, node.out, &Inputs { items }, out)?;
        }
        let mut outputs = HashMap::with_capacity(graph.outputs.len());
        for (name, id) in &graph.outputs {
            let shape = graph.tensor(*id).shape.clone();
            let t = match locs[id.index()] {
                Loc::Arena(off) => HostTensor::f32(
                    shape,
                    self.arena[off..off + graph.tensor(*id).numel()].to_vec(),
                ),
                Loc::Host(View::F32(v)) => HostTensor::f32(shape, v.to_vec()),
                Loc::Host(View::I32(v)) => HostTensor::i32(shape, v.to_vec()),
                Loc::Host(View::Bf16(v)) => {
                    let mut f = vec![0.0; v.len()];
                    widen_into(v, &mut f);
                    HostTensor::f32(shape, f)
                }
                // Not produced: `resolve` gives a weight that is a graph output row-major.
                Loc::Host(View::Packed(p)) => HostTensor::f32(shape, p.to_f32_rows()),
                Loc::Unwritten => unreachable!("validated: every output is written"),
            };
            outputs.insert(name.clone(), t);
        }
        // Sources are copied out first: a state may be written from a state (or itself).
        let writes: Vec<(String, usize, Vec<f32>)> = graph
            .state_writes
            .iter()
            .map(|w| {
                let n = graph.tensor(w.src).numel();
                let values = match locs[w.src.index()] {
                    Loc::Arena(off) => self.arena[off..off + n].to_vec(),
                    Loc::Host(View::F32(v)) => v.to_vec(),
                    _ => unreachable!("validated: a state write reads a written F32 tensor"),
                };
                let Source::State(name) = &graph.tensor(w.state).source else {
                    unreachable!("validated: a state write targets a state")
                };
                let Loc::Host(View::I32(row)) = locs[w.row.index()] else {
                    unreachable!("validated: the row is an I32 input")
                };
                let start = row[0] as usize * graph.tensor(w.state).shape[1];
                (name.clone(), start, values)
            })
            .collect();
        drop(locs);
        for (name, start, values) in writes {
            let dst = states
                .get_mut(&name)
                .and_then(HostTensor::as_f32_mut)
                .expect("validated: the state exists as F32");
            dst[start..start + values.len()].copy_from_slice(&values);
        }
        Ok(outputs)
    }

    /// Same values, new shape: a move inside the arena (a no-op when the planner aliased the two), or a
    /// copy in from a weight or input.
    fn reshape(&mut self, src: Loc<'_>, out_off: usize, len: usize) {
        match src {
            Loc::Arena(off) => self.arena.copy_within(off..off + len, out_off),
            Loc::Host(View::F32(v)) => self.arena[out_off..out_off + len].copy_from_slice(v),
            Loc::Host(View::I32(_) | View::Bf16(_) | View::Packed(_)) | Loc::Unwritten => {
                unreachable!("validated: reshape reads a written F32 tensor")
            }
        }
    }
}

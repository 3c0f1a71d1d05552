//! The executor: validates, then runs a graph's nodes in order over one f32 arena laid out by the graph's
//! memory plan. The arena is kept between runs, so the diffusion loop (the same gen-step graph fifty times)
//! allocates it once.

use super::arena::{Arena, ArenaSplit};
use super::dispatch::{self, Inputs};
use super::error::Result;
use super::fused::{self, Step};
use super::ops::bf16::widen_into;
use super::tensor::HostTensor;
use super::validate::{resolve, Loc, View};
use super::weights::CpuWeights;
use crate::profile::NodeTimes;
use hbridge_graph::fusion::Kind;
use hbridge_graph::plan::MemoryPlan;
use hbridge_graph::{Graph, Op, Source};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn ms(d: Duration) -> f32 {
    d.as_secs_f32() * 1e3
}

/// Runs graphs on the CPU, owning the activation arena across runs.
#[derive(Debug, Default)]
pub struct Executor {
    arena: Arena,
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
        self.run_timed(graph, plan, weights, inputs, states, None)
    }

    /// [`run_with_states`](Self::run_with_states), timing each node's wall time (and the state writes)
    /// instead of returning the outputs: a per-node profile of one run, through the same dispatch. The
    /// states are updated as by a run.
    pub fn profile(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CpuWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &mut HashMap<String, HostTensor>,
    ) -> Result<NodeTimes> {
        let mut times = NodeTimes {
            per_node: Vec::with_capacity(graph.nodes.len()),
            state_writes_ms: 0.0,
            fused: Vec::new(),
        };
        self.run_timed(graph, plan, weights, inputs, states, Some(&mut times))?;
        Ok(times)
    }

    /// The run; with `times`, each node's wall time and the state writes' are recorded there.
    fn run_timed(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        weights: &CpuWeights,
        inputs: &HashMap<String, HostTensor>,
        states: &mut HashMap<String, HostTensor>,
        mut times: Option<&mut NodeTimes>,
    ) -> Result<HashMap<String, HostTensor>> {
        let locs = resolve(graph, plan, weights, inputs, states)?;
        self.arena.grow(plan.arena_len)?;
        // The clock is read only when profiling: a normal run does nothing extra per node.
        let now = |on: bool| on.then(Instant::now);
        let mut last = now(times.is_some());
        // The groups this backend runs as one pass (`fused`): the plan keeps every member's output
        // clear of what the group reads (`hbridge_graph::fusion`).
        let steps = fused::steps(graph, &locs);
        for (i, node) in graph.nodes.iter().enumerate() {
            let step = steps[i];
            let out_id = match step {
                Step::Group { len, .. } => graph.nodes[i + len - 1].out,
                _ => node.out,
            };
            let out_len = graph.tensor(out_id).numel();
            let Loc::Arena(out_off) = locs[out_id.index()] else {
                unreachable!("validated: every node output is in the arena")
            };
            if let Op::Reshape { x, .. } = &node.op {
                self.reshape(locs[x.index()], out_off, out_len);
            } else if !matches!(step, Step::Written { .. }) {
                let ins = match step {
                    Step::Group { len, .. } => fused::group_inputs(graph, i, len),
                    _ => node.op.inputs(),
                };
                let mut split =
                    ArenaSplit::new(&mut self.arena, graph, &locs, &ins, out_off, out_len);
                let (out, items) = split.split(&ins, out_off, out_len);
                let inputs = Inputs { items };
                match step {
                    Step::Group {
                        kind: Kind::GroupNormSilu,
                        ..
                    } => dispatch::group_norm(graph, &node.op, &inputs, true, out)?,
                    Step::Group {
                        kind: Kind::GateUpSwiGlu,
                        ..
                    } => dispatch::gate_up_swiglu(
                        graph,
                        &node.op,
                        &graph.nodes[i + 1].op,
                        &inputs,
                        out,
                    )?,
                    Step::Group {
                        kind: Kind::NormModulate | Kind::NormGate,
                        ..
                    } => dispatch::norm_then(&node.op, &graph.nodes[i + 1].op, &inputs, out)?,
                    _ => dispatch::run(graph, &node.op, node.out, &inputs, out)?,
                }
            }
            // A node its group wrote gets no time of its own in a profile, and its work counts
            // where `fused` says.
            if let (Some(t), Some(start)) = (times.as_deref_mut(), last) {
                let end = Instant::now();
                t.per_node.push((i, ms(end - start)));
                if step == (Step::Written { counts_work: false }) {
                    t.fused.push(i);
                }
                last = Some(end);
            }
        }
        // A profile returns no outputs: copying out a large one (a fresh allocation, page faults and
        // all) took longer than the op itself on the kernel benches (168 MB: 85 ms against 25 ms).
        let returned = if times.is_some() {
            &[][..]
        } else {
            &graph.outputs[..]
        };
        let mut outputs = HashMap::with_capacity(returned.len());
        for (name, id) in returned {
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
        let writes_start = now(times.is_some());
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
        let copied = writes_start.map(|s| s.elapsed());
        drop(locs);
        let apply_start = now(times.is_some());
        for (name, start, values) in writes {
            let dst = states
                .get_mut(&name)
                .and_then(HostTensor::as_f32_mut)
                .expect("validated: the state exists as F32");
            dst[start..start + values.len()].copy_from_slice(&values);
        }
        if let (Some(t), Some(copied), Some(apply)) = (times, copied, apply_start) {
            // Zero without state writes, so the kinds of `NodeTimes::by_kind` add up to the total.
            if !graph.state_writes.is_empty() {
                t.state_writes_ms = ms(copied + apply.elapsed());
            }
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

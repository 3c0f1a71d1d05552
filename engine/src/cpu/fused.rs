//! Which of the graph's fusion groups ([`hbridge_graph::fusion`]) this backend runs as one pass. The
//! memory plan already starts every member's output at the group's first node, so a group may run
//! as one pass or node by node; this picks, per run, from the op and the weights' form:
//! - a `GroupNorm` and its `Silu`: always (the apply pass writes the SiLU);
//! - a row norm and the `Modulate` or `GateResidual` that is its only reader: always (each row is
//!   finished while in L1; `ops::norm_fused`);
//! - a gate and an up `Linear` and their `SwiGlu`: where [`linear::gate_up_fusable`] (bf16 compute on
//!   AMX, packed weights, 32 rows or more), which then writes only the SwiGLU.

use super::ops::linear;
use super::validate::{Loc, View};
use hbridge_graph::fusion::{self, Kind};
use hbridge_graph::{Graph, Op, TensorId};

/// What the executor does at a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Runs the node alone.
    Alone,
    /// Runs the `len` nodes from this one as one pass, writing the last one's output.
    Group { kind: Kind, len: usize },
    /// Nothing: the group before wrote this node's output. `counts_work`: the node's work is in a
    /// node of its own kind (the up projection, after the gate's), so a profile counts it there;
    /// otherwise (the SwiGLU, the SiLU) the work counts as none.
    Written { counts_work: bool },
}

/// The step at every node of `graph`, its tensors at `locs`.
pub(super) fn steps(graph: &Graph, locs: &[Loc<'_>]) -> Vec<Step> {
    let mut steps = vec![Step::Alone; graph.nodes.len()];
    for (i, group) in fusion::groups(graph).into_iter().enumerate() {
        let Some(g) = group else { continue };
        let fused = match g.kind {
            Kind::GroupNormSilu | Kind::NormModulate | Kind::NormGate => true,
            Kind::GateUpSwiGlu => gate_up_fusable(graph, locs, i),
            _ => false,
        };
        if fused {
            steps[i] = Step::Group {
                kind: g.kind,
                len: g.len,
            };
            let kind = graph.nodes[i].op.name();
            for (step, node) in steps[i + 1..i + g.len]
                .iter_mut()
                .zip(&graph.nodes[i + 1..i + g.len])
            {
                *step = Step::Written {
                    counts_work: node.op.name() == kind,
                };
            }
        }
    }
    steps
}

/// The tensors the group of `len` nodes from `first` reads from outside it, each once.
pub(super) fn group_inputs(graph: &Graph, first: usize, len: usize) -> Vec<TensorId> {
    let members = &graph.nodes[first..first + len];
    let mut ins: Vec<TensorId> = Vec::new();
    for node in members {
        for id in node.op.inputs() {
            if !ins.contains(&id) && !members.iter().any(|m| m.out == id) {
                ins.push(id);
            }
        }
    }
    ins
}

fn gate_up_fusable(graph: &Graph, locs: &[Loc<'_>], i: usize) -> bool {
    let (Op::Linear { x, w: wg, .. }, Op::Linear { w: wu, .. }) =
        (&graph.nodes[i].op, &graph.nodes[i + 1].op)
    else {
        return false;
    };
    match (locs[wg.index()], locs[wu.index()]) {
        (Loc::Host(View::Packed(g)), Loc::Host(View::Packed(u))) => {
            linear::gate_up_fusable(graph.tensor(*x).shape[0], g, u)
        }
        _ => false,
    }
}

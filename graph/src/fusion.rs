//! Adjacent node pairs a backend may run as one kernel pass, and what that means for the memory plan.
//! The graph stays op by op (the CPU backend runs it as written); a backend that fuses pair (i, i+1)
//! writes node i+1's output while running node i. So [`crate::plan::live_ranges`] starts that output at
//! node i: it then never shares memory with anything node i reads for the last time, which a kernel
//! reading one row while another block writes could otherwise overwrite.
//!
//! The pairs (all of them row-wise, so one pass of a row norm kernel can do both):
//! - a row norm (`RmsNorm` / `LayerNorm`) whose only reader is the next node, a `Modulate` of it by a
//!   row of the norm's width (the DiT's `norm(x) * (1 + scale)`);
//! - an `RmsNorm` whose only reader is the next node, a `GateResidual` with it as the gated term (the
//!   DiT's `x + tanh(gate) * norm(y)`);
//! - an `Add` of two same-shape tensors followed by an `RmsNorm` of the sum (a residual stream: the sum
//!   stays readable, the backend writes it too).

use crate::{Graph, Op};

/// How node i and node i+1 may run as one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    /// Norm, then `Modulate` of it.
    NormModulate,
    /// `RmsNorm`, then `GateResidual` with it as the gated term.
    NormGate,
    /// `Add`, then `RmsNorm` of the sum.
    AddNorm,
}

/// For every node i, the pair (i, i+1) it starts, if any. Pairs never overlap: a node is in at most one.
pub fn pairs(graph: &Graph) -> Vec<Option<Pair>> {
    let mut readers = vec![0usize; graph.tensors.len()];
    for node in &graph.nodes {
        for id in node.op.inputs() {
            readers[id.index()] += 1;
        }
    }
    for (_, id) in &graph.outputs {
        readers[id.index()] += 1;
    }
    for w in &graph.state_writes {
        readers[w.src.index()] += 1;
    }
    let numel = |id| graph.tensor(id).numel();
    let mut out = vec![None; graph.nodes.len()];
    let mut i = 0;
    while i + 1 < graph.nodes.len() {
        let (node, next) = (&graph.nodes[i], &graph.nodes[i + 1]);
        let y = node.out;
        let pair = match (&node.op, &next.op) {
            (Op::Add { a, b }, Op::RmsNorm { x, dim, .. })
                if *x == y && numel(*a) == numel(*b) && *dim > 0 && numel(y) % dim == 0 =>
            {
                Some(Pair::AddNorm)
            }
            (Op::RmsNorm { dim, .. } | Op::LayerNorm { dim, .. }, Op::Modulate { x, scale })
                if readers[y.index()] == 1 && *x == y && *scale != y && numel(*scale) == *dim =>
            {
                Some(Pair::NormModulate)
            }
            (Op::RmsNorm { dim, .. }, Op::GateResidual { x, gate, y: gy })
                if readers[y.index()] == 1 && *gy == y && *x != y && numel(*gate) == *dim =>
            {
                Some(Pair::NormGate)
            }
            _ => None,
        };
        out[i] = pair;
        i += if pair.is_some() { 2 } else { 1 };
    }
    out
}

//! Runs of adjacent nodes a backend may run as one kernel pass, and what that means for the memory
//! plan. The graph stays op by op (the CPU backend runs it as written); a backend that fuses the group
//! starting at node i writes every member's output while running node i. So
//! [`crate::plan::live_ranges`] starts those outputs at node i: they then never share memory with
//! anything a member reads for the last time, which a kernel reading one row while another block
//! writes could otherwise overwrite.
//!
//! The groups:
//! - a row norm (`RmsNorm` / `LayerNorm`) whose only reader is the next node, a `Modulate` of it by a
//!   row of the norm's width (the DiT's `norm(x) * (1 + scale)`);
//! - an `RmsNorm` whose only reader is the next node, a `GateResidual` with it as the gated term (the
//!   DiT's `x + tanh(gate) * norm(y)`);
//! - an `Add` of two same-shape tensors followed by an `RmsNorm` of the sum (a residual stream: the sum
//!   stays readable, the backend writes it too);
//! - two or three `Linear`s of the same input in a row (q, k and v; a backend can stream their weights
//!   in one launch when the input is a few rows);
//! - `Linear`s of the same input, the gate and the up projection, whose only reader is the `SwiGlu`
//!   right after them (one pass can write `silu(gate) * up` without either);
//! - a `GroupNorm` whose only reader is the next node, a `Silu` of it (the VAE's `silu(norm(x))`
//!   before most of its convolutions: the apply pass can write the activation directly).

use crate::{Graph, Op};

/// What a group computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Norm, then `Modulate` of it.
    NormModulate,
    /// `RmsNorm`, then `GateResidual` with it as the gated term.
    NormGate,
    /// `Add`, then `RmsNorm` of the sum.
    AddNorm,
    /// `Linear`s of one input (their count is the group's length).
    LinearSiblings,
    /// `Linear` (gate) and `Linear` (up) of one input, then `SwiGlu { gate, up }`.
    GateUpSwiGlu,
    /// `GroupNorm`, then `Silu` of it.
    GroupNormSilu,
}

/// A group of `len` nodes starting at the node it is listed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub kind: Kind,
    pub len: usize,
}

/// Most `Linear`s in a [`Kind::LinearSiblings`] group.
pub const MAX_SIBLINGS: usize = 3;

/// For every node, the group it starts, if any. Groups never overlap: a node is in at most one.
pub fn groups(graph: &Graph) -> Vec<Option<Group>> {
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
    let linear_x = |i: usize| match graph.nodes.get(i).map(|n| &n.op) {
        Some(Op::Linear { x, .. }) => Some(*x),
        _ => None,
    };
    let n = graph.nodes.len();
    let mut out = vec![None; n];
    let mut i = 0;
    while i + 1 < n {
        let (node, next) = (&graph.nodes[i], &graph.nodes[i + 1]);
        let y = node.out;
        let group = match (&node.op, &next.op) {
            (Op::Add { a, b }, Op::RmsNorm { x, dim, .. })
                if *x == y && numel(*a) == numel(*b) && *dim > 0 && numel(y) % dim == 0 =>
            {
                Some((Kind::AddNorm, 2))
            }
            (Op::RmsNorm { dim, .. } | Op::LayerNorm { dim, .. }, Op::Modulate { x, scale })
                if readers[y.index()] == 1 && *x == y && *scale != y && numel(*scale) == *dim =>
            {
                Some((Kind::NormModulate, 2))
            }
            (Op::RmsNorm { dim, .. }, Op::GateResidual { x, gate, y: gy })
                if readers[y.index()] == 1 && *gy == y && *x != y && numel(*gate) == *dim =>
            {
                Some((Kind::NormGate, 2))
            }
            (Op::GroupNorm { .. }, Op::Silu { x }) if readers[y.index()] == 1 && *x == y => {
                Some((Kind::GroupNormSilu, 2))
            }
            (Op::Linear { x, .. }, Op::Linear { x: x2, .. }) if x == x2 => {
                let (gate, up) = (y, next.out);
                let swiglu = matches!(
                    graph.nodes.get(i + 2).map(|n| &n.op),
                    Some(Op::SwiGlu { gate: g, up: u }) if *g == gate && *u == up
                );
                if swiglu && readers[gate.index()] == 1 && readers[up.index()] == 1 {
                    Some((Kind::GateUpSwiGlu, 3))
                } else {
                    let len = (1..MAX_SIBLINGS)
                        .take_while(|k| linear_x(i + k) == Some(*x))
                        .count()
                        + 1;
                    Some((Kind::LinearSiblings, len))
                }
            }
            _ => None,
        };
        match group {
            Some((kind, len)) => {
                out[i] = Some(Group { kind, len });
                i += len;
            }
            None => i += 1,
        }
    }
    out
}

/// For every node, the index of the node its output is written at: its own, or the first node of
/// the group it belongs to.
pub fn written_at(graph: &Graph) -> Vec<usize> {
    let mut at: Vec<usize> = (0..graph.nodes.len()).collect();
    for (i, g) in groups(graph).into_iter().enumerate() {
        if let Some(g) = g {
            for w in &mut at[i..i + g.len] {
                *w = i;
            }
        }
    }
    at
}

//! Work of each node of a graph, so a per-node time profile can say which op kinds run near their
//! ceiling: the node's FLOPs (the formulas of [`cost`](crate::cost::cost)), the bytes it reads and
//! writes, and its op kind. Summed over the nodes, the FLOPs and `new_weight_bytes` are the graph's
//! [`Cost`] exactly.

use crate::cost::{node_flops, Cost};
use crate::{DataType, Graph, Node, Op, Source, TensorId};

/// What one node does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeCost {
    /// The op's short stable name ([`Op::name`]): `linear`, `attention`, `rmsnorm`, `rope`, ...
    pub kind: &'static str,
    /// The node's FLOPs; `weight_bytes` holds the weights this node is the first to read (each weight
    /// counted once in the graph, at its first reader), so the nodes' sum is the graph's `cost`.
    pub work: Cost,
    /// Bytes the node reads and writes, counting every input it reads (weights included, even ones an
    /// earlier node read) and its output: activations, inputs and states at the activation element size,
    /// I32 tensors at 4, weights at the weight element size. Ops that read part of an input (slices,
    /// gathers, an embedding lookup) count only that part; attention counts every row of a K/V segment,
    /// also the ones a length input masks; a convolution's im2col scratch is not counted.
    pub bytes: f64,
}

impl NodeCost {
    /// Whether the node's work is counted in FLOPs (GEMMs, attention, convolutions) rather than bytes.
    pub fn is_compute(&self) -> bool {
        self.work.flops() > 0.0
    }
}

/// Bytes per element of tensor `id` under the given element sizes.
fn elem_bytes(graph: &Graph, id: TensorId, act: usize, weight: usize) -> usize {
    let t = graph.tensor(id);
    match (&t.source, t.dtype) {
        (_, DataType::I32) => 4,
        (Source::Weight { .. }, DataType::F32) => weight,
        (_, DataType::F32) => act,
    }
}

/// Elements of each input the op actually reads, in `Op::inputs` order.
fn read_elems(graph: &Graph, node: &Node) -> Vec<(TensorId, usize)> {
    let out = graph.tensor(node.out).numel();
    let numel = |id: TensorId| graph.tensor(id).numel();
    match &node.op {
        // One table row per id.
        Op::Embed { table, ids } => vec![(*table, out), (*ids, numel(*ids))],
        // The picked part only.
        Op::SliceCols { x, .. } | Op::SliceRows { x, .. } | Op::GatherRows { x, .. } => {
            vec![(*x, out)]
        }
        op => op.inputs().into_iter().map(|id| (id, numel(id))).collect(),
    }
}

/// The cost of `graph`'s node `index`, activations at `act_elem_bytes` per element (2 for bf16 on CUDA,
/// 4 for f32 on the CPU), weights at `weight_elem_bytes`. `seen` marks the weights an earlier node read
/// (indexed by tensor id, updated here).
fn node_cost(
    graph: &Graph,
    node: &Node,
    act_elem_bytes: usize,
    weight_elem_bytes: usize,
    seen: &mut [bool],
) -> NodeCost {
    let mut work = node_flops(graph, node);
    for id in node.op.inputs() {
        let t = graph.tensor(id);
        if matches!(t.source, Source::Weight { .. })
            && !std::mem::replace(&mut seen[id.index()], true)
        {
            work.weight_bytes += (t.numel() * weight_elem_bytes) as f64;
        }
    }
    let size = |id| elem_bytes(graph, id, act_elem_bytes, weight_elem_bytes);
    let read: usize = read_elems(graph, node)
        .into_iter()
        .map(|(id, n)| n * size(id))
        .sum();
    let written = graph.tensor(node.out).numel() * size(node.out);
    NodeCost {
        kind: node.op.name(),
        work,
        bytes: (read + written) as f64,
    }
}

/// Every node's cost, in node order (see [`NodeCost`] for the element sizes).
pub fn node_costs(graph: &Graph, act_elem_bytes: usize, weight_elem_bytes: usize) -> Vec<NodeCost> {
    let mut seen = vec![false; graph.tensors.len()];
    graph
        .nodes
        .iter()
        .map(|n| node_cost(graph, n, act_elem_bytes, weight_elem_bytes, &mut seen))
        .collect()
}

/// Bytes the graph's state writes move after the last node: each source read and written into its
/// state (activation element size), plus its I32 row.
pub fn state_write_bytes(graph: &Graph, act_elem_bytes: usize) -> f64 {
    graph
        .state_writes
        .iter()
        .map(|w| (2 * graph.tensor(w.src).numel() * act_elem_bytes + 4) as f64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbridge_loader::Part;

    /// A weight read by two nodes counts once in the work (at its first reader) but in both nodes'
    /// bytes; a slice reads only what it keeps.
    #[test]
    fn shared_weight_counts_once_and_slices_read_their_part() {
        let mut g = Graph::default();
        let x = g.input("x", &[3, 4], DataType::F32);
        let w = g.weight(Part::Gen, "w", &[5, 4]);
        let a = g.push(Op::Linear { x, w, bias: None }, "a").unwrap();
        let b = g.push(Op::Linear { x, w, bias: None }, "b").unwrap();
        let s = g
            .push(
                Op::SliceCols {
                    x: a,
                    start: 1,
                    len: 2,
                },
                "s",
            )
            .unwrap();
        g.mark_output("b", b);
        g.mark_output("s", s);
        let c = node_costs(&g, 2, 2);
        assert_eq!(c[0].work.weight_bytes, 40.0);
        assert_eq!(c[1].work.weight_bytes, 0.0);
        assert_eq!(c[1].work.linear_flops, 2.0 * 3.0 * 4.0 * 5.0);
        // x 12 + w 20 elements read, 15 written, all at 2 bytes.
        assert_eq!(c[1].bytes, 2.0 * (12 + 20 + 15) as f64);
        // 3 x 2 read and written.
        assert_eq!(c[2].bytes, 2.0 * 12.0);
        assert_eq!(c[2].kind, "slice_cols");
        assert!(c[0].is_compute() && !c[2].is_compute());
        let total: Cost = c.iter().map(|n| n.work).sum();
        assert_eq!(total, crate::cost::cost(&g, 2));
    }
}

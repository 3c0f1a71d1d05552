//! Work of a graph: the FLOPs of its GEMMs and attention and the bytes of its weights, so a benchmark can
//! state achieved TFLOP/s and GB/s and the floor of a workload from the same graph it runs.
//! [`node_costs`](crate::node_cost::node_costs) splits the same count over the nodes.

use crate::{Graph, Node, Op};

/// The arithmetic and weight traffic of one run of a graph.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    /// `2 * N * in * out` per `Linear`; `2 * Cout * Hout * Wout * Cin * k * k` per `Conv2d`.
    pub linear_flops: f64,
    /// `4 * Nq * Nk * heads * head_dim` per attention (QK^T and PV), halved where a causal mask covers a
    /// square; block attention sums its blocks.
    pub attention_flops: f64,
    /// Every weight the graph reads, once, at `weight_elem_bytes` per element.
    pub weight_bytes: f64,
}

impl Cost {
    pub fn flops(&self) -> f64 {
        self.linear_flops + self.attention_flops
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.linear_flops += o.linear_flops;
        self.attention_flops += o.attention_flops;
        self.weight_bytes += o.weight_bytes;
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::default(), |mut a, c| {
            a += c;
            a
        })
    }
}

/// The FLOPs of one node (`weight_bytes` left at 0: a weight may be read by several nodes, and the graph
/// counts it once).
pub(crate) fn node_flops(graph: &Graph, node: &Node) -> Cost {
    let mut c = Cost::default();
    let shape = |id| &graph.tensor(id).shape;
    match &node.op {
        Op::Linear { x, w, .. } => {
            let rows: usize = shape(*x).iter().rev().skip(1).product();
            let (out, inp) = (shape(*w)[0], shape(*w)[1]);
            c.linear_flops = 2.0 * rows as f64 * inp as f64 * out as f64;
        }
        Op::Attention {
            q,
            segments,
            heads,
            head_dim,
            causal,
            ..
        } => {
            let nq = shape(*q)[0] as f64;
            let nk: usize = segments.iter().map(|s| shape(s.k)[0]).sum();
            let full = 4.0 * nq * nk as f64 * (*heads * *head_dim) as f64;
            // Query i sees keys up to i + (Nk - Nq): about Nq * (Nk - Nq / 2) pairs.
            c.attention_flops = if *causal {
                full * (nk as f64 - nq / 2.0) / nk.max(1) as f64
            } else {
                full
            };
        }
        Op::BlockAttention {
            heads,
            head_dim,
            blocks,
            ..
        } => {
            let pairs: f64 = blocks.iter().map(|&b| (b * b) as f64).sum();
            c.attention_flops = 4.0 * pairs * (*heads * *head_dim) as f64;
        }
        Op::Conv2d { w, .. } => {
            let o = shape(node.out);
            let (cout, k_elems): (usize, usize) = (shape(*w)[0], shape(*w)[1..].iter().product());
            let pixels: usize = o[1..].iter().product();
            c.linear_flops = 2.0 * (cout * pixels) as f64 * k_elems as f64;
        }
        _ => {}
    }
    c
}

/// The cost of `graph` with weights stored at `weight_elem_bytes` per element (2 for bf16).
pub fn cost(graph: &Graph, weight_elem_bytes: usize) -> Cost {
    let mut c: Cost = graph.nodes.iter().map(|n| node_flops(graph, n)).sum();
    c.weight_bytes = graph
        .weights()
        .map(|(id, _, _)| (graph.tensor(id).numel() * weight_elem_bytes) as f64)
        .sum();
    c
}

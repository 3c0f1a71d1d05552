//! A per-node time profile of one run of a graph, the same on every backend (the CPU's wall time per
//! node, CUDA's event time per node), and its totals by op kind with the work the graph says each kind
//! did, so a step's time can be ranked by op kind in one call instead of under an external profiler.

use hbridge_graph::node_cost::{node_costs, state_write_bytes, NodeCost};
use hbridge_graph::{Graph, Op};

/// Op kind name of the graph's state writes in [`NodeTimes::by_kind`] (they run after every node).
pub const STATE_WRITE_KIND: &str = "state_write";

/// Time of each node of one run, in execution order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeTimes {
    /// `(node index, milliseconds)`, one entry per node of the graph, in node order.
    pub per_node: Vec<(usize, f32)>,
    /// The graph's state writes, applied after the last node, in milliseconds (0 when the graph has
    /// none).
    pub state_writes_ms: f32,
    /// Nodes another node computed in the same pass whose work counts as none (the CPU's SiLU after
    /// a GroupNorm, its SwiGLU after the gate and up projections): their entry's time is only the
    /// loop's, and their work is in the other node's time. (A member of the group's first node's
    /// kind, the up projection, is not listed: its work counts toward the kind whose time holds it.)
    pub fused: Vec<usize>,
}

/// One op kind's share of a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct KindTime {
    /// [`hbridge_graph::Op::name`], or [`STATE_WRITE_KIND`].
    pub kind: &'static str,
    /// Nodes of this kind (1 for the state writes).
    pub nodes: usize,
    pub ms: f64,
    /// FLOPs of these nodes (0 for memory-bound kinds).
    pub flops: f64,
    /// Bytes these nodes read and wrote (see `hbridge_graph::node_cost::NodeCost::bytes`).
    pub bytes: f64,
}

/// The compute nodes of one shape: a GEMM's `M x N x K`, an attention's queries, keys, heads and head
/// dim. Where a kind's rate is low, this says which shapes of it are.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeTime {
    /// The shape, e.g. `4112x2520x10240` (M x N x K) or `4112q 512+4112k 28h d128`.
    pub shape: String,
    /// The totals of this shape's nodes (their kind: `linear` or `attention`).
    pub time: KindTime,
}

/// The shape key of a compute node, `None` for the other ops.
fn shape_key(graph: &Graph, op: &Op) -> Option<String> {
    match op {
        Op::Linear { x, w, .. } => {
            let ws = &graph.tensor(*w).shape;
            let (n, k) = (ws[0], ws[1]);
            Some(format!("{}x{n}x{k}", graph.tensor(*x).numel() / k.max(1)))
        }
        Op::Attention {
            q,
            segments,
            heads,
            head_dim,
            causal,
            ..
        } => {
            let nq = graph.tensor(*q).numel() / (heads * head_dim).max(1);
            let keys: Vec<String> = segments
                .iter()
                .map(|s| graph.tensor(s.k).shape[0].to_string())
                .collect();
            Some(format!(
                "{nq}q {}k {heads}h d{head_dim}{}",
                keys.join("+"),
                if *causal { " causal" } else { "" }
            ))
        }
        Op::Conv2d { x, w, stride, .. } => {
            let (xs, ws) = (&graph.tensor(*x).shape, &graph.tensor(*w).shape);
            Some(format!(
                "{}->{} k{} s{stride} at {}x{}",
                ws.get(1)?,
                ws.first()?,
                ws.get(2)?,
                xs.get(1)?,
                xs.get(2)?
            ))
        }
        _ => None,
    }
}

impl KindTime {
    /// Whether the kind's work is counted in FLOPs (GEMMs, attention, convolutions).
    pub fn is_compute(&self) -> bool {
        self.flops > 0.0
    }

    /// FLOP/s achieved (0 when no time was measured).
    pub fn flops_per_s(&self) -> f64 {
        rate(self.flops, self.ms)
    }

    /// Bytes per second moved (read + written).
    pub fn bytes_per_s(&self) -> f64 {
        rate(self.bytes, self.ms)
    }
}

fn rate(work: f64, ms: f64) -> f64 {
    if ms > 0.0 {
        work / (ms * 1e-3)
    } else {
        0.0
    }
}

impl NodeTimes {
    /// Per-node times from `n + 2` monotone timestamps in milliseconds: before node 0, after each of the
    /// `n` nodes, and after the state writes.
    pub(crate) fn from_marks(marks: &[f64]) -> NodeTimes {
        let span = |i: usize| (marks[i + 1] - marks[i]).max(0.0) as f32;
        let n = marks.len().saturating_sub(2);
        NodeTimes {
            per_node: (0..n).map(|i| (i, span(i))).collect(),
            state_writes_ms: if marks.len() >= 2 { span(n) } else { 0.0 },
            fused: Vec::new(),
        }
    }

    /// Every node and the state writes, in milliseconds.
    pub fn total_ms(&self) -> f64 {
        self.per_node.iter().map(|&(_, t)| t as f64).sum::<f64>() + self.state_writes_ms as f64
    }

    /// Totals of the compute nodes (GEMMs, attention, convolutions) by shape, slowest first; work counted as in
    /// [`NodeTimes::by_kind`].
    pub fn by_shape(
        &self,
        graph: &Graph,
        act_elem_bytes: usize,
        weight_elem_bytes: usize,
    ) -> Vec<ShapeTime> {
        let costs = node_costs(graph, act_elem_bytes, weight_elem_bytes);
        let mut shapes: Vec<ShapeTime> = self
            .group(&costs, |i, c| {
                let key = shape_key(graph, &graph.nodes.get(i)?.op)?;
                Some((c.kind, key))
            })
            .into_iter()
            .map(|((_, shape), time)| ShapeTime { shape, time })
            .collect();
        shapes.sort_by(|a, b| b.time.ms.total_cmp(&a.time.ms));
        shapes
    }

    /// The nodes summed per group, in the order groups first appear; `key` names a node's group (`None`:
    /// left out).
    fn group<K: PartialEq>(
        &self,
        costs: &[NodeCost],
        key: impl Fn(usize, &NodeCost) -> Option<K>,
    ) -> Vec<(K, KindTime)> {
        let mut groups: Vec<(K, KindTime)> = Vec::new();
        for &(i, ms) in &self.per_node {
            let Some(c) = costs.get(i) else { continue };
            let Some(k) = key(i, c) else { continue };
            let at = match groups.iter().position(|(g, _)| *g == k) {
                Some(at) => at,
                None => {
                    groups.push((
                        k,
                        KindTime {
                            kind: c.kind,
                            nodes: 0,
                            ms: 0.0,
                            flops: 0.0,
                            bytes: 0.0,
                        },
                    ));
                    groups.len() - 1
                }
            };
            let g = &mut groups[at].1;
            g.nodes += 1;
            g.ms += ms as f64;
            if !self.fused.contains(&i) {
                g.flops += c.work.flops();
                g.bytes += c.bytes;
            }
        }
        groups
    }

    /// Totals by op kind of the `graph` this profile ran, slowest first, with the state writes as kind
    /// [`STATE_WRITE_KIND`] when the graph has any. Work is counted with activations at
    /// `act_elem_bytes` per element and weights at `weight_elem_bytes` (the backend's storage).
    pub fn by_kind(
        &self,
        graph: &Graph,
        act_elem_bytes: usize,
        weight_elem_bytes: usize,
    ) -> Vec<KindTime> {
        let costs = node_costs(graph, act_elem_bytes, weight_elem_bytes);
        let mut kinds: Vec<KindTime> = self
            .group(&costs, |_, c| Some(c.kind))
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        if !graph.state_writes.is_empty() {
            kinds.push(KindTime {
                kind: STATE_WRITE_KIND,
                nodes: 1,
                ms: self.state_writes_ms as f64,
                flops: 0.0,
                bytes: state_write_bytes(graph, act_elem_bytes),
            });
        }
        kinds.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        kinds
    }

    /// The `n` slowest nodes, slowest first: `(node index, milliseconds)`.
    pub fn slowest(&self, n: usize) -> Vec<(usize, f32)> {
        let mut v = self.per_node.clone();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_become_spans_and_the_slowest_come_first() {
        let t = NodeTimes::from_marks(&[1.0, 1.5, 4.0, 4.25, 5.0]);
        assert_eq!(t.per_node, vec![(0, 0.5), (1, 2.5), (2, 0.25)]);
        assert_eq!(t.state_writes_ms, 0.75);
        assert_eq!(t.total_ms(), 4.0);
        assert_eq!(t.slowest(2), vec![(1, 2.5), (0, 0.5)]);
        assert_eq!(NodeTimes::from_marks(&[]), NodeTimes::default());
    }

    /// A node another node computed keeps its time and its kind's node count, but adds no work: no
    /// rate is derived from the loop's few instructions.
    #[test]
    fn fused_nodes_count_no_work() {
        use hbridge_graph::DataType;
        let mut g = Graph::default();
        let x = g.input("x", &[64, 64], DataType::F32);
        let a = g.push(Op::Silu { x }, "a").unwrap();
        let b = g.push(Op::Silu { x: a }, "b").unwrap();
        g.mark_output("b", b);
        let mut t = NodeTimes::from_marks(&[0.0, 1.0, 1.001, 1.001]);
        let whole = t.by_kind(&g, 4, 4);
        t.fused.push(1);
        let fused = t.by_kind(&g, 4, 4);
        assert_eq!((whole[0].nodes, fused[0].nodes), (2, 2));
        assert_eq!(whole[0].ms, fused[0].ms);
        assert!(whole[0].bytes > 0.0);
        assert_eq!(fused[0].bytes, whole[0].bytes / 2.0);
    }

    /// Linears group by M x N x K and attentions by their shape; other ops are left out; the work adds up.
    #[test]
    fn compute_nodes_group_by_shape() {
        use hbridge_graph::{DataType, KvSegment};
        use hbridge_loader::Part;
        let mut g = Graph::default();
        let x = g.input("x", &[6, 8], DataType::F32);
        let w1 = g.weight(Part::Gen, "w1", &[16, 8]);
        let w2 = g.weight(Part::Gen, "w2", &[16, 8]);
        let a = g
            .push(
                Op::Linear {
                    x,
                    w: w1,
                    bias: None,
                },
                "a",
            )
            .unwrap();
        let b = g
            .push(
                Op::Linear {
                    x,
                    w: w2,
                    bias: None,
                },
                "b",
            )
            .unwrap();
        let s = g.push(Op::Silu { x: a }, "s").unwrap();
        let q = g.push(Op::Add { a: s, b }, "q").unwrap();
        let att = g
            .push(
                Op::Attention {
                    q,
                    segments: vec![KvSegment::new(a, b)],
                    heads: 2,
                    kv_heads: 2,
                    head_dim: 8,
                    causal: true,
                    scale: 0.35,
                },
                "att",
            )
            .unwrap();
        g.mark_output("att", att);
        let t = NodeTimes {
            per_node: vec![(0, 1.0), (1, 2.0), (2, 0.5), (3, 0.5), (4, 4.0)],
            state_writes_ms: 0.0,
            fused: Vec::new(),
        };
        let shapes = t.by_shape(&g, 2, 2);
        assert_eq!(shapes.len(), 2);
        assert_eq!(
            (shapes[0].time.kind, shapes[0].shape.as_str()),
            ("attention", "6q 6k 2h d8 causal")
        );
        assert_eq!(
            (
                shapes[1].time.kind,
                shapes[1].shape.as_str(),
                shapes[1].time.nodes
            ),
            ("linear", "6x16x8", 2)
        );
        assert_eq!(shapes[1].time.ms, 3.0);
        assert_eq!(shapes[1].time.flops, 2.0 * 2.0 * 6.0 * 16.0 * 8.0);
        let kinds = t.by_kind(&g, 2, 2);
        let linear = kinds.iter().find(|k| k.kind == "linear").unwrap();
        assert_eq!(linear, &shapes[1].time);
    }
}

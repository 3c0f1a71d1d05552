//! Dead-work removal: only the nodes the graph's outputs (transitively) depend on survive, and only the
//! tensors a surviving node or an output still references (weights and inputs included). An image-only
//! und prefill thereby loses every layer after the last bridged one and the lm_head.

use crate::op::{KvSegment, Op};
use crate::{Graph, Node, Source, StateWrite, TensorId};

/// What `prune_with_stats` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStats {
    pub nodes_removed: usize,
    pub weights_removed: usize,
    pub inputs_removed: usize,
}

/// `graph` without the work its outputs do not need. Node order is preserved; tensor ids are renumbered
/// densely in their original order (node ops and outputs rewritten to match).
pub fn prune(graph: Graph) -> Graph {
    prune_with_stats(graph).0
}

/// `prune`, also saying how much it removed.
pub fn prune_with_stats(graph: Graph) -> (Graph, PruneStats) {
    let Graph {
        tensors,
        nodes,
        outputs,
        state_writes,
    } = graph;
    let n_tensors = tensors.len();

    // The node writing each tensor, then a walk back from the outputs.
    let mut producer = vec![None; n_tensors];
    for (i, node) in nodes.iter().enumerate() {
        producer[node.out.index()] = Some(i);
    }
    let mut needed = vec![false; n_tensors];
    let mut keep_node = vec![false; nodes.len()];
    // State writes are roots like outputs: they are what a decode step is run for.
    let mut stack: Vec<TensorId> = outputs
        .iter()
        .map(|(_, id)| *id)
        .chain(state_writes.iter().flat_map(|w| [w.state, w.src, w.row]))
        .collect();
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut needed[id.index()], true) {
            continue;
        }
        if let Some(n) = producer[id.index()] {
            keep_node[n] = true;
            stack.extend(
                nodes[n]
                    .op
                    .inputs()
                    .into_iter()
                    .filter(|i| !needed[i.index()]),
            );
        }
    }

    // Dense renumbering of the surviving tensors, in their original order.
    let mut new_id = vec![None; n_tensors];
    let mut kept = Vec::with_capacity(n_tensors);
    let mut stats = PruneStats::default();
    for (i, desc) in tensors.into_iter().enumerate() {
        if needed[i] {
            new_id[i] = Some(TensorId(kept.len() as u32));
            kept.push(desc);
        } else {
            match desc.source {
                Source::Weight { .. } => stats.weights_removed += 1,
                Source::Input(_) => stats.inputs_removed += 1,
                Source::State(_) | Source::Activation => {}
            }
        }
    }
    let remap = |id: TensorId| new_id[id.index()].expect("a needed node reads only needed tensors");

    let n_nodes = nodes.len();
    let nodes: Vec<Node> = nodes
        .into_iter()
        .zip(&keep_node)
        .filter(|(_, &k)| k)
        .map(|(node, _)| Node {
            op: map_ids(&node.op, remap),
            out: remap(node.out),
        })
        .collect();
    stats.nodes_removed = n_nodes - nodes.len();
    let outputs = outputs
        .into_iter()
        .map(|(name, id)| (name, remap(id)))
        .collect();
    let state_writes = state_writes
        .into_iter()
        .map(|w| StateWrite {
            state: remap(w.state),
            src: remap(w.src),
            row: remap(w.row),
        })
        .collect();
    (
        Graph {
            tensors: kept,
            nodes,
            outputs,
            state_writes,
        },
        stats,
    )
}

/// `op` with every tensor id it reads replaced by `f(id)`; everything else unchanged. The match is
/// exhaustive on purpose (no `_` arm): a new op variant does not compile until it is handled here.
pub fn map_ids(op: &Op, f: impl Fn(TensorId) -> TensorId) -> Op {
    let f = &f;
    let opt = |id: &Option<TensorId>| id.map(f);
    match op {
        Op::Embed { table, ids } => Op::Embed {
            table: f(*table),
            ids: f(*ids),
        },
        Op::RmsNorm {
            x,
            weight,
            dim,
            eps,
        } => Op::RmsNorm {
            x: f(*x),
            weight: opt(weight),
            dim: *dim,
            eps: *eps,
        },
        Op::LayerNorm { x, dim, eps } => Op::LayerNorm {
            x: f(*x),
            dim: *dim,
            eps: *eps,
        },
        Op::Linear { x, w, bias } => Op::Linear {
            x: f(*x),
            w: f(*w),
            bias: opt(bias),
        },
        Op::Add { a, b } => Op::Add { a: f(*a), b: f(*b) },
        Op::Modulate { x, scale } => Op::Modulate {
            x: f(*x),
            scale: f(*scale),
        },
        Op::GateResidual { x, gate, y } => Op::GateResidual {
            x: f(*x),
            gate: f(*gate),
            y: f(*y),
        },
        Op::Affine { x, scale, shift } => Op::Affine {
            x: f(*x),
            scale: *scale,
            shift: *shift,
        },
        Op::Silu { x } => Op::Silu { x: f(*x) },
        Op::Gelu { x } => Op::Gelu { x: f(*x) },
        Op::SwiGlu { gate, up } => Op::SwiGlu {
            gate: f(*gate),
            up: f(*up),
        },
        Op::Rope {
            x,
            positions,
            heads,
            head_dim,
            kind,
        } => Op::Rope {
            x: f(*x),
            positions: f(*positions),
            heads: *heads,
            head_dim: *head_dim,
            kind: kind.clone(),
        },
        Op::Attention {
            q,
            segments,
            heads,
            kv_heads,
            head_dim,
            causal,
            scale,
        } => Op::Attention {
            q: f(*q),
            segments: segments
                .iter()
                .map(|s| KvSegment {
                    k: f(s.k),
                    v: f(s.v),
                    len: opt(&s.len),
                })
                .collect(),
            heads: *heads,
            kv_heads: *kv_heads,
            head_dim: *head_dim,
            causal: *causal,
            scale: *scale,
        },
        Op::SliceCols { x, start, len } => Op::SliceCols {
            x: f(*x),
            start: *start,
            len: *len,
        },
        Op::SliceRows { x, start, len } => Op::SliceRows {
            x: f(*x),
            start: *start,
            len: *len,
        },
        Op::ConcatRows { parts } => Op::ConcatRows {
            parts: parts.iter().map(|p| f(*p)).collect(),
        },
        Op::Patchify { x, patch } => Op::Patchify {
            x: f(*x),
            patch: *patch,
        },
        Op::Unpatchify {
            x,
            patch,
            channels,
            height,
            width,
        } => Op::Unpatchify {
            x: f(*x),
            patch: *patch,
            channels: *channels,
            height: *height,
            width: *width,
        },
        Op::TimestepFeatures { t, half, scale } => Op::TimestepFeatures {
            t: f(*t),
            half: *half,
            scale: *scale,
        },
        Op::Conv2d {
            x,
            w,
            bias,
            stride,
            pad,
            pad_bottom_right_only,
        } => Op::Conv2d {
            x: f(*x),
            w: f(*w),
            bias: opt(bias),
            stride: *stride,
            pad: *pad,
            pad_bottom_right_only: *pad_bottom_right_only,
        },
        Op::GroupNorm {
            x,
            weight,
            bias,
            groups,
            eps,
        } => Op::GroupNorm {
            x: f(*x),
            weight: f(*weight),
            bias: f(*bias),
            groups: *groups,
            eps: *eps,
        },
        Op::Upsample2x { x } => Op::Upsample2x { x: f(*x) },
        Op::Transpose { x } => Op::Transpose { x: f(*x) },
        Op::Reshape { x, shape } => Op::Reshape {
            x: f(*x),
            shape: shape.clone(),
        },
        Op::GatherRows { x, rows } => Op::GatherRows {
            x: f(*x),
            rows: rows.clone(),
        },
        Op::BlockAttention {
            q,
            k,
            v,
            heads,
            kv_heads,
            head_dim,
            scale,
            blocks,
        } => Op::BlockAttention {
            q: f(*q),
            k: f(*k),
            v: f(*v),
            heads: *heads,
            kv_heads: *kv_heads,
            head_dim: *head_dim,
            scale: *scale,
            blocks: blocks.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::RopeKind;

    /// One sample of every variant. `variant_index` matches exhaustively, so a new variant fails to
    /// compile here, and the coverage assertion fails until a sample of it is added.
    fn samples() -> Vec<Op> {
        let t = TensorId;
        vec![
            Op::Embed {
                table: t(1),
                ids: t(2),
            },
            Op::RmsNorm {
                x: t(1),
                weight: Some(t(2)),
                dim: 4,
                eps: 1e-6,
            },
            Op::RmsNorm {
                x: t(1),
                weight: None,
                dim: 4,
                eps: 1e-6,
            },
            Op::LayerNorm {
                x: t(1),
                dim: 4,
                eps: 1e-6,
            },
            Op::Linear {
                x: t(1),
                w: t(2),
                bias: Some(t(3)),
            },
            Op::Linear {
                x: t(1),
                w: t(2),
                bias: None,
            },
            Op::Add { a: t(1), b: t(2) },
            Op::Modulate {
                x: t(1),
                scale: t(2),
            },
            Op::GateResidual {
                x: t(1),
                gate: t(2),
                y: t(3),
            },
            Op::Affine {
                x: t(1),
                scale: 2.0,
                shift: 0.5,
            },
            Op::Silu { x: t(1) },
            Op::Gelu { x: t(1) },
            Op::SwiGlu {
                gate: t(1),
                up: t(2),
            },
            Op::Rope {
                x: t(1),
                positions: t(2),
                heads: 2,
                head_dim: 4,
                kind: RopeKind::Mrope {
                    section: [1, 0, 1],
                    theta: 1e4,
                },
            },
            Op::Attention {
                q: t(1),
                segments: vec![KvSegment::new(t(2), t(3)), KvSegment::new(t(4), t(5))],
                heads: 2,
                kv_heads: 1,
                head_dim: 4,
                causal: true,
                scale: 0.5,
            },
            Op::SliceCols {
                x: t(1),
                start: 1,
                len: 2,
            },
            Op::SliceRows {
                x: t(1),
                start: 1,
                len: 2,
            },
            Op::ConcatRows {
                parts: vec![t(1), t(2), t(3)],
            },
            Op::Patchify { x: t(1), patch: 2 },
            Op::Unpatchify {
                x: t(1),
                patch: 2,
                channels: 3,
                height: 4,
                width: 6,
            },
            Op::TimestepFeatures {
                t: t(1),
                half: 8,
                scale: 1000.0,
            },
            Op::Conv2d {
                x: t(1),
                w: t(2),
                bias: Some(t(3)),
                stride: 2,
                pad: 0,
                pad_bottom_right_only: true,
            },
            Op::Conv2d {
                x: t(1),
                w: t(2),
                bias: None,
                stride: 1,
                pad: 1,
                pad_bottom_right_only: false,
            },
            Op::GroupNorm {
                x: t(1),
                weight: t(2),
                bias: t(3),
                groups: 2,
                eps: 1e-6,
            },
            Op::Upsample2x { x: t(1) },
            Op::Transpose { x: t(1) },
            Op::Reshape {
                x: t(1),
                shape: vec![2, 3],
            },
            Op::GatherRows {
                x: t(1),
                rows: vec![2, 0, 1],
            },
            Op::BlockAttention {
                q: t(1),
                k: t(2),
                v: t(3),
                heads: 2,
                kv_heads: 1,
                head_dim: 4,
                scale: 0.5,
                blocks: vec![2, 0, 3],
            },
            Op::Rope {
                x: t(1),
                positions: t(2),
                heads: 2,
                head_dim: 8,
                kind: RopeKind::Vision2d { theta: 1e4 },
            },
        ]
    }

    const VARIANTS: usize = 26;

    fn variant_index(op: &Op) -> usize {
        match op {
            Op::Embed { .. } => 0,
            Op::RmsNorm { .. } => 1,
            Op::LayerNorm { .. } => 2,
            Op::Linear { .. } => 3,
            Op::Add { .. } => 4,
            Op::Modulate { .. } => 5,
            Op::GateResidual { .. } => 6,
            Op::Affine { .. } => 7,
            Op::Silu { .. } => 8,
            Op::Gelu { .. } => 9,
            Op::SwiGlu { .. } => 10,
            Op::Rope { .. } => 11,
            Op::Attention { .. } => 12,
            Op::SliceCols { .. } => 13,
            Op::SliceRows { .. } => 14,
            Op::ConcatRows { .. } => 15,
            Op::Patchify { .. } => 16,
            Op::Unpatchify { .. } => 17,
            Op::TimestepFeatures { .. } => 18,
            Op::Conv2d { .. } => 19,
            Op::GroupNorm { .. } => 20,
            Op::Upsample2x { .. } => 21,
            Op::Transpose { .. } => 22,
            Op::Reshape { .. } => 23,
            Op::GatherRows { .. } => 24,
            Op::BlockAttention { .. } => 25,
        }
    }

    #[test]
    fn samples_cover_every_variant() {
        let mut seen = [false; VARIANTS];
        for op in samples() {
            seen[variant_index(&op)] = true;
        }
        let missing: Vec<usize> = (0..VARIANTS).filter(|&i| !seen[i]).collect();
        assert!(missing.is_empty(), "no sample of op variants {missing:?}");
    }

    #[test]
    fn map_ids_maps_exactly_the_inputs() {
        let f = |id: TensorId| TensorId(id.0 * 10 + 7);
        for op in samples() {
            let mapped = map_ids(&op, f);
            assert_eq!(mapped.name(), op.name());
            assert_eq!(
                mapped.inputs(),
                op.inputs().into_iter().map(f).collect::<Vec<_>>(),
                "{op:?}"
            );
            // Mapping back restores the op: nothing but the ids changed.
            assert_eq!(map_ids(&mapped, |id| TensorId((id.0 - 7) / 10)), op);
        }
    }
}

//! Memory plan: every activation gets an offset (in f32 elements) in one arena, shared over time by
//! tensors whose lifetimes do not overlap.
//!
//! Liveness is counted in node indices (execution order). An activation is live from the node that writes
//! it (for a node of a group a backend may fuse, `crate::fusion`, the group's first node) to the last
//! node that reads it; a graph output stays live to the end (`nodes.len()`: the caller reads
//! it after execution); an activation nothing reads is live at its own node only (the op still writes it).
//! Ranges are closed, so a node's output (starting at that node) overlaps every one of its inputs (ending at
//! that node or later): an op never writes over what it reads. Reshape outputs get their own storage like
//! any other op (no aliasing).
//!
//! Placement is the "greedy by size" heuristic: largest tensor first, each at the lowest 16-element
//! aligned offset clear of every already placed tensor whose range overlaps its own; a first-fit in
//! execution order is tried too and the smaller arena kept. The arena is at least `peak_live_elements`
//! (the sum of what is live at the busiest node) and usually close to it.

use crate::{Graph, Source};

/// Offsets and the arena length are multiples of this many elements (64 bytes of f32).
pub const ALIGN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Per tensor (indexed by `TensorId::index`): `Some(offset)` in elements for activations, `None` for
    /// weights and inputs (which live outside the arena).
    pub offsets: Vec<Option<usize>>,
    /// Arena length in elements.
    pub arena_len: usize,
}

/// When an activation is live: from node `first` (which writes it) to node `last` inclusive;
/// `last == nodes.len()` for a graph output (live after execution).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveRange {
    pub first: usize,
    pub last: usize,
}

impl LiveRange {
    pub fn overlaps(&self, other: &LiveRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// The live range of every tensor a node writes (`None` for weights, inputs, and anything no node writes).
/// A node in a group a backend may fuse ([`crate::fusion::groups`]) may have its output written at the
/// group's first node, so that output's range starts there.
pub fn live_ranges(graph: &Graph) -> Vec<Option<LiveRange>> {
    let mut ranges: Vec<Option<LiveRange>> = vec![None; graph.tensors.len()];
    let written = crate::fusion::written_at(graph);
    for (i, node) in graph.nodes.iter().enumerate() {
        ranges[node.out.index()] = Some(LiveRange {
            first: written[i],
            last: i,
        });
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        for id in node.op.inputs() {
            if let Some(r) = &mut ranges[id.index()] {
                r.last = r.last.max(i);
            }
        }
    }
    let end = graph.nodes.len();
    // A state write's source is read after the last node, like an output.
    let written = graph.state_writes.iter().map(|w| w.src);
    for id in graph.outputs.iter().map(|(_, id)| *id).chain(written) {
        if let Some(r) = &mut ranges[id.index()] {
            r.last = end;
        }
    }
    ranges
}

/// Every activation written by a node; weights and inputs get no offset.
pub fn plan_memory(graph: &Graph) -> MemoryPlan {
    let ranges = live_ranges(graph);
    debug_assert!(graph
        .nodes
        .iter()
        .all(|n| matches!(graph.tensor(n.out).source, Source::Activation)));
    let items: Vec<Item> = ranges
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.map(|range| Item {
                id: i,
                size: graph.tensors[i].numel(),
                range,
            })
        })
        .collect();

    let mut by_size = items.clone();
    by_size.sort_by(|a, b| b.size.cmp(&a.size).then(a.range.first.cmp(&b.range.first)));
    let mut by_start = items;
    by_start.sort_by_key(|it| it.range.first);

    let best = [place(&by_size), place(&by_start)]
        .into_iter()
        .min_by_key(|(_, len)| *len)
        .expect("two candidates");
    let mut offsets = vec![None; graph.tensors.len()];
    for (id, off) in best.0 {
        offsets[id] = Some(off);
    }
    MemoryPlan {
        offsets,
        arena_len: best.1,
    }
}

#[derive(Debug, Clone, Copy)]
struct Item {
    id: usize,
    size: usize,
    range: LiveRange,
}

fn align_up(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

/// Places `items` in the given order, each at the lowest aligned offset where it fits between the
/// already placed items whose live ranges overlap its own. Returns `(tensor index, offset)` pairs and the
/// arena length.
fn place(items: &[Item]) -> (Vec<(usize, usize)>, usize) {
    let mut placed: Vec<(Item, usize)> = Vec::with_capacity(items.len());
    let mut arena = 0;
    let mut busy: Vec<(usize, usize)> = Vec::new();
    for it in items {
        let offset = if it.size == 0 {
            0
        } else {
            busy.clear();
            busy.extend(
                placed
                    .iter()
                    .filter(|(p, _)| p.size > 0 && p.range.overlaps(&it.range))
                    .map(|(p, off)| (*off, off + p.size)),
            );
            busy.sort_unstable();
            let mut candidate = 0;
            for &(start, end) in &busy {
                if candidate + it.size <= start {
                    break;
                }
                candidate = candidate.max(align_up(end));
            }
            candidate
        };
        arena = arena.max(align_up(offset + it.size));
        placed.push((*it, offset));
    }
    (
        placed.into_iter().map(|(it, off)| (it.id, off)).collect(),
        arena,
    )
}

/// The lower bound of any plan: the largest total size of the activations live at one node.
pub fn peak_live_elements(graph: &Graph) -> usize {
    let n = graph.nodes.len();
    // Difference array over node indices 0..=n.
    let mut delta = vec![0isize; n + 2];
    for (i, r) in live_ranges(graph).iter().enumerate() {
        if let Some(r) = r {
            let size = graph.tensors[i].numel() as isize;
            delta[r.first] += size;
            delta[r.last + 1] -= size;
        }
    }
    let mut live = 0isize;
    let mut peak = 0isize;
    for d in &delta[..=n] {
        live += d;
        peak = peak.max(live);
    }
    peak as usize
}

/// What the arena would hold without reuse: the sum of every node output's size.
pub fn total_activation_elements(graph: &Graph) -> usize {
    graph
        .nodes
        .iter()
        .map(|n| graph.tensor(n.out).numel())
        .sum()
}

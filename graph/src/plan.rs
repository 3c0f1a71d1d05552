//! Memory plan: every activation gets an offset (in f32 elements) in one arena.
//!
//! PLACEHOLDER: sequential placement without reuse; the liveness-based planner replaces `plan_memory`.

use crate::{Graph, Source};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Per tensor (indexed by `TensorId::index`): `Some(offset)` in elements for activations, `None` for
    /// weights and inputs (which live outside the arena).
    pub offsets: Vec<Option<usize>>,
    /// Arena length in elements.
    pub arena_len: usize,
}

pub fn plan_memory(graph: &Graph) -> MemoryPlan {
    let mut offsets = vec![None; graph.tensors.len()];
    let mut end = 0;
    for node in &graph.nodes {
        let t = graph.tensor(node.out);
        debug_assert!(matches!(t.source, Source::Activation));
        offsets[node.out.index()] = Some(end);
        end += t.numel();
    }
    MemoryPlan { offsets, arena_len: end }
}

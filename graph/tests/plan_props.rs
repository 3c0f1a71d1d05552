//! The memory planner over random DAGs: every activation placed inside the arena, aligned, no two tensors
//! live at the same time sharing memory, and the arena no smaller than the peak of live elements.

mod common;

use common::{brute_peak, check_plan, live_at, random_graph, Step};
use hbridge_graph::plan::{
    live_ranges, peak_live_elements, plan_memory, total_activation_elements,
};
use hbridge_graph::{prune, DataType, Graph, Op};
use proptest::prelude::*;

fn graph_strategy() -> impl Strategy<Value = Graph> {
    (
        prop::collection::vec((any::<u8>(), any::<u8>()), 1..4),
        prop::collection::vec(any::<Step>(), 1..60),
        prop::collection::vec(any::<u32>(), 0..5),
    )
        .prop_map(|(inputs, steps, outs)| random_graph(&inputs, &steps, &outs))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn plans_of_random_graphs_are_valid(g in graph_strategy()) {
        let plan = plan_memory(&g);
        if let Err(e) = check_plan(&g, &plan) {
            return Err(TestCaseError::fail(format!("{e}\n{g}")));
        }
        prop_assert!(plan.arena_len <= total_activation_elements(&g).next_multiple_of(16) + 16 * g.nodes.len());
    }

    #[test]
    fn plans_of_pruned_random_graphs_are_valid(g in graph_strategy()) {
        let g = prune(g);
        let plan = plan_memory(&g);
        if let Err(e) = check_plan(&g, &plan) {
            return Err(TestCaseError::fail(format!("{e}\n{g}")));
        }
    }

    #[test]
    fn live_ranges_and_peak_match_brute_force(g in graph_strategy()) {
        let ranges = live_ranges(&g);
        for (i, r) in ranges.iter().enumerate() {
            let t = hbridge_graph::TensorId(i as u32);
            let brute: Vec<usize> = (0..=g.nodes.len()).filter(|&k| live_at(&g, t, k)).collect();
            match r {
                None => prop_assert!(brute.is_empty(), "{} live at {brute:?} but has no range", g.tensors[i].label),
                Some(r) => prop_assert_eq!(brute, (r.first..=r.last).collect::<Vec<_>>(), "{}", &g.tensors[i].label),
            }
        }
        prop_assert_eq!(peak_live_elements(&g), brute_peak(&g));
    }
}

/// An op's output never shares memory with its inputs, even when an input is read for the last time.
#[test]
fn outputs_never_overlap_their_inputs() {
    let mut g = Graph::default();
    let x = g.input("x", &[4, 16], DataType::F32);
    let mut h = g.push(Op::Silu { x }, "a").unwrap();
    for i in 0..10 {
        h = match i % 3 {
            0 => g.push(Op::Silu { x: h }, format!("s{i}")).unwrap(),
            1 => g
                .push(
                    Op::Reshape {
                        x: h,
                        shape: vec![16, 4],
                    },
                    format!("r{i}"),
                )
                .unwrap(),
            _ => g.push(Op::Transpose { x: h }, format!("t{i}")).unwrap(),
        };
    }
    g.mark_output("y", h);
    let plan = plan_memory(&g);
    check_plan(&g, &plan).unwrap();
    for node in &g.nodes {
        let out = plan.offsets[node.out.index()].unwrap();
        for input in node.op.inputs() {
            if let Some(inp) = plan.offsets[input.index()] {
                assert!(
                    out + 64 <= inp || inp + 64 <= out,
                    "{} at {out} overlaps its input at {inp}",
                    g.tensor(node.out).label
                );
            }
        }
    }
    // Two buffers ping-pong: the peak is two tensors.
    assert_eq!(plan.arena_len, 128);
    assert_eq!(peak_live_elements(&g), 128);
}

/// Weights and inputs live outside the arena; an empty graph needs no arena.
#[test]
fn only_activations_are_placed() {
    let plan = plan_memory(&Graph::default());
    assert_eq!((plan.offsets.len(), plan.arena_len), (0, 0));

    let mut g = Graph::default();
    let x = g.input("x", &[3, 5], DataType::F32);
    let w = g.weight(hbridge_loader::Part::Gen, "w", &[7, 5]);
    let y = g.push(Op::Linear { x, w, bias: None }, "y").unwrap();
    g.mark_output("y", y);
    g.mark_output("x", x);
    let plan = plan_memory(&g);
    assert_eq!(plan.offsets, vec![None, None, Some(0)]);
    assert_eq!(
        plan.arena_len, 32,
        "21 elements, rounded up to the alignment"
    );
    check_plan(&g, &plan).unwrap();
}

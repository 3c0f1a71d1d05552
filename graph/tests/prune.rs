//! Dead-work removal: what no output needs goes, what outputs need stays and computes the same thing,
//! ids stay consistent, and pruning twice changes nothing.

mod common;

use common::{check_ids, output_hashes, random_graph, reaching_nodes, Step};
use hbridge_graph::prune::prune_with_stats;
use hbridge_graph::{prune, DataType, Graph, Op, PruneStats, Source};
use hbridge_loader::Part;
use proptest::prelude::*;

fn graph_strategy() -> impl Strategy<Value = Graph> {
    (
        prop::collection::vec((any::<u8>(), any::<u8>()), 1..4),
        prop::collection::vec(any::<Step>(), 1..60),
        prop::collection::vec(any::<u32>(), 0..5),
    )
        .prop_map(|(inputs, steps, outs)| random_graph(&inputs, &steps, &outs))
}

fn labels(g: &Graph) -> Vec<String> {
    g.nodes
        .iter()
        .map(|n| g.tensor(n.out).label.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn pruning_random_graphs(g in graph_strategy()) {
        check_ids(&g, false).map_err(TestCaseError::fail)?;
        let (p, stats) = prune_with_stats(g.clone());
        check_ids(&p, true).map_err(|e| TestCaseError::fail(format!("{e}\n{p}")))?;

        // Exactly the nodes that reach an output survive, in their order.
        let expected: Vec<String> = reaching_nodes(&g).into_iter().map(|i| g.tensor(g.nodes[i].out).label.clone()).collect();
        prop_assert_eq!(labels(&p), expected);
        prop_assert_eq!(stats.nodes_removed, g.nodes.len() - p.nodes.len());

        // The outputs compute the same thing from the same leaves.
        prop_assert_eq!(output_hashes(&p), output_hashes(&g));

        // Weights and inputs nothing reads are gone, and counted.
        let count = |g: &Graph, f: fn(&Source) -> bool| g.tensors.iter().filter(|t| f(&t.source)).count();
        let is_weight = |s: &Source| matches!(s, Source::Weight { .. });
        let is_input = |s: &Source| matches!(s, Source::Input(_));
        prop_assert_eq!(stats.weights_removed, count(&g, is_weight) - count(&p, is_weight));
        prop_assert_eq!(stats.inputs_removed, count(&g, is_input) - count(&p, is_input));

        // Idempotent.
        let (again, stats2) = prune_with_stats(p.clone());
        prop_assert_eq!(&again, &p);
        prop_assert_eq!(stats2, PruneStats::default());
    }
}

#[test]
fn dead_branches_weights_and_inputs_are_removed() {
    let mut g = Graph::default();
    let unused_input = g.input("unused", &[2, 4], DataType::F32);
    let x = g.input("x", &[2, 4], DataType::F32);
    let w_dead = g.weight(Part::Und, "lm_head.weight", &[9, 4]);
    let w = g.weight(Part::Und, "proj.weight", &[4, 4]);
    let dead_a = g.push(Op::Silu { x: unused_input }, "dead_a").unwrap();
    let h = g.push(Op::Linear { x, w, bias: None }, "h").unwrap();
    let _dead_b = g
        .push(
            Op::Linear {
                x: h,
                w: w_dead,
                bias: None,
            },
            "logits",
        )
        .unwrap();
    let _dead_c = g.push(Op::Add { a: h, b: dead_a }, "dead_c").unwrap();
    let y = g.push(Op::Silu { x: h }, "y").unwrap();
    g.mark_output("y", y);
    g.mark_output("h", h);

    let (p, stats) = prune_with_stats(g);
    assert_eq!(
        stats,
        PruneStats {
            nodes_removed: 3,
            weights_removed: 1,
            inputs_removed: 1
        }
    );
    assert_eq!(labels(&p), ["h", "y"]);
    let names: Vec<&str> = p.tensors.iter().map(|t| t.label.as_str()).collect();
    assert_eq!(names, ["x", "proj.weight", "h", "y"]);
    check_ids(&p, true).unwrap();
    assert_eq!(p.tensor(p.output("y").unwrap()).label, "y");
    assert_eq!(p.tensor(p.output("h").unwrap()).label, "h");
    assert_eq!(
        p.inputs().map(|(_, n)| n.to_string()).collect::<Vec<_>>(),
        ["x"]
    );
    assert_eq!(p.weights().count(), 1);
}

#[test]
fn an_output_that_is_an_input_keeps_it() {
    let mut g = Graph::default();
    let x = g.input("x", &[1, 4], DataType::F32);
    let _ = g.push(Op::Silu { x }, "dead").unwrap();
    g.mark_output("x", x);
    let p = prune(g);
    assert!(p.nodes.is_empty());
    assert_eq!(p.tensors.len(), 1);
    assert_eq!(p.output("x"), Some(hbridge_graph::TensorId(0)));
}

#[test]
fn a_graph_without_outputs_prunes_to_nothing() {
    let mut g = Graph::default();
    let x = g.input("x", &[1, 4], DataType::F32);
    let _ = g.push(Op::Silu { x }, "dead").unwrap();
    let p = prune(g);
    assert_eq!(p, Graph::default());
}

#[test]
fn state_writes_keep_what_they_write_and_are_remapped() {
    let mut g = Graph::default();
    let dead_in = g.input("unused", &[1, 4], DataType::F32);
    let _ = g.push(Op::Silu { x: dead_in }, "dead").unwrap();
    let x = g.input("x", &[1, 4], DataType::F32);
    let row = g.input("row", &[1], DataType::I32);
    let cache = g.state("cache", &[8, 4]);
    let y = g.push(Op::Silu { x }, "y").unwrap();
    g.write_state(cache, y, row).unwrap();
    let p = prune(g);
    assert_eq!(p.nodes.len(), 1, "the written value's node survives");
    assert_eq!(p.state_writes.len(), 1);
    let w = p.state_writes[0];
    assert_eq!(p.tensor(w.state).source, Source::State("cache".into()));
    assert_eq!(p.tensor(w.src).label, "y");
    assert_eq!(p.tensor(w.row).source, Source::Input("row".into()));
    assert!(p.inputs().all(|(_, n)| n != "unused"));
}

#[test]
fn state_writes_check_their_shapes() {
    let mut g = Graph::default();
    let x = g.input("x", &[2, 4], DataType::F32);
    let row = g.input("row", &[1], DataType::I32);
    let bad_row = g.input("bad_row", &[2], DataType::I32);
    let cache = g.state("cache", &[8, 4]);
    let small = g.state("small", &[1, 4]);
    let wide = g.state("wide", &[8, 5]);
    let problem = |r: Result<(), hbridge_graph::GraphError>| r.unwrap_err().to_string();
    assert!(problem(g.write_state(wide, x, row)).contains("same C"));
    assert!(problem(g.write_state(small, x, row)).contains("capacity 1"));
    assert!(problem(g.write_state(cache, x, bad_row)).contains("I32 [1]"));
    assert!(problem(g.write_state(x, x, row)).contains("not a state"));
    assert!(g.state_writes.is_empty(), "nothing is recorded on error");
    g.write_state(cache, x, row).unwrap();
    assert_eq!(g.state_writes.len(), 1);
}

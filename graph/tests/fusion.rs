//! The pairs a backend may fuse (`hbridge_graph::fusion`) in the model graphs, and the memory plan's
//! promise to such a backend: the second node's output never shares memory with anything the first
//! node reads, since a fused pass writes it while reading those.

mod common;

use common::fixture_config;
use hbridge_graph::build::{gen_step, und_decode_step, und_prefill, GenStepSpec, UndPrefillSpec};
use hbridge_graph::fusion::{pairs, Pair};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::{DataType, Graph, Op};
use hbridge_loader::manifest::UndNames;

/// Every fusable pair of `g`: the second output is disjoint from every input of the first node.
fn check_fused_outputs_are_clear(name: &str, g: &Graph) -> usize {
    let plan = plan_memory(g);
    let span = |id: hbridge_graph::TensorId| {
        plan.offsets[id.index()].map(|off| (off, off + g.tensor(id).numel()))
    };
    let mut n = 0;
    for (i, pair) in pairs(g).iter().enumerate() {
        if pair.is_none() {
            continue;
        }
        n += 1;
        let out = g.nodes[i + 1].out;
        let (o0, o1) = span(out).expect("a node output has an offset");
        for input in g.nodes[i].op.inputs() {
            if let Some((a, b)) = span(input) {
                assert!(
                    o1 <= a || b <= o0,
                    "{name}: pair at node {i}: {} [{o0}, {o1}) overlaps input {} [{a}, {b})",
                    g.tensor(out).label,
                    g.tensor(input).label
                );
            }
        }
    }
    n
}

#[test]
fn model_graphs_keep_fused_outputs_clear_of_what_the_first_node_reads() {
    let config = fixture_config("tiny");
    let spec = GenStepSpec {
        latent: [config.vae.latent_channels, 4, 6],
        context_len: 5,
        hidden_states: false,
        srt: true,
        und_kv_states: true,
    };
    let g = gen_step(&config, &spec).unwrap();
    let blocks = config.gen.num_layers + config.gen.num_refiner_layers;
    // Four norm pairs per modulated block, and norm_out's modulation.
    assert_eq!(
        check_fused_outputs_are_clear("gen step", &g),
        4 * blocks + 1
    );

    let decode = und_decode_step(&config.und, &UndNames::NESTED, 16).unwrap();
    let p = pairs(&decode);
    assert_eq!(
        p.iter().filter(|p| **p == Some(Pair::AddNorm)).count(),
        2 * config.und.num_layers
    );
    check_fused_outputs_are_clear("und decode step", &decode);

    let prefill = und_prefill(
        &config.und,
        &UndNames::NESTED,
        &UndPrefillSpec {
            len: 9,
            kv_layers: vec![0],
            logits: true,
            hidden_states: false,
            final_hidden: false,
            kv_cache: None,
        },
    )
    .unwrap();
    assert!(check_fused_outputs_are_clear("und prefill", &prefill) > 0);
}

/// A chain where the unfused plan would reuse the dying input's memory for the norm's output: with the
/// pair, it may not.
#[test]
fn the_norm_after_an_add_gets_its_own_memory() {
    let mut g = Graph::default();
    let x = g.input("x", &[4, 16], DataType::F32);
    let a = g.push(Op::Silu { x }, "a").unwrap();
    let b = g.push(Op::Silu { x }, "b").unwrap();
    let sum = g.push(Op::Add { a, b }, "sum").unwrap();
    let n = g
        .push(
            Op::RmsNorm {
                x: sum,
                weight: None,
                dim: 16,
                eps: 1e-6,
            },
            "n",
        )
        .unwrap();
    let y = g.push(Op::Add { a: n, b: sum }, "y").unwrap();
    g.mark_output("y", y);
    assert_eq!(pairs(&g)[2], Some(Pair::AddNorm));
    assert_eq!(check_fused_outputs_are_clear("chain", &g), 1);
}

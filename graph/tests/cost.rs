//! The work count a benchmark divides by: checked against the parameter count of a real graph.

mod common;

use hbridge_graph::build::{
    gen_step, und_decode_step, und_prefill, vae_decode, GenStepSpec, UndPrefillSpec,
};
use hbridge_graph::cost::{cost, Cost};
use hbridge_graph::node_cost::{node_costs, state_write_bytes};
use hbridge_graph::{Graph, Source};
use hbridge_loader::config::ModelConfig;
use hbridge_loader::UndNames;

fn config(fixture: &str) -> ModelConfig {
    common::fixture_config(fixture)
}

fn tiny_config() -> ModelConfig {
    config("tiny")
}

/// A prefill's linear FLOPs are 2 x tokens x its matrix parameters (the embedding is a gather, not a
/// GEMM); its causal attention counts the lower triangle with the diagonal, half the square plus Nq/2.
#[test]
fn prefill_cost_matches_the_parameter_count() {
    let config = tiny_config();
    let u = &config.und;
    let len = 64;
    let spec = UndPrefillSpec {
        len,
        kv_layers: (0..u.num_layers).collect(),
        logits: true,
        hidden_states: false,
        final_hidden: false,
        kv_cache: None,
    };
    let g = und_prefill(u, &UndNames::FLAT, &spec).unwrap();
    let c = cost(&g, 2);
    let matrix_params: usize = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            hbridge_graph::Op::Linear { w, .. } => {
                Some(g.tensor(*w).shape.iter().product::<usize>())
            }
            _ => None,
        })
        .sum();
    assert!(matrix_params > 0);
    let want = 2.0 * len as f64 * matrix_params as f64;
    assert!(
        (c.linear_flops - want).abs() <= want * 1e-12,
        "{c:?} vs {want}"
    );
    let full = 4.0 * (len * len) as f64 * (u.num_heads * u.head_dim * u.num_layers) as f64;
    let causal = full * (len as f64 - len as f64 / 2.0) / len as f64;
    assert!(
        (c.attention_flops - causal).abs() < 1.0,
        "{c:?} vs {causal}"
    );
    // Every weight once, in bf16: at least the matrices (norms and the embedding add to it).
    assert!(c.weight_bytes >= 2.0 * matrix_params as f64, "{c:?}");
    assert_eq!(c.flops(), c.linear_flops + c.attention_flops);
}

/// The graphs a benchmark profiles (und prefill into a cache, decode step, gen step of both topologies
/// with resident K/V, VAE decode) on the tiny fixtures.
fn profiled_graphs() -> Vec<(String, Graph)> {
    let mut graphs = Vec::new();
    for fixture in ["tiny", "tiny-omnigen2"] {
        let c = config(fixture);
        let u = &c.und;
        let spec = UndPrefillSpec {
            len: 12,
            kv_layers: (0..u.num_layers).collect(),
            logits: false,
            hidden_states: false,
            final_hidden: true,
            kv_cache: Some(16),
        };
        graphs.push((
            format!("{fixture} prefill"),
            und_prefill(u, &UndNames::FLAT, &spec).unwrap(),
        ));
        graphs.push((
            format!("{fixture} decode"),
            und_decode_step(u, &UndNames::FLAT, 16).unwrap(),
        ));
        let gen = GenStepSpec {
            latent: [c.vae.latent_channels, 4, 6],
            context_len: 12,
            hidden_states: false,
            srt: true,
            und_kv_states: true,
        };
        graphs.push((format!("{fixture} gen step"), gen_step(&c, &gen).unwrap()));
        graphs.push((
            format!("{fixture} vae"),
            vae_decode(&c.vae, (4, 6)).unwrap(),
        ));
    }
    graphs
}

/// The per-node costs add up to the whole graph's: FLOPs node by node, and every weight once (at its
/// first reader), which also fails if a graph declares a weight no node reads.
#[test]
fn node_costs_sum_to_the_graph_cost() {
    for (what, g) in profiled_graphs() {
        for (act, weight) in [(2, 2), (4, 4), (4, 2)] {
            let nodes = node_costs(&g, act, weight);
            assert_eq!(nodes.len(), g.nodes.len(), "{what}");
            let sum: Cost = nodes.iter().map(|n| n.work).sum();
            let whole = cost(&g, weight);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
            assert!(
                close(sum.linear_flops, whole.linear_flops)
                    && close(sum.attention_flops, whole.attention_flops)
                    && sum.weight_bytes == whole.weight_bytes,
                "{what}: nodes {sum:?} vs graph {whole:?}"
            );
            for (n, c) in g.nodes.iter().zip(&nodes) {
                assert_eq!(c.kind, n.op.name());
                // At least its own output, written once.
                let out = g.tensor(n.out).numel() * act;
                assert!(
                    c.bytes >= out as f64,
                    "{what}: {} {c:?}",
                    g.tensor(n.out).label
                );
            }
        }
        let has_state_writes = !g.state_writes.is_empty();
        assert_eq!(state_write_bytes(&g, 2) > 0.0, has_state_writes, "{what}");
    }
}

/// The weights the gen step's nodes count are exactly the graph's weights (an independent count over the
/// tensors), and every FLOP sits on a GEMM, attention or convolution node.
#[test]
fn node_work_is_where_the_op_kind_says() {
    let (_, g) = profiled_graphs().swap_remove(2);
    let nodes = node_costs(&g, 2, 2);
    let weights: usize = g
        .tensors
        .iter()
        .filter(|t| matches!(t.source, Source::Weight { .. }))
        .map(|t| t.numel() * 2)
        .sum();
    let counted: f64 = nodes.iter().map(|n| n.work.weight_bytes).sum();
    assert_eq!(counted, weights as f64);
    for c in &nodes {
        let compute = matches!(
            c.kind,
            "linear" | "attention" | "block_attention" | "conv2d"
        );
        assert_eq!(c.is_compute(), compute, "{c:?}");
    }
    assert!(nodes.iter().any(|c| c.kind == "attention"));
}

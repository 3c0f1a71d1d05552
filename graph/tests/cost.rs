//! The work count a benchmark divides by: checked against the parameter count of a real graph.

use hbridge_graph::build::{und_prefill, UndPrefillSpec};
use hbridge_graph::cost::cost;
use hbridge_loader::config::ModelConfig;
use hbridge_loader::UndNames;
use std::path::Path;

fn tiny_config() -> ModelConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/model");
    ModelConfig::read(&root).expect("the tiny fixture's configs")
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

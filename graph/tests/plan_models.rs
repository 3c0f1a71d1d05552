//! The planner on layered graphs: a residual chain and the model builders' real graphs (und prefill and
//! decode step, gen step, VAE decode) need far less arena than the sum of their activations; an
//! image-only und prefill keeps no layer after the last bridged one and no lm_head.

mod common;

use common::{check_ids, check_plan};
use hbridge_graph::build::{
    gen_step, und_decode_step, und_prefill, vae_decode, GenStepSpec, UndPrefillSpec,
};
use hbridge_graph::plan::{peak_live_elements, plan_memory, total_activation_elements};
use hbridge_graph::{DataType, Graph, Op};
use hbridge_loader::config::ModelConfig;
use hbridge_loader::{Part, UndNames};

/// Plans `g`, checks the plan, and returns (arena, peak, total).
fn planned(what: &str, g: &Graph) -> (usize, usize, usize) {
    check_ids(g, true).unwrap_or_else(|e| panic!("{what}: {e}"));
    let plan = plan_memory(g);
    check_plan(g, &plan).unwrap_or_else(|e| panic!("{what}: {e}"));
    let (peak, total) = (peak_live_elements(g), total_activation_elements(g));
    eprintln!(
        "{what}: {} nodes, arena {} (peak {peak}, total {total}, {:.1}x saved)",
        g.nodes.len(),
        plan.arena_len,
        total as f64 / plan.arena_len as f64
    );
    (plan.arena_len, peak, total)
}

/// `layers` residual MLP blocks over `[n, d]`: `x + down(silu(up(norm(x))))`.
fn chain(layers: usize, n: usize, d: usize) -> Graph {
    let mut g = Graph::default();
    let mut x = g.input("x", &[n, d], DataType::F32);
    for i in 0..layers {
        let norm = g.weight(Part::Gen, format!("l{i}.norm"), &[d]);
        let up = g.weight(Part::Gen, format!("l{i}.up"), &[4 * d, d]);
        let down = g.weight(Part::Gen, format!("l{i}.down"), &[d, 4 * d]);
        let h = g
            .push(
                Op::RmsNorm {
                    x,
                    weight: Some(norm),
                    dim: d,
                    eps: 1e-6,
                },
                format!("l{i}.norm"),
            )
            .unwrap();
        let h = g
            .push(
                Op::Linear {
                    x: h,
                    w: up,
                    bias: None,
                },
                format!("l{i}.up"),
            )
            .unwrap();
        let h = g.push(Op::Silu { x: h }, format!("l{i}.act")).unwrap();
        let h = g
            .push(
                Op::Linear {
                    x: h,
                    w: down,
                    bias: None,
                },
                format!("l{i}.down"),
            )
            .unwrap();
        x = g.push(Op::Add { a: x, b: h }, format!("l{i}.out")).unwrap();
    }
    g.mark_output("y", x);
    g
}

#[test]
fn a_chain_of_layers_reuses_memory() {
    let (layers, n, d) = (32, 8, 64);
    let g = chain(layers, n, d);
    let (arena, peak, total) = planned("chain", &g);
    let per_layer = total / layers;
    assert_eq!(per_layer, 11 * n * d);
    assert!(
        arena <= per_layer,
        "arena {arena} exceeds one layer's activations {per_layer}"
    );
    assert!(arena * 10 <= total);
    // Peak: the residual, the up projection and its activation at the SiLU.
    assert_eq!(peak, 9 * n * d);
    // Greedy placement is not always optimal (here 10 n*d against the bound of 9), but close.
    assert!(
        arena * 5 <= peak * 6,
        "arena {arena} against the peak {peak}"
    );
}

fn tiny_config() -> ModelConfig {
    common::fixture_config("tiny")
}

fn und_layers(g: &Graph) -> Vec<usize> {
    let mut layers: Vec<usize> = g
        .nodes
        .iter()
        .filter_map(|n| {
            g.tensor(n.out)
                .label
                .strip_prefix("und.layers.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    layers.dedup();
    layers
}

#[test]
fn image_only_und_prefill_is_pruned_and_planned() {
    let config = tiny_config();
    let und = &config.und;
    let bridge = config
        .layout
        .bridge
        .as_ref()
        .expect("the tiny model is bridged");
    let mut kv_layers: Vec<usize> = bridge.pairs.iter().map(|&(_, u)| u).collect();
    kv_layers.sort_unstable();
    kv_layers.dedup();
    let last_bridged = *kv_layers.last().unwrap();
    assert!(
        last_bridged + 1 < und.num_layers,
        "the fixture should have und layers after the last bridged one"
    );

    let spec = UndPrefillSpec {
        len: 24,
        kv_layers: kv_layers.clone(),
        logits: false,
        hidden_states: false,
        final_hidden: false,
        kv_cache: None,
    };
    let image_only = und_prefill(und, &UndNames::FLAT, &spec).unwrap();
    assert_eq!(
        und_layers(&image_only),
        (0..=last_bridged).collect::<Vec<_>>()
    );
    assert!(
        image_only
            .weights()
            .all(|(_, _, name)| !name.contains("lm_head") && !name.ends_with("model.norm.weight")),
        "{image_only}"
    );
    assert!(image_only.output("und.logits").is_none());
    let (arena, _, total) = planned("und prefill, image only", &image_only);
    assert!(arena < total);

    let chat = und_prefill(
        und,
        &UndNames::FLAT,
        &UndPrefillSpec {
            logits: true,
            kv_layers: (0..und.num_layers).collect(),
            ..spec
        },
    )
    .unwrap();
    assert_eq!(und_layers(&chat), (0..und.num_layers).collect::<Vec<_>>());
    assert!(chat.weights().any(|(_, _, name)| name.contains("lm_head")));
    assert!(image_only.nodes.len() < chat.nodes.len());
    let (arena, _, total) = planned("und prefill, chat", &chat);
    assert!(arena < total);
}

#[test]
fn und_decode_step_is_planned() {
    let config = tiny_config();
    for capacity in [1, 7] {
        let g = und_decode_step(&config.und, &UndNames::FLAT, capacity).unwrap();
        let (arena, _, total) = planned(&format!("und decode step, cache of {capacity}"), &g);
        assert!(arena < total);
        // Every layer's K and V go into its cache; their sources outlive the last node.
        assert_eq!(g.state_writes.len(), 2 * config.und.num_layers);
        assert_eq!(g.states().count(), 2 * config.und.num_layers);
        let ranges = hbridge_graph::plan::live_ranges(&g);
        for w in &g.state_writes {
            assert_eq!(ranges[w.src.index()].unwrap().last, g.nodes.len());
        }
        assert_eq!(g.outputs.len(), 1, "only the logits come back");
    }
    assert!(und_decode_step(&config.und, &UndNames::FLAT, 0).is_err());
}

#[test]
fn a_chat_prefill_writes_its_cache_instead_of_returning_it() {
    let config = tiny_config();
    let und = &config.und;
    let spec = |kv_cache| UndPrefillSpec {
        len: 9,
        kv_layers: (0..und.num_layers).collect(),
        logits: false,
        hidden_states: false,
        final_hidden: false,
        kv_cache,
    };
    let g = und_prefill(und, &UndNames::FLAT, &spec(Some(12))).unwrap();
    planned("und prefill into a cache", &g);
    assert!(g.outputs.is_empty());
    assert_eq!(g.state_writes.len(), 2 * und.num_layers);
    assert!(g
        .states()
        .all(|(id, _)| g.tensor(id).shape == [12, und.kv_dim()]));
    let same = und_prefill(und, &UndNames::FLAT, &spec(None)).unwrap();
    assert_eq!(same.nodes.len(), g.nodes.len(), "the same work either way");
    assert!(und_prefill(und, &UndNames::FLAT, &spec(Some(8))).is_err());
}

#[test]
fn gen_step_is_planned() {
    let config = tiny_config();
    let latent = [config.gen.in_channels, 8, 12];
    for srt in [false, true] {
        let g = gen_step(
            &config,
            &GenStepSpec {
                latent,
                context_len: 24,
                hidden_states: false,
                srt,
                und_kv_states: false,
            },
        )
        .unwrap();
        assert_eq!(g.output("gen.srt").is_some(), srt);
        assert_eq!(
            g.weights().any(|(_, _, name)| name.starts_with("srt.proj")),
            srt
        );
        let (arena, _, total) = planned(&format!("gen step, srt {srt}"), &g);
        assert!(arena * 2 < total);
    }
}

#[test]
fn vae_decode_is_planned() {
    let config = tiny_config();
    let g = vae_decode(&config.vae, (6, 8)).unwrap();
    let (arena, _, total) = planned("vae decode", &g);
    assert!(arena * 2 < total);
}

/// Qwen2.5-VL-3B text dimensions: building and planning needs shapes only, no weights.
#[test]
fn full_size_und_prefill_arena() {
    let mut und = tiny_config().und;
    und.vocab_size = 151_936;
    und.hidden_size = 2048;
    und.intermediate_size = 11_008;
    und.num_layers = 36;
    und.num_heads = 16;
    und.num_kv_heads = 2;
    und.head_dim = 128;
    und.mrope_section = [16, 24, 24];
    let spec = UndPrefillSpec {
        len: 256,
        kv_layers: (6..30).collect(),
        logits: false,
        hidden_states: false,
        final_hidden: false,
        kv_cache: None,
    };
    let g = und_prefill(&und, &UndNames::FLAT, &spec).unwrap();
    assert_eq!(und_layers(&g).len(), 30);
    let (arena, peak, total) = planned("und prefill 3B x 256 tokens, image only", &g);
    // The K/V outputs stay live to the end: 24 layers x 2 x [256, 256].
    let kv = 24 * 2 * 256 * 256;
    assert!(peak >= kv);
    assert!(arena * 4 < total, "arena {arena}, total {total}");
}

//! The gen step split for guidance branches that share a prefix: prefix and suffix together do the
//! whole step's work, only the timestep embedding twice, and the prefix reads no und context.

use hbridge_graph::build::{gen_step_part, names, prefix_layers, GenPart, GenStepSpec};
use hbridge_graph::cost::cost;
use hbridge_graph::{Graph, GraphError, Source};
use hbridge_loader::config::ModelConfig;
use std::collections::BTreeSet;

mod common;

use common::fixture_config as config;

fn spec(c: &ModelConfig) -> GenStepSpec {
    GenStepSpec {
        latent: [c.vae.latent_channels, 4, 6],
        context_len: 7,
        hidden_states: false,
        srt: true,
        und_kv_states: true,
    }
}

fn weights(g: &Graph) -> BTreeSet<String> {
    g.weights().map(|(_, _, name)| name.to_string()).collect()
}

fn sources(g: &Graph, pick: fn(&Source) -> Option<&String>) -> BTreeSet<String> {
    g.tensors
        .iter()
        .filter_map(|t| pick(&t.source).cloned())
        .collect()
}

fn inputs(g: &Graph) -> BTreeSet<String> {
    sources(g, |s| match s {
        Source::Input(n) => Some(n),
        _ => None,
    })
}

fn states(g: &Graph) -> BTreeSet<String> {
    sources(g, |s| match s {
        Source::State(n) => Some(n),
        _ => None,
    })
}

#[test]
fn prefix_and_suffix_split_the_whole_step() {
    for fixture in ["tiny", "tiny-b"] {
        let c = config(fixture);
        let split = prefix_layers(&c);
        // tiny bridges from gen layer 1 on, tiny-b from layer 0 (its prefix is the embeddings and
        // the noise refiner alone).
        let want = if fixture == "tiny" { 1 } else { 0 };
        assert_eq!(split, want, "{fixture}: the first bridged gen layer");
        let s = spec(&c);
        let [whole, prefix, suffix] = [GenPart::Whole, GenPart::Prefix, GenPart::Suffix].map(|p| {
            gen_step_part(&c, &s, &[], p).unwrap_or_else(|e| panic!("{fixture} {p:?}: {e}"))
        });

        // Every weight is read by one of the parts; only the timestep embedding (which every
        // modulation needs) by both.
        let (w, wp, ws) = (weights(&whole), weights(&prefix), weights(&suffix));
        assert_eq!(
            &wp | &ws,
            w,
            "{fixture}: the parts read the whole step's weights"
        );
        let both: Vec<_> = wp.intersection(&ws).collect();
        assert!(
            !both.is_empty()
                && both
                    .iter()
                    .all(|n| n.starts_with("time_caption_embed.timestep_embedder.")),
            "{fixture}: weights read by both parts: {both:?}"
        );
        for name in &wp {
            if let Some(layer) = name
                .strip_prefix("layers.")
                .and_then(|r| r.split('.').next())
            {
                let layer: usize = layer.parse().unwrap();
                assert!(layer < split, "{fixture}: the prefix reads `{name}`");
            }
        }

        // The prefix reads no und K/V and writes the shared sequence; the suffix starts from it.
        assert!(
            states(&prefix) == BTreeSet::from([names::GEN_PREFIX.to_string()]),
            "{fixture}: prefix states {:?}",
            states(&prefix)
        );
        assert_eq!(prefix.state_writes.len(), 1);
        assert!(prefix.outputs.is_empty(), "{fixture}: {:?}", prefix.outputs);
        let sx = states(&suffix);
        assert!(
            sx.contains(names::GEN_PREFIX),
            "{fixture}: suffix states {sx:?}"
        );
        assert!(sx.iter().any(|n| n.starts_with("und.k.")));
        let si = inputs(&suffix);
        assert!(
            !si.contains(names::GEN_X) && !si.contains("gen.positions.latent"),
            "{fixture}: suffix inputs {si:?}"
        );
        assert!(suffix.output("gen.velocity").is_some() && suffix.output("gen.srt").is_some());

        // The same work, plus the timestep embedding once more.
        let f = |g: &Graph| cost(g, 2).flops();
        let extra = f(&prefix) + f(&suffix) - f(&whole);
        assert!(
            extra > 0.0 && extra < 0.01 * f(&whole),
            "{fixture}: prefix + suffix do {extra} FLOPs more than the whole step"
        );
    }
}

#[test]
fn omnigen2_has_only_whole_steps() {
    let c = config("tiny-omnigen2");
    let s = GenStepSpec {
        und_kv_states: false,
        ..spec(&c)
    };
    assert!(gen_step_part(&c, &s, &[], GenPart::Whole).is_ok());
    for p in [GenPart::Prefix, GenPart::Suffix] {
        match gen_step_part(&c, &s, &[], p) {
            Err(GraphError::Request(m)) => assert!(m.contains("omnigen2"), "{m}"),
            other => panic!("{p:?} on omnigen2: {other:?}"),
        }
    }
}

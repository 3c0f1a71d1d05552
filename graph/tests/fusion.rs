//! The groups a backend may fuse (`hbridge_graph::fusion`) in the model graphs, and the memory plan's
//! promise to such a backend: no member's output shares memory with anything any member reads, since
//! a fused pass writes them all while reading those.

mod common;

use common::fixture_config;
use hbridge_graph::build::{
    gen_step, und_decode_step, und_prefill, vae_decode, vae_encode, GenStepSpec, UndPrefillSpec,
};
use hbridge_graph::fusion::{groups, Kind};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::{DataType, Graph, Op};
use hbridge_loader::manifest::UndNames;

/// Every group of `g`: each member's output is disjoint from every input of every member (other than
/// the group's own outputs, which a fused pass produces itself). Returns the number of groups by kind.
fn check_fused_outputs_are_clear(name: &str, g: &Graph) -> Vec<(Kind, usize)> {
    let plan = plan_memory(g);
    let span = |id: hbridge_graph::TensorId| {
        plan.offsets[id.index()].map(|off| (off, off + g.tensor(id).numel()))
    };
    let mut counts: Vec<(Kind, usize)> = Vec::new();
    for (i, grp) in groups(g).iter().enumerate() {
        let Some(grp) = grp else { continue };
        match counts.iter_mut().find(|(k, _)| *k == grp.kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((grp.kind, 1)),
        }
        let members = &g.nodes[i..i + grp.len];
        let outs: Vec<_> = members.iter().map(|m| m.out).collect();
        for out in &outs {
            let (o0, o1) = span(*out).expect("a node output has an offset");
            for input in members.iter().flat_map(|m| m.op.inputs()) {
                if outs.contains(&input) {
                    continue;
                }
                if let Some((a, b)) = span(input) {
                    assert!(
                        o1 <= a || b <= o0,
                        "{name}: group at node {i}: {} [{o0}, {o1}) overlaps input {} [{a}, {b})",
                        g.tensor(*out).label,
                        g.tensor(input).label
                    );
                }
            }
        }
    }
    counts
}

fn count(counts: &[(Kind, usize)], kind: Kind) -> usize {
    counts
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(0, |(_, n)| *n)
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
    let counts = check_fused_outputs_are_clear("gen step", &g);
    // Four norm pairs per modulated block, and norm_out's modulation.
    assert_eq!(
        count(&counts, Kind::NormModulate) + count(&counts, Kind::NormGate),
        4 * blocks + 1
    );

    // Per und layer: two residual adds into their norms, q/k/v, and gate/up into the SwiGLU.
    let decode = und_decode_step(&config.und, &UndNames::NESTED, 16).unwrap();
    let counts = check_fused_outputs_are_clear("und decode step", &decode);
    let layers = config.und.num_layers;
    assert_eq!(count(&counts, Kind::AddNorm), 2 * layers);
    assert_eq!(count(&counts, Kind::GateUpSwiGlu), layers);
    assert_eq!(count(&counts, Kind::LinearSiblings), layers);
    let qkv = groups(&decode)
        .into_iter()
        .flatten()
        .find(|grp| grp.kind == Kind::LinearSiblings)
        .unwrap();
    assert_eq!(qkv.len, 3);

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
    assert!(!check_fused_outputs_are_clear("und prefill", &prefill).is_empty());
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
    assert_eq!(groups(&g)[2].map(|grp| grp.kind), Some(Kind::AddNorm));
    assert_eq!(
        check_fused_outputs_are_clear("chain", &g),
        vec![(Kind::AddNorm, 1)]
    );
}

/// Gate and up whose only reader is the SwiGLU after them form one group (its output may not reuse the
/// input's memory); siblings stop at three, and a gate read elsewhere leaves plain siblings.
#[test]
fn linear_groups() {
    let mut g = Graph::default();
    let x = g.input("x", &[1, 16], DataType::F32);
    let w = |g: &mut Graph, name: &str| g.weight(hbridge_loader::Part::Und, name, &[16, 16]);
    let (w1, w2, w3, w4) = (
        w(&mut g, "w1"),
        w(&mut g, "w2"),
        w(&mut g, "w3"),
        w(&mut g, "w4"),
    );
    let lin =
        |g: &mut Graph, x, w, label: &str| g.push(Op::Linear { x, w, bias: None }, label).unwrap();
    let a = lin(&mut g, x, w1, "a");
    let b = lin(&mut g, x, w2, "b");
    let c = lin(&mut g, x, w3, "c");
    let d = lin(&mut g, x, w4, "d");
    let s = g.push(Op::Add { a, b }, "s").unwrap();
    let s = g.push(Op::Add { a: s, b: c }, "s2").unwrap();
    let s = g.push(Op::Add { a: s, b: d }, "s3").unwrap();
    let gate = lin(&mut g, s, w1, "gate");
    let up = lin(&mut g, s, w2, "up");
    let sw = g.push(Op::SwiGlu { gate, up }, "sw").unwrap();
    g.mark_output("sw", sw);
    let grps = groups(&g);
    let kinds: Vec<_> = grps
        .iter()
        .enumerate()
        .filter_map(|(i, grp)| grp.map(|grp| (i, grp.kind, grp.len)))
        .collect();
    assert_eq!(
        kinds,
        vec![(0, Kind::LinearSiblings, 3), (7, Kind::GateUpSwiGlu, 3)]
    );
    check_fused_outputs_are_clear("linear groups", &g);

    // The gate also an output: gate and up stay plain siblings.
    g.mark_output("gate", gate);
    assert_eq!(
        groups(&g)[7],
        Some(hbridge_graph::fusion::Group {
            kind: Kind::LinearSiblings,
            len: 2
        })
    );
}

/// In the VAE every SiLU is of a GroupNorm read by nothing else: each pair is one group, and the
/// mid-block attention's GroupNorm (read by q, k and v) is in none.
#[test]
fn vae_norm_silu_pairs() {
    let config = fixture_config("tiny");
    let graphs = [
        ("vae decode", vae_decode(&config.vae, (4, 6)).unwrap()),
        ("vae encode", vae_encode(&config.vae, (32, 48)).unwrap()),
    ];
    for (name, g) in graphs {
        let counts = check_fused_outputs_are_clear(name, &g);
        let of = |f: fn(&Op) -> bool| g.nodes.iter().filter(|n| f(&n.op)).count();
        let silus = of(|op| matches!(op, Op::Silu { .. }));
        let norms = of(|op| matches!(op, Op::GroupNorm { .. }));
        assert!(silus > 0, "{name}: no SiLU");
        assert_eq!(count(&counts, Kind::GroupNormSilu), silus, "{name}");
        let attention_norms = usize::from(config.vae.mid_block_add_attention);
        assert_eq!(norms, silus + attention_norms, "{name}");
    }
}

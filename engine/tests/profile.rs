//! The CPU executor's per-node profile on the tiny fixture: one entry per node in node order with finite,
//! non-negative times; totals by op kind that add up to the whole run; and a profiled run that updates
//! its states exactly as a normal run does (the same dispatch).

#[path = "common/fixture.rs"]
mod fixture;

use fixture::{fixture, i64s_as_i32};
use hbridge_engine::profile::{NodeTimes, STATE_WRITE_KIND};
use hbridge_engine::{CpuWeights, Executor, HostTensor};
use hbridge_graph::build::{names, UndPrefillSpec};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::Graph;
use std::collections::HashMap;

type Tensors = HashMap<String, HostTensor>;

/// The checks every profile must pass, for `graph`.
#[track_caller]
fn check_profile(what: &str, graph: &Graph, t: &NodeTimes) {
    assert_eq!(
        t.per_node.len(),
        graph.nodes.len(),
        "{what}: one entry per node"
    );
    for (k, &(i, ms)) in t.per_node.iter().enumerate() {
        assert_eq!(i, k, "{what}: entries in node order");
        assert!(ms.is_finite() && ms >= 0.0, "{what}: node {i} took {ms} ms");
    }
    assert!(t.state_writes_ms.is_finite() && t.state_writes_ms >= 0.0);
    let total = t.total_ms();
    assert!(total > 0.0, "{what}: a whole run takes some time");
    for (act, weight) in [(4, 4), (2, 2)] {
        let kinds = t.by_kind(graph, act, weight);
        let ms: f64 = kinds.iter().map(|k| k.ms).sum();
        assert!(
            (ms - total).abs() <= 1e-9 * total.max(1.0),
            "{what}: kinds add up to {ms} ms, the run to {total}"
        );
        let nodes: usize = kinds
            .iter()
            .filter(|k| k.kind != STATE_WRITE_KIND)
            .map(|k| k.nodes)
            .sum();
        assert_eq!(nodes, graph.nodes.len(), "{what}");
        assert_eq!(
            kinds.iter().any(|k| k.kind == STATE_WRITE_KIND),
            !graph.state_writes.is_empty(),
            "{what}"
        );
        assert!(
            kinds.windows(2).all(|w| w[0].ms >= w[1].ms),
            "slowest first"
        );
        let linear = kinds.iter().find(|k| k.kind == "linear").unwrap();
        assert!(linear.flops > 0.0 && linear.bytes > 0.0);
    }
    let slowest = t.slowest(5);
    assert_eq!(slowest.len(), 5.min(graph.nodes.len()));
    let max = t.per_node.iter().map(|p| p.1).fold(0.0, f32::max);
    assert_eq!(slowest[0].1, max);
}

/// The tiny model's und prefill writing every layer's K/V into a cache (state writes), profiled: one
/// entry per node, and the cache it leaves equals a normal run's bit for bit.
#[test]
fn cpu_profile_of_a_prefill_times_every_node_and_writes_the_states() {
    let fx = fixture("tiny");
    let u = &fx.ckpt.config.und;
    let (_, ids) = i64s_as_i32(&fx.inputs, "cond.input_ids");
    let (_, pos) = i64s_as_i32(&fx.inputs, "cond.position_ids");
    let len = ids.len();
    let spec = UndPrefillSpec {
        len,
        kv_layers: (0..u.num_layers).collect(),
        logits: true,
        hidden_states: false,
        final_hidden: false,
        kv_cache: Some(len + 3),
    };
    let g = hbridge_graph::build::und_prefill(u, &fx.ckpt.und_names, &spec).unwrap();
    assert!(!g.state_writes.is_empty());
    let inputs: Tensors = HashMap::from([
        (names::UND_IDS.to_string(), HostTensor::i32([len], ids)),
        (
            names::UND_POSITIONS.to_string(),
            HostTensor::i32([3, len], pos),
        ),
        (
            names::UND_CACHE_LEN.to_string(),
            HostTensor::i32([1], vec![2]),
        ),
    ]);
    let empty_cache = || -> Tensors {
        (0..u.num_layers)
            .flat_map(|i| [names::cache_k(i), names::cache_v(i)])
            .map(|n| {
                let shape = vec![len + 3, u.kv_dim()];
                (n, HostTensor::f32(shape, vec![0.0; (len + 3) * u.kv_dim()]))
            })
            .collect()
    };
    let w = CpuWeights::from_graph(&fx.ckpt, &g).unwrap();
    let plan = plan_memory(&g);
    let mut ex = Executor::new();
    let mut ran = empty_cache();
    ex.run_with_states(&g, &plan, &w, &inputs, &mut ran)
        .unwrap();
    let mut profiled = empty_cache();
    let t = ex.profile(&g, &plan, &w, &inputs, &mut profiled).unwrap();
    check_profile("prefill", &g, &t);
    for (name, want) in &ran {
        let bits = |t: &HostTensor| -> Vec<u32> {
            t.as_f32().unwrap().iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(&profiled[name]), bits(want), "state {name}");
        assert!(want.as_f32().unwrap().iter().any(|&v| v != 0.0));
    }
}

/// The tiny gen step (no states): one entry per node, kinds adding up to the run.
#[test]
fn cpu_profile_of_a_gen_step_adds_up_by_kind() {
    let fx = fixture("tiny");
    let (ug, uin) = fx.und_cond();
    let mut ex = Executor::new();
    let uw = CpuWeights::from_graph(&fx.ckpt, &ug).unwrap();
    let und = ex.run(&ug, &plan_memory(&ug), &uw, &uin).unwrap();
    let (g, inputs) = fx.gen_cond(&und);
    let w = CpuWeights::from_graph(&fx.ckpt, &g).unwrap();
    let t = ex
        .profile(&g, &plan_memory(&g), &w, &inputs, &mut HashMap::new())
        .unwrap();
    check_profile("gen step", &g, &t);
    assert_eq!(t.state_writes_ms, 0.0);
}

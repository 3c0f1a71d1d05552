//! A small und-like block built by hand, run under several memory plans (the graph crate's planner,
//! sequential placement, a liveness
//! planner with reuse, one that aliases outputs onto inputs against the contract) and with a reused
//! executor: every run must give bit-identical outputs, equal to chaining the ops one at a time.

use crate::common::*;
use hbridge_engine::{execute, CpuWeights, Executor, HostTensor};
use hbridge_graph::plan::{plan_memory, MemoryPlan};
use hbridge_graph::{DataType, Graph, KvSegment, Op, RopeKind, Source, TensorId};
use hbridge_loader::Part;
use std::collections::HashMap;

pub const V: usize = 50;
pub const D: usize = 24;
pub const N: usize = 7;
const HEADS: usize = 2;
const KV: usize = 1;
const HD: usize = 12;
const FF: usize = 40;

/// Weights and the graph: embed, rmsnorm, q/k/v, M-RoPE, causal GQA attention, o-proj, residual, SwiGLU
/// MLP, residual, reshape/transpose, a slice; outputs at several depths.
pub fn block() -> (Graph, CpuWeights) {
    let mut r = Rng::new(90);
    let mut g = Graph::default();
    let mut w = CpuWeights::new();
    let mut weight = |g: &mut Graph, part: Part, name: &str, shape: &[usize], scale: f64| {
        w.insert(part, name, shape, r.vec(shape.iter().product(), scale))
            .unwrap();
        g.weight(part, name, shape)
    };
    let table = weight(&mut g, Part::Und, "embed_tokens.weight", &[V, D], 1.0);
    let norm_w = weight(&mut g, Part::Und, "norm.weight", &[D], 1.0);
    let wq = weight(&mut g, Part::Und, "q.weight", &[HEADS * HD, D], 0.3);
    let bq = weight(&mut g, Part::Und, "q.bias", &[HEADS * HD], 0.1);
    let wk = weight(&mut g, Part::Und, "k.weight", &[KV * HD, D], 0.3);
    let wv = weight(&mut g, Part::Und, "v.weight", &[KV * HD, D], 0.3);
    let wo = weight(&mut g, Part::Und, "o.weight", &[D, HEADS * HD], 0.3);
    let wg = weight(&mut g, Part::Gen, "gate.weight", &[FF, D], 0.3);
    let wu = weight(&mut g, Part::Gen, "up.weight", &[FF, D], 0.3);
    let wd = weight(&mut g, Part::Gen, "down.weight", &[D, FF], 0.3);
    let ids = g.input("ids", &[N], DataType::I32);
    let pos = g.input("pos", &[3, N], DataType::I32);
    let past_k = g.input("past_k", &[3, KV * HD], DataType::F32);
    let past_v = g.input("past_v", &[3, KV * HD], DataType::F32);

    let push = |g: &mut Graph, op: Op, label: &str| g.push(op, label).unwrap();
    let x = push(&mut g, Op::Embed { table, ids }, "x");
    let n = push(
        &mut g,
        Op::RmsNorm {
            x,
            weight: Some(norm_w),
            dim: D,
            eps: 1e-6,
        },
        "n",
    );
    let q = push(
        &mut g,
        Op::Linear {
            x: n,
            w: wq,
            bias: Some(bq),
        },
        "q",
    );
    let k = push(
        &mut g,
        Op::Linear {
            x: n,
            w: wk,
            bias: None,
        },
        "k",
    );
    let v = push(
        &mut g,
        Op::Linear {
            x: n,
            w: wv,
            bias: None,
        },
        "v",
    );
    let kind = RopeKind::Mrope {
        section: [2, 2, 2],
        theta: 1e4,
    };
    let q = push(
        &mut g,
        Op::Rope {
            x: q,
            positions: pos,
            heads: HEADS,
            head_dim: HD,
            kind: kind.clone(),
        },
        "q_rope",
    );
    let k = push(
        &mut g,
        Op::Rope {
            x: k,
            positions: pos,
            heads: KV,
            head_dim: HD,
            kind,
        },
        "k_rope",
    );
    let segments = vec![KvSegment::new(past_k, past_v), KvSegment::new(k, v)];
    let a = push(
        &mut g,
        Op::Attention {
            q,
            segments,
            heads: HEADS,
            kv_heads: KV,
            head_dim: HD,
            causal: true,
            scale: (HD as f32).powf(-0.5),
        },
        "attn",
    );
    let o = push(
        &mut g,
        Op::Linear {
            x: a,
            w: wo,
            bias: None,
        },
        "o",
    );
    let x = push(&mut g, Op::Add { a: x, b: o }, "x_attn");
    let m = push(
        &mut g,
        Op::RmsNorm {
            x,
            weight: None,
            dim: D,
            eps: 1e-6,
        },
        "m",
    );
    let gate = push(
        &mut g,
        Op::Linear {
            x: m,
            w: wg,
            bias: None,
        },
        "gate",
    );
    let up = push(
        &mut g,
        Op::Linear {
            x: m,
            w: wu,
            bias: None,
        },
        "up",
    );
    let h = push(&mut g, Op::SwiGlu { gate, up }, "swiglu");
    let dn = push(
        &mut g,
        Op::Linear {
            x: h,
            w: wd,
            bias: None,
        },
        "down",
    );
    let x2 = push(&mut g, Op::Add { a: x, b: dn }, "x_mlp");
    let r1 = push(
        &mut g,
        Op::Reshape {
            x: x2,
            shape: vec![N * 2, D / 2],
        },
        "reshaped",
    );
    let t = push(&mut g, Op::Transpose { x: r1 }, "transposed");
    let s = push(
        &mut g,
        Op::SliceRows {
            x: t,
            start: 1,
            len: 3,
        },
        "sliced",
    );
    g.mark_output("k", k);
    g.mark_output("hidden", x2);
    g.mark_output("sliced", s);
    g.mark_output("ids_back", ids);
    (g, w)
}

pub fn block_inputs(seed: u64) -> HashMap<String, HostTensor> {
    let mut r = Rng::new(seed);
    let mut m = HashMap::new();
    m.insert("ids".into(), HostTensor::i32([N], r.ints(N, V)));
    m.insert("pos".into(), HostTensor::i32([3, N], r.ints(3 * N, 20)));
    m.insert(
        "past_k".into(),
        HostTensor::f32([3, KV * HD], r.vec(3 * KV * HD, 1.0)),
    );
    m.insert(
        "past_v".into(),
        HostTensor::f32([3, KV * HD], r.vec(3 * KV * HD, 1.0)),
    );
    m
}

/// A liveness planner with first-fit reuse: a tensor's range is free again after its last reader.
fn liveness_plan(g: &Graph) -> MemoryPlan {
    let mut last_use = vec![0usize; g.tensors.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for id in node.op.inputs() {
            last_use[id.index()] = i;
        }
    }
    for (_, id) in &g.outputs {
        last_use[id.index()] = usize::MAX;
    }
    let mut offsets = vec![None; g.tensors.len()];
    let mut live: Vec<(usize, usize, TensorId)> = Vec::new();
    let mut arena_len = 0;
    for (i, node) in g.nodes.iter().enumerate() {
        let len = g.tensor(node.out).numel();
        live.sort();
        let mut off = 0;
        for &(s, l, _) in &live {
            if off + len <= s {
                break;
            }
            off = off.max(s + l);
        }
        offsets[node.out.index()] = Some(off);
        arena_len = arena_len.max(off + len);
        live.push((off, len, node.out));
        live.retain(|&(_, _, id)| last_use[id.index()] > i);
    }
    MemoryPlan { offsets, arena_len }
}

/// Places an output on top of its first arena input when that input dies at this node and is large
/// enough (what an over-eager planner might do for elementwise ops, breaking the "outputs never overlap
/// inputs" contract); the executor must still compute the right values.
fn aliasing_plan(g: &Graph) -> MemoryPlan {
    let mut plan = sequential_plan(g);
    let mut last_use = vec![usize::MAX; g.tensors.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for id in node.op.inputs() {
            last_use[id.index()] = i;
        }
    }
    for (_, id) in &g.outputs {
        last_use[id.index()] = usize::MAX;
    }
    let mut aliased = 0;
    for (i, node) in g.nodes.iter().enumerate() {
        let first = node
            .op
            .inputs()
            .into_iter()
            .find(|id| g.tensor(*id).source == Source::Activation);
        if let Some(src) = first {
            if last_use[src.index()] == i && g.tensor(src).numel() >= g.tensor(node.out).numel() {
                aliased += 1;
                plan.offsets[node.out.index()] = plan.offsets[src.index()];
            }
        }
    }
    assert!(aliased >= 5, "the aliasing plan must alias something");
    plan
}

/// Runs each node as its own one-op graph, feeding results forward by hand.
fn chained(
    g: &Graph,
    w: &CpuWeights,
    inputs: &HashMap<String, HostTensor>,
) -> HashMap<String, HostTensor> {
    let mut values: HashMap<TensorId, HostTensor> = HashMap::new();
    for (i, t) in g.tensors.iter().enumerate() {
        match &t.source {
            Source::Input(name) => drop(values.insert(TensorId(i as u32), inputs[name].clone())),
            Source::State(name) => panic!("state `{name}`: this graph has none"),
            Source::Weight { part, name } => drop(values.insert(
                TensorId(i as u32),
                HostTensor::f32(
                    t.shape.clone(),
                    w.get(*part, name).unwrap().data.to_f32_vec(),
                ),
            )),
            Source::Activation => {}
        }
    }
    for node in &g.nodes {
        let mut one = Graph::default();
        let mut feed = HashMap::new();
        let mut map = HashMap::new();
        for id in node.op.inputs() {
            let t = g.tensor(id);
            let name = format!("t{}", id.0);
            map.insert(id, one.input(&name, &t.shape, t.dtype));
            feed.insert(name, values[&id].clone());
        }
        let op = remap(&node.op, &map);
        let out = one.push(op, "out").unwrap();
        one.mark_output("out", out);
        let mut res = execute(&one, &plan_memory(&one), &CpuWeights::new(), &feed).unwrap();
        values.insert(node.out, res.remove("out").unwrap());
    }
    g.outputs
        .iter()
        .map(|(name, id)| (name.clone(), values[id].clone()))
        .collect()
}

fn remap(op: &Op, m: &HashMap<TensorId, TensorId>) -> Op {
    let f = |id: &TensorId| m[id];
    match op.clone() {
        Op::Embed { table, ids } => Op::Embed {
            table: f(&table),
            ids: f(&ids),
        },
        Op::RmsNorm {
            x,
            weight,
            dim,
            eps,
        } => Op::RmsNorm {
            x: f(&x),
            weight: weight.as_ref().map(f),
            dim,
            eps,
        },
        Op::Linear { x, w, bias } => Op::Linear {
            x: f(&x),
            w: f(&w),
            bias: bias.as_ref().map(f),
        },
        Op::Rope {
            x,
            positions,
            heads,
            head_dim,
            kind,
        } => Op::Rope {
            x: f(&x),
            positions: f(&positions),
            heads,
            head_dim,
            kind,
        },
        Op::Attention {
            q,
            segments,
            heads,
            kv_heads,
            head_dim,
            causal,
            scale,
        } => Op::Attention {
            q: f(&q),
            segments: segments
                .iter()
                .map(|s| KvSegment {
                    k: f(&s.k),
                    v: f(&s.v),
                    len: s.len.as_ref().map(f),
                })
                .collect(),
            heads,
            kv_heads,
            head_dim,
            causal,
            scale,
        },
        Op::Add { a, b } => Op::Add { a: f(&a), b: f(&b) },
        Op::SwiGlu { gate, up } => Op::SwiGlu {
            gate: f(&gate),
            up: f(&up),
        },
        Op::Reshape { x, shape } => Op::Reshape { x: f(&x), shape },
        Op::Transpose { x } => Op::Transpose { x: f(&x) },
        Op::SliceRows { x, start, len } => Op::SliceRows {
            x: f(&x),
            start,
            len,
        },
        other => panic!("remap: {} not used by the test block", other.name()),
    }
}

#[test]
fn hand_built_block_under_every_plan() {
    let (g, w) = block();
    let inputs = block_inputs(1);
    let want = chained(&g, &w, &inputs);
    assert_eq!(want["hidden"].shape, [N, D]);
    assert_eq!(want["sliced"].shape, [3, N * 2]);
    assert_eq!(want["ids_back"], inputs["ids"]);
    let reuse = liveness_plan(&g);
    assert!(
        reuse.arena_len < sequential_plan(&g).arena_len,
        "the liveness plan must actually reuse memory"
    );
    for (what, plan) in [
        ("graph planner", plan_memory(&g)),
        ("sequential", sequential_plan(&g)),
        ("liveness", reuse),
        ("aliasing", aliasing_plan(&g)),
    ] {
        let got = execute(&g, &plan, &w, &inputs).unwrap();
        assert_eq!(got.len(), 4);
        for (name, t) in &want {
            assert_eq!(&got[name], t, "{what} plan, output {name}");
        }
    }
}

#[test]
fn executor_reuses_its_arena() {
    let (g, w) = block();
    let plan = liveness_plan(&g);
    let mut ex = Executor::new();
    for seed in [1, 2, 1] {
        let inputs = block_inputs(seed);
        let got = ex.run(&g, &plan, &w, &inputs).unwrap();
        assert_eq!(got, execute(&g, &plan, &w, &inputs).unwrap(), "seed {seed}");
    }
    assert_eq!(ex.arena_len(), plan.arena_len);
    // A smaller graph afterwards runs in the same (larger) arena.
    let mut t = OneOp::new();
    let x = t.f32("x", &[2, 3], vec![1.0, -2.0, 3.0, 0.5, 0.0, -1.0]);
    let out =
        t.g.push(
            Op::Affine {
                x,
                scale: 2.0,
                shift: 1.0,
            },
            "y",
        )
        .unwrap();
    t.g.mark_output("y", out);
    let got = ex
        .run(&t.g, &plan_memory(&t.g), &t.weights, &t.inputs)
        .unwrap();
    assert_eq!(got["y"].as_f32().unwrap(), [3.0, -3.0, 7.0, 2.0, 1.0, -1.0]);
}

#[test]
fn block_matches_f64_math_for_a_short_chain() {
    // embed -> rmsnorm -> linear, checked against f64 arithmetic (the full block is covered op by op).
    let (g, w) = block();
    let inputs = block_inputs(3);
    let mut small = g.clone();
    small.outputs.clear();
    let q = small.tensors.iter().position(|t| t.label == "q").unwrap();
    small.mark_output("q", TensorId(q as u32));
    let got = execute(&small, &plan_memory(&small), &w, &inputs).unwrap();
    let ids = inputs["ids"].as_i32().unwrap();
    let (table, nw) = (
        w.get(Part::Und, "embed_tokens.weight")
            .unwrap()
            .data
            .as_f32()
            .unwrap(),
        w.get(Part::Und, "norm.weight")
            .unwrap()
            .data
            .as_f32()
            .unwrap(),
    );
    let (wq, bq) = (
        w.get(Part::Und, "q.weight").unwrap().data.as_f32().unwrap(),
        w.get(Part::Und, "q.bias").unwrap().data.as_f32().unwrap(),
    );
    let mut want = Vec::new();
    for &id in ids {
        let x: Vec<f64> = table[id as usize * D..(id as usize + 1) * D]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / D as f64 + 1e-6).sqrt();
        let n: Vec<f64> = x
            .iter()
            .zip(nw.iter())
            .map(|(v, w)| v * inv * *w as f64)
            .collect();
        for o in 0..HEADS * HD {
            want.push(bq[o] as f64 + (0..D).map(|j| n[j] * wq[o * D + j] as f64).sum::<f64>());
        }
    }
    assert_close(
        "embed-rmsnorm-linear",
        got["q"].as_f32().unwrap(),
        &want,
        1e-6,
    );
}

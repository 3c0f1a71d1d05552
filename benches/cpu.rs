//! The CPU backend's implementation of each case: a one-op graph (or the op sequence the CPU backend
//! runs for a fused GPU kernel) executed by `Executor`, whose arena is reused across iterations.

use crate::cases::{Case, Op, Work};
use criterion::{Criterion, Throughput};
use hbridge_engine::{CpuWeights, Executor, HostTensor};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::{DataType, Graph, KvSegment, Op as GOp, RopeKind, TensorId};
use std::collections::HashMap;

struct Built {
    graph: Graph,
    inputs: HashMap<String, HostTensor>,
}

/// Deterministic, non-zero values in [-1, 1).
fn values(n: usize, salt: u64) -> Vec<f32> {
    let mut s = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn input(b: &mut Built, name: &str, shape: &[usize]) -> TensorId {
    let id = b.graph.input(name, shape, DataType::F32);
    let n = shape.iter().product();
    b.inputs.insert(
        name.into(),
        HostTensor::f32(shape.to_vec(), values(n, b.inputs.len() as u64 + 1)),
    );
    id
}

fn positions(b: &mut Built, name: &str, shape: &[usize]) -> TensorId {
    let id = b.graph.input(name, shape, DataType::I32);
    let n: usize = shape.iter().product();
    b.inputs.insert(
        name.into(),
        HostTensor::i32(shape.to_vec(), (0..n as i32).map(|i| i % 64).collect()),
    );
    id
}

fn push(b: &mut Built, op: GOp) -> TensorId {
    b.graph
        .push(op, "bench")
        .expect("bench graphs are well formed")
}

fn build(op: &Op) -> Built {
    let mut b = Built {
        graph: Graph::default(),
        inputs: HashMap::new(),
    };
    let out = match *op {
        Op::Attention {
            nq,
            ref segments,
            heads,
            kv_heads,
            d,
            causal,
            ..
        } => {
            let q = input(&mut b, "q", &[nq, heads * d]);
            let segs = segments
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    KvSegment::new(
                        input(&mut b, &format!("k{i}"), &[len, kv_heads * d]),
                        input(&mut b, &format!("v{i}"), &[len, kv_heads * d]),
                    )
                })
                .collect();
            let scale = (d as f32).powf(-0.5);
            push(
                &mut b,
                GOp::Attention {
                    q,
                    segments: segs,
                    heads,
                    kv_heads,
                    head_dim: d,
                    causal,
                    scale,
                },
            )
        }
        Op::RmsNorm {
            rows,
            dim,
            modulate,
            residual,
            gated,
            ..
        } => {
            let mut x = input(&mut b, "x", &[rows, dim]);
            if residual {
                let r = input(&mut b, "residual", &[rows, dim]);
                x = push(&mut b, GOp::Add { a: x, b: r });
            }
            let weight = Some(input(&mut b, "weight", &[dim]));
            let y = push(
                &mut b,
                GOp::RmsNorm {
                    x,
                    weight,
                    dim,
                    eps: 1e-6,
                },
            );
            let y = if modulate {
                let scale = input(&mut b, "scale", &[dim]);
                push(&mut b, GOp::Modulate { x: y, scale })
            } else {
                y
            };
            if gated {
                let x = input(&mut b, "gres", &[rows, dim]);
                let gate = input(&mut b, "gate", &[dim]);
                push(&mut b, GOp::GateResidual { x, gate, y })
            } else {
                y
            }
        }
        Op::MRope { n, heads, d } => {
            let x = input(&mut b, "x", &[n, heads * d]);
            let p = positions(&mut b, "pos", &[3, n]);
            push(
                &mut b,
                GOp::Rope {
                    x,
                    positions: p,
                    heads,
                    head_dim: d,
                    kind: RopeKind::Mrope {
                        section: [16, 24, 24],
                        theta: 1e6,
                    },
                },
            )
        }
        Op::Interleaved3 { n, heads, d } => {
            let x = input(&mut b, "x", &[n, heads * d]);
            let p = positions(&mut b, "pos", &[n, 3]);
            push(
                &mut b,
                GOp::Rope {
                    x,
                    positions: p,
                    heads,
                    head_dim: d,
                    kind: RopeKind::Interleaved3 {
                        axes: [40, 40, 40],
                        theta: 1e4,
                    },
                },
            )
        }
        Op::SwiGlu { n } => {
            let gate = input(&mut b, "gate", &[n]);
            let up = input(&mut b, "up", &[n]);
            push(&mut b, GOp::SwiGlu { gate, up })
        }
        Op::GateResidual { rows, dim } => {
            let x = input(&mut b, "x", &[rows, dim]);
            let gate = input(&mut b, "gate", &[dim]);
            let y = input(&mut b, "y", &[rows, dim]);
            push(&mut b, GOp::GateResidual { x, gate, y })
        }
        Op::BridgeKv { n, kv_heads, d } => {
            // The CPU backend runs the shared-space step as a plain M-RoPE of K (V is only a copy).
            let x = input(&mut b, "k", &[n, kv_heads * d]);
            let p = positions(&mut b, "pos", &[3, n]);
            push(
                &mut b,
                GOp::Rope {
                    x,
                    positions: p,
                    heads: kv_heads,
                    head_dim: d,
                    kind: RopeKind::Mrope {
                        section: [16, 24, 24],
                        theta: 1e6,
                    },
                },
            )
        }
        Op::Patchify { c, h, w, p } => {
            let x = input(&mut b, "x", &[c, h, w]);
            push(&mut b, GOp::Patchify { x, patch: p })
        }
        Op::GroupNorm { c, hw, groups } => {
            let x = input(&mut b, "x", &[c, 1, hw]);
            let weight = input(&mut b, "weight", &[c]);
            let bias = input(&mut b, "bias", &[c]);
            push(
                &mut b,
                GOp::GroupNorm {
                    x,
                    weight,
                    bias,
                    groups,
                    eps: 1e-6,
                },
            )
        }
        Op::Conv2d { cin, cout, hw, k } => {
            let x = input(&mut b, "x", &[cin, hw, hw]);
            let w = input(&mut b, "w", &[cout, cin, k, k]);
            let bias = input(&mut b, "bias", &[cout]);
            push(
                &mut b,
                GOp::Conv2d {
                    x,
                    w,
                    bias: Some(bias),
                    stride: 1,
                    pad: k / 2,
                    pad_bottom_right_only: false,
                },
            )
        }
        // The CPU backend's linear (its packed GEMM for weights it loaded; a plain input here).
        Op::Gemv { n, inp, out, .. } => {
            let x = input(&mut b, "x", &[n, inp]);
            let w = input(&mut b, "w", &[out, inp]);
            let bias = input(&mut b, "bias", &[out]);
            push(
                &mut b,
                GOp::Linear {
                    x,
                    w,
                    bias: Some(bias),
                },
            )
        }
    };
    b.graph.outputs.push(("out".into(), out));
    b
}

pub fn bench(c: &mut Criterion, case: &Case) {
    let built = build(&case.op);
    let plan = plan_memory(&built.graph);
    let weights = CpuWeights::new();
    let mut exec = Executor::new();
    let (work, amount) = case.op.work();
    let mut group = c.benchmark_group(format!("cpu/{}", case.group));
    group.sample_size(10);
    group.throughput(match work {
        Work::Flops => Throughput::Elements(amount),
        Work::Bytes => Throughput::Bytes(amount),
    });
    // Through `profile`, not `run`: `run` returns the outputs as fresh vectors, and on the large
    // cases that copy (and the page faults of its allocation) cost more than the op itself
    // (swiglu_4112x10240: 110 ms a run with it, 25 ms without).
    let mut states = HashMap::new();
    group.bench_function(case.name, |bch| {
        bch.iter(|| {
            exec.profile(&built.graph, &plan, &weights, &built.inputs, &mut states)
                .expect("bench graph runs")
        })
    });
    group.finish();
}

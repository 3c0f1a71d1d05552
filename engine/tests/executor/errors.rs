//! Bad input is a typed error naming the culprit, never a panic, and is found before any compute.

use crate::common::*;
use crate::graph::{block, block_inputs, N, V};
use hbridge_engine::{execute, CpuWeights, EngineError, HostTensor};
use hbridge_graph::plan::{plan_memory, MemoryPlan};
use hbridge_graph::{DataType, Op};
use hbridge_loader::Part;

fn run_block(edit: impl FnOnce(&mut std::collections::HashMap<String, HostTensor>)) -> EngineError {
    let (g, w) = block();
    let mut inputs = block_inputs(7);
    edit(&mut inputs);
    execute(&g, &plan_memory(&g), &w, &inputs).expect_err("must fail")
}

#[test]
fn missing_input() {
    let e = run_block(|m| drop(m.remove("past_k")));
    assert_eq!(
        e,
        EngineError::MissingInput {
            name: "past_k".into()
        }
    );
    assert!(e.to_string().contains("past_k"));
}

#[test]
fn wrong_shape_dtype_and_length() {
    let e = run_block(|m| drop(m.insert("pos".into(), HostTensor::i32([N, 3], vec![0; 3 * N]))));
    assert_eq!(
        e,
        EngineError::InputShape {
            name: "pos".into(),
            expected: vec![3, N],
            found: vec![N, 3]
        }
    );
    let e = run_block(|m| drop(m.insert("ids".into(), HostTensor::f32([N], vec![0.0; N]))));
    assert_eq!(
        e,
        EngineError::InputDtype {
            name: "ids".into(),
            expected: DataType::I32,
            found: DataType::F32
        }
    );
    let e = run_block(|m| drop(m.insert("past_v".into(), HostTensor::f32([3, 12], vec![0.0; 35]))));
    assert!(
        matches!(e, EngineError::DataLength { ref name, expected: 36, found: 35, .. } if name == "past_v"),
        "{e}"
    );
}

#[test]
fn token_id_out_of_range() {
    for bad in [V as i32, -1, i32::MAX] {
        let e = run_block(|m| {
            let mut ids = m["ids"].as_i32().unwrap().to_vec();
            ids[4] = bad;
            m.insert("ids".into(), HostTensor::i32([N], ids));
        });
        assert_eq!(
            e,
            EngineError::TokenOutOfRange {
                tensor: "ids".into(),
                position: 4,
                id: bad as i64,
                vocab: V
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("ids") && msg.contains(&bad.to_string()) && msg.contains(&V.to_string()),
            "{msg}"
        );
    }
}

#[test]
fn missing_or_misshapen_weight() {
    let (g, w) = block();
    let inputs = block_inputs(7);
    let mut partial = CpuWeights::new();
    for (id, part, name) in g.weights() {
        if name != "down.weight" {
            partial
                .insert(
                    part,
                    name,
                    &g.tensor(id).shape,
                    w.get(part, name).unwrap().data.to_f32_vec(),
                )
                .unwrap();
        }
    }
    let e = execute(&g, &plan_memory(&g), &partial, &inputs).unwrap_err();
    assert_eq!(
        e,
        EngineError::MissingWeight {
            part: Part::Gen,
            name: "down.weight".into()
        }
    );
    partial
        .insert(Part::Gen, "down.weight", &[40, 24], vec![0.0; 960])
        .unwrap();
    let e = execute(&g, &plan_memory(&g), &partial, &inputs).unwrap_err();
    assert_eq!(
        e,
        EngineError::WeightShape {
            part: Part::Gen,
            name: "down.weight".into(),
            expected: vec![24, 40],
            found: vec![40, 24]
        }
    );
    assert!(partial
        .insert(Part::Gen, "x", &[2, 2], vec![0.0; 3])
        .is_err());
}

#[test]
fn plan_that_does_not_fit() {
    let (g, w) = block();
    let inputs = block_inputs(7);
    let mut plan = plan_memory(&g);
    // One short of the furthest end any activation reaches.
    plan.arena_len = g
        .nodes
        .iter()
        .map(|n| plan.offsets[n.out.index()].unwrap() + g.tensor(n.out).numel())
        .max()
        .unwrap()
        - 1;
    assert!(matches!(
        execute(&g, &plan, &w, &inputs),
        Err(EngineError::Plan(_))
    ));
    let short = MemoryPlan {
        offsets: vec![],
        arena_len: 10,
    };
    assert!(matches!(
        execute(&g, &short, &w, &inputs),
        Err(EngineError::Plan(_))
    ));
    let mut plan = plan_memory(&g);
    let last = g.nodes.last().unwrap().out;
    plan.offsets[last.index()] = None;
    assert!(matches!(
        execute(&g, &plan, &w, &inputs),
        Err(EngineError::Plan(_))
    ));
}

#[test]
fn malformed_graph_is_rejected() {
    // Fields are public, so a graph can be edited after shape inference; the executor re-checks.
    let mut t = OneOp::new();
    let x = t.f32("x", &[4, 6], vec![0.5; 24]);
    let y = t.g.push(Op::Silu { x }, "y").unwrap();
    t.g.mark_output("y", y);
    let mut bad = t.g.clone();
    bad.tensors[y.index()].shape = vec![4, 7];
    assert!(matches!(
        execute(&bad, &sequential_plan(&bad), &t.weights, &t.inputs),
        Err(EngineError::Graph { .. })
    ));
    let mut bad = t.g.clone();
    bad.nodes[0].op = Op::Silu {
        x: hbridge_graph::TensorId(99),
    };
    assert!(matches!(
        execute(&bad, &sequential_plan(&bad), &t.weights, &t.inputs),
        Err(EngineError::Graph { .. })
    ));
    // A node reading an activation written only later.
    let mut bad = t.g.clone();
    let z = bad.push(Op::Silu { x: y }, "z").unwrap();
    bad.nodes.swap(0, 1);
    let _ = z;
    assert!(matches!(
        execute(&bad, &sequential_plan(&bad), &t.weights, &t.inputs),
        Err(EngineError::Graph { .. })
    ));
    // Positions given as F32 to a Rope.
    let mut t2 = OneOp::new();
    let x = t2.f32("x", &[2, 4], vec![0.0; 8]);
    let p = t2.f32("p", &[2, 3], vec![0.0; 6]);
    let kind = hbridge_graph::RopeKind::Interleaved3 {
        axes: [2, 2, 0],
        theta: 1e4,
    };
    assert!(matches!(
        t2.try_run(Op::Rope {
            x,
            positions: p,
            heads: 1,
            head_dim: 4,
            kind
        }),
        Err(EngineError::Graph { .. })
    ));
    // Odd interleaved-rope axes are refused when the graph is built.
    let mut t3 = OneOp::new();
    let x = t3.f32("x", &[2, 8], vec![0.0; 16]);
    let p = t3.i32("p", &[2, 3], vec![0; 6]);
    let kind = hbridge_graph::RopeKind::Interleaved3 {
        axes: [3, 3, 2],
        theta: 1e4,
    };
    let built = t3.g.push(
        Op::Rope {
            x,
            positions: p,
            heads: 1,
            head_dim: 8,
            kind,
        },
        "out",
    );
    assert!(built.is_err(), "odd rope axes must fail shape inference");
}

//! A bf16 weight where no kernel widens it is a typed error before any compute; loading a graph that
//! reads a weight otherwise brings it back as f32.

use crate::common::*;
use half::bf16;
use hbridge_engine::{execute, CpuWeights, EngineError, WeightStorage};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::{DataType, Graph, Op};
use hbridge_loader::{Checkpoint, Part};
use std::collections::HashMap;
use std::path::PathBuf;

fn halves(n: usize) -> Vec<bf16> {
    (0..n).map(|i| bf16::from_f32(i as f32 * 0.5)).collect()
}

/// Declares a node's inputs and weights in a one-op test and returns the node.
type Build = fn(&mut OneOp) -> Op;

#[test]
fn bf16_weight_outside_linear_and_embedding_is_an_error() {
    // As a norm weight, as a linear's bias, under a transpose.
    let norm = |t: &mut OneOp| {
        let x = t.f32("x", &[2, 4], vec![1.0; 8]);
        t.weights
            .insert_bf16(Part::Gen, "w", &[4], halves(4))
            .unwrap();
        let w = t.g.weight(Part::Gen, "w", &[4]);
        Op::RmsNorm {
            x,
            weight: Some(w),
            dim: 4,
            eps: 1e-6,
        }
    };
    let bias = |t: &mut OneOp| {
        let x = t.f32("x", &[2, 4], vec![1.0; 8]);
        t.weights
            .insert(Part::Gen, "m", &[3, 4], vec![0.0; 12])
            .unwrap();
        t.weights
            .insert_bf16(Part::Gen, "w", &[3], halves(3))
            .unwrap();
        let (m, b) = (
            t.g.weight(Part::Gen, "m", &[3, 4]),
            t.g.weight(Part::Gen, "w", &[3]),
        );
        Op::Linear {
            x,
            w: m,
            bias: Some(b),
        }
    };
    let transpose = |t: &mut OneOp| {
        t.weights
            .insert_bf16(Part::Gen, "w", &[3, 4], halves(12))
            .unwrap();
        Op::Transpose {
            x: t.g.weight(Part::Gen, "w", &[3, 4]),
        }
    };
    let cases: [(&str, Build); 3] = [
        ("rmsnorm", norm),
        ("linear", bias),
        ("transpose", transpose),
    ];
    for (op, build) in cases {
        let mut t = OneOp::new();
        let node = build(&mut t);
        let e = t.try_run(node).unwrap_err();
        assert_eq!(
            e,
            EngineError::WeightStorage {
                part: Part::Gen,
                name: "w".into(),
                op: op.into()
            }
        );
        assert!(e.to_string().contains("bf16"), "{e}");
    }

    let mut w = CpuWeights::new();
    let e = w
        .insert_bf16(Part::Gen, "w", &[3, 4], halves(11))
        .unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::DataLength {
                expected: 12,
                found: 11,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bf16_weight_as_graph_output_is_widened() {
    let mut g = Graph::default();
    let id = g.weight(Part::Und, "w", &[2, 3]);
    g.mark_output("w", id);
    let mut w = CpuWeights::new();
    w.insert_bf16(Part::Und, "w", &[2, 3], halves(6)).unwrap();
    assert_eq!(w.bytes(), 12);
    let out = execute(&g, &plan_memory(&g), &w, &HashMap::new()).unwrap();
    assert_eq!(out["w"].as_f32().unwrap(), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
}

#[test]
fn a_weight_read_otherwise_is_reloaded_as_f32() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/model");
    let ck = Checkpoint::open(&dir).unwrap();
    let name = "layers.0.attn.to_q.weight";
    let linear = {
        let mut g = Graph::default();
        let w = g.weight(Part::Gen, name, &[72, 72]);
        let x = g.input("x", &[3, 72], DataType::F32);
        let y = g.push(Op::Linear { x, w, bias: None }, "y").unwrap();
        g.mark_output("y", y);
        g
    };
    let transposed = {
        let mut g = Graph::default();
        let w = g.weight(Part::Gen, name, &[72, 72]);
        let y = g.push(Op::Transpose { x: w }, "y").unwrap();
        g.mark_output("y", y);
        g
    };
    let inputs = HashMap::from([(
        "x".to_string(),
        hbridge_engine::HostTensor::f32([3, 72], Rng::new(5).vec(216, 1.0)),
    )]);
    let mut w = CpuWeights::with_storage(WeightStorage::Bf16);
    w.load_graph(&ck, &linear).unwrap();
    let held = |w: &CpuWeights| w.get(Part::Gen, name).unwrap().data.storage();
    assert_eq!(held(&w), WeightStorage::Bf16);
    assert_eq!(w.bytes(), 72 * 72 * 2);
    let before = execute(&linear, &plan_memory(&linear), &w, &inputs).unwrap();
    // Not loaded for the transpose yet: the bf16 weight is refused, not misread.
    assert!(matches!(
        execute(&transposed, &plan_memory(&transposed), &w, &inputs),
        Err(EngineError::WeightStorage { .. })
    ));
    w.load_graph(&ck, &transposed).unwrap();
    assert_eq!(held(&w), WeightStorage::F32);
    assert_eq!(w.bytes(), 72 * 72 * 4);
    execute(&transposed, &plan_memory(&transposed), &w, &inputs).unwrap();
    let after = execute(&linear, &plan_memory(&linear), &w, &inputs).unwrap();
    crate::assert_bits_equal("linear before and after the reload", &before, &after);
    // Loading the linear graph again keeps the f32 copy rather than flipping back.
    w.load_graph(&ck, &linear).unwrap();
    assert_eq!(held(&w), WeightStorage::F32);
}

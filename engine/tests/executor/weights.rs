//! `CpuWeights` from a real checkpoint (the committed `tiny` fixture, bf16): converted once, checked
//! against the graph's declared shapes, shared by several graphs.

use hbridge_engine::{CpuWeights, EngineError};
use hbridge_graph::{DataType, Graph, Op};
use hbridge_loader::{Checkpoint, Part};
use std::path::PathBuf;

fn tiny() -> Checkpoint {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/model");
    Checkpoint::open(&dir).unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
}

fn graph_with(part: Part, name: &str, shape: &[usize]) -> Graph {
    let mut g = Graph::default();
    let w = g.weight(part, name, shape);
    let x = g.input("x", &[1, shape[1]], DataType::F32);
    let y = g.push(Op::Linear { x, w, bias: None }, "y").unwrap();
    g.mark_output("y", y);
    g
}

#[test]
fn loads_converts_and_checks_shapes() {
    let ck = tiny();
    let view = ck.tensor(Part::Gen, "layers.0.attn.to_k.weight").unwrap();
    assert_eq!(view.dtype.to_string().to_lowercase(), "bf16");
    let g1 = graph_with(Part::Gen, "layers.0.attn.to_k.weight", &[24, 72]);
    let mut w = CpuWeights::from_graph(&ck, &g1).unwrap();
    let got = w.get(Part::Gen, "layers.0.attn.to_k.weight").unwrap();
    assert_eq!(got.shape, [24, 72]);
    assert_eq!(
        got.data.as_f32().unwrap(),
        view.to_f32().unwrap().as_slice()
    );
    w.check_graph(&g1).unwrap();

    // A second graph adds its weights to the same store; the first stays loaded.
    let g2 = graph_with(Part::Gen, "layers.0.attn.to_q.weight", &[72, 72]);
    // Its report counts what it converted (f32 storage: 4 bytes a value); a graph whose weights
    // are all loaded converts nothing.
    let added = w.load_graph(&ck, &g2).unwrap();
    assert_eq!((added.tensors, added.bytes), (1, 72 * 72 * 4));
    let again = w.load_graph(&ck, &g1).unwrap();
    assert_eq!((again.tensors, again.bytes), (0, 0));
    assert_eq!(w.len(), 2);
    w.check_graph(&g2).unwrap();

    let bad = graph_with(Part::Gen, "layers.0.attn.to_q.weight", &[72, 71]);
    let e = CpuWeights::from_graph(&ck, &bad).unwrap_err();
    assert_eq!(
        e,
        EngineError::WeightShape {
            part: Part::Gen,
            name: "layers.0.attn.to_q.weight".into(),
            expected: vec![72, 71],
            found: vec![72, 72]
        }
    );
    assert!(e.to_string().contains("layers.0.attn.to_q.weight"));
    // Already loaded with another shape: the same error, not a silent reuse.
    assert!(matches!(
        w.load_graph(&ck, &bad),
        Err(EngineError::WeightShape { .. })
    ));

    let missing = graph_with(Part::Vae, "decoder.no_such.weight", &[2, 2]);
    assert_eq!(
        CpuWeights::from_graph(&ck, &missing).unwrap_err(),
        EngineError::MissingWeight {
            part: Part::Vae,
            name: "decoder.no_such.weight".into()
        }
    );
}

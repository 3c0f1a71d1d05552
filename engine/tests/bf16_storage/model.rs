//! Whole graphs of the committed fixtures under both storages: on `tiny` (a BF16 checkpoint) the und
//! prefill, gen step, VAE decode and greedy chat decoding (prefill plus one-row decode steps) agree bit
//! for bit; on `tiny-b` (F32 and F16 weights) bf16 storage rounds the weights and the results stay close.

use crate::assert_bits_equal;
use crate::common::rel_l2;
use crate::fixture::{fixture, Fixture, Tensors};
use half::bf16;
use hbridge_engine::{execute, CpuWeights, Executor, WeightStorage};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::{Graph, Op, Source, TensorId};
use hbridge_loader::{Checkpoint, Part};

/// Loads `g`'s weights in `storage`, runs it, and returns the outputs with the weights' bytes.
fn run(ckpt: &Checkpoint, storage: WeightStorage, g: &Graph, inputs: &Tensors) -> (Tensors, usize) {
    let mut w = CpuWeights::with_storage(storage);
    w.load_graph(ckpt, g).unwrap();
    assert_eq!(w.storage(), storage);
    (execute(g, &plan_memory(g), &w, inputs).unwrap(), w.bytes())
}

/// The bytes `g`'s weights should take: under f32 storage 4 per value; under bf16 storage 2 per value
/// of each 2-D checkpoint weight that only linear weights and embedding tables read, 4 per value of the
/// rest (derived weights, products formed in f32, among them).
fn expected_bytes(g: &Graph, storage: WeightStorage) -> usize {
    let mut seen = std::collections::HashSet::new();
    g.tensors
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match &t.source {
            Source::Weight { part, name } if seen.insert((format!("{part:?}"), name.clone())) => {
                let id = TensorId(i as u32);
                let widened = g.nodes.iter().all(|n| {
                    !n.op.inputs().contains(&id)
                        || matches!(n.op, Op::Linear { w, .. } if w == id)
                        || matches!(n.op, Op::Embed { table, .. } if table == id)
                });
                let derived = hbridge_graph::derived::recipe(name).is_some();
                let bf16 =
                    storage == WeightStorage::Bf16 && widened && t.shape.len() == 2 && !derived;
                Some(t.numel() * if bf16 { 2 } else { 4 })
            }
            _ => None,
        })
        .sum()
}

fn both(fx: &Fixture, what: &str, (g, inputs): (Graph, Tensors)) -> Tensors {
    let (f, f_bytes) = run(&fx.ckpt, WeightStorage::F32, &g, &inputs);
    let (h, h_bytes) = run(&fx.ckpt, WeightStorage::Bf16, &g, &inputs);
    assert_bits_equal(&format!("{} {what}", fx.name), &f, &h);
    assert_eq!(
        f_bytes,
        expected_bytes(&g, WeightStorage::F32),
        "{what}: f32 bytes"
    );
    assert_eq!(
        h_bytes,
        expected_bytes(&g, WeightStorage::Bf16),
        "{what}: bf16 bytes"
    );
    if std::env::var_os("HBRIDGE_TEST_VERBOSE").is_some() {
        eprintln!("{} {what}: {h_bytes} bytes bf16 vs {f_bytes} f32", fx.name);
    }
    f
}

#[test]
fn bf16_checkpoint_gives_bit_identical_results() {
    let fx = fixture("tiny");
    let und = both(&fx, "und prefill", fx.und_cond());
    both(&fx, "gen step", fx.gen_cond(&und));
    both(&fx, "vae decode", fx.vae());
    assert!(fx.has_chat(), "tiny has a chat prompt");
    let greedy = |storage| {
        fx.greedy(4, |g, inputs, states| {
            let mut w = CpuWeights::with_storage(storage);
            w.load_graph(&fx.ckpt, g).unwrap();
            Executor::new()
                .run_with_states(g, &plan_memory(g), &w, inputs, states)
                .unwrap()
        })
    };
    let ((fl, ft), (hl, ht)) = (greedy(WeightStorage::F32), greedy(WeightStorage::Bf16));
    assert_eq!(ft, ht, "greedy tokens");
    assert!(fl.iter().zip(&hl).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn bf16_storage_halves_the_matrices() {
    let fx = fixture("tiny");
    let (g, _) = fx.und_cond();
    let mut f = CpuWeights::new();
    f.load_graph(&fx.ckpt, &g).unwrap();
    let mut h = CpuWeights::with_storage(WeightStorage::Bf16);
    h.load_graph(&fx.ckpt, &g).unwrap();
    let ratio = h.bytes() as f64 / f.bytes() as f64;
    assert!(
        (0.5..0.55).contains(&ratio),
        "bf16 / f32 bytes = {ratio:.3}"
    );
    let names = &fx.ckpt.und_names;
    let held = |n: &str| h.get(Part::Und, &names.text(n)).unwrap().data.storage();
    assert_eq!(held("embed_tokens.weight"), WeightStorage::Bf16);
    assert_eq!(
        held("layers.0.self_attn.q_proj.weight"),
        WeightStorage::Bf16
    );
    assert_eq!(held("layers.0.self_attn.q_proj.bias"), WeightStorage::F32);
    assert_eq!(held("layers.0.input_layernorm.weight"), WeightStorage::F32);
}

/// `tiny-b` stores its und weights as F32 and its gen and bridge weights as F16: bf16 storage rounds
/// them, so the results move, by much less than 1e-2.
#[test]
fn f32_and_f16_checkpoints_are_rounded_and_stay_close() {
    let fx = fixture("tiny-b");
    let close = |what: &str, (g, inputs): (Graph, Tensors)| {
        let (f, _) = run(&fx.ckpt, WeightStorage::F32, &g, &inputs);
        let (h, _) = run(&fx.ckpt, WeightStorage::Bf16, &g, &inputs);
        let mut worst = 0f64;
        for (name, t) in &f {
            let want: Vec<f64> = t.as_f32().unwrap().iter().map(|&v| v as f64).collect();
            let e = rel_l2(h[name].as_f32().unwrap(), &want);
            assert!(e < 1e-2, "{what} {name}: relative L2 {e:.3e}");
            worst = worst.max(e);
        }
        // Rounding happened: close, not equal.
        assert!(worst > 0.0, "{what}: bf16 storage changed nothing");
        if std::env::var_os("HBRIDGE_TEST_VERBOSE").is_some() {
            eprintln!("tiny-b {what}: worst relative L2 {worst:.2e}");
        }
        f
    };
    let und = close("und prefill", fx.und_cond());
    close("gen step", fx.gen_cond(&und));

    // The held values are the checkpoint's rounded to the nearest bf16.
    let (g, _) = fx.und_cond();
    let mut w = CpuWeights::with_storage(WeightStorage::Bf16);
    w.load_graph(&fx.ckpt, &g).unwrap();
    let (gen, _) = fx.gen_cond(&und);
    w.load_graph(&fx.ckpt, &gen).unwrap();
    let q = fx.ckpt.und_names.text("layers.0.self_attn.q_proj.weight");
    for (part, name) in [
        (Part::Und, q.as_str()),
        (Part::Gen, "layers.0.attn.to_q.weight"),
    ] {
        let view = fx.ckpt.tensor(part, name).unwrap();
        let held = w.get(part, name).unwrap().data.as_bf16().unwrap().to_vec();
        let want: Vec<bf16> = view
            .to_f32()
            .unwrap()
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        assert_eq!(held, want, "{part:?} {name} ({})", view.dtype);
    }
}

//! Under bf16 compute on AMX (`CpuCompute::Bf16`, fixed once per process: this file is a test binary
//! of its own) a bf16 matrix that only linear ops read is held once, as AMX tiles: `load_graph` makes
//! no panels, linears of few rows (VDPBF16PS) and of many (the tiles' products) both read the tiles
//! and make no second copy, their results are the f64 product of the bf16-rounded inputs within f32
//! summation error, and the values read back exactly. On a CPU without AMX-BF16 the mode falls back
//! to f32 and the test says so and skips.

#[path = "common/mod.rs"]
mod common;

use common::Rng;
use half::bf16;
use hbridge_engine::{CpuCompute, CpuWeights, Executor, HostTensor, MatmulMode, WeightStorage};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::{DataType, Graph, Op};
use hbridge_loader::{Checkpoint, Part};
use std::collections::HashMap;
use std::path::PathBuf;

const TO_K: &str = "layers.0.attn.to_k.weight";
const OUT: usize = 24;
const K: usize = 72;

/// The tiny fixture's checkpoint once bf16 compute on AMX is on; `None` (the test skips, saying so)
/// on a CPU where it falls back to f32.
fn tiny_under_bf16_compute(test: &str) -> Option<Checkpoint> {
    match CpuCompute::Bf16.request() {
        Ok(MatmulMode::Bf16Amx) => {}
        other => {
            eprintln!("SKIPPED {test}: bf16 compute is {other:?} on this CPU");
            return None;
        }
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/model");
    Some(Checkpoint::open(&dir).unwrap_or_else(|e| panic!("opening {}: {e}", dir.display())))
}

/// `y = x @ to_k^T` over `rows` rows.
fn to_k_graph(rows: usize) -> Graph {
    let mut g = Graph::default();
    let w = g.weight(Part::Gen, TO_K, &[OUT, K]);
    let x = g.input("x", &[rows, K], DataType::F32);
    let y = g.push(Op::Linear { x, w, bias: None }, "y").unwrap();
    g.mark_output("y", y);
    g
}

#[test]
fn bf16_compute_holds_linear_weights_once_as_tiles() {
    let Some(ck) = tiny_under_bf16_compute("bf16_compute_weights") else {
        return;
    };
    let want = ck.tensor(Part::Gen, TO_K).unwrap().to_f32().unwrap();

    let mut w = CpuWeights::with_storage(WeightStorage::Bf16);
    w.load_graph(&ck, &to_k_graph(3)).unwrap();
    let held = &w.get(Part::Gen, TO_K).unwrap().data;
    assert!(held.is_packed());
    // Tiles only: 24 columns padded to 32, 72 depths to 96, two bytes each (panels would add 24 x 72
    // x 2 more).
    let tiles = 2 * 32 * 96;
    assert_eq!(w.bytes(), tiles);

    let mut rng = Rng::new(0xa3);
    let mut ex = Executor::new();
    for rows in [1, 3, 31, 32, 40] {
        let g = to_k_graph(rows);
        let x = rng.vec(rows * K, 1.0);
        let inputs = HashMap::from([("x".to_string(), HostTensor::f32([rows, K], x.clone()))]);
        let out = ex.run(&g, &plan_memory(&g), &w, &inputs).unwrap();
        let y = out["y"].as_f32().unwrap();
        for r in 0..rows {
            for o in 0..OUT {
                let (mut sum, mut mag) = (0f64, 0f64);
                for d in 0..K {
                    let p = bf16::from_f32(x[r * K + d]).to_f64() * want[o * K + d] as f64;
                    sum += p;
                    mag += p.abs();
                }
                let got = y[r * OUT + o] as f64;
                assert!(
                    (got - sum).abs() <= mag * K as f64 * 6e-8 + 1e-30,
                    "{rows} rows: y[{r},{o}] = {got}, want {sum}"
                );
            }
        }
        assert_eq!(w.bytes(), tiles, "{rows} rows made a second copy");
    }
    assert_eq!(w.get(Part::Gen, TO_K).unwrap().data.to_f32_vec(), want);
}

const GATE: &str = "layers.0.feed_forward.linear_1.weight";
const UP: &str = "layers.0.feed_forward.linear_3.weight";
const HIDDEN: usize = 288;

/// `h = silu(x @ gate^T) * (x @ up^T)` over `rows` rows; with `gate_out` the gate's result is a
/// graph output too, which keeps the three nodes from forming a fusion group.
fn feed_forward_graph(rows: usize, gate_out: bool) -> Graph {
    let mut g = Graph::default();
    let wg = g.weight(Part::Gen, GATE, &[HIDDEN, K]);
    let wu = g.weight(Part::Gen, UP, &[HIDDEN, K]);
    let x = g.input("x", &[rows, K], DataType::F32);
    let gate = g
        .push(
            Op::Linear {
                x,
                w: wg,
                bias: None,
            },
            "gate",
        )
        .unwrap();
    let up = g
        .push(
            Op::Linear {
                x,
                w: wu,
                bias: None,
            },
            "up",
        )
        .unwrap();
    let h = g.push(Op::SwiGlu { gate, up }, "h").unwrap();
    g.mark_output("h", h);
    if gate_out {
        g.mark_output("gate", gate);
    }
    g
}

/// Under bf16 compute the gate and up projections and their SwiGLU run as one pass where there are
/// 32 rows or more; the result is the three nodes' bit for bit, and a profile counts the SwiGLU's
/// work as none but keeps the up projection's.
#[test]
fn bf16_compute_fuses_gate_up_swiglu_bit_for_bit() {
    let Some(ck) = tiny_under_bf16_compute("gate/up fusion test") else {
        return;
    };
    let mut w = CpuWeights::with_storage(WeightStorage::Bf16);
    w.load_graph(&ck, &feed_forward_graph(1, false)).unwrap();
    let mut rng = Rng::new(0x5eed);
    let mut ex = Executor::new();
    for rows in [3, 32, 45, 300] {
        let x = rng.vec(rows * K, 2.0);
        let inputs = HashMap::from([("x".to_string(), HostTensor::f32([rows, K], x))]);
        let mut h = Vec::new();
        for gate_out in [false, true] {
            let g = feed_forward_graph(rows, gate_out);
            let out = ex.run(&g, &plan_memory(&g), &w, &inputs).unwrap();
            h.push(out["h"].as_f32().unwrap().to_vec());
        }
        assert!(h[0].iter().all(|v| v.is_finite()), "{rows} rows");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&h[0]), bits(&h[1]), "{rows} rows: fused != one by one");

        let g = feed_forward_graph(rows, false);
        let times = ex
            .profile(&g, &plan_memory(&g), &w, &inputs, &mut HashMap::new())
            .unwrap();
        let want: &[usize] = if rows >= 32 { &[2] } else { &[] };
        assert_eq!(
            times.fused, want,
            "{rows} rows: nodes whose work counts as none"
        );
    }
}

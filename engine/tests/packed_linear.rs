//! nn.Linear over weights packed for the CPU GEMM (x86_64 with AVX2+FMA; f32, or bf16 under bf16
//! storage): against f64 sums on fresh random values, shapes that are not multiples of the 6x16
//! tiles or the depth passes, with and without bias, the output poisoned with NaN before each run;
//! packed and row-major weights give the same bits, and so do bf16 packed and f32 packed on the same
//! bf16 values; which checkpoint weights `load_graph` packs under either storage, and that every
//! other reader still sees `[out, in]`. Where the packed GEMM does not run, the same checks cover the
//! fallback.

#[path = "common/mod.rs"]
mod common;

use common::Rng;
use half::bf16;
use hbridge_engine::{CpuWeights, Executor, HostTensor, WeightStorage};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::{DataType, Graph, Op};
use hbridge_loader::{Checkpoint, Part};
use std::collections::HashMap;
use std::path::PathBuf;

/// Whether this machine runs the packed GEMM (so weights are expected to be packed).
fn packs() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::env::var_os("HBRIDGE_CPU_GEMM").is_none_or(|v| v != "crate")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y = x @ w^T (+ b)` as a one-node graph, `w` the weight `("w", [out, k])`.
fn linear_graph(n: usize, k: usize, out: usize, bias: bool) -> Graph {
    let mut g = Graph::default();
    let x = g.input("x", &[n, k], DataType::F32);
    let b = bias.then(|| g.input("b", &[out], DataType::F32));
    let w = g.weight(Part::Gen, "w", &[out, k]);
    let y = g.push(Op::Linear { x, w, bias: b }, "y").unwrap();
    g.mark_output("y", y);
    g
}

fn inputs(x: &[f32], [n, k]: [usize; 2], b: Option<&[f32]>) -> HashMap<String, HostTensor> {
    let mut m = HashMap::new();
    m.insert("x".to_string(), HostTensor::f32([n, k], x.to_vec()));
    if let Some(b) = b {
        m.insert("b".to_string(), HostTensor::f32([b.len()], b.to_vec()));
    }
    m
}

/// Runs `g` on `x`, on an executor whose arena first held the same graph's output computed from
/// all-NaN inputs (so every output value starts as NaN and must be overwritten).
fn run_poisoned(
    g: &Graph,
    w: &CpuWeights,
    x: &[f32],
    shape: [usize; 2],
    b: Option<&[f32]>,
) -> Vec<f32> {
    let plan = plan_memory(g);
    let mut ex = Executor::new();
    let nan_x = vec![f32::NAN; x.len()];
    let nan_b = b.map(|b| vec![f32::NAN; b.len()]);
    let poisoned = ex
        .run(g, &plan, w, &inputs(&nan_x, shape, nan_b.as_deref()))
        .unwrap();
    let p = poisoned["y"].as_f32().unwrap();
    assert!(p.is_empty() || p.iter().all(|v| v.is_nan()), "poisoning");
    let out = ex.run(g, &plan, w, &inputs(x, shape, b)).unwrap();
    out["y"].as_f32().unwrap().to_vec()
}

/// Each output within `(k + 2) * 2^-24 * (|b| + sum |x w|)` of the f64 value: f32 accumulation with
/// at most one rounding per multiply-add (and one for the bias), in whatever order.
#[track_caller]
fn check(
    what: &str,
    got: &[f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    [n, k, out]: [usize; 3],
) {
    assert_eq!(got.len(), n * out, "{what}: output length");
    let u = 2f64.powi(-24);
    for i in 0..n {
        for o in 0..out {
            let b = b.map_or(0.0, |b| b[o] as f64);
            let (mut sum, mut mag) = (b, b.abs());
            for j in 0..k {
                let t = x[i * k + j] as f64 * w[o * k + j] as f64;
                sum += t;
                mag += t.abs();
            }
            let g = got[i * out + o] as f64;
            let bound = (k + 2) as f64 * u * mag;
            assert!(
                g.is_finite() && (g - sum).abs() <= bound,
                "{what}: y[{i}, {o}] = {g}, f64 {sum}, bound {bound:.3e}"
            );
        }
    }
}

#[test]
fn packed_linear_matches_f64_on_edge_shapes() {
    let mut r = Rng::new(0x5eed);
    for &n in &[1usize, 5, 7, 13, 272] {
        for &out in &[1usize, 15, 17, 33, 768] {
            for &k in &[1usize, 3, 257, 769] {
                for bias in [false, true] {
                    let x = r.vec(n * k, 1.0);
                    let w = r.vec(out * k, 0.2);
                    let b = bias.then(|| r.vec(out, 1.0));
                    let g = linear_graph(n, k, out, bias);
                    let mut weights = CpuWeights::new();
                    weights
                        .insert(Part::Gen, "w", &[out, k], w.clone())
                        .unwrap();
                    let packed = weights.pack_linear_weights(&g);
                    assert_eq!(packed, usize::from(packs()), "{n}x{k}->{out}: packed");
                    let held = &weights.get(Part::Gen, "w").unwrap().data;
                    assert_eq!(held.is_packed(), packs());
                    assert_eq!(weights.bytes(), 4 * out * k, "packed bytes");
                    let what = format!("{n}x{k}->{out} bias {bias}");
                    let got = run_poisoned(&g, &weights, &x, [n, k], b.as_deref());
                    check(&what, &got, &x, &w, b.as_deref(), [n, k, out]);

                    // Row-major (packed per call) gives the same bits.
                    let mut rows = CpuWeights::new();
                    rows.insert(Part::Gen, "w", &[out, k], w.clone()).unwrap();
                    let again = run_poisoned(&g, &rows, &x, [n, k], b.as_deref());
                    let same = got
                        .iter()
                        .zip(&again)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{what}: packed and row-major weights differ");
                }
            }
        }
    }
}

#[test]
fn packed_weight_reads_back_row_major() {
    let mut r = Rng::new(9);
    let (out, k) = (37, 300);
    let w = r.vec(out * k, 1.0);
    let g = linear_graph(2, k, out, false);
    let mut weights = CpuWeights::new();
    weights
        .insert(Part::Gen, "w", &[out, k], w.clone())
        .unwrap();
    weights.pack_linear_weights(&g);
    let held = &weights.get(Part::Gen, "w").unwrap().data;
    assert_eq!(held.to_f32_vec(), w);
    assert_eq!(weights.bytes(), 4 * out * k);
    // A row-major slice on request: kept, and counted, beside the packed values.
    assert_eq!(held.as_f32().unwrap(), w.as_slice());
    let copies = if packs() { 2 } else { 1 };
    assert_eq!(weights.bytes(), copies * 4 * out * k);
}

fn tiny() -> Checkpoint {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/model");
    Checkpoint::open(&dir).unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
}

const TO_K: &str = "layers.0.attn.to_k.weight";

/// `y = x @ to_k^T`, and (with `transpose`) also `to_k^T` as a second output.
fn to_k_graph(transpose: bool) -> Graph {
    let mut g = Graph::default();
    let w = g.weight(Part::Gen, TO_K, &[24, 72]);
    let x = g.input("x", &[3, 72], DataType::F32);
    let y = g.push(Op::Linear { x, w, bias: None }, "y").unwrap();
    g.mark_output("y", y);
    if transpose {
        let t = g.push(Op::Transpose { x: w }, "wt").unwrap();
        g.mark_output("wt", t);
    }
    g
}

#[test]
fn load_graph_packs_only_weights_read_as_linear_weights() {
    let ck = tiny();
    let want = ck.tensor(Part::Gen, TO_K).unwrap().to_f32().unwrap();
    let mut r = Rng::new(3);
    let x = r.vec(3 * 72, 1.0);
    let ins = inputs(&x, [3, 72], None);

    // Read only as a linear weight: packed (where the packed GEMM runs), same bytes.
    let linear = to_k_graph(false);
    let mut w = CpuWeights::with_storage(WeightStorage::F32);
    w.load_graph(&ck, &linear).unwrap();
    assert_eq!(w.get(Part::Gen, TO_K).unwrap().data.is_packed(), packs());
    assert_eq!(w.bytes(), 24 * 72 * 4);
    assert_eq!(w.get(Part::Gen, TO_K).unwrap().data.to_f32_vec(), want);
    let mut ex = Executor::new();
    let y_packed = ex.run(&linear, &plan_memory(&linear), &w, &ins).unwrap()["y"].clone();

    // A graph that also reads it otherwise, run before loading it: resolved row-major, correct.
    let both = to_k_graph(true);
    let out = ex.run(&both, &plan_memory(&both), &w, &ins).unwrap();
    let wt = out["wt"].as_f32().unwrap();
    for o in 0..24 {
        for j in 0..72 {
            assert_eq!(wt[j * 24 + o], want[o * 72 + j]);
        }
    }
    assert_eq!(out["y"], y_packed);

    // Loading that graph unpacks it: row-major again, the same bytes, the same results.
    w.load_graph(&ck, &both).unwrap();
    assert!(!w.get(Part::Gen, TO_K).unwrap().data.is_packed());
    assert_eq!(w.get(Part::Gen, TO_K).unwrap().data.as_f32().unwrap(), want);
    assert_eq!(w.bytes(), 24 * 72 * 4);
    let out = ex.run(&both, &plan_memory(&both), &w, &ins).unwrap();
    assert_eq!(out["y"], y_packed);
    // Once row-major it stays so, even for a graph that only reads it as a linear weight.
    w.load_graph(&ck, &linear).unwrap();
    assert!(!w.get(Part::Gen, TO_K).unwrap().data.is_packed());
}

/// Bit patterns equal (NaN-safe, unlike `==` on floats).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// bf16 weights packed (widened in the micro-kernels) against the same values packed as f32 and
/// held row-major as bf16 (widened per call): the same bits at shapes off every tile, pass and
/// 64-column boundary, with and without bias.
#[test]
fn bf16_packed_linear_is_bit_identical_to_f32_packed() {
    let mut r = Rng::new(0xb16);
    for &n in &[1usize, 5, 7, 13] {
        for &out in &[1usize, 15, 17, 33, 100] {
            for &k in &[1usize, 3, 257, 769] {
                for bias in [false, true] {
                    let x = r.vec(n * k, 1.0);
                    let w: Vec<bf16> = r
                        .vec(out * k, 0.2)
                        .into_iter()
                        .map(bf16::from_f32)
                        .collect();
                    let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
                    let b = bias.then(|| r.vec(out, 1.0));
                    let g = linear_graph(n, k, out, bias);
                    let what = format!("{n}x{k}->{out} bias {bias}");

                    let mut f = CpuWeights::new();
                    f.insert(Part::Gen, "w", &[out, k], wf.clone()).unwrap();
                    assert_eq!(f.pack_linear_weights(&g), usize::from(packs()));
                    let want = run_poisoned(&g, &f, &x, [n, k], b.as_deref());
                    check(&what, &want, &x, &wf, b.as_deref(), [n, k, out]);

                    let mut h = CpuWeights::new();
                    h.insert_bf16(Part::Gen, "w", &[out, k], w.clone()).unwrap();
                    let rows = run_poisoned(&g, &h, &x, [n, k], b.as_deref());
                    assert!(same_bits(&want, &rows), "{what}: row-major bf16 differs");
                    assert_eq!(h.pack_linear_weights(&g), usize::from(packs()));
                    let held = &h.get(Part::Gen, "w").unwrap().data;
                    assert_eq!(held.is_packed(), packs(), "{what}: packed");
                    assert_eq!(held.storage(), WeightStorage::Bf16);
                    assert_eq!(h.bytes(), 2 * out * k, "{what}: bf16 packed bytes");
                    let got = run_poisoned(&g, &h, &x, [n, k], b.as_deref());
                    assert!(same_bits(&want, &got), "{what}: packed bf16 differs");
                }
            }
        }
    }
}

const EMBED: &str = "model.language_model.embed_tokens.weight";

/// `y = x @ embed^T`, and (with `lookup`) also an embedding lookup in the same table.
fn embed_graph(lookup: bool) -> Graph {
    let mut g = Graph::default();
    let e = g.weight(Part::Und, EMBED, &[512, 64]);
    let x = g.input("x", &[3, 64], DataType::F32);
    let y = g
        .push(
            Op::Linear {
                x,
                w: e,
                bias: None,
            },
            "y",
        )
        .unwrap();
    g.mark_output("y", y);
    if lookup {
        let ids = g.input("ids", &[2], DataType::I32);
        let t = g.push(Op::Embed { table: e, ids }, "rows").unwrap();
        g.mark_output("rows", t);
    }
    g
}

/// Under bf16 storage the tiny checkpoint (stored as BF16) gives the same bits as under f32 storage,
/// with its linear-only matrices packed as bf16 (half the bytes); a table an embedding lookup also
/// reads stays row-major bf16, one any other op reads is loaded as f32.
#[test]
fn bf16_storage_packs_linear_only_weights_as_bf16() {
    let ck = tiny();
    let want = ck.tensor(Part::Gen, TO_K).unwrap().to_f32().unwrap();
    let mut r = Rng::new(4);
    let x = r.vec(3 * 72, 1.0);
    let ins = inputs(&x, [3, 72], None);
    let linear = to_k_graph(false);
    let mut f = CpuWeights::with_storage(WeightStorage::F32);
    f.load_graph(&ck, &linear).unwrap();
    let mut ex = Executor::new();
    let y_f32 = ex.run(&linear, &plan_memory(&linear), &f, &ins).unwrap()["y"].clone();

    let mut h = CpuWeights::with_storage(WeightStorage::Bf16);
    h.load_graph(&ck, &linear).unwrap();
    let held = &h.get(Part::Gen, TO_K).unwrap().data;
    assert_eq!(held.is_packed(), packs());
    assert_eq!(held.storage(), WeightStorage::Bf16);
    assert_eq!(h.bytes(), 24 * 72 * 2);
    assert_eq!(held.to_f32_vec(), want);
    let y_bf16 = ex.run(&linear, &plan_memory(&linear), &h, &ins).unwrap()["y"].clone();
    let (a, b) = (y_f32.as_f32().unwrap(), y_bf16.as_f32().unwrap());
    assert!(same_bits(a, b), "bf16 storage differs from f32 storage");

    // Read also by a transpose: loaded again as f32, row-major; the same results.
    let both = to_k_graph(true);
    h.load_graph(&ck, &both).unwrap();
    let held = &h.get(Part::Gen, TO_K).unwrap().data;
    assert!(!held.is_packed());
    assert_eq!(held.as_f32().unwrap(), want);
    let out = ex.run(&both, &plan_memory(&both), &h, &ins).unwrap();
    assert!(same_bits(out["y"].as_f32().unwrap(), a));

    // A table read as a linear weight only: packed bf16; once an embedding lookup reads it too,
    // row-major bf16 (unpacked exactly, the same bytes), and the linear gives the same bits.
    let table: Vec<bf16> = ck
        .tensor(Part::Und, EMBED)
        .unwrap()
        .to_f32()
        .unwrap()
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let mut h = CpuWeights::with_storage(WeightStorage::Bf16);
    let lin = embed_graph(false);
    h.load_graph(&ck, &lin).unwrap();
    assert_eq!(h.get(Part::Und, EMBED).unwrap().data.is_packed(), packs());
    assert_eq!(h.bytes(), 512 * 64 * 2);
    let x = r.vec(3 * 64, 1.0);
    let mut ins = inputs(&x, [3, 64], None);
    let y = ex.run(&lin, &plan_memory(&lin), &h, &ins).unwrap()["y"].clone();
    let look = embed_graph(true);
    h.load_graph(&ck, &look).unwrap();
    let held = &h.get(Part::Und, EMBED).unwrap().data;
    assert!(!held.is_packed());
    assert_eq!(held.as_bf16().unwrap(), table.as_slice());
    assert_eq!(h.bytes(), 512 * 64 * 2);
    ins.insert("ids".to_string(), HostTensor::i32([2], vec![7, 300]));
    let out = ex.run(&look, &plan_memory(&look), &h, &ins).unwrap();
    assert!(same_bits(out["y"].as_f32().unwrap(), y.as_f32().unwrap()));
    // Once row-major it stays so, even for a graph that only reads it as a linear weight.
    h.load_graph(&ck, &lin).unwrap();
    assert!(!h.get(Part::Und, EMBED).unwrap().data.is_packed());
}

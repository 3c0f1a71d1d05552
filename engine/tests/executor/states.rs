//! State tensors (a request's K/V cache kept by the caller across runs): attention over a segment of
//! which only the first `len` rows are keys, state writes applied in place after every node, and every
//! way a caller can get them wrong refused before anything is computed or written.

use crate::common::{assert_close, Rng};
use hbridge_engine::{CpuWeights, EngineError, Executor, HostTensor};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::{DataType, Graph, KvSegment, Op};
use std::collections::HashMap;

const KV: usize = 2;
const HEADS: usize = 4;
const D: usize = 8;

/// f64 attention of `q` `[nq, HEADS*D]` over keys given with their positions (`(position, k row, v
/// row)`); causal: query i sees positions `<= i + total_positions - nq`.
fn reference(
    q: &[f32],
    nq: usize,
    keys: &[(usize, &[f32], &[f32])],
    total_positions: usize,
    causal: bool,
) -> Vec<f64> {
    let (hd, g) = (HEADS * D, HEADS / KV);
    let scale = (D as f64).powf(-0.5);
    let mut out = vec![0f64; nq * hd];
    for i in 0..nq {
        let visible: Vec<&(usize, &[f32], &[f32])> = keys
            .iter()
            .filter(|(p, _, _)| !causal || *p + nq <= i + total_positions)
            .collect();
        if visible.is_empty() {
            continue;
        }
        for h in 0..HEADS {
            let j = h / g;
            let s: Vec<f64> = visible
                .iter()
                .map(|(_, k, _)| {
                    (0..D)
                        .map(|e| q[i * hd + h * D + e] as f64 * k[j * D + e] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = p.iter().sum();
            for e in 0..D {
                out[i * hd + h * D + e] = visible
                    .iter()
                    .zip(&p)
                    .map(|((_, _, v), w)| w / z * v[j * D + e] as f64)
                    .sum();
            }
        }
    }
    out
}

/// A decode-shaped graph: `nq` new tokens' q/k/v as inputs, attention over the cache state (first
/// `cache_len` rows) and the new keys, then the new K/V written into the cache at `cache_len`.
fn step_graph(capacity: usize, nq: usize, causal: bool) -> Graph {
    let kd = KV * D;
    let mut g = Graph::default();
    let q = g.input("q", &[nq, HEADS * D], DataType::F32);
    let k = g.input("k", &[nq, kd], DataType::F32);
    let v = g.input("v", &[nq, kd], DataType::F32);
    let len = g.input("cache_len", &[1], DataType::I32);
    let ck = g.state("cache_k", &[capacity, kd]);
    let cv = g.state("cache_v", &[capacity, kd]);
    let a = g
        .push(
            Op::Attention {
                q,
                segments: vec![KvSegment::with_len(ck, cv, len), KvSegment::new(k, v)],
                heads: HEADS,
                kv_heads: KV,
                head_dim: D,
                causal,
                scale: (D as f32).powf(-0.5),
            },
            "attn",
        )
        .unwrap();
    g.mark_output("attn", a);
    // The new keys go in through a node, as a decode step's post-RoPE keys do.
    let k2 = g
        .push(
            Op::Affine {
                x: k,
                scale: 1.0,
                shift: 0.0,
            },
            "k_out",
        )
        .unwrap();
    g.write_state(ck, k2, len).unwrap();
    g.write_state(cv, v, len).unwrap();
    g
}

struct Setup {
    inputs: HashMap<String, HostTensor>,
    states: HashMap<String, HostTensor>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ck: Vec<f32>,
    cv: Vec<f32>,
}

/// Random q/k/v and a cache whose rows past `len` are NaN (never to be read).
fn setup(seed: u64, capacity: usize, len: usize, nq: usize) -> Setup {
    let kd = KV * D;
    let mut r = Rng::new(seed);
    let (q, k, v) = (
        r.vec(nq * HEADS * D, 1.0),
        r.vec(nq * kd, 1.0),
        r.vec(nq * kd, 1.0),
    );
    let cache = |r: &mut Rng| {
        let mut c = r.vec(capacity * kd, 1.0);
        c[len * kd..].fill(f32::NAN);
        c
    };
    let (ck, cv) = (cache(&mut r), cache(&mut r));
    let inputs = HashMap::from([
        ("q".to_string(), HostTensor::f32([nq, HEADS * D], q.clone())),
        ("k".to_string(), HostTensor::f32([nq, kd], k.clone())),
        ("v".to_string(), HostTensor::f32([nq, kd], v.clone())),
        (
            "cache_len".to_string(),
            HostTensor::i32([1], vec![len as i32]),
        ),
    ]);
    let states = HashMap::from([
        (
            "cache_k".to_string(),
            HostTensor::f32([capacity, kd], ck.clone()),
        ),
        (
            "cache_v".to_string(),
            HostTensor::f32([capacity, kd], cv.clone()),
        ),
    ]);
    Setup {
        inputs,
        states,
        q,
        k,
        v,
        ck,
        cv,
    }
}

fn run(
    g: &Graph,
    inputs: &HashMap<String, HostTensor>,
    states: &mut HashMap<String, HostTensor>,
) -> Result<HashMap<String, HostTensor>, EngineError> {
    Executor::new().run_with_states(g, &plan_memory(g), &CpuWeights::new(), inputs, states)
}

fn bits(t: &HostTensor) -> Vec<u32> {
    t.as_f32().unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_segment_length_masks_rows_but_keeps_their_positions() {
    let kd = KV * D;
    for (capacity, len, nq, causal) in [
        (9, 5, 1, true),
        (9, 5, 3, true),
        (9, 5, 3, false),
        (9, 0, 2, true),
        (6, 4, 2, true),
    ] {
        let s = setup(
            7 + capacity as u64 + len as u64 + nq as u64,
            capacity,
            len,
            nq,
        );
        let g = step_graph(capacity, nq, causal);
        let mut states = s.states.clone();
        let out = run(&g, &s.inputs, &mut states).unwrap();
        let keys: Vec<(usize, &[f32], &[f32])> = (0..len)
            .map(|j| (j, &s.ck[j * kd..(j + 1) * kd], &s.cv[j * kd..(j + 1) * kd]))
            .chain((0..nq).map(|j| {
                (
                    capacity + j,
                    &s.k[j * kd..(j + 1) * kd],
                    &s.v[j * kd..(j + 1) * kd],
                )
            }))
            .collect();
        let want = reference(&s.q, nq, &keys, capacity + nq, causal);
        let what = format!("capacity {capacity}, len {len}, nq {nq}, causal {causal}");
        assert_close(&what, out["attn"].as_f32().unwrap(), &want, 1e-6);
    }
}

#[test]
fn state_writes_land_after_the_reads_and_touch_nothing_else() {
    let (capacity, len, nq, kd) = (9, 5, 2, KV * D);
    let s = setup(3, capacity, len, nq);
    let g = step_graph(capacity, nq, true);
    let mut states = s.states.clone();
    let first = run(&g, &s.inputs, &mut states).unwrap();
    for (name, old, new) in [("cache_k", &s.ck, &s.k), ("cache_v", &s.cv, &s.v)] {
        let got = states[name].as_f32().unwrap();
        let mut want = old.clone();
        want[len * kd..(len + nq) * kd].copy_from_slice(new);
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{name}: rows [{len}, {}) replaced, the rest untouched",
            len + nq
        );
    }
    // The attention saw the cache as it was: running on the updated cache with the same length
    // (rows past it masked) gives the same bits.
    let again = run(&g, &s.inputs, &mut states).unwrap();
    assert_eq!(bits(&first["attn"]), bits(&again["attn"]));
}

#[test]
fn bad_states_and_lengths_are_refused_before_anything_is_written() {
    let (capacity, len, nq) = (6, 4, 2);
    let s = setup(11, capacity, len, nq);
    let g = step_graph(capacity, nq, true);
    let untouched = |states: &HashMap<String, HostTensor>| {
        states.iter().all(|(n, t)| bits(t) == bits(&s.states[n]))
    };

    let mut states = s.states.clone();
    states.remove("cache_v");
    let e = run(&g, &s.inputs, &mut states).unwrap_err();
    assert_eq!(
        e,
        EngineError::MissingState {
            name: "cache_v".into()
        }
    );

    let mut states = s.states.clone();
    states.insert(
        "cache_k".into(),
        HostTensor::f32([capacity + 1, KV * D], vec![0.0; (capacity + 1) * KV * D]),
    );
    let e = run(&g, &s.inputs, &mut states).unwrap_err();
    assert!(
        matches!(e, EngineError::StateShape { ref name, .. } if name == "cache_k"),
        "{e}"
    );

    // Row 5 + 2 new rows overruns a capacity of 6.
    let mut inputs = s.inputs.clone();
    inputs.insert("cache_len".into(), HostTensor::i32([1], vec![5]));
    let mut states = s.states.clone();
    let e = run(&g, &inputs, &mut states).unwrap_err();
    assert!(
        matches!(e, EngineError::StateRow { row: 5, rows: 2, capacity: 6, ref input, .. } if input == "cache_len"),
        "{e}"
    );
    assert!(e.to_string().contains("cache_len"), "{e}");
    assert!(untouched(&states));

    for bad in [-1, 7] {
        inputs.insert("cache_len".into(), HostTensor::i32([1], vec![bad]));
        let e = run(&g, &inputs, &mut states).unwrap_err();
        assert!(
            matches!(e, EngineError::SegmentLength { len, rows: 6, .. } if len == bad as i64),
            "{e}"
        );
        assert!(untouched(&states));
    }
}

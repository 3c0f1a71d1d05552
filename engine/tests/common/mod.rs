//! Shared by the engine's test binaries: a seeded RNG, the relative L2 metric, and a harness that runs a
//! single op through the real executor (graph -> plan -> execute), so every op test also covers dispatch.
#![allow(dead_code)]

use hbridge_engine::{execute, CpuWeights, EngineError, HostTensor};
use hbridge_graph::plan::{plan_memory, MemoryPlan};
use hbridge_graph::{DataType, Graph, Op, TensorId};
use std::collections::HashMap;

/// splitmix64: tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// `n` normal values times `scale`, as f32.
    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * scale) as f32).collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn ints(&mut self, n: usize, below: usize) -> Vec<i32> {
        (0..n).map(|_| self.below(below) as i32).collect()
    }
}

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `||got - want|| / ||want||`, in f64.
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w).powi(2);
        den += w * w;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let e = rel_l2(got, want);
    if std::env::var_os("HBRIDGE_TEST_VERBOSE").is_some() {
        eprintln!("{what}: relative L2 {e:.2e}");
    }
    assert!(e <= tol, "{what}: relative L2 error {e:.3e} > {tol:.1e}");
}

/// Every node output at its own offset, no reuse, no alignment; never panics, even on a malformed graph
/// (a node output that is not a tensor is skipped).
pub fn sequential_plan(g: &Graph) -> MemoryPlan {
    let mut offsets = vec![None; g.tensors.len()];
    let mut end = 0;
    for node in &g.nodes {
        if let Some(t) = g.tensors.get(node.out.index()) {
            offsets[node.out.index()] = Some(end);
            end += t.numel();
        }
    }
    MemoryPlan {
        offsets,
        arena_len: end,
    }
}

/// One op over named inputs, run through `execute`.
#[derive(Default)]
pub struct OneOp {
    pub g: Graph,
    pub inputs: HashMap<String, HostTensor>,
    pub weights: CpuWeights,
}

impl OneOp {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn f32(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> TensorId {
        self.inputs
            .insert(name.into(), HostTensor::f32(shape, data));
        self.g.input(name, shape, DataType::F32)
    }

    pub fn i32(&mut self, name: &str, shape: &[usize], data: Vec<i32>) -> TensorId {
        self.inputs
            .insert(name.into(), HostTensor::i32(shape, data));
        self.g.input(name, shape, DataType::I32)
    }

    pub fn try_run(mut self, op: Op) -> Result<HostTensor, EngineError> {
        let out = self
            .g
            .push(op, "out")
            .expect("test op must pass shape inference");
        self.g.mark_output("out", out);
        let plan = plan_memory(&self.g);
        let mut res = execute(&self.g, &plan, &self.weights, &self.inputs)?;
        Ok(res.remove("out").expect("output present"))
    }

    /// The op's output values (shape checked by `run_shaped`).
    pub fn run(self, op: Op) -> Vec<f32> {
        self.try_run(op)
            .expect("execute")
            .into_f32()
            .expect("f32 output")
    }

    pub fn run_shaped(self, op: Op, shape: &[usize]) -> Vec<f32> {
        let t = self.try_run(op).expect("execute");
        assert_eq!(t.shape, shape, "output shape");
        t.into_f32().expect("f32 output")
    }
}

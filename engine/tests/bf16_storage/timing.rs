//! Wall time of one linear node, bf16 storage against f32, through the executor (run with
//! `cargo test -p hbridge-engine --release --test bf16_storage -- --ignored --nocapture`).

use crate::common::Rng;
use half::bf16;
use hbridge_engine::{CpuWeights, Executor, HostTensor};
use hbridge_graph::plan::plan_memory;
use hbridge_graph::{DataType, Graph, Op};
use hbridge_loader::Part;
use std::collections::HashMap;
use std::time::Instant;

/// Median seconds of `reps` runs after one warm-up.
fn median_run(g: &Graph, w: &CpuWeights, inputs: &HashMap<String, HostTensor>, reps: usize) -> f64 {
    let plan = plan_memory(g);
    let mut ex = Executor::new();
    ex.run(g, &plan, w, inputs).unwrap();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            ex.run(g, &plan, w, inputs).unwrap();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

#[test]
#[ignore = "timing, not a check"]
fn time_linear_bf16_vs_f32() {
    let mut r = Rng::new(3);
    for &(k, out) in &[(2048usize, 2048usize), (3584, 3584), (3584, 18944)] {
        let wv: Vec<bf16> = r
            .vec(out * k, 0.05)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let mut f = CpuWeights::new();
        f.insert(
            Part::Und,
            "w",
            &[out, k],
            wv.iter().map(|b| b.to_f32()).collect(),
        )
        .unwrap();
        let mut h = CpuWeights::new();
        h.insert_bf16(Part::Und, "w", &[out, k], wv).unwrap();
        for &n in &[1usize, 16, 256] {
            let mut g = Graph::default();
            let wi = g.weight(Part::Und, "w", &[out, k]);
            let x = g.input("x", &[n, k], DataType::F32);
            let y = g
                .push(
                    Op::Linear {
                        x,
                        w: wi,
                        bias: None,
                    },
                    "y",
                )
                .unwrap();
            g.mark_output("y", y);
            let inputs =
                HashMap::from([("x".to_string(), HostTensor::f32([n, k], r.vec(n * k, 1.0)))]);
            let reps = if n * out * k > 1 << 30 { 5 } else { 21 };
            let tf = median_run(&g, &f, &inputs, reps);
            let th = median_run(&g, &h, &inputs, reps);
            println!(
                "linear {n:>4} x {k} -> {out:>5}: f32 {:>8.3} ms, bf16 {:>8.3} ms ({:.2}x); weights {} MB vs {} MB",
                tf * 1e3,
                th * 1e3,
                th / tf,
                f.bytes() >> 20,
                h.bytes() >> 20
            );
        }
    }
}

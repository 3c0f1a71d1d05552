//! The host's token choice per generated token, at Qwen2.5-VL's vocabulary (151,936 logits): greedy,
//! temperature only, and temperature + top-p, on a peaked row (a language model's usual shape: a few
//! likely tokens, a long tail) and a flat one (random weights: every token near the top).
//!   cargo bench --bench sampling

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hbridge::chat::{sample, Rng};

const VOCAB: usize = 151_936;

fn rows() -> [(&'static str, Vec<f32>); 2] {
    let mut r = Rng::new(7);
    let mut u = move || r.next_f64() as f32;
    let peaked = (0..VOCAB)
        .map(|_| {
            let x = u();
            if x > 0.9995 {
                10.0 + 4.0 * u()
            } else {
                12.0 * u() - 6.0
            }
        })
        .collect();
    let flat = (0..VOCAB).map(|_| 0.1 * u()).collect();
    [("peaked", peaked), ("flat", flat)]
}

fn sampling(c: &mut Criterion) {
    let mut g = c.benchmark_group("sampling");
    g.throughput(Throughput::Elements(VOCAB as u64));
    for (shape, row) in rows() {
        for (name, t, p) in [
            ("greedy", 0.0, 1.0),
            ("t0.7", 0.7, 1.0),
            ("t0.7_p0.9", 0.7, 0.9),
        ] {
            let mut rng = Rng::new(1);
            g.bench_with_input(BenchmarkId::new(name, shape), &row, |b, row| {
                b.iter(|| sample(row, t, p, &mut rng))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, sampling);
criterion_main!(benches);

//! Microbenchmarks of every hand-written kernel at hbridge-7b4b shapes (issue 5): on the GPU when one is
//! usable (launchers timed with CUDA events over several rotating input sets, so L2 does not serve
//! repeats), otherwise the CPU backend's implementation of the same op (a one-op graph on the executor).
//! Throughput is reported as bytes/s for memory-bound kernels and FLOP/s (elements = FLOPs) for
//! attention. Inputs are random, never zeros.
//!   cargo bench --bench kernels            # all
//!   cargo bench --bench kernels -- attention

mod cases;
mod cpu;
mod gpu;

use criterion::{criterion_group, criterion_main, Criterion};

fn kernels(c: &mut Criterion) {
    match gpu::GpuBench::new() {
        Ok(g) => {
            eprintln!("kernels: CUDA on {}", g.name());
            for case in cases::all() {
                g.bench(c, &case);
            }
        }
        Err(why) => {
            eprintln!(
                "kernels: no usable GPU ({why}); benchmarking the CPU backend's implementations"
            );
            for case in cases::all() {
                if case.gpu_only() {
                    eprintln!(
                        "kernels: {}/{} is GPU only (minutes per CPU iteration, or a GPU kernel version)",
                        case.group, case.name
                    );
                    continue;
                }
                cpu::bench(c, &case);
            }
        }
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);

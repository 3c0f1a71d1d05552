//! The fused gate/up/SwiGLU against the three steps it replaces (the AMX linear twice, then the
//! SwiGLU), bit for bit, at shapes with partial tiles in every dimension, with and without biases,
//! storing and streaming, into a poisoned output.

use super::super::super::packed_b::{Elem, PackedB};
use super::super::linear_streaming;
use super::*;
use crate::cpu::ops::test_values::{poisoned, values};
use half::bf16;

/// `weight_value` makes the weights' element type (f32, or bf16 rounded).
fn check<T: Elem>(m: usize, k: usize, n: usize, with_bias: bool, weight_value: fn(f32) -> T) {
    let x = values(m * k, (m * 7 + k) as u64);
    let weight = |seed: u64| -> PackedB<T> {
        let w: Vec<T> = values(n * k, seed).into_iter().map(weight_value).collect();
        PackedB::from_rows(&w, n, k)
    };
    let (wg, wu) = (weight(11), weight(12));
    let bg = with_bias.then(|| values(n, 13));
    let bu = with_bias.then(|| values(n, 14));
    let mut gate = vec![0.0; m * n];
    let mut up = vec![0.0; m * n];
    linear_streaming(&x, m, wg.packed_ref(), bg.as_deref(), &mut gate, usize::MAX);
    linear_streaming(&x, m, wu.packed_ref(), bu.as_deref(), &mut up, usize::MAX);
    let mut want = vec![0.0; m * n];
    swiglu(&gate, &up, &mut want);
    for (misalign, stream_min) in [(1, usize::MAX), (0, 0)] {
        let (mut buf, start) = poisoned(m * n, misalign);
        let y = &mut buf[start..start + m * n];
        gate_up_streaming(
            &x,
            m,
            (wg.packed_ref(), bg.as_deref()),
            (wu.packed_ref(), bu.as_deref()),
            y,
            stream_min,
        );
        let what = format!(
            "{m}x{k}x{n} (bias {with_bias}, {} weights, misalign {misalign}, stream {stream_min})",
            std::any::type_name::<T>()
        );
        for (i, (&got, &w)) in y.iter().zip(&want).enumerate() {
            assert_eq!(
                got.to_bits(),
                w.to_bits(),
                "{what}: y[{i}] = {got}, want {w}"
            );
        }
        assert!(
            buf[..start]
                .iter()
                .chain(&buf[start + m * n..])
                .all(|v| v.is_nan()),
            "{what}: wrote outside the output"
        );
    }
}

#[test]
fn equals_the_linears_and_swiglu_bit_for_bit() {
    if !supported() {
        eprintln!("SKIPPED gate_up_swiglu test: this CPU or OS has no AMX-BF16");
        return;
    }
    // Edges in every dimension; one 32 x 32 block; several row tasks (over 256 rows) with whole
    // blocks that stream; few rows (column tasks over a shared A).
    for &(m, k, n) in &[(45, 70, 50), (32, 32, 32), (300, 100, 96), (33, 64, 640)] {
        check(m, k, n, true, bf16::from_f32);
        check(m, k, n, false, |v| v);
    }
}

/// Times the fused pass against the two linears and the SwiGLU at the mid preset's shapes (`m x k x
/// n`: 256x256 and 1024x1024 gen steps, 512-token prefill), bf16 weights with their tiles made:
/// `cargo test --release -p hbridge-engine gate_up_timing -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check: run by hand"]
fn gate_up_timing() {
    if !supported() {
        eprintln!("SKIPPED gate_up_timing: this CPU or OS has no AMX-BF16");
        return;
    }
    for &(m, k, n) in &[(272, 768, 3072), (512, 896, 4864), (4112, 768, 3072)] {
        let x = values(m * k, 1);
        let weight = |seed| {
            let w: Vec<bf16> = values(n * k, seed)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            PackedB::from_rows(&w, n, k)
        };
        let (wg, wu) = (weight(2), weight(3));
        let (mut gate, mut up, mut y) = (vec![0.0; m * n], vec![0.0; m * n], vec![0.0; m * n]);
        let best = |f: &mut dyn FnMut()| {
            (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::MAX, f64::min)
        };
        let apart = best(&mut || {
            super::super::linear(&x, m, wg.packed_ref(), None, &mut gate);
            super::super::linear(&x, m, wu.packed_ref(), None, &mut up);
            crate::cpu::ops::elementwise::swiglu(&gate, &up, &mut y);
        });
        let fused = best(&mut || {
            gate_up_swiglu(
                &x,
                m,
                (wg.packed_ref(), None),
                (wu.packed_ref(), None),
                &mut y,
            )
        });
        eprintln!("{m} x {k} x {n}: apart {apart:.2} ms, fused {fused:.2} ms");
    }
}

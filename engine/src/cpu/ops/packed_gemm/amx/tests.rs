//! The AMX linear against an f64 product of the same bf16-rounded inputs, at shapes with partial tiles
//! in every dimension, f32 and bf16 weights, with and without a bias.

use super::super::packed_b::PackedB;
use super::*;
use crate::cpu::ops::test_values::{poisoned, values};
use half::bf16;

fn widen(bits: u16) -> f64 {
    f32::from_bits((bits as u32) << 16) as f64
}

/// Checks `linear` on `m x k` times a `k x n` weight packed from `w_rows` (`[n, k]`), storing from
/// the tiles and (into an output on a cache line) streaming.
fn check(m: usize, k: usize, n: usize, bf16_weight: bool, with_bias: bool) {
    for (misalign, stream_min) in [(1, usize::MAX), (0, 0)] {
        check_stores(m, k, n, (bf16_weight, with_bias), (misalign, stream_min));
    }
}

fn check_stores(
    m: usize,
    k: usize,
    n: usize,
    (bf16_weight, with_bias): (bool, bool),
    (misalign, stream_min): (usize, usize),
) {
    let x = values(m * k, (m * 31 + k) as u64);
    let w = values(n * k, (n * 17 + k) as u64);
    let bias = with_bias.then(|| values(n, 5));
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let (pf, pb);
    let packed = if bf16_weight {
        pb = PackedB::from_rows(&wb, n, k);
        pb.packed_ref()
    } else {
        pf = PackedB::from_rows(&w, n, k);
        pf.packed_ref()
    };
    let (mut buf, start) = poisoned(m * n, misalign);
    let y = &mut buf[start..start + m * n];
    linear_streaming(&x, m, packed, bias.as_deref(), y, stream_min);
    let what = format!(
        "{m}x{k}x{n} (bf16 weight {bf16_weight}, bias {with_bias}, misalign {misalign}, stream \
         {stream_min})"
    );
    assert_rounded_product(&what, (&x, m, k), (&wb, n), bias.as_deref(), y);
}

/// `y` (`m` x `n`) against the f64 product of `x` rounded to bf16 and `wb` (`[n, k]`), plus the
/// bias: f32 sums of exact products, k roundings of at most 2^-24 of the running magnitude.
#[track_caller]
fn assert_rounded_product(
    what: &str,
    (x, m, k): (&[f32], usize, usize),
    (wb, n): (&[bf16], usize),
    bias: Option<&[f32]>,
    y: &[f32],
) {
    let xr: Vec<f64> = x.iter().map(|&v| widen(round_bf16(v))).collect();
    let wr: Vec<f64> = wb.iter().map(|v| v.to_f64()).collect();
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut mag) = (0f64, 0f64);
            for d in 0..k {
                let p = xr[i * k + d] * wr[j * k + d];
                sum += p;
                mag += p.abs();
            }
            let b = bias.map_or(0.0, |b| b[j] as f64);
            let want = sum + b;
            let got = y[i * n + j] as f64;
            let tol = (mag + b.abs()) * k as f64 * 6e-8 + 1e-30;
            assert!(
                (got - want).abs() <= tol,
                "{what}: y[{i},{j}] = {got}, want {want}"
            );
        }
    }
}

#[test]
fn matches_the_f64_product_of_the_rounded_inputs() {
    if !supported() {
        eprintln!("SKIPPED amx::tests: this CPU or OS has no AMX-BF16");
        return;
    }
    for &(m, k, n) in &[
        (1, 1, 1),
        (37, 70, 45),
        (64, 256, 64),
        (300, 96, 200),
        (33, 800, 17),
    ] {
        for bf16_weight in [false, true] {
            check(m, k, n, bf16_weight, !bf16_weight);
        }
    }
    // Rows over one task's block and columns split among tasks.
    check(600, 64, 600, true, true);
}

/// One thread: every task owns whole rows and packs them into its thread's buffer; eight: tasks share
/// rows and A is packed once into the shared buffer. Either buffer is reused, so the second call's
/// padding (depths past k) must be written as zeros over the first call's values: NaNs here, which
/// would spread through the zero padding of B.
#[test]
fn a_is_packed_per_task_or_shared_over_dirty_buffers() {
    if !supported() {
        eprintln!("SKIPPED amx::tests: this CPU or OS has no AMX-BF16");
        return;
    }
    for threads in [1, 8] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool");
        pool.install(|| {
            let (m, k, n) = (600, 800, 40);
            let w: Vec<bf16> = values(n * k, 3)
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect();
            let mut y = vec![0f32; m * n];
            linear(
                &vec![f32::NAN; m * k],
                m,
                PackedB::from_rows(&w, n, k).packed_ref(),
                None,
                &mut y,
            );
            check(300, 70, 45, true, true);
        });
    }
}

#[test]
fn the_tile_copy_is_made_once_and_reused() {
    if !supported() {
        eprintln!("SKIPPED amx::tests: this CPU or OS has no AMX-BF16");
        return;
    }
    let (m, k, n) = (40, 100, 50);
    let w: Vec<bf16> = values(n * k, 9)
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let packed = PackedB::from_rows(&w, n, k);
    assert_eq!(packed.tile_bytes(), 0);
    let x = values(m * k, 10);
    let mut first = vec![0f32; m * n];
    linear(&x, m, packed.packed_ref(), None, &mut first);
    // 50 columns padded to 64, 100 depths to 128, two bytes each.
    assert_eq!(packed.tile_bytes(), 64 * 128 * 2);
    let mut second = vec![f32::NAN; m * n];
    linear(&x, m, packed.packed_ref(), None, &mut second);
    assert_eq!(first, second);
}

/// Times the AMX linear at the mid and 7b4b presets' prefill and gen-step shapes (`m x k x n`), its
/// weight bf16 and its tile copy made, into an output on a cache line (as the arena's are):
/// `cargo test --release -p hbridge-engine amx_linear_timing -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check: run by hand"]
fn amx_linear_timing() {
    if !supported() {
        eprintln!("SKIPPED amx_linear_timing: this CPU or OS has no AMX-BF16");
        return;
    }
    let shapes = [
        (4112, 768, 3072),
        (4112, 3072, 768),
        (4112, 768, 768),
        (512, 896, 4864),
        (512, 4864, 896),
        (4096, 4096, 4096),
    ];
    for &(m, k, n) in &shapes {
        let x = values(m * k, 1);
        let w: Vec<bf16> = values(n * k, 2)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let packed = PackedB::from_rows(&w, n, k);
        let (mut buf, start) = poisoned(m * n, 0);
        let y = &mut buf[start..start + m * n];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            linear(&x, m, packed.packed_ref(), None, y);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let tflops = 2.0 * (m * k * n) as f64 / best / 1e12;
        let kbs = k.div_ceil(32);
        let mut pack = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let mut a = vec![0u16; m.next_multiple_of(32) * kbs * 32];
            pack_a_rows(&x, (m, k, kbs), 0..m.next_multiple_of(32), &mut a);
            std::hint::black_box(a);
            pack = pack.min(t.elapsed().as_secs_f64());
        }
        eprintln!(
            "{m} x {k} x {n}: {:.2} ms, {tflops:.3} TFLOP/s; packing A alone {:.2} ms",
            best * 1e3,
            pack * 1e3
        );
    }
}

/// The tiles a weight held only as tiles is built with are the ones the panels give, and give its
/// rows back (no AMX needed: layout only).
#[test]
fn tiles_from_rows_match_the_packed_tiles_and_give_the_rows_back() {
    for &(n, k) in &[(45, 70), (64, 64), (17, 33), (1, 1)] {
        let wb: Vec<bf16> = values(n * k, (n + k) as u64)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let panels = PackedB::from_rows(&wb, n, k);
        let want = pack_b(panels.packed_ref(), n.next_multiple_of(32), k.div_ceil(32));
        assert_eq!(*tiles_from_rows(&wb, n, k), *want, "{n} x {k}");
        let bits: Vec<u16> = wb.iter().map(|v| v.to_bits()).collect();
        assert_eq!(rows_from_tiles(&want, n, k), bits, "{n} x {k}");
        let tiles = PackedB::tiles_only(&wb, n, k);
        assert!(tiles.is_tiles_only() && !panels.is_tiles_only());
        assert_eq!(tiles.to_rows(), wb, "{n} x {k}");
        assert!(tiles == panels, "{n} x {k}: equal values");
        assert_eq!(tiles.tile_bytes(), 2 * want.len());
    }
}

/// Fewer than 32 rows over a weight held only as tiles (VDPBF16PS), through the linear's dispatch:
/// row counts over several row groups, columns and depths off the tiles, with and without a bias,
/// the output poisoned; 32 rows and more on the tiles give the same bits as over the panels' copy.
#[test]
fn few_rows_over_tiles_match_the_f64_product_of_the_rounded_inputs() {
    if !supported() {
        eprintln!("SKIPPED amx::tests: this CPU or OS has no AMX-BF16");
        return;
    }
    for &(m, k, n) in &[
        (1, 70, 45),
        (2, 64, 64),
        (6, 256, 33),
        (7, 100, 96),
        (13, 33, 17),
        (31, 128, 40),
    ] {
        for with_bias in [false, true] {
            let x = values(m * k, (m * 7 + k) as u64);
            let wb: Vec<bf16> = values(n * k, (n * 3 + k) as u64)
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect();
            let bias = with_bias.then(|| values(n, 11));
            let tiles = PackedB::tiles_only(&wb, n, k);
            let (mut buf, start) = poisoned(m * n, 1);
            let y = &mut buf[start..start + m * n];
            crate::cpu::ops::linear::linear_packed(
                &x,
                m,
                k,
                tiles.packed_ref(),
                bias.as_deref(),
                y,
            );
            let what = format!("few rows {m}x{k}x{n} (bias {with_bias})");
            assert_rounded_product(&what, (&x, m, k), (&wb, n), bias.as_deref(), y);
        }
    }
    let (m, k, n) = (40, 100, 50);
    let x = values(m * k, 12);
    let wb: Vec<bf16> = values(n * k, 13)
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let (tiles, panels) = (
        PackedB::tiles_only(&wb, n, k),
        PackedB::from_rows(&wb, n, k),
    );
    let (mut a, mut b) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
    linear(&x, m, tiles.packed_ref(), None, &mut a);
    linear(&x, m, panels.packed_ref(), None, &mut b);
    assert_eq!(a, b);
}

//! GPU tests of kernels/cuda/elementwise.cu, and the placement helpers the other hand-written-kernel
//! tests share (inputs at aligned and deliberately misaligned addresses, poisoned outputs).

use super::common::{self, round_bf16, Rng, BF16_TOL};
use hbridge_engine::cuda::buffer::{self, DeviceBf16};
use hbridge_engine::cuda::ops::elementwise as ew;
use hbridge_engine::cuda::{dev_ptr, DevPtr, Gpu};

/// bf16 values placed `shift` elements past the start of their buffer: shift 0 is 16-byte aligned (a
/// fresh allocation), shift 1 is only 2-byte aligned, which the launchers must route to scalar paths.
pub(super) struct Placed {
    _buf: DeviceBf16,
    pub ptr: DevPtr,
}

/// Uploads `v` at `shift`; the elements before it hold a huge value, so a stray read shows in the result.
pub(super) fn place(gpu: &Gpu, v: &[f32], shift: usize) -> Placed {
    let mut all = vec![3.0e38f32; shift];
    all.extend_from_slice(v);
    let buf = common::up(gpu, &all);
    let ptr = buf.ptr(gpu).offset(shift, 2);
    Placed { _buf: buf, ptr }
}

/// A poisoned (NaN) output of `n` bf16 at `shift`.
pub(super) fn poisoned(gpu: &Gpu, n: usize, shift: usize) -> Placed {
    let buf = common::out_buffer(gpu, n + shift);
    let ptr = buf.ptr(gpu).offset(shift, 2);
    Placed { _buf: buf, ptr }
}

/// i32 values on the device; keep the slice alive while its pointer is used.
pub(super) fn ints(gpu: &Gpu, v: &[i32]) -> (cudarc::driver::CudaSlice<i32>, DevPtr) {
    let s = buffer::upload(gpu, v).expect("upload i32");
    let p = dev_ptr(&s, gpu.stream());
    (s, p)
}

/// Asserts bit-for-bit equal outputs (data movement and exactly rounded results); NaN never matches.
pub(super) fn exact(case: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{case}: length");
    let bad = got
        .iter()
        .zip(want)
        .position(|(g, w)| g.to_bits() != w.to_bits() || g.is_nan());
    if let Some(i) = bad {
        panic!("{case}: element {i} is {} , expected {}", got[i], want[i]);
    }
    println!("{case}: exact ({} values)", got.len());
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Flat unary and binary ops at lengths that are and are not multiples of 8, aligned and not, and in
/// place.
#[test]
fn flat_ops_match_f64() {
    let Some(gpu) = common::gpu("elementwise::flat_ops_match_f64") else {
        return;
    };
    let mut rng = Rng::fresh("elementwise::flat_ops_match_f64");
    for &n in &[1usize, 7, 8, 1000, 4096 + 5, 100_003] {
        for shift in [0usize, 1] {
            let a = rng.normal_bf16(n, 2.0);
            let b = rng.normal_bf16(n, 1.0);
            let pa = place(&gpu, &a, shift);
            let pb = place(&gpu, &b, shift);
            let case = |op: &str| format!("{op} n={n} shift={shift}");

            let out = poisoned(&gpu, n, shift);
            ew::add(&gpu, pa.ptr, pb.ptr, out.ptr, n, n).unwrap();
            let want: Vec<f64> = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| x as f64 + y as f64)
                .collect();
            common::check(
                &case("add"),
                &common::down(&gpu, out.ptr, n),
                &want,
                BF16_TOL,
            );

            let out = poisoned(&gpu, n, shift);
            ew::swiglu(&gpu, pa.ptr, pb.ptr, out.ptr, n).unwrap();
            let want: Vec<f64> = a
                .iter()
                .zip(&b)
                .map(|(&g, &u)| silu(g as f64) * u as f64)
                .collect();
            common::check(
                &case("swiglu"),
                &common::down(&gpu, out.ptr, n),
                &want,
                BF16_TOL,
            );

            let out = poisoned(&gpu, n, shift);
            ew::silu(&gpu, pa.ptr, out.ptr, n).unwrap();
            let want: Vec<f64> = a.iter().map(|&x| silu(x as f64)).collect();
            common::check(
                &case("silu"),
                &common::down(&gpu, out.ptr, n),
                &want,
                BF16_TOL,
            );

            let out = poisoned(&gpu, n, shift);
            ew::gelu(&gpu, pa.ptr, out.ptr, n).unwrap();
            let want: Vec<f64> = a
                .iter()
                .map(|&x| {
                    let x = x as f64;
                    0.5 * x * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
                })
                .collect();
            common::check(
                &case("gelu"),
                &common::down(&gpu, out.ptr, n),
                &want,
                BF16_TOL,
            );

            let out = poisoned(&gpu, n, shift);
            ew::affine(&gpu, pa.ptr, out.ptr, n, 1.7, -0.3).unwrap();
            let want: Vec<f64> = a
                .iter()
                .map(|&x| x as f64 * 1.7f32 as f64 - 0.3f32 as f64)
                .collect();
            common::check(
                &case("affine"),
                &common::down(&gpu, out.ptr, n),
                &want,
                BF16_TOL,
            );

            // In place: out aliases the first input.
            let inplace = place(&gpu, &a, shift);
            ew::add(&gpu, inplace.ptr, pb.ptr, inplace.ptr, n, n).unwrap();
            let want: Vec<f64> = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| x as f64 + y as f64)
                .collect();
            common::check(
                &case("add in place"),
                &common::down(&gpu, inplace.ptr, n),
                &want,
                BF16_TOL,
            );
        }
    }
}

/// Row broadcasts (add, modulate, gate_residual) and the per-channel bias, at row lengths that are and
/// are not multiples of 8, aligned and not, and in place.
#[test]
fn broadcast_ops_match_f64() {
    let Some(gpu) = common::gpu("elementwise::broadcast_ops_match_f64") else {
        return;
    };
    let mut rng = Rng::fresh("elementwise::broadcast_ops_match_f64");
    for &(rows, d) in &[
        (1usize, 12usize),
        (7, 3592),
        (1000, 72),
        (33, 2520),
        (5, 13),
        (2, 1),
    ] {
        for shift in [0usize, 1] {
            let n = rows * d;
            let x = rng.normal_bf16(n, 1.0);
            let y = rng.normal_bf16(n, 1.0);
            let v = rng.normal_bf16(d, 0.7);
            let (px, py, pv) = (
                place(&gpu, &x, shift),
                place(&gpu, &y, shift),
                place(&gpu, &v, shift),
            );
            let case = |op: &str| format!("{op} rows={rows} d={d} shift={shift}");

            let out = poisoned(&gpu, n, shift);
            ew::add(&gpu, px.ptr, pv.ptr, out.ptr, n, d).unwrap();
            let want: Vec<f64> = (0..n).map(|i| x[i] as f64 + v[i % d] as f64).collect();
            common::check(
                &case("add row"),
                &common::down(&gpu, out.ptr, n),
                &want,
                BF16_TOL,
            );

            let out = poisoned(&gpu, n, shift);
            ew::modulate(&gpu, px.ptr, pv.ptr, out.ptr, n, d).unwrap();
            let want: Vec<f64> = (0..n)
                .map(|i| x[i] as f64 * (1.0 + v[i % d] as f64))
                .collect();
            common::check(
                &case("modulate"),
                &common::down(&gpu, out.ptr, n),
                &want,
                BF16_TOL,
            );

            let out = poisoned(&gpu, n, shift);
            ew::gate_residual(&gpu, px.ptr, pv.ptr, py.ptr, out.ptr, n, d).unwrap();
            let gate = |i: usize| x[i] as f64 + (v[i % d] as f64).tanh() * y[i] as f64;
            let want: Vec<f64> = (0..n).map(gate).collect();
            common::check(
                &case("gate_residual"),
                &common::down(&gpu, out.ptr, n),
                &want,
                BF16_TOL,
            );

            // In place, as the residual stream is updated.
            let inplace = place(&gpu, &x, shift);
            ew::gate_residual(&gpu, inplace.ptr, pv.ptr, py.ptr, inplace.ptr, n, d).unwrap();
            common::check(
                &case("gate_residual in place"),
                &common::down(&gpu, inplace.ptr, n),
                &want,
                BF16_TOL,
            );

            // [channels, hw] with one bias per channel: `rows` channels of `d` pixels.
            let bias = rng.normal_bf16(rows, 1.0);
            let pbias = place(&gpu, &bias, shift);
            let out = poisoned(&gpu, n, shift);
            ew::add_channel_bias(&gpu, px.ptr, pbias.ptr, out.ptr, rows, d).unwrap();
            let want: Vec<f64> = (0..n).map(|i| x[i] as f64 + bias[i / d] as f64).collect();
            common::check(
                &case("add_channel_bias"),
                &common::down(&gpu, out.ptr, n),
                &want,
                BF16_TOL,
            );
        }
    }
    // A VAE-shaped bias (many pixels per channel: several column strips per channel).
    let (c, hw) = (4usize, 1 << 18);
    let x = rng.normal_bf16(c * hw, 1.0);
    let bias = rng.normal_bf16(c, 1.0);
    let (px, pb) = (place(&gpu, &x, 0), place(&gpu, &bias, 0));
    let out = poisoned(&gpu, c * hw, 0);
    ew::add_channel_bias(&gpu, px.ptr, pb.ptr, out.ptr, c, hw).unwrap();
    let want: Vec<f64> = (0..c * hw)
        .map(|i| x[i] as f64 + bias[i / hw] as f64)
        .collect();
    common::check(
        "add_channel_bias 4x262144",
        &common::down(&gpu, out.ptr, c * hw),
        &want,
        BF16_TOL,
    );
}

/// f32 -> bf16 rounds to nearest even exactly as the host does; bf16 -> f32 is exact.
#[test]
fn casts_are_exact() {
    let Some(gpu) = common::gpu("elementwise::casts_are_exact") else {
        return;
    };
    let mut rng = Rng::fresh("elementwise::casts_are_exact");
    for &n in &[1usize, 9, 1000, 65536 + 3] {
        for shift in [0usize, 1] {
            // Full-precision f32 values, plus exact ties (bf16 value + half an ulp) to exercise the even
            // rounding.
            let mut src: Vec<f32> = (0..n)
                .map(|_| ((rng.uniform() - 0.5) * 2.0f64.powi(rng.below(40) as i32 - 20)) as f32)
                .collect();
            for (i, v) in src.iter_mut().enumerate().step_by(7) {
                let b = round_bf16(*v).to_bits() & 0xffff_0000;
                *v = f32::from_bits(b | 0x8000 | ((i as u32 & 1) << 16));
            }
            let mut host = vec![f32::NAN; shift];
            host.extend_from_slice(&src);
            let s = buffer::upload(&gpu, &host).expect("upload f32");
            let sp = dev_ptr(&s, gpu.stream()).offset(shift, 4);
            let out = poisoned(&gpu, n, shift);
            ew::f32_to_bf16(&gpu, sp, out.ptr, n).unwrap();
            let want: Vec<f32> = src.iter().map(|&v| round_bf16(v)).collect();
            let got = common::down(&gpu, out.ptr, n);
            exact(&format!("f32_to_bf16 n={n} shift={shift}"), &got, &want);

            // Back: the bf16 values widen exactly.
            let back = buffer::upload(&gpu, &vec![f32::NAN; n + shift]).expect("upload f32");
            let bp = dev_ptr(&back, gpu.stream()).offset(shift, 4);
            ew::bf16_to_f32(&gpu, out.ptr, bp, n).unwrap();
            let got: Vec<f32> = buffer::download(&gpu, bp, n).expect("download f32");
            exact(&format!("bf16_to_f32 n={n} shift={shift}"), &got, &want);
        }
    }
}

/// Impossible arguments are errors, empty ones no-ops.
#[test]
fn launchers_validate() {
    let Some(gpu) = common::gpu("elementwise::launchers_validate") else {
        return;
    };
    let x = place(&gpu, &[1.0; 16], 0);
    assert!(ew::add(&gpu, x.ptr, x.ptr, x.ptr, 10, 3).is_err());
    assert!(ew::modulate(&gpu, x.ptr, x.ptr, x.ptr, 10, 0).is_err());
    assert!(ew::gate_residual(&gpu, x.ptr, x.ptr, x.ptr, x.ptr, 10, 4).is_err());
    ew::add(&gpu, x.ptr, x.ptr, x.ptr, 0, 0).unwrap();
    ew::silu(&gpu, x.ptr, x.ptr, 0).unwrap();
    ew::add_channel_bias(&gpu, x.ptr, x.ptr, x.ptr, 0, 5).unwrap();
    gpu.synchronize().unwrap();
}

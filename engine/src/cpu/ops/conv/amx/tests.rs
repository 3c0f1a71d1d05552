//! The AMX convolution against an f64 convolution of the same bf16-rounded inputs: channel counts
//! and widths that are not multiples of the tiles, 1x1 to 5x5 kernels, padding on either side, one
//! output row per band and the whole image in one band.

use super::super::tests::direct;
use super::*;
use crate::cpu::ops::test_values::{poisoned, values};

fn widen(bits: u16) -> f64 {
    f32::from_bits((bits as u32) << 16) as f64
}

/// (cin, h, w, cout, k, pad_before, pad_after)
fn check(case: (usize, usize, usize, usize, usize, usize, usize), with_bias: bool, seed: u64) {
    let (cin, h, w, cout, k, ..) = case;
    let s = Conv2dShape::stride1(case);
    let x = values(cin * h * w, seed);
    let wt = values(cout * cin * k * k, seed + 1);
    let bias = with_bias.then(|| values(cout, seed + 2));
    let rounded = |v: &[f32]| v.iter().map(|&v| widen(round_bf16(v))).collect::<Vec<_>>();
    let want = direct(&rounded(&x), &rounded(&wt), &s);
    let row_bytes = Geometry::new(&s).pairs * (s.wout + k - 1) * 4;
    // Bands of one row, a few rows and the whole image; weight chunks of one pair of channel blocks
    // and the default; streamed stores (threshold 0) into an aligned and a misaligned output, and
    // tile stores.
    for (band_bytes, chunk_bytes, misalign, stream_min) in [
        (1, 1, 0, 0),
        ((k + 2) * row_bytes, A_CHUNK_BYTES, 1, 0),
        (BAND_BYTES, 1, 1, usize::MAX),
        (BAND_BYTES, A_CHUNK_BYTES, 0, 0),
        (BAND_BYTES, A_CHUNK_BYTES, 0, usize::MAX),
    ] {
        let len = cout * s.hout * s.wout;
        let (mut buf, start) = poisoned(len, misalign);
        let out = &mut buf[start..start + len];
        let budgets = (band_bytes, chunk_bytes, stream_min);
        conv2d_banded(&x, &wt, bias.as_deref(), &s, out, budgets);
        for (o, (&got, &(sum, mag))) in out.iter().zip(&want).enumerate() {
            let b = bias
                .as_ref()
                .map_or(0.0, |b| b[o / (s.hout * s.wout)] as f64);
            // f32 sums of exact products: one rounding of at most 2^-24 of the running magnitude
            // per depth.
            let tol = (mag + b.abs()) * (cin * k * k) as f64 * 6e-8 + 1e-30;
            assert!(
                (got as f64 - (sum + b)).abs() <= tol,
                "{case:?} bias {with_bias} band {band_bytes} chunk {chunk_bytes} stream \
                 {stream_min} misalign {misalign}: out[{o}] = {got}, want {}",
                sum + b
            );
        }
    }
}

#[test]
fn matches_the_f64_convolution_of_the_rounded_inputs() {
    if !supported() {
        eprintln!("SKIPPED conv::amx::tests: this CPU or OS has no AMX-BF16");
        return;
    }
    let cases = [
        (3, 7, 9, 5, 3, 1, 1),
        (1, 1, 1, 1, 3, 1, 1),
        (1, 1, 1, 1, 1, 0, 0),
        // Channels over one depth block and one output pair of blocks; widths over one pixel block;
        // whole 32 x 32 blocks on 64-byte lines (streamed).
        (40, 6, 37, 33, 3, 1, 1),
        (64, 5, 64, 64, 3, 1, 1),
        (70, 4, 45, 3, 3, 0, 1),
        (33, 3, 70, 96, 1, 0, 0),
        (5, 9, 11, 17, 5, 2, 2),
        (32, 8, 33, 32, 3, 0, 0),
        (40, 3, 64, 64, 3, 1, 1),
    ];
    for (i, &case) in cases.iter().enumerate() {
        check(case, i % 2 == 0, 10 * i as u64 + 1);
        check(case, i % 2 == 1, 10 * i as u64 + 5);
    }
}

/// Times the AMX convolution and, apart, its input rounding at the `mid` preset's VAE-decoder shapes
/// at 1024x1024 (the rounding is a pass over the input that the f32 path's padding also makes).
/// `cargo test --release -p hbridge-engine --lib conv_amx_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn conv_amx_timing() {
    if !supported() {
        eprintln!("SKIPPED conv_amx_timing: this CPU or OS has no AMX-BF16");
        return;
    }
    // (cin, size, cout, k)
    let shapes = [
        (128, 1024, 128, 3),
        (64, 1024, 64, 3),
        (128, 1024, 64, 3),
        (256, 512, 256, 3),
        (128, 512, 128, 3),
        (256, 256, 256, 3),
        (128, 1024, 64, 1),
        (64, 1024, 3, 3),
    ];
    let level = level();
    for &(cin, hw, cout, k) in &shapes {
        let s = Conv2dShape::stride1((cin, hw, hw, cout, k, k / 2, k / 2));
        let x = values(cin * hw * hw, 1);
        let wt = values(cout * cin * k * k, 2);
        // On a cache line, as an arena's tensors are.
        let (mut buf, start) = poisoned(cout * hw * hw, 0);
        let out = &mut buf[start..start + cout * hw * hw];
        let g = Geometry::new(&s);
        let (mut total, mut pack) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t = std::time::Instant::now();
            conv2d(&x, &wt, None, &s, out);
            total = total.min(t.elapsed().as_secs_f64() * 1e3);
            let band = g.band_rows(BAND_BYTES, hw);
            let mut xin = vec![0u32; g.pairs * g.plane_len(band)];
            let t = std::time::Instant::now();
            for oy0 in (0..hw).step_by(band) {
                let rows = band.min(hw - oy0);
                let pp = g.plane_len(rows);
                xin[..g.pairs * pp]
                    .par_chunks_mut(pp)
                    .enumerate()
                    .for_each(|(pair, dst)| {
                        pack_pair_plane(level, &x, &s, &g, (oy0, rows), pair, dst)
                    });
            }
            pack = pack.min(t.elapsed().as_secs_f64() * 1e3);
        }
        let flops = 2.0 * (cout * cin * k * k * hw * hw) as f64;
        println!(
            "{cin:>4} -> {cout:>3} k{k} at {hw:>4}: {total:8.2} ms ({:.2} TFLOP/s), input rounding {pack:7.2} ms",
            flops / total * 1e-9
        );
    }
}

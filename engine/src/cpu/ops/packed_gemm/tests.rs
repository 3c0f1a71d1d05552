//! The packed GEMM against f64 sums on seeded values: every shape class (edge tiles in rows, columns
//! and depth passes; one row; empty depth), strided views (A packed per block, a destination with
//! wider rows or transposed), with and without bias, both B sources, with and without threads; and
//! the bit-level promises (B packed ahead or per call, column panels, thread splits: the same bits;
//! B packed as bf16 and as f32 on the same values: the same bits).

use super::super::test_values::values;
use super::*;
use half::bf16;

/// Each `got[i, j]` (at `i*rs + j*cs`) within `(k + 2) * 2^-24 * (|bias| + sum_p |a b|)` of the f64
/// value: at most one rounding per multiply-add (a bound for any order of f32 accumulation).
#[track_caller]
fn check(
    what: &str,
    got: &[f32],
    (a, b): (&Mat<'_>, &Mat<'_>),
    bias: Option<&[f32]>,
    (rs, cs): (usize, usize),
) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    for i in 0..m {
        for j in 0..n {
            let b0 = bias.map_or(0.0, |b| b[j] as f64);
            let (mut sum, mut mag) = (b0, b0.abs());
            for p in 0..k {
                let t = a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64;
                sum += t;
                mag += t.abs();
            }
            let bound = (k + 2) as f64 * 2f64.powi(-24) * mag;
            let g = got[i * rs + j * cs] as f64;
            assert!(
                (g - sum).abs() <= bound,
                "{what}: ({i}, {j}) got {g}, want {sum} (bound {bound:.3e})"
            );
        }
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn matches_f64_on_edge_shapes() {
    if !available() {
        return;
    }
    let mut seed = 1;
    for &m in &[1, 2, 5, 6, 7, 13, 300] {
        for &n in &[1, 15, 16, 17, 33, 64, 65, 100] {
            for &k in &[1, 3, 257, 300, 769] {
                seed += 1;
                let x = values(m * k, seed);
                let w = values(n * k, seed + 1000);
                let bias = values(n, seed + 2000);
                let a = Mat::rm(&x, m, k);
                let bt = Mat::rm_t(&w, k, n);
                let packed = PackedB::from_rows(&w, n, k);
                let mut prev: Option<Vec<f32>> = None;
                for src in [BSource::View(bt), BSource::Packed(packed.packed_ref())] {
                    for par in [Some(false), Some(true)] {
                        let mut y = vec![f32::NAN; m * n];
                        assert!(gemm(MatMut::rm(&mut y, m, n), a, src, Some(&bias), par));
                        let what = format!("{m}x{k}->{n} {par:?}");
                        check(&what, &y, (&a, &bt), Some(&bias), (n, 1));
                        if let Some(p) = &prev {
                            assert!(same_bits(p, &y), "{what}: B sources or splits differ");
                        }
                        prev = Some(y);
                    }
                }
            }
        }
    }
}

#[test]
fn strided_views() {
    if !available() {
        return;
    }
    for &(m, n, k) in &[(1, 70, 40), (7, 33, 300), (20, 17, 5), (64, 130, 520)] {
        // A column-major (packed per block), B row-major (no transposes) inside wider buffers.
        let ab = values(k * (m + 3), 7);
        let a = Mat {
            data: &ab,
            rows: m,
            cols: k,
            rs: 1,
            cs: m + 3,
        };
        let bb = values(k * (n + 5), 8);
        let b = Mat {
            data: &bb,
            rows: k,
            cols: n,
            rs: n + 5,
            cs: 1,
        };
        // A destination with rows wider than n: the padding stays untouched.
        let ld = n + 2;
        let mut y = vec![f32::NAN; m * ld];
        let dst = MatMut {
            data: &mut y,
            rows: m,
            cols: n,
            rs: ld,
            cs: 1,
        };
        assert!(gemm(dst, a, BSource::View(b), None, Some(false)));
        check("wide rows", &y, (&a, &b), None, (ld, 1));
        assert!((0..m).all(|i| y[i * ld + n..(i + 1) * ld].iter().all(|v| v.is_nan())));
        // A transposed destination.
        let bias = values(n, 10);
        let mut y = vec![f32::NAN; m * n];
        let dst = MatMut {
            data: &mut y,
            rows: m,
            cols: n,
            rs: 1,
            cs: m,
        };
        assert!(gemm(dst, a, BSource::View(b), Some(&bias), Some(true)));
        check("transposed dst", &y, (&a, &b), Some(&bias), (1, m));
    }
}

#[test]
fn empty_depth_gives_the_bias() {
    if !available() {
        return;
    }
    let bias = [1.0f32, 2.0, 3.0];
    let packed = PackedB::<f32>::from_rows(&[], 3, 0);
    let mut y = vec![f32::NAN; 6];
    let x: [f32; 0] = [];
    let dst = MatMut::rm(&mut y, 2, 3);
    assert!(gemm(
        dst,
        Mat::rm(&x, 2, 0),
        BSource::Packed(packed.packed_ref()),
        Some(&bias),
        None
    ));
    assert_eq!(y, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    let dst = MatMut::rm(&mut y, 2, 3);
    assert!(gemm(
        dst,
        Mat::rm(&x, 2, 0),
        BSource::Packed(packed.packed_ref()),
        None,
        None
    ));
    assert_eq!(y, [0.0; 6]);
}

#[test]
fn column_panels_are_bit_identical() {
    if !available() {
        return;
    }
    // The bf16 linear computes a weight's output columns panel by panel: each panel alone must give
    // the same bits as the whole product, for one row (the wide kernel) and many.
    for m in [1, 9] {
        let (n, k) = (200, 700);
        let x = values(m * k, 3);
        let w = values(n * k, 4);
        let mut whole = vec![0f32; m * n];
        let dst = MatMut::rm(&mut whole, m, n);
        let bt = Mat::rm_t(&w, k, n);
        assert!(gemm(dst, Mat::rm(&x, m, k), BSource::View(bt), None, None));
        for (lo, hi) in [(0, 37), (37, 101), (101, 200)] {
            let p = hi - lo;
            let mut part = vec![0f32; m * p];
            let dst = MatMut::rm(&mut part, m, p);
            let bt = Mat::rm_t(&w[lo * k..hi * k], k, p);
            assert!(gemm(dst, Mat::rm(&x, m, k), BSource::View(bt), None, None));
            for i in 0..m {
                assert!(same_bits(
                    &part[i * p..(i + 1) * p],
                    &whole[i * n + lo..i * n + hi]
                ));
            }
        }
    }
}

/// (columns, depth): partial panels, empty matrices, depths past a cache block.
const ROUND_TRIP_SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (17, 3),
    (16, 256),
    (33, 257),
    (5, 0),
    (0, 5),
    (40, 1000),
];

#[test]
fn packing_round_trips() {
    for &(n, k) in ROUND_TRIP_SHAPES {
        let w = values(n * k, 11);
        let p = PackedB::from_rows(&w, n, k);
        assert_eq!(p.len(), n * k);
        assert_eq!(p.to_rows(), w);
    }
}

#[test]
fn bf16_packing_round_trips_in_half_the_bytes() {
    for &(n, k) in ROUND_TRIP_SHAPES {
        let w: Vec<bf16> = values(n * k, 12).into_iter().map(bf16::from_f32).collect();
        let p = PackedB::from_rows(&w, n, k);
        assert_eq!(p.len(), n * k);
        assert_eq!(p.to_rows(), w);
        assert!(p.bytes() < 2 * n * k + 64, "{n}x{k}: {} bytes", p.bytes());
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        assert_eq!(p.packed_ref().to_f32_rows(), wf);
    }
}

/// A GEMM's operands on seeded values: `x [m, k]`, a weight `[n, k]` of bf16-representable values (as
/// f32 in `wf`, packed as f32 and as bf16), and a bias `[n]`.
struct Operands {
    x: Vec<f32>,
    wf: Vec<f32>,
    bias: Vec<f32>,
    pf: PackedB<f32>,
    ph: PackedB<bf16>,
}

impl Operands {
    fn new((m, n, k): (usize, usize, usize), seed: u64) -> Self {
        let w: Vec<bf16> = values(n * k, seed + 1000)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        Operands {
            x: values(m * k, seed),
            bias: values(n, seed + 2000),
            pf: PackedB::from_rows(&wf, n, k),
            ph: PackedB::from_rows(&w, n, k),
            wf,
        }
    }
}

/// B packed as bf16 (widened in the kernels) against B packed as f32 and B packed per call, on the
/// same bf16-rounded values: the same bits, at every shape class (one row through the 1x64 kernel
/// and its narrower tail, edge rows, edge panels, odd depths over one and several passes), with and
/// without bias and threads.
#[test]
fn bf16_packed_is_bit_identical_to_f32() {
    if !available() {
        return;
    }
    let mut seed = 500;
    for &m in &[1, 2, 5, 7, 13, 40] {
        for &n in &[1, 15, 17, 33, 64, 65, 100, 130] {
            for &k in &[1, 3, 255, 257, 769] {
                seed += 1;
                let o = Operands::new((m, n, k), seed);
                let (wf, bias) = (&o.wf, &o.bias);
                let a = Mat::rm(&o.x, m, k);
                let (pf, ph) = (&o.pf, &o.ph);
                for bias in [None, Some(bias.as_slice())] {
                    for par in [Some(false), Some(true)] {
                        let run = |src| {
                            let mut y = vec![f32::NAN; m * n];
                            assert!(gemm(MatMut::rm(&mut y, m, n), a, src, bias, par));
                            y
                        };
                        let want = run(BSource::Packed(pf.packed_ref()));
                        let got = run(BSource::Packed(ph.packed_ref()));
                        let what = format!("{m}x{k}->{n} bias {} {par:?}", bias.is_some());
                        assert!(same_bits(&want, &got), "{what}: bf16 and f32 packed differ");
                        let view = run(BSource::View(Mat::rm_t(wf, k, n)));
                        assert!(same_bits(&want, &view), "{what}: per-call packing differs");
                        if bias.is_some() && par == Some(false) {
                            check(&what, &got, (&a, &Mat::rm_t(wf, k, n)), bias, (n, 1));
                        }
                    }
                }
            }
        }
    }
}

/// The AVX-512 kernel (two panels per tile) against the AVX2 kernel: the same bits at every shape
/// class (odd panel counts leave one panel to AVX2; edge rows; several depth passes; a destination
/// accumulated across passes), for B packed as f32, as bf16 and per call, with and without bias and
/// threads. Skipped, saying so, on a CPU without AVX-512F.
#[test]
fn avx512_is_bit_identical_to_avx2() {
    if !available() || !avx512_supported() {
        eprintln!("skipped: this CPU has no AVX-512F (the AVX-512 kernel cannot run here)");
        return;
    }
    let mut seed = 900;
    for &m in &[1, 2, 6, 7, 13, 40] {
        for &n in &[16, 31, 32, 33, 48, 64, 100, 130] {
            for &k in &[1, 3, 255, 257, 769] {
                seed += 1;
                let o = Operands::new((m, n, k), seed);
                let (wf, bias) = (&o.wf, &o.bias);
                let a = Mat::rm(&o.x, m, k);
                let (pf, ph) = (&o.pf, &o.ph);
                for bias in [None, Some(bias.as_slice())] {
                    for par in [Some(false), Some(true)] {
                        for src in [
                            BSource::Packed(pf.packed_ref()),
                            BSource::Packed(ph.packed_ref()),
                            BSource::View(Mat::rm_t(wf, k, n)),
                        ] {
                            let run = |isa| {
                                let mut y = vec![f32::NAN; m * n];
                                let dst = MatMut::rm(&mut y, m, n);
                                assert!(gemm_with(dst, a, src, bias, par, isa));
                                y
                            };
                            let what = format!("{m}x{k}->{n} bias {} {par:?}", bias.is_some());
                            let want = run(Isa::Avx2);
                            let got = run(Isa::Avx512);
                            assert!(same_bits(&want, &got), "{what}: AVX-512 and AVX2 differ");
                        }
                    }
                }
            }
        }
    }
}

/// Many rows split into row tasks (two or more tasks of at least MC rows per thread) against the
/// same product on one thread: the same bits, for B packed as f32, as bf16 and per call, with and
/// without bias, at an edge-panel width and two depth passes; and within the f64 bound.
#[test]
fn row_tasks_are_bit_identical() {
    if !available() {
        return;
    }
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let (m, n, k) = (2 * threads * MC + 7, 49, 300);
        let o = Operands::new((m, n, k), 77 + threads as u64);
        let a = Mat::rm(&o.x, m, k);
        for bias in [None, Some(o.bias.as_slice())] {
            for src in [
                BSource::Packed(o.pf.packed_ref()),
                BSource::Packed(o.ph.packed_ref()),
                BSource::View(Mat::rm_t(&o.wf, k, n)),
            ] {
                let run = |par| {
                    let mut y = vec![f32::NAN; m * n];
                    assert!(gemm(MatMut::rm(&mut y, m, n), a, src, bias, par));
                    y
                };
                let one = run(Some(false));
                let split = pool.install(|| run(Some(true)));
                let what = format!("{m}x{k}->{n} on {threads} threads, bias {}", bias.is_some());
                assert!(same_bits(&one, &split), "{what}: row tasks differ");
                check(&what, &split, (&a, &Mat::rm_t(&o.wf, k, n)), bias, (n, 1));
            }
        }
    }
}

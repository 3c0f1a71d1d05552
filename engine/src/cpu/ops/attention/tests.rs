//! Every attention path against an f64 reference on seeded values: several key blocks and bands,
//! causal limits inside blocks, segments with unused rows, rows that see no key, head dims that
//! leave partial column chunks or take two depth passes, large scores; and the flash path's promise
//! that a row's result does not depend on the other rows.

use super::*;

/// Seeded values in [-amp, amp).
fn values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut v = super::super::test_values::values(n, seed);
    v.iter_mut().for_each(|x| *x *= amp);
    v
}

/// A case: `segs` as (rows, len); K and V for every row (rows past `len` are never read).
struct Case {
    nq: usize,
    segs: Vec<(usize, usize)>,
    heads: usize,
    kv_heads: usize,
    d: usize,
    causal: bool,
    scale: f32,
    amp: f32,
}

struct Data {
    q: Vec<f32>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl Case {
    fn shape(&self) -> AttnShape {
        AttnShape {
            nq: self.nq,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.d,
            causal: self.causal,
            scale: self.scale,
        }
    }

    fn data(&self, seed: u64) -> Data {
        let (hd, kd) = (self.heads * self.d, self.kv_heads * self.d);
        let q = values(self.nq * hd, seed, self.amp);
        let k = (self.segs.iter().enumerate())
            .map(|(i, &(rows, _))| values(rows * kd, seed + 10 + i as u64, self.amp))
            .collect();
        let v = (self.segs.iter().enumerate())
            .map(|(i, &(rows, _))| values(rows * kd, seed + 20 + i as u64, 1.0))
            .collect();
        Data { q, k, v }
    }

    fn run(&self, path: Path, x: &Data) -> Vec<f32> {
        let segments: Vec<Segment<'_>> = (self.segs.iter().enumerate())
            .map(|(i, &(rows, len))| Segment {
                k: &x.k[i],
                v: &x.v[i],
                len,
                rows,
            })
            .collect();
        let mut out = vec![f32::NAN; self.nq * self.heads * self.d];
        attention_on(path, &x.q, &segments, &self.shape(), &mut out);
        out
    }

    /// f64 softmax attention; a row that sees no key is zero.
    fn reference(&self, x: &Data) -> Vec<f64> {
        let (hd, kd, g) = (
            self.heads * self.d,
            self.kv_heads * self.d,
            self.heads / self.kv_heads,
        );
        let nk: usize = self.segs.iter().map(|s| s.0).sum();
        // (segment, row, position) of every key.
        let mut keys = Vec::new();
        let mut pos = 0;
        for (i, &(rows, len)) in self.segs.iter().enumerate() {
            keys.extend((0..len).map(|t| (i, t, pos + t)));
            pos += rows;
        }
        let mut out = vec![0f64; self.nq * hd];
        for r in 0..self.nq {
            let seen: Vec<_> = (keys.iter())
                .filter(|&&(_, _, p)| !self.causal || p + self.nq <= r + nk)
                .collect();
            for h in 0..self.heads {
                let j = h / g;
                let sc: Vec<f64> = (seen.iter())
                    .map(|&&(i, t, _)| {
                        (0..self.d)
                            .map(|e| {
                                x.q[r * hd + h * self.d + e] as f64
                                    * x.k[i][t * kd + j * self.d + e] as f64
                            })
                            .sum::<f64>()
                            * self.scale as f64
                    })
                    .collect();
                let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                for e in 0..self.d {
                    out[r * hd + h * self.d + e] = (seen.iter().zip(&sc))
                        .map(|(&&(i, t, _), s)| {
                            (s - m).exp() / z * x.v[i][t * kd + j * self.d + e] as f64
                        })
                        .sum();
                }
            }
        }
        out
    }

    /// Each path (the flash ones and the AMX one where the CPU has them) within `tol` of the f64
    /// reference. The AMX path runs on bf16 values of Q, K and V (so its own rounding of them is
    /// exact) against the reference on those; it rounds each probability to bf16 (8 significant
    /// bits, to nearest: relative error at most 2^-8), so with |v| <= 1 its bound is 2^-8 more. (Its
    /// lazily moved max leaves a row's largest probability up to 2^8 rather than exactly 1, so a
    /// row dominated by one key sees that key's rounding too.)
    #[track_caller]
    fn check(&self, seed: u64, tol: f64) {
        let x = self.data(seed);
        let want = self.reference(&x);
        let rounded = bf16_data(&x);
        let want_rounded = self.reference(&rounded);
        for path in paths(self.nq) {
            let (x, want, tol) = if path == Path::Amx {
                (&rounded, &want_rounded, tol + 1.0 / 256.0)
            } else {
                (&x, &want, tol)
            };
            let got = self.run(path, x);
            for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= tol,
                    "{path:?} nq {} segs {:?} d {}: out[{i}] = {g}, want {w}",
                    self.nq,
                    self.segs,
                    self.d
                );
            }
        }
    }
}

/// `x` with every value rounded to bf16.
fn bf16_data(x: &Data) -> Data {
    let round = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&y| half::bf16::from_f32(y).to_f32())
            .collect()
    };
    Data {
        q: round(&x.q),
        k: x.k.iter().map(|k| round(k)).collect(),
        v: x.v.iter().map(|v| round(v)).collect(),
    }
}

/// Whether the AMX path can run here (any query count: `attention` picks it for 32 or more).
fn amx_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let here = crate::cpu::ops::amx_tiles::supported();
        if !here {
            eprintln!(
                "attention tests: this CPU or OS has no AMX-BF16, the AMX path is not checked"
            );
        }
        here
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The paths that can run `nq` queries here.
fn paths(nq: usize) -> Vec<Path> {
    let mut paths = vec![Path::Gemm];
    if amx_here() {
        paths.push(Path::Amx);
    }
    if nq < FLASH_MIN_QUERIES {
        paths.push(Path::FewQueries);
    }
    for isa in [FlashIsa::Avx512, FlashIsa::Avx2] {
        if isa.supported() {
            paths.push(Path::Flash(isa));
        } else {
            eprintln!(
                "attention tests: this CPU has no {isa:?}, its flash kernels are not checked"
            );
        }
    }
    paths
}

fn case(nq: usize, segs: &[(usize, usize)], heads: (usize, usize), d: usize, causal: bool) -> Case {
    Case {
        nq,
        segs: segs.to_vec(),
        heads: heads.0,
        kv_heads: heads.1,
        d,
        causal,
        scale: (d as f32).powf(-0.5),
        amp: 1.0,
    }
}

#[test]
fn bidirectional_over_several_key_blocks() {
    // 203 keys: whole key blocks (64 on the AMX path, 128 on others) and a partial one; bands
    // ending mid-tile.
    case(203, &[(203, 203)], (2, 1), 64, false).check(1, 2e-6);
    // 2100 queries: on up to 2 threads the AMX path's bands reach their cap (256 queries), the last
    // one partial.
    case(2100, &[(2100, 2100)], (1, 1), 16, false).check(5, 2e-6);
    // The bridge's layout: und keys then gen keys, D=120 (a partial chunk of 24 columns), GQA 3.
    case(61, &[(150, 150), (61, 61)], (3, 1), 120, false).check(2, 2e-6);
}

#[test]
fn causal_limits_inside_blocks_and_unused_rows() {
    // Segments with unused rows (len < rows) and more keys than queries: each row's limit falls at
    // a different column of a block.
    case(300, &[(40, 30), (61, 61), (300, 300)], (6, 2), 24, true).check(3, 2e-6);
    case(130, &[(130, 130)], (2, 2), 16, true).check(4, 2e-6);
}

#[test]
fn rows_that_see_no_key_are_zero() {
    // The first segment has no used row and the second starts past the first two queries' limits.
    case(14, &[(10, 0), (12, 12)], (2, 1), 8, true).check(5, 2e-6);
    case(9, &[(5, 0)], (1, 1), 16, false).check(6, 0.0);
}

#[test]
fn wide_and_tiny_heads() {
    // 200 columns: two score depth passes and a partial chunk of 8.
    case(50, &[(70, 70), (50, 50)], (2, 2), 200, false).check(7, 2e-6);
    case(9, &[(9, 9)], (4, 4), 8, false).check(8, 2e-6);
    case(12, &[(12, 12)], (2, 1), 3, true).check(9, 2e-6);
}

#[test]
fn one_query_over_a_cache_and_the_new_key() {
    // A decode step: the cache segment with unused rows, then this step's key; GQA 7 as in the
    // 7b4b und expert, and a group of one.
    case(1, &[(300, 211), (1, 1)], (7, 1), 128, true).check(12, 2e-6);
    case(1, &[(40, 33), (1, 1)], (4, 4), 24, true).check(13, 2e-6);
    case(1, &[(8, 0), (0, 0)], (2, 1), 16, true).check(14, 0.0);
}

#[test]
fn a_short_prompt_over_a_cache() {
    // A few queries after a cache with unused rows: causal limits differ per query, GQA 7.
    case(5, &[(300, 211), (5, 5)], (7, 1), 128, true).check(15, 2e-6);
    // The first three queries see no key (an empty cache segment, their limits before the new keys).
    case(5, &[(6, 0), (2, 2)], (4, 2), 16, true).check(16, 2e-6);
    case(7, &[(20, 20)], (2, 2), 24, false).check(17, 2e-6);
}

#[test]
fn large_scores_are_stable() {
    // Scores in the hundreds, growing from block to block in some rows: every rescale is exercised,
    // and without the max subtraction exp overflows.
    let mut c = case(40, &[(300, 300)], (2, 1), 16, false);
    c.scale = 1.0;
    c.amp = 6.0;
    c.check(10, 1e-5);
}

#[test]
fn flash_rows_do_not_depend_on_the_other_rows() {
    let full = case(190, &[(190, 190)], (2, 1), 40, false);
    let x = full.data(11);
    // The last 100 queries alone: different bands and tiles, the same bits.
    let part = case(100, &[(190, 190)], (2, 1), 40, false);
    let hd = 2 * 40;
    let xs = Data {
        q: x.q[90 * hd..].to_vec(),
        k: x.k.clone(),
        v: x.v.clone(),
    };
    for isa in [FlashIsa::Avx512, FlashIsa::Avx2] {
        if !isa.supported() {
            eprintln!(
                "attention tests: this CPU has no {isa:?}, its flash kernels are not checked"
            );
            continue;
        }
        let all = full.run(Path::Flash(isa), &x);
        let some = part.run(Path::Flash(isa), &xs);
        assert!(
            some.iter()
                .zip(&all[90 * hd..])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "flash attention ({isa:?}): a row's result changed with the rows around it"
        );
    }
    if amx_here() {
        let all = full.run(Path::Amx, &x);
        let some = part.run(Path::Amx, &xs);
        assert!(
            some.iter()
                .zip(&all[90 * hd..])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "AMX attention: a row's result changed with the rows around it"
        );
    }
}

//! The tile unit's costs on this machine, for the floors in docs/BENCHMARKS.md (x86-64 Linux with
//! AMX-BF16 and AVX-512F): TDPBF16PS alone, the 2 x 2 block of the linear and attention kernels (four
//! tile loads, four products) from L1, L2 and beyond, tile loads alone, a C tile's store and reload,
//! accumulation chains as short as the attention's (C zeroed, a few products, C stored), whether
//! vector FMAs run alongside the tile work, and the bf16 linear's loop
//! (`engine/src/cpu/ops/packed_gemm/amx.rs`) on one thread with and without prefetching its tiles.
//!
//!     rustc -O scripts/amx-probe.rs -o /tmp/amx-probe && /tmp/amx-probe
//!
//! Standalone (no crates) so that it builds with rustc alone. Every figure is wall time per
//! iteration over a loop of 2 million (0.5 million for the overlap rows) on one thread. Every buffer
//! starts on a cache line, as the engine's tile buffers do from session 15 on; the figures in
//! docs/BENCHMARKS.md before that came from buffers the allocator put 16 bytes past one (a tile load
//! from L1 15 ns then, 2.6-2.8 ns on a line).

use std::arch::asm;
use std::arch::x86_64::*;
use std::time::Instant;

#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Asks Linux for the tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
fn request_tiles() -> bool {
    let ret: isize;
    // SAFETY: the syscall only changes this process's permission to use the tile state.
    unsafe {
        asm!("syscall", inlateout("rax") 158isize => ret, in("rdi") 0x1023usize,
             in("rsi") 18usize, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret == 0
}

/// Four tile loads from `p` (tiles `p`, +512, +1024, +1536 bf16) and the four products.
#[inline(always)]
unsafe fn block(p: *const u16, products: bool) {
    if products {
        asm!("tileloadd tmm4, [{a} + {s}]", "tileloadd tmm5, [{b} + {s}]",
             "tileloadd tmm6, [{c} + {s}]", "tileloadd tmm7, [{d} + {s}]",
             "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
             "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
             a = in(reg) p, b = in(reg) p.add(512), c = in(reg) p.add(1024),
             d = in(reg) p.add(1536), s = in(reg) 64usize, options(nostack, readonly));
    } else {
        asm!("tileloadd tmm4, [{a} + {s}]", "tileloadd tmm5, [{b} + {s}]",
             "tileloadd tmm6, [{c} + {s}]", "tileloadd tmm7, [{d} + {s}]",
             a = in(reg) p, b = in(reg) p.add(512), c = in(reg) p.add(1024),
             d = in(reg) p.add(1536), s = in(reg) 64usize, options(nostack, readonly));
    }
}

/// Nanoseconds per iteration of `f(i)` over `n` iterations.
fn time(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_secs_f64() * 1e9 / n as f64
}

/// How [`linear_loop`] puts each 32 x 32 output block into `y` (4096 x 3072 f32).
#[derive(Clone, Copy, Debug)]
enum Output {
    /// Not at all (the tiles alone).
    Kept,
    /// Stored to a buffer, then copied into `y` row by row.
    Copied,
    /// Stored by TILESTORED straight into `y`.
    Direct,
}

/// The bf16 linear's task loop over A (4096 x 768) and B (768 x 3072) tiles on this thread: tasks of
/// 256 rows, each walking every column pair and, inside, its row pairs over the depth; with `ahead`
/// > 0 each product first prefetches the tiles `ahead` depth blocks on. (TFLOP/s, ns per product.)
unsafe fn linear_loop(ahead: usize, output: Output) -> (f64, f64) {
    let (m, k, n) = (4096usize, 768usize, 3072usize);
    let kbs = k / 32;
    let a = aligned(m * k, 0x3f80);
    let b = aligned(n * k, 0x3f80);
    let c = aligned_f32(1024, 0.0);
    // Written before the clock starts: the model's outputs live in an arena whose pages are mapped.
    let y = aligned_f32(m * n, 1.0);
    let start = Instant::now();
    for r0 in (0..m / 32).step_by(8) {
        for j in 0..n / 32 {
            let (b0, b1) = (b.as_ptr().add(2 * j * kbs * 512), b.as_ptr().add((2 * j + 1) * kbs * 512));
            for i in r0..r0 + 8 {
                let (a0, a1) = (a.as_ptr().add(2 * i * kbs * 512), a.as_ptr().add((2 * i + 1) * kbs * 512));
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                for kb in 0..kbs {
                    let o = kb * 512;
                    if ahead > 0 && kb + ahead < kbs {
                        for p in [a0, a1, b0, b1] {
                            for line in 0..16 {
                                _mm_prefetch::<_MM_HINT_T0>(p.add(o + ahead * 512 + line * 32).cast());
                            }
                        }
                    }
                    asm!("tileloadd tmm4, [{a0} + {s}]", "tileloadd tmm5, [{a1} + {s}]",
                         "tileloadd tmm6, [{b0} + {s}]", "tileloadd tmm7, [{b1} + {s}]",
                         "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                         "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                         a0 = in(reg) a0.add(o), a1 = in(reg) a1.add(o), b0 = in(reg) b0.add(o),
                         b1 = in(reg) b1.add(o), s = in(reg) 64usize, options(nostack, readonly));
                }
                let (cp, stride) = match output {
                    Output::Direct => (y.as_mut_ptr().add(32 * i * n + 32 * j), n),
                    _ => (c.as_mut_ptr(), 32),
                };
                asm!("tilestored [{c0} + {s}], tmm0", "tilestored [{c1} + {s}], tmm1",
                     "tilestored [{c2} + {s}], tmm2", "tilestored [{c3} + {s}], tmm3",
                     c0 = in(reg) cp, c1 = in(reg) cp.add(16), c2 = in(reg) cp.add(16 * stride),
                     c3 = in(reg) cp.add(16 * stride + 16), s = in(reg) stride * 4, options(nostack));
                if let Output::Copied = output {
                    for r in 0..32 {
                        y[(32 * i + r) * n + 32 * j..][..32].copy_from_slice(&c[r * 32..][..32]);
                    }
                }
            }
        }
    }
    std::hint::black_box((&c, &y));
    let s = start.elapsed().as_secs_f64();
    let flops = 2.0 * (m * k * n) as f64;
    (flops / s / 1e12, s * 1e9 / (flops / 16384.0))
}

#[target_feature(enable = "avx512f")]
unsafe fn fmas(x: &mut [__m512; 8], rounds: usize) {
    let c = _mm512_set1_ps(1.000_000_1);
    for _ in 0..rounds {
        for v in x.iter_mut() {
            *v = _mm512_fmadd_ps(*v, c, c);
        }
    }
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct L([u16; 32]);
/// `n` u16 of `v` on a cache line, as the engine's tile buffers are (`engine/src/cpu/ops/aligned.rs`;
/// from the allocator a buffer may start anywhere, and a tile row across two lines costs two). The
/// lines are leaked: this is a probe.
fn aligned(n: usize, v: u16) -> &'static mut [u16] {
    let lines: &'static mut [L] = vec![L([v; 32]); n.div_ceil(32)].leak();
    // SAFETY: the leaked lines hold at least `n` u16, initialized.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u16>(), n) }
}

/// `n` f32 of `v` on a cache line (as the engine's arena and C buffers are).
fn aligned_f32(n: usize, v: f32) -> &'static mut [f32] {
    let bits = v.to_bits();
    let raw = aligned(2 * n, 0);
    for pair in raw.chunks_exact_mut(2) {
        pair[0] = bits as u16;
        pair[1] = (bits >> 16) as u16;
    }
    // SAFETY: `raw` holds 2n initialized u16 on a 64-byte line: n f32.
    unsafe { std::slice::from_raw_parts_mut(raw.as_mut_ptr().cast::<f32>(), n) }
}

fn main() {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    let amx = leaf.edx & (1 << 22) != 0
        && leaf.edx & (1 << 24) != 0
        && std::arch::is_x86_feature_detected!("avx512f");
    if !amx || !request_tiles() {
        eprintln!("amx-probe: this CPU or OS has no usable AMX-BF16");
        std::process::exit(1);
    }
    let l1 = aligned(4 * 2048, 0x3f80);
    let l2 = aligned(256 * 2048, 0x3f80);
    let c = aligned_f32(32 * 32, 0.0);
    let n = 2_000_000;
    // SAFETY: AMX granted above; every tile access is inside `l1`, `l2` or `c`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
        let tdp = time(n, |_| {
            asm!("tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                 "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem))
        }) / 4.0;
        println!("TDPBF16PS alone:            {tdp:6.2} ns each ({:.2} TFLOP/s per core)", 16384.0 / tdp / 1e3);
        let from_l1 = time(n, |i| block(l1.as_ptr().add((i as usize % 4) * 2048), true)) / 4.0;
        println!("2x2 block, tiles from L1:   {from_l1:6.2} ns per product ({:.2} TFLOP/s per core)", 16384.0 / from_l1 / 1e3);
        let from_l2 = time(n, |i| block(l2.as_ptr().add((i as usize % 256) * 2048), true)) / 4.0;
        println!("2x2 block, tiles from L2:   {from_l2:6.2} ns per product (1 MiB of tiles)");
        let l3 = aligned(32 * 512 * 1024, 0x3f80);
        let from_l3 = time(n, |i| block(l3.as_ptr().add((i as usize % 8192) * 2048), true)) / 4.0;
        println!("2x2 block, tiles from L3:   {from_l3:6.2} ns per product (32 MiB of tiles)");
        let loads = time(n, |i| block(l1.as_ptr().add((i as usize % 4) * 2048), false)) / 4.0;
        println!("tile load from L1:          {loads:6.2} ns per 1 KiB tile");
        let cp = c.as_mut_ptr();
        let round_trip = time(n, |_| {
            asm!("tilestored [{a} + {s}], tmm0", "tilestored [{b} + {s}], tmm1",
                 "tileloadd tmm0, [{a} + {s}]", "tileloadd tmm1, [{b} + {s}]",
                 a = in(reg) cp, b = in(reg) cp.add(16), s = in(reg) 128usize, options(nostack))
        }) / 2.0;
        println!("C tile store and reload:    {round_trip:6.2} ns per tile");
        // The attention's pattern: C zeroed, `depth` products (the head dimension / 32 for the
        // scores, the key block / 32 for P V), C stored, again: short accumulation chains.
        for depth in [1usize, 2, 4, 8, 24] {
            let n = 2_000_000 / depth as u64;
            let chain = time(n, |i| {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                for d in 0..depth {
                    block(l1.as_ptr().add(((i as usize + d) % 4) * 2048), true);
                }
                asm!("tilestored [{a} + {s}], tmm0", "tilestored [{b} + {s}], tmm1",
                     "tilestored [{c} + {s}], tmm2", "tilestored [{d} + {s}], tmm3",
                     a = in(reg) cp, b = in(reg) cp.add(16), c = in(reg) cp.add(512),
                     d = in(reg) cp.add(528), s = in(reg) 128usize, options(nostack));
            }) / (4 * depth) as f64;
            println!("chains of {depth:2} products, C zeroed and stored: {chain:6.2} ns per product");
        }
        // The P V pattern: C loaded (the output's accumulators), two products, C stored.
        let pv = time(1_000_000, |i| {
            asm!("tileloadd tmm0, [{a} + {s}]", "tileloadd tmm1, [{b} + {s}]",
                 "tileloadd tmm2, [{c} + {s}]", "tileloadd tmm3, [{d} + {s}]",
                 a = in(reg) cp, b = in(reg) cp.add(16), c = in(reg) cp.add(512),
                 d = in(reg) cp.add(528), s = in(reg) 128usize, options(nostack, readonly));
            for d in 0..2 {
                block(l1.as_ptr().add(((i as usize + d) % 4) * 2048), true);
            }
            asm!("tilestored [{a} + {s}], tmm0", "tilestored [{b} + {s}], tmm1",
                 "tilestored [{c} + {s}], tmm2", "tilestored [{d} + {s}], tmm3",
                 a = in(reg) cp, b = in(reg) cp.add(16), c = in(reg) cp.add(512),
                 d = in(reg) cp.add(528), s = in(reg) 128usize, options(nostack));
        }) / 8.0;
        println!("C loaded, 2 products, C stored:   {pv:6.2} ns per product");
        // Two C sets in turn (1 x 2 blocks: one A tile, two B tiles, two C tiles), so that one
        // set's stores may overlap the other's products.
        let alt = time(1_000_000, |i| {
            let p = l1.as_ptr().add((i as usize % 4) * 2048);
            asm!("tilezero tmm0", "tilezero tmm1",
                 "tileloadd tmm4, [{a} + {s}]", "tileloadd tmm6, [{c} + {s}]", "tileloadd tmm7, [{d} + {s}]",
                 "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                 "tileloadd tmm4, [{b} + {s}]", "tileloadd tmm6, [{d} + {s}]", "tileloadd tmm7, [{c} + {s}]",
                 "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                 "tilestored [{o0} + {s2}], tmm0", "tilestored [{o1} + {s2}], tmm1",
                 "tilezero tmm2", "tilezero tmm3",
                 "tileloadd tmm5, [{b} + {s}]", "tileloadd tmm6, [{c} + {s}]", "tileloadd tmm7, [{d} + {s}]",
                 "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                 "tileloadd tmm5, [{a} + {s}]", "tileloadd tmm6, [{d} + {s}]", "tileloadd tmm7, [{c} + {s}]",
                 "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                 "tilestored [{o2} + {s2}], tmm2", "tilestored [{o3} + {s2}], tmm3",
                 a = in(reg) p, b = in(reg) p.add(512), c = in(reg) p.add(1024), d = in(reg) p.add(1536),
                 s = in(reg) 64usize, o0 = in(reg) cp, o1 = in(reg) cp.add(16), o2 = in(reg) cp.add(512),
                 o3 = in(reg) cp.add(528), s2 = in(reg) 128usize, options(nostack));
        }) / 8.0;
        println!("two 1x2 C sets in turn, depth 2:  {alt:6.2} ns per product");
        let mut x = [_mm512_set1_ps(0.5); 8];
        for rounds in [8usize, 16, 32] {
            let n = 500_000;
            let tiles = time(n, |i| block(l1.as_ptr().add((i as usize % 4) * 2048), true));
            let vector = time(n, |_| fmas(&mut x, rounds));
            let both = time(n, |i| {
                block(l1.as_ptr().add((i as usize % 4) * 2048), true);
                fmas(&mut x, rounds);
            });
            println!("overlap, {:3} FMAs per block: tiles {tiles:5.1} ns, FMAs {vector:5.1} ns, both {both:5.1} ns", 8 * rounds);
        }
        std::hint::black_box(x);
        for (ahead, output) in [(0, Output::Kept), (2, Output::Kept), (2, Output::Copied), (2, Output::Direct)] {
            let (rate, ns) = linear_loop(ahead, output);
            println!("linear loop, 4096 x 768 x 3072, prefetch {ahead} ahead, output {output:?}: {rate:.2} TFLOP/s, {ns:.1} ns per product");
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

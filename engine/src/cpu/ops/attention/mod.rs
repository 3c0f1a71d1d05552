//! Softmax attention over several K/V segments (und cache + gen tokens) without concatenating them: the
//! score block of a band of queries spans all segments' keys, each segment filling its own columns.

use super::matmul::{matmul, Mat, MatMut};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod amx;
mod few_queries;
#[cfg(target_arch = "x86_64")]
mod flash;
#[cfg(target_arch = "x86_64")]
mod flash_avx2;
#[cfg(target_arch = "x86_64")]
mod flash_avx512;
#[cfg(target_arch = "x86_64")]
mod flash_tile;
#[cfg(test)]
mod tests;

/// How [`attention`] computes: every path gives the same result within f32 rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Key blocks with an online softmax over K and V packed once per call (`flash.rs`), with one
    /// instruction set's kernels.
    Flash(FlashIsa),
    /// A few queries: each kv head's queries and query heads as the rows of two products
    /// (`few_queries.rs`; a decode step, a short prompt over a long cache).
    FewQueries,
    /// Each band's whole score row through the `gemm` crate.
    Gemm,
    /// Key blocks with an online softmax on Intel AMX tiles in bf16 (`amx.rs`), with the linears'
    /// opt-in `HBRIDGE_CPU_MATMUL=bf16`.
    Amx,
}

/// Fewest queries for the flash path: packing K and V costs a pass over them, which a decode step's
/// one query does not repay. Fewer take the few-query path.
const FLASH_MIN_QUERIES: usize = 8;

/// The instruction set of the flash path's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlashIsa {
    /// 6 x 64 tiles in registers (24 accumulators), the softmax on the scores' registers.
    Avx512,
    /// 6 x 16 sub-tiles (12 accumulators of the 16 registers), the softmax from memory.
    Avx2,
}

impl FlashIsa {
    /// Whether this CPU has the set's instructions (AVX-512F; AVX2 and FMA).
    pub(crate) fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                FlashIsa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                FlashIsa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }
}

/// What `HBRIDGE_CPU_ATTENTION` asks for (comparisons): `gemm` every call on the GEMM path, `avx2`
/// the flash path's AVX2 kernels on a CPU with AVX-512. Any value keeps the bf16 opt-in's AMX path
/// off.
fn asked() -> Option<&'static str> {
    static ASKED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ASKED
        .get_or_init(|| std::env::var("HBRIDGE_CPU_ATTENTION").ok())
        .as_deref()
}

fn gemm_asked() -> bool {
    asked() == Some("gemm")
}

/// The flash path's kernels on this CPU: AVX-512 where it has it, else AVX2 + FMA; none without
/// them or when the GEMM path is asked for.
pub(crate) fn flash_isa() -> Option<FlashIsa> {
    static ISA: std::sync::OnceLock<Option<FlashIsa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        if gemm_asked() {
            return None;
        }
        let prefer: &[FlashIsa] = if asked() == Some("avx2") {
            &[FlashIsa::Avx2]
        } else {
            &[FlashIsa::Avx512, FlashIsa::Avx2]
        };
        prefer.iter().copied().find(|isa| isa.supported())
    })
}

/// One K/V segment: `rows` rows of `[kv_heads*head_dim]` each, of which the first `len` are keys (the
/// rest keep their positions for the causal limit but are never read).
pub(crate) struct Segment<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub len: usize,
    pub rows: usize,
}

/// How many keys (score columns: each segment's first `len`) lie at key positions below `limit`, key
/// positions running over the full `rows` of the segments one after the other.
fn keys_before(segments: &[Segment<'_>], limit: usize) -> usize {
    let mut off = 0;
    let mut n = 0;
    for s in segments {
        n += s.len.min(limit.saturating_sub(off));
        off += s.rows;
    }
    n
}

/// Score columns query `i` sees: every key, or (causal) those at key positions up to `i + nk - nq`
/// (`nk` the segments' total rows).
fn visible_keys(segments: &[Segment<'_>], s: &AttnShape, i: usize) -> usize {
    if s.causal {
        let nk: usize = segments.iter().map(|g| g.rows).sum();
        keys_before(segments, (i + nk + 1).saturating_sub(s.nq))
    } else {
        segments.iter().map(|g| g.len).sum()
    }
}

pub(crate) struct AttnShape {
    pub nq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub scale: f32,
}

/// Queries per task: enough bands to keep every thread busy, few enough rows that each band's GEMMs
/// stay efficient and its score block (rows x keys) small.
fn band_rows(nq: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    nq.div_ceil(4 * threads).clamp(8, 64).min(nq.max(1))
}

/// q `[nq, heads*head_dim]` -> out `[nq, heads*head_dim]`. Causal: query i sees key positions
/// `0..=i + nk - nq` (`nk` the total rows); keys are compacted into score columns, segment by segment.
/// The AMX path with the bf16 opt-in on an AMX CPU and enough queries, else the flash path where the
/// CPU has it and there are enough queries, the few-query path for fewer, else the GEMM path.
pub(crate) fn attention(q: &[f32], segments: &[Segment<'_>], s: &AttnShape, out: &mut [f32]) {
    let flash = flash_isa().filter(|_| s.nq >= FLASH_MIN_QUERIES);
    let path = if amx_enabled() && s.nq >= AMX_MIN_QUERIES && asked().is_none() {
        Path::Amx
    } else if let Some(isa) = flash {
        Path::Flash(isa)
    } else if s.nq < FLASH_MIN_QUERIES && !gemm_asked() {
        Path::FewQueries
    } else {
        Path::Gemm
    };
    attention_on(path, q, segments, s, out)
}

/// Whether the bf16 opt-in is on and this CPU and OS run AMX-BF16.
fn amx_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::amx_tiles::enabled()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Fewest queries for the AMX path: one pair of 16-row tiles.
const AMX_MIN_QUERIES: usize = crate::cpu::MatmulMode::MIN_ROWS;

/// [`attention`] on `path` (`Flash` only with an instruction set the CPU has, `Amx` only where
/// `amx_tiles::supported`).
pub(crate) fn attention_on(
    path: Path,
    q: &[f32],
    segments: &[Segment<'_>],
    s: &AttnShape,
    out: &mut [f32],
) {
    if s.nq == 0 || s.heads * s.head_dim == 0 {
        return;
    }
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Flash(isa) => flash::attention(isa, q, segments, s, out),
        #[cfg(target_arch = "x86_64")]
        Path::Amx => amx::attention(q, segments, s, out),
        Path::FewQueries => few_queries::attention(q, segments, s, out),
        _ => gemm_attention(q, segments, s, out),
    }
}

fn gemm_attention(q: &[f32], segments: &[Segment<'_>], s: &AttnShape, out: &mut [f32]) {
    let (hd, kd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let band = band_rows(s.nq);
    out.par_chunks_mut(band * hd)
        .enumerate()
        .for_each(|(b, o)| {
            let r0 = b * band;
            let rows = o.len() / hd;
            // Keys past the band's last visible one are never needed.
            let kmax = visible_keys(segments, s, r0 + rows - 1);
            if kmax == 0 {
                o.fill(0.0);
                return;
            }
            let mut sc = vec![0f32; rows * kmax];
            for h in 0..s.heads {
                let j = h / (s.heads / s.kv_heads);
                let qh = Mat {
                    data: &q[r0 * hd + h * s.head_dim..],
                    rows,
                    cols: s.head_dim,
                    rs: hd,
                    cs: 1,
                };
                let mut so = 0;
                for seg in segments {
                    let c = seg.len.min(kmax.saturating_sub(so));
                    if c > 0 {
                        let kt = Mat {
                            data: &seg.k[j * s.head_dim..],
                            rows: s.head_dim,
                            cols: c,
                            rs: 1,
                            cs: kd,
                        };
                        let dst = MatMut {
                            data: &mut sc[so..],
                            rows,
                            cols: c,
                            rs: kmax,
                            cs: 1,
                        };
                        matmul(dst, qh, kt, s.scale, false, Some(false));
                    }
                    so += seg.len;
                }
                for (r, row) in sc.chunks_mut(kmax).enumerate() {
                    let visible = visible_keys(segments, s, r0 + r).min(kmax);
                    softmax_prefix(row, visible);
                }
                let mut so = 0;
                let mut first = true;
                for seg in segments {
                    let c = seg.len.min(kmax.saturating_sub(so));
                    if c > 0 {
                        let p = Mat {
                            data: &sc[so..],
                            rows,
                            cols: c,
                            rs: kmax,
                            cs: 1,
                        };
                        let v = Mat {
                            data: &seg.v[j * s.head_dim..],
                            rows: c,
                            cols: s.head_dim,
                            rs: kd,
                            cs: 1,
                        };
                        let dst = MatMut {
                            data: &mut o[h * s.head_dim..],
                            rows,
                            cols: s.head_dim,
                            rs: hd,
                            cs: 1,
                        };
                        matmul(dst, p, v, 1.0, !first, Some(false));
                        first = false;
                    }
                    so += seg.len;
                }
            }
        });
}

/// Packs every kv head's keys and values, compacted over the segments (each segment's first `len`
/// rows), into `k` and `v` (`k_len` and `v_len` values per head), heads in parallel:
/// `put(k_head, v_head, c, k_row, v_row)` for the `c`-th key, with its `head_dim` values of K and V.
#[cfg(target_arch = "x86_64")]
fn pack_kv<T: Send>(
    segments: &[Segment<'_>],
    s: &AttnShape,
    (k, k_len): (&mut [T], usize),
    (v, v_len): (&mut [T], usize),
    put: impl Fn(&mut [T], &mut [T], usize, &[f32], &[f32]) + Sync,
) {
    let (d, kd) = (s.head_dim, s.kv_heads * s.head_dim);
    k.par_chunks_mut(k_len.max(1))
        .zip(v.par_chunks_mut(v_len.max(1)))
        .enumerate()
        .for_each(|(j, (kh, vh))| {
            let mut c = 0;
            for seg in segments {
                for t in 0..seg.len {
                    let at = t * kd + j * d;
                    put(kh, vh, c, &seg.k[at..][..d], &seg.v[at..][..d]);
                    c += 1;
                }
            }
        });
}

/// Runs `f(r0, vis, scratch, rows)` for each band of `band` query rows of `out`, in parallel: `rows`
/// the band's output rows (all heads) from row `r0`, `vis[r]` the score columns row `r0 + r` sees, and
/// `scratch` this thread's buffers from `key` (a fresh set for a nested call on the same thread: a
/// task stolen while this one waits).
#[cfg(target_arch = "x86_64")]
fn for_each_band<S: Default + 'static>(
    segments: &[Segment<'_>],
    s: &AttnShape,
    out: &mut [f32],
    band: usize,
    key: &'static std::thread::LocalKey<std::cell::RefCell<S>>,
    f: impl Fn(usize, &[usize], &mut S, &mut [f32]) + Sync,
) {
    let hd = s.heads * s.head_dim;
    out.par_chunks_mut(band * hd)
        .enumerate()
        .for_each(|(b, o)| {
            let r0 = b * band;
            let vis: Vec<usize> = (r0..r0 + o.len() / hd)
                .map(|i| visible_keys(segments, s, i))
                .collect();
            key.with(|cell| {
                let mut own = S::default();
                let mut held = cell.try_borrow_mut();
                let scratch = held.as_deref_mut().unwrap_or(&mut own);
                f(r0, &vis, scratch, o);
            });
        });
}

/// Softmax of `row[..visible]` with max subtraction, in f32; masked entries become exact zeros.
fn softmax_prefix(row: &mut [f32], visible: usize) {
    let (live, masked) = row.split_at_mut(visible);
    masked.fill(0.0);
    let m = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // The sum is f64 so a long row (thousands of keys) adds no error beyond the f32 exponentials.
    let sum = super::fast_exp::exp_shifted_sum(live, m);
    let inv = (1.0 / sum) as f32;
    live.iter_mut().for_each(|v| *v *= inv);
}

/// Attention within consecutive blocks of `blocks[b]` tokens (bidirectional; flash-attention's
/// `cu_seqlens`): q `[n, heads*head_dim]`, k / v `[n, kv_heads*head_dim]`. Blocks run in parallel, each
/// as a one-segment `attention` over its own rows.
pub(crate) fn block_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    blocks: &[usize],
    s: &AttnShape,
    out: &mut [f32],
) {
    let (hd, kd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let mut jobs = Vec::with_capacity(blocks.len());
    let mut rest = out;
    let mut start = 0;
    for &len in blocks.iter().filter(|&&len| len > 0) {
        let (o, tail) = rest.split_at_mut(len * hd);
        jobs.push((start, len, o));
        rest = tail;
        start += len;
    }
    jobs.into_par_iter().for_each(|(start, len, o)| {
        let seg = Segment {
            k: &k[start * kd..(start + len) * kd],
            v: &v[start * kd..(start + len) * kd],
            len,
            rows: len,
        };
        let shape = AttnShape {
            nq: len,
            causal: false,
            ..*s
        };
        attention(&q[start * hd..(start + len) * hd], &[seg], &shape, o);
    });
}

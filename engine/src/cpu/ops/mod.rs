//! f32 kernels over plain slices, one file per family. Shapes come in as arguments already checked by the
//! executor's validation, so a kernel only asserts its internal invariants.

pub(crate) mod aligned;
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx_tiles;
pub(crate) mod attention;
pub(crate) mod bf16;
pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod embed;
pub(crate) mod fast_exp;
pub(crate) mod layout;
pub(crate) mod linear;
pub(crate) mod linear_bf16;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod norm_fused;
pub(crate) mod packed_gemm;
pub(crate) mod rope;
pub(crate) mod simd;
pub(crate) mod sums;
#[cfg(test)]
pub(crate) mod test_values;
pub(crate) mod timestep;

use rayon::prelude::*;

/// Below this many values per task, rayon's scheduling costs more than it saves.
const MIN_TASK_VALUES: usize = 1 << 14;

/// Runs `f(row, out_row)` over the `row_len`-wide rows of `out`, in parallel when the tensor is large
/// enough for that to pay. `work_per_value` scales the grain for kernels heavier than a copy.
pub(crate) fn for_rows(
    out: &mut [f32],
    row_len: usize,
    work_per_value: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    let grain = (MIN_TASK_VALUES / (row_len * work_per_value.max(1))).max(1);
    if out.len() * work_per_value.max(1) <= MIN_TASK_VALUES {
        out.chunks_mut(row_len)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    } else {
        out.par_chunks_mut(row_len)
            .enumerate()
            .with_min_len(grain)
            .for_each(|(i, r)| f(i, r));
    }
}

/// `out[i] = f(i)` for an elementwise op, in parallel chunks when large.
pub(crate) fn map_indexed(out: &mut [f32], f: impl Fn(usize) -> f32 + Sync + Send) {
    const CHUNK: usize = 1 << 14;
    if out.len() <= CHUNK {
        out.iter_mut().enumerate().for_each(|(i, o)| *o = f(i));
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let base = c * CHUNK;
                chunk
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, o)| *o = f(base + i));
            });
    }
}

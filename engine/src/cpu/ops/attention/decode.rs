//! One query (a decode step): per kv head, the group's query heads are the rows of two products, so
//! K and V are each read once per kv head, in place (the GEMM path reads them once per query head
//! and packs K^T again for each). Scores `[group x keys]` = Q_g K^T (K's rows are the packed GEMM's
//! contiguous-column case), softmax per row, out_g = P V.

use super::super::matmul::{Mat, MatMut};
use super::super::packed_gemm::product;
use super::{softmax_prefix, AttnShape, Segment};
use rayon::prelude::*;

/// As [`super::attention`] for `s.nq == 1`; the query sees every key (its causal limit is the last).
pub(super) fn attention(q: &[f32], segments: &[Segment<'_>], s: &AttnShape, out: &mut [f32]) {
    let (d, kd) = (s.head_dim, s.kv_heads * s.head_dim);
    let group = s.heads / s.kv_heads;
    let keys: usize = segments.iter().map(|g| g.len).sum();
    if keys == 0 {
        out.fill(0.0);
        return;
    }
    // Query heads `j*group ..` share kv head `j`; their queries and outputs are `group*d` contiguous
    // values.
    out.par_chunks_mut(group * d)
        .enumerate()
        .for_each(|(j, o)| {
            let qg: Vec<f32> = q[j * group * d..][..group * d]
                .iter()
                .map(|&x| x * s.scale)
                .collect();
            let qg = Mat::rm(&qg, group, d);
            let mut scores = vec![0f32; group * keys];
            let mut c0 = 0;
            for seg in segments.iter().filter(|g| g.len > 0) {
                let kt = Mat {
                    data: &seg.k[j * d..],
                    rows: d,
                    cols: seg.len,
                    rs: 1,
                    cs: kd,
                };
                let dst = MatMut {
                    data: &mut scores[c0..],
                    rows: group,
                    cols: seg.len,
                    rs: keys,
                    cs: 1,
                };
                product(dst, qg, kt, false, Some(false));
                c0 += seg.len;
            }
            for row in scores.chunks_mut(keys) {
                softmax_prefix(row, keys);
            }
            let mut c0 = 0;
            for (i, seg) in segments.iter().filter(|g| g.len > 0).enumerate() {
                let p = Mat {
                    data: &scores[c0..],
                    rows: group,
                    cols: seg.len,
                    rs: keys,
                    cs: 1,
                };
                let v = Mat {
                    data: &seg.v[j * d..],
                    rows: seg.len,
                    cols: d,
                    rs: kd,
                    cs: 1,
                };
                product(MatMut::rm(o, group, d), p, v, i > 0, Some(false));
                c0 += seg.len;
            }
        });
}

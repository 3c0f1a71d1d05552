//! A few queries (a decode step, a short prompt over a long cache): per kv head, the queries of its
//! query heads are the rows of two products, so K and V are each read once per kv head, in place
//! (the GEMM path reads them once per query head and band, packing K^T again each time). Scores
//! `[queries*group x keys]` = Q_g K^T (K's rows are the packed GEMM's contiguous-column case),
//! softmax per row up to its causal limit, out_g = P V.

use super::super::matmul::{Mat, MatMut};
use super::super::packed_gemm::product;
use super::{softmax_prefix, visible_keys, AttnShape, Segment};
use rayon::prelude::*;

/// As [`super::attention`]; meant for fewer queries than the flash path takes.
pub(super) fn attention(q: &[f32], segments: &[Segment<'_>], s: &AttnShape, out: &mut [f32]) {
    let (d, hd, kd) = (s.head_dim, s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let group = s.heads / s.kv_heads;
    let keys: usize = segments.iter().map(|g| g.len).sum();
    if keys == 0 {
        out.fill(0.0);
        return;
    }
    // Row `i*group + g` of a kv head's products: query `i`, head `j*group + g`.
    let rows = s.nq * group;
    let visible: Vec<usize> = (0..s.nq).map(|i| visible_keys(segments, s, i)).collect();
    let per_kv_head: Vec<Vec<f32>> = (0..s.kv_heads)
        .into_par_iter()
        .map(|j| {
            let mut qg = vec![0f32; rows * d];
            for (r, dst) in qg.chunks_exact_mut(d).enumerate() {
                let (i, g) = (r / group, r % group);
                let src = &q[i * hd + (j * group + g) * d..][..d];
                dst.iter_mut().zip(src).for_each(|(x, &y)| *x = y * s.scale);
            }
            let qg = Mat::rm(&qg, rows, d);
            let mut scores = vec![0f32; rows * keys];
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
                    rows,
                    cols: seg.len,
                    rs: keys,
                    cs: 1,
                };
                product(dst, qg, kt, false, Some(false));
                c0 += seg.len;
            }
            for (r, row) in scores.chunks_mut(keys).enumerate() {
                softmax_prefix(row, visible[r / group]);
            }
            let mut og = vec![0f32; rows * d];
            let mut c0 = 0;
            for (n, seg) in segments.iter().filter(|g| g.len > 0).enumerate() {
                let p = Mat {
                    data: &scores[c0..],
                    rows,
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
                product(MatMut::rm(&mut og, rows, d), p, v, n > 0, Some(false));
                c0 += seg.len;
            }
            og
        })
        .collect();
    for (j, og) in per_kv_head.iter().enumerate() {
        for (r, src) in og.chunks_exact(d).enumerate() {
            let (i, g) = (r / group, r % group);
            out[i * hd + (j * group + g) * d..][..d].copy_from_slice(src);
        }
    }
}

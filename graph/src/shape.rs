//! Output shapes of ops, with the checks that make a built graph safe to execute.

use crate::op::{Op, RopeKind};
use crate::TensorId;

fn rows_cols(s: &[usize]) -> Result<(usize, usize), String> {
    match s {
        [r, c] => Ok((*r, *c)),
        _ => Err(format!("expects a [rows, cols] tensor, got {s:?}")),
    }
}

fn chw(s: &[usize]) -> Result<(usize, usize, usize), String> {
    match s {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(format!("expects a [C, H, W] tensor, got {s:?}")),
    }
}

fn is_row_of(b: &[usize], d: usize) -> bool {
    b == [d] || b == [1, d]
}

/// The output shape of `op` given its inputs' shapes, or what is inconsistent.
pub fn infer_shape<'a>(
    op: &Op,
    shape: impl Fn(TensorId) -> &'a [usize],
) -> Result<Vec<usize>, String> {
    use Op::*;
    let last = |s: &[usize]| s.last().copied().unwrap_or(1);
    Ok(match op {
        Embed { table, ids } => {
            let (_, d) = rows_cols(shape(*table))?;
            match shape(*ids) {
                [n] => vec![*n, d],
                s => return Err(format!("ids must be [N], got {s:?}")),
            }
        }
        RmsNorm { x, weight, dim, .. } => {
            let s = shape(*x);
            if *dim == 0 || s.iter().product::<usize>() % dim != 0 || last(s) % dim != 0 {
                return Err(format!("dim {dim} does not divide the rows of {s:?}"));
            }
            if let Some(w) = weight {
                if shape(*w) != [*dim] {
                    return Err(format!("weight {:?} must be [{dim}]", shape(*w)));
                }
            }
            s.to_vec()
        }
        LayerNorm { x, dim, .. } => {
            let s = shape(*x);
            if last(s) != *dim {
                return Err(format!("dim {dim} is not the last dim of {s:?}"));
            }
            s.to_vec()
        }
        Linear { x, w, bias } => {
            let (n, k) = rows_cols(shape(*x))?;
            let (out, k2) = rows_cols(shape(*w))?;
            if k != k2 {
                return Err(format!(
                    "x has {k} features, weight [{out}, {k2}] expects {k2}"
                ));
            }
            if let Some(b) = bias {
                if shape(*b) != [out] {
                    return Err(format!("bias {:?} must be [{out}]", shape(*b)));
                }
            }
            vec![n, out]
        }
        Add { a, b } => {
            let (sa, sb) = (shape(*a), shape(*b));
            if sa != sb && !is_row_of(sb, last(sa)) {
                return Err(format!("b {sb:?} is neither a's shape {sa:?} nor one row"));
            }
            sa.to_vec()
        }
        Modulate { x, scale: g } | GateResidual { x, gate: g, .. } => {
            let (sx, sg) = (shape(*x), shape(*g));
            if !is_row_of(sg, last(sx)) {
                return Err(format!("{sg:?} is not one row of {sx:?}"));
            }
            if let GateResidual { y, .. } = op {
                if shape(*y) != sx {
                    return Err(format!("y {:?} differs from x {sx:?}", shape(*y)));
                }
            }
            sx.to_vec()
        }
        Silu { x } | Gelu { x } | Affine { x, .. } => shape(*x).to_vec(),
        Reshape { x, shape: to } => {
            if to.iter().product::<usize>() != shape(*x).iter().product::<usize>() {
                return Err(format!("{:?} cannot become {to:?}", shape(*x)));
            }
            to.clone()
        }
        SwiGlu { gate, up } => {
            if shape(*gate) != shape(*up) {
                return Err(format!(
                    "gate {:?} and up {:?} differ",
                    shape(*gate),
                    shape(*up)
                ));
            }
            shape(*gate).to_vec()
        }
        Rope {
            x,
            positions,
            heads,
            head_dim,
            kind,
        } => {
            let (n, c) = rows_cols(shape(*x))?;
            if c != heads * head_dim || head_dim % 2 != 0 {
                return Err(format!(
                    "x has {c} features, expected heads {heads} * even head_dim {head_dim}"
                ));
            }
            let ok = match kind {
                RopeKind::Mrope { section, .. } => {
                    shape(*positions) == [3, n] && section.iter().sum::<usize>() * 2 == *head_dim
                }
                RopeKind::Interleaved3 { axes, .. } => {
                    shape(*positions) == [n, 3]
                        && axes.iter().sum::<usize>() == *head_dim
                        && axes.iter().all(|a| a % 2 == 0)
                }
                // h and w each rotate a quarter of the head's dims (twice, by rotate_half).
                RopeKind::Vision2d { .. } => shape(*positions) == [2, n] && head_dim % 4 == 0,
            };
            if !ok {
                return Err(format!(
                    "positions {:?} or rope sections do not fit {n} tokens of head_dim {head_dim}",
                    shape(*positions)
                ));
            }
            vec![n, c]
        }
        Attention {
            q,
            segments,
            heads,
            kv_heads,
            head_dim,
            causal,
            ..
        } => {
            let (nq, c) = rows_cols(shape(*q))?;
            if c != heads * head_dim || *kv_heads == 0 || heads % kv_heads != 0 {
                return Err(format!("q has {c} features; heads {heads}, kv_heads {kv_heads}, head_dim {head_dim} do not fit"));
            }
            if segments.is_empty() {
                return Err("has no K/V segment".into());
            }
            let mut nk = 0;
            for s in segments {
                let (sk, sv) = (shape(s.k), shape(s.v));
                let (len, ck) = rows_cols(sk)?;
                if ck != kv_heads * head_dim || sv != sk {
                    return Err(format!(
                        "segment k {sk:?} / v {sv:?} must both be [len, {}]",
                        kv_heads * head_dim
                    ));
                }
                if let Some(l) = s.len {
                    if shape(l) != [1] {
                        return Err(format!(
                            "segment length {:?} must be [1] (an I32 row count)",
                            shape(l)
                        ));
                    }
                }
                nk += len;
            }
            if nk == 0 {
                return Err("has no keys: a softmax over nothing is undefined".into());
            }
            if *causal && nk < nq {
                return Err(format!(
                    "causal attention with {nq} queries over only {nk} keys"
                ));
            }
            vec![nq, c]
        }
        SliceCols { x, start, len } => {
            let (n, c) = rows_cols(shape(*x))?;
            if start + len > c {
                return Err(format!("columns {start}..{} exceed {c}", start + len));
            }
            vec![n, *len]
        }
        SliceRows { x, start, len } => {
            let (n, c) = rows_cols(shape(*x))?;
            if start + len > n {
                return Err(format!("rows {start}..{} exceed {n}", start + len));
            }
            vec![*len, c]
        }
        ConcatRows { parts } => {
            let mut rows = 0;
            let mut cols = None;
            for p in parts {
                let (r, c) = rows_cols(shape(*p))?;
                if cols.is_some_and(|k| k != c) {
                    return Err(format!(
                        "parts differ in width ({c} vs {})",
                        cols.unwrap_or(0)
                    ));
                }
                cols = Some(c);
                rows += r;
            }
            vec![rows, cols.ok_or("has no parts")?]
        }
        Patchify { x, patch } => {
            let (c, h, w) = chw(shape(*x))?;
            if *patch == 0 || h % patch != 0 || w % patch != 0 {
                return Err(format!("{h}x{w} is not a multiple of patch {patch}"));
            }
            vec![(h / patch) * (w / patch), patch * patch * c]
        }
        Unpatchify {
            x,
            patch,
            channels,
            height,
            width,
        } => {
            let (n, f) = rows_cols(shape(*x))?;
            if *patch == 0
                || height % patch != 0
                || width % patch != 0
                || n != (height / patch) * (width / patch)
                || f != patch * patch * channels
            {
                return Err(format!("[{n}, {f}] tokens do not make a {channels}x{height}x{width} latent with patch {patch}"));
            }
            vec![*channels, *height, *width]
        }
        TimestepFeatures { t, half, .. } => {
            if shape(*t) != [1] {
                return Err(format!("t must be [1], got {:?}", shape(*t)));
            }
            vec![2 * half]
        }
        Conv2d {
            x,
            w,
            bias,
            stride,
            pad,
            pad_bottom_right_only,
        } => {
            let (c, h, wd) = chw(shape(*x))?;
            let (co, ci, k) = match shape(*w) {
                [co, ci, k1, k2] if k1 == k2 => (*co, *ci, *k1),
                s => return Err(format!("weight {s:?} must be [Cout, Cin, k, k]")),
            };
            if ci != c || *stride == 0 {
                return Err(format!("input has {c} channels, weight expects {ci}"));
            }
            if let Some(b) = bias {
                if shape(*b) != [co] {
                    return Err(format!("bias {:?} must be [{co}]", shape(*b)));
                }
            }
            let extra = if *pad_bottom_right_only {
                *pad
            } else {
                2 * pad
            };
            if h + extra < k || wd + extra < k {
                return Err(format!("kernel {k} larger than the padded {h}x{wd} input"));
            }
            vec![
                co,
                (h + extra - k) / stride + 1,
                (wd + extra - k) / stride + 1,
            ]
        }
        GroupNorm {
            x,
            weight,
            bias,
            groups,
            ..
        } => {
            let (c, _, _) = chw(shape(*x))?;
            if *groups == 0 || c % groups != 0 || shape(*weight) != [c] || shape(*bias) != [c] {
                return Err(format!(
                    "{c} channels, {groups} groups, weight {:?}, bias {:?} do not fit",
                    shape(*weight),
                    shape(*bias)
                ));
            }
            shape(*x).to_vec()
        }
        Upsample2x { x } => {
            let (c, h, w) = chw(shape(*x))?;
            vec![c, 2 * h, 2 * w]
        }
        Transpose { x } => {
            let (a, b) = rows_cols(shape(*x))?;
            vec![b, a]
        }
        GatherRows { x, rows } => {
            let (n, c) = rows_cols(shape(*x))?;
            if rows.is_empty() {
                return Err("gathers no rows".into());
            }
            if let Some(bad) = rows.iter().find(|&&r| r >= n) {
                return Err(format!("row {bad} is out of range for {n} rows"));
            }
            vec![rows.len(), c]
        }
        BlockAttention {
            q,
            k,
            v,
            heads,
            kv_heads,
            head_dim,
            blocks,
            ..
        } => {
            let (n, c) = rows_cols(shape(*q))?;
            if c != heads * head_dim || *kv_heads == 0 || heads % kv_heads != 0 {
                return Err(format!("q has {c} features; heads {heads}, kv_heads {kv_heads}, head_dim {head_dim} do not fit"));
            }
            let kv = [n, kv_heads * head_dim];
            if shape(*k) != kv || shape(*v) != kv {
                return Err(format!(
                    "k {:?} / v {:?} must both be {kv:?}",
                    shape(*k),
                    shape(*v)
                ));
            }
            let total: usize = blocks.iter().sum();
            if total != n {
                return Err(format!("blocks sum to {total} tokens, q has {n}"));
            }
            vec![n, c]
        }
    })
}

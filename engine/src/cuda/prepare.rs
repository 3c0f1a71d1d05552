//! What a graph needs from the CUDA backend beyond its arena, worked out on the host before anything is
//! launched: how each input is uploaded, the scratch sizes (im2col columns, attention scratch),
//! the build-time index lists, and which nodes this backend cannot run. The launch-shaping helpers
//! (`conv_plan`, `attention_launches`) are shared with the dispatcher so sizes and launches agree.

use super::context::DevPtr;
use super::error::CudaError;
use super::ops::attention::{workspace_len, AttentionArgs, KvSegmentArgs, MAX_SEGMENTS};
use super::ops::layout::ConvGeometry;
use hbridge_graph::{DataType, Graph, Op, Source, TensorId};

/// Most bf16 elements the im2col column buffer may hold. A convolution whose columns would not fit runs
/// in bands of output rows (im2col of the band, then one GEMM writing that band's output columns), so
/// the buffer stays bounded at any image size with no change to the arithmetic. 256 Mi elements
/// (512 MiB) keeps a 1024x1024 FLUX VAE convolution to about ten bands of large GEMMs.
pub const COLS_BUDGET: usize = 1 << 28;

/// How the device holds one graph input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRepr {
    /// F32 inputs read by ordinary ops: bf16, like activations.
    Bf16,
    /// The `t` of `TimestepFeatures`: f32, so the sinusoid sees the exact step value (and a CUDA graph
    /// reads whatever value the host copies in before a replay).
    F32,
    /// Token ids and positions.
    I32,
}

/// Per graph: input representations, scratch sizes, gather index lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    /// `(input tensor, representation)`, each pair once, in tensor order.
    pub inputs: Vec<(TensorId, InputRepr)>,
    /// bf16 elements of im2col scratch.
    pub cols: usize,
    /// f32 elements of attention scratch: split-KV partials, or the wide-head path's score blocks.
    pub attn_workspace: usize,
    /// `(node index, row indices)` of every `GatherRows`, uploaded once as i32.
    pub gathers: Vec<(usize, Vec<i32>)>,
}

fn unsupported(op: &'static str, label: &str, problem: impl Into<String>) -> CudaError {
    CudaError::Unsupported {
        op,
        label: label.to_string(),
        problem: problem.into(),
    }
}

/// How one convolution runs: one GEMM on the input itself (1x1, stride 1, no padding), or im2col in
/// bands of `band` output rows, one GEMM per band.
#[derive(Debug, Clone, Copy)]
pub struct ConvPlan {
    pub geometry: ConvGeometry,
    pub cout: usize,
    pub out_h: usize,
    pub out_w: usize,
    /// `k * k`.
    pub kk: usize,
    /// Output rows per im2col band; `None` for the direct 1x1 GEMM.
    pub band: Option<usize>,
}

impl ConvPlan {
    pub fn pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    /// bf16 elements of column scratch this convolution uses.
    pub fn cols_len(&self) -> usize {
        self.band
            .map_or(0, |b| b * self.out_w * self.geometry.cin * self.kk)
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Output rows per im2col band: all of them when the columns fit [`COLS_BUDGET`]; else the most that
/// fit (at least one), rounded down where possible so that every band starts 16 bytes into the output
/// (`band * out_w` a multiple of 8 bf16), which lets cuBLASLt use its aligned kernels.
pub fn conv_band(out_h: usize, out_w: usize, per_pixel: usize) -> usize {
    let row = out_w.saturating_mul(per_pixel).max(1);
    if out_h.saturating_mul(row) <= COLS_BUDGET {
        return out_h;
    }
    let mut band = (COLS_BUDGET / row).max(1);
    let step = 8 / gcd(out_w, 8);
    if band >= step {
        band -= band % step;
    }
    band.min(out_h)
}

/// The plan of a `Conv2d` node (validated shapes).
pub fn conv_plan(graph: &Graph, op: &Op, out: TensorId) -> Option<ConvPlan> {
    let Op::Conv2d {
        x,
        w,
        stride,
        pad,
        pad_bottom_right_only,
        ..
    } = op
    else {
        return None;
    };
    let (xs, ws, os) = (
        &graph.tensor(*x).shape,
        &graph.tensor(*w).shape,
        &graph.tensor(out).shape,
    );
    let geometry = ConvGeometry {
        cin: xs[0],
        h: xs[1],
        w: xs[2],
        k: ws[2],
        stride: *stride,
        // Shape inference pads `pad` after the last row/column in both modes, and before the first
        // only when not bottom-right-only (diffusers' downsampler).
        pad_begin: if *pad_bottom_right_only { 0 } else { *pad },
        pad_end: *pad,
    };
    let kk = geometry.k * geometry.k;
    let (out_h, out_w) = (os[1], os[2]);
    let direct = geometry.k == 1 && geometry.stride == 1 && *pad == 0;
    Some(ConvPlan {
        geometry,
        cout: os[0],
        out_h,
        out_w,
        kk,
        band: (!direct).then(|| conv_band(out_h, out_w, geometry.cin * kk)),
    })
}

/// One attention launch with its segments (owned, so the args can borrow them).
#[derive(Debug, Clone)]
pub struct AttentionLaunch {
    pub q: DevPtr,
    pub out: DevPtr,
    pub q_row_stride: usize,
    pub q_batch_stride: usize,
    pub batch: usize,
    pub nq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub segments: Vec<KvSegmentArgs>,
    pub causal: bool,
    pub scale: f32,
}

impl AttentionLaunch {
    pub fn args(&self) -> AttentionArgs<'_> {
        AttentionArgs {
            q: self.q,
            q_row_stride: self.q_row_stride,
            q_batch_stride: self.q_batch_stride,
            out: self.out,
            out_row_stride: self.q_row_stride,
            out_batch_stride: self.q_batch_stride,
            batch: self.batch,
            nq: self.nq,
            heads: self.heads,
            head_dim: self.head_dim,
            segments: &self.segments,
            causal: self.causal,
            scale: self.scale,
        }
    }
}

/// The attention launches of an `Attention` or `BlockAttention` node, with tensor addresses from `ptr`
/// (bf16 element pointers) and `out` the node's output. Empty segments and empty blocks are dropped
/// (nothing to attend to or nothing to write). `BlockAttention` runs each group of consecutive blocks of
/// equal length as one batched launch (batch row stride = one block), so a vision tower's uniform
/// windows take one launch.
pub fn attention_launches(
    graph: &Graph,
    op: &Op,
    out: DevPtr,
    ptr: impl Fn(TensorId) -> DevPtr,
) -> Vec<AttentionLaunch> {
    let bf16 = 2;
    match op {
        Op::Attention {
            q,
            segments,
            heads,
            kv_heads,
            head_dim,
            causal,
            scale,
        } => {
            let kv_row = kv_heads * head_dim;
            let segs = segments
                .iter()
                .map(|s| (s, graph.tensor(s.k).shape[0]))
                .filter(|(_, len)| *len > 0)
                .map(|(s, len)| KvSegmentArgs {
                    k: ptr(s.k),
                    v: ptr(s.v),
                    len,
                    row_stride: kv_row,
                    batch_stride: 0,
                    kv_heads: *kv_heads,
                    valid_len: s.len.map(&ptr),
                })
                .collect();
            vec![AttentionLaunch {
                q: ptr(*q),
                out,
                q_row_stride: heads * head_dim,
                q_batch_stride: 0,
                batch: 1,
                nq: graph.tensor(*q).shape[0],
                heads: *heads,
                head_dim: *head_dim,
                segments: segs,
                causal: *causal,
                scale: *scale,
            }]
        }
        Op::BlockAttention {
            q,
            k,
            v,
            heads,
            kv_heads,
            head_dim,
            scale,
            blocks,
        } => {
            let (q_row, kv_row) = (heads * head_dim, kv_heads * head_dim);
            let mut launches = Vec::new();
            let mut start = 0;
            for (len, count) in equal_runs(blocks) {
                if len > 0 {
                    launches.push(AttentionLaunch {
                        q: ptr(*q).offset(start * q_row, bf16),
                        out: out.offset(start * q_row, bf16),
                        q_row_stride: q_row,
                        q_batch_stride: len * q_row,
                        batch: count,
                        nq: len,
                        heads: *heads,
                        head_dim: *head_dim,
                        segments: vec![KvSegmentArgs {
                            k: ptr(*k).offset(start * kv_row, bf16),
                            v: ptr(*v).offset(start * kv_row, bf16),
                            len,
                            row_stride: kv_row,
                            batch_stride: len * kv_row,
                            kv_heads: *kv_heads,
                            valid_len: None,
                        }],
                        causal: false,
                        scale: *scale,
                    });
                }
                start += len * count;
            }
            launches
        }
        _ => Vec::new(),
    }
}

/// `blocks` as runs of consecutive equal lengths: `(length, how many)`.
pub fn equal_runs(blocks: &[usize]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &b in blocks {
        match runs.last_mut() {
            Some((len, count)) if *len == b => *count += 1,
            _ => runs.push((b, 1)),
        }
    }
    runs
}

impl Needs {
    /// Works out `graph`'s needs (already validated by `cpu::validate::check`), or names the first node
    /// this backend cannot run, before anything is launched.
    pub fn of(graph: &Graph) -> Result<Needs, CudaError> {
        let mut needs = Needs::default();
        let mut repr: Vec<[bool; 3]> = vec![[false; 3]; graph.tensors.len()];
        let is_input = |id: TensorId| matches!(graph.tensor(id).source, Source::Input(_));
        for (i, node) in graph.nodes.iter().enumerate() {
            let label = graph.tensor(node.out).label.as_str();
            match &node.op {
                Op::TimestepFeatures { t, .. } => {
                    if !is_input(*t) {
                        return Err(unsupported(
                            "timestep_features",
                            label,
                            format!(
                                "`t` (`{}`) must be a graph input: the kernel reads it as f32",
                                graph.tensor(*t).label
                            ),
                        ));
                    }
                    repr[t.index()][1] = true;
                    continue;
                }
                Op::Attention { .. } | Op::BlockAttention { .. } => {
                    // Any non-null, 16-byte aligned addresses: the launcher's sizing validates them
                    // (null ones would make it report no workspace).
                    let fake = DevPtr(1 << 32);
                    for l in attention_launches(graph, &node.op, fake, |_| fake) {
                        if l.segments.len() > MAX_SEGMENTS {
                            return Err(unsupported(
                                "attention",
                                label,
                                format!(
                                    "{} non-empty K/V segments; one launch walks at most {MAX_SEGMENTS}",
                                    l.segments.len()
                                ),
                            ));
                        }
                        needs.attn_workspace = needs.attn_workspace.max(workspace_len(&l.args()));
                    }
                }
                Op::Conv2d { .. } => {
                    if let Some(p) = conv_plan(graph, &node.op, node.out) {
                        needs.cols = needs.cols.max(p.cols_len());
                    }
                }
                Op::GatherRows { rows, .. } => {
                    let rows = rows
                        .iter()
                        .map(|&r| i32::try_from(r))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| {
                            unsupported("gather_rows", label, "a row index exceeds i32")
                        })?;
                    needs.gathers.push((i, rows));
                }
                _ => {}
            }
            for id in node.op.inputs() {
                if is_input(id) {
                    let r = match graph.tensor(id).dtype {
                        DataType::I32 => 2,
                        DataType::F32 => 0,
                    };
                    repr[id.index()][r] = true;
                }
            }
        }
        // A state write reads its source (bf16) and its row (i32) after the last node.
        for w in &graph.state_writes {
            if is_input(w.src) {
                repr[w.src.index()][0] = true;
            }
            if is_input(w.row) {
                repr[w.row.index()][2] = true;
            }
        }
        for (i, r) in repr.iter().enumerate() {
            for (j, kind) in [InputRepr::Bf16, InputRepr::F32, InputRepr::I32]
                .into_iter()
                .enumerate()
            {
                if r[j] {
                    needs.inputs.push((TensorId(i as u32), kind));
                }
            }
        }
        Ok(needs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbridge_graph::KvSegment;

    #[test]
    fn equal_runs_group_consecutive_blocks() {
        assert_eq!(
            equal_runs(&[64, 64, 64, 20, 0, 64, 64]),
            vec![(64, 3), (20, 1), (0, 1), (64, 2)]
        );
        assert!(equal_runs(&[]).is_empty());
    }

    #[test]
    fn conv_bands_fit_the_budget_and_start_aligned() {
        assert_eq!(conv_band(64, 64, 9 * 128), 64);
        // FLUX VAE: 256 channels, 3x3, 1024x1024 output.
        let per = 9 * 256;
        let b = conv_band(1024, 1024, per);
        assert!(
            b * 1024 * per <= COLS_BUDGET && (b + 1) * 1024 * per > COLS_BUDGET,
            "{b}"
        );
        assert_eq!(1024usize.div_ceil(b), 10);
        // An odd width: bands of a multiple of 8 rows keep every band start 16-byte aligned.
        let b = conv_band(1001, 1001, per);
        assert_eq!(b % 8, 0);
        assert!(b * 1001 * per <= COLS_BUDGET);
        // A single row over the budget still runs, one row at a time.
        assert_eq!(conv_band(5, 3, COLS_BUDGET), 1);
    }

    fn graph_with_inputs() -> (Graph, TensorId, TensorId, TensorId) {
        let mut g = Graph::default();
        let t = g.input("t", &[1], DataType::F32);
        let ids = g.input("ids", &[3], DataType::I32);
        let x = g.input("x", &[3, 8], DataType::F32);
        (g, t, ids, x)
    }

    #[test]
    fn inputs_get_their_device_representation() {
        let (mut g, t, ids, x) = graph_with_inputs();
        let table = g.weight(hbridge_loader::Part::Und, "table", &[10, 8]);
        let f = g
            .push(
                Op::TimestepFeatures {
                    t,
                    half: 4,
                    scale: 1.0,
                },
                "temb",
            )
            .unwrap();
        let e = g.push(Op::Embed { table, ids }, "e").unwrap();
        let s = g.push(Op::Add { a: e, b: x }, "s").unwrap();
        // `t` also read as an ordinary tensor: it needs both copies.
        let _ = g.push(Op::Add { a: f, b: f }, "ff").unwrap();
        let _ = g
            .push(
                Op::Affine {
                    x: t,
                    scale: 2.0,
                    shift: 0.0,
                },
                "t2",
            )
            .unwrap();
        let _ = s;
        let n = Needs::of(&g).unwrap();
        assert_eq!(
            n.inputs,
            vec![
                (t, InputRepr::Bf16),
                (t, InputRepr::F32),
                (ids, InputRepr::I32),
                (x, InputRepr::Bf16)
            ]
        );
        assert_eq!((n.cols, n.attn_workspace), (0, 0));
    }

    #[test]
    fn a_computed_timestep_is_refused_with_the_node_label() {
        let (mut g, t, _, _) = graph_with_inputs();
        let t2 = g
            .push(
                Op::Affine {
                    x: t,
                    scale: 2.0,
                    shift: 0.0,
                },
                "t2",
            )
            .unwrap();
        g.push(
            Op::TimestepFeatures {
                t: t2,
                half: 4,
                scale: 1.0,
            },
            "gen.temb",
        )
        .unwrap();
        match Needs::of(&g) {
            Err(CudaError::Unsupported { op, label, problem }) => {
                assert_eq!((op, label.as_str()), ("timestep_features", "gen.temb"));
                assert!(problem.contains("t2"), "{problem}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attention_segments_and_blocks_become_launches() {
        let mut g = Graph::default();
        let q = g.input("q", &[5, 2 * 4], DataType::F32);
        let k0 = g.input("k0", &[0, 4], DataType::F32);
        let k1 = g.input("k1", &[7, 4], DataType::F32);
        let op = Op::Attention {
            q,
            segments: vec![KvSegment::new(k0, k0), KvSegment::new(k1, k1)],
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            causal: true,
            scale: 0.5,
        };
        let ls = attention_launches(&g, &op, DevPtr(0x1000), |id| {
            DevPtr(0x10000 * (id.0 as u64 + 1))
        });
        assert_eq!(ls.len(), 1);
        let a = ls[0].args();
        assert_eq!(
            (a.nq, a.batch, a.q_row_stride, a.segments.len()),
            (5, 1, 8, 1)
        );
        assert_eq!(
            (a.segments[0].len, a.segments[0].row_stride, a.segments[0].k),
            (7, 4, DevPtr(0x30000))
        );

        let kv = g.input("kv", &[10, 4], DataType::F32);
        let qb = g.input("qb", &[10, 8], DataType::F32);
        let op = Op::BlockAttention {
            q: qb,
            k: kv,
            v: kv,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            scale: 0.5,
            blocks: vec![3, 3, 0, 4],
        };
        let ls = attention_launches(&g, &op, DevPtr(0), |_| DevPtr(0));
        let shapes: Vec<_> = ls
            .iter()
            .map(|l| {
                (
                    l.batch,
                    l.nq,
                    l.q.0,
                    l.q_batch_stride,
                    l.segments[0].k.0,
                    l.segments[0].batch_stride,
                )
            })
            .collect();
        // Rows 0..6 as two blocks of 3, rows 6..10 as one of 4 (bf16: 2 bytes per element).
        assert_eq!(
            shapes,
            vec![(2, 3, 0, 24, 0, 12), (1, 4, 6 * 8 * 2, 32, 6 * 4 * 2, 16)]
        );
    }
}

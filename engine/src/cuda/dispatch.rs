//! One node: an op's attributes and input shapes -> launcher calls on bound device addresses. Shapes were
//! validated beforehand (`cpu::validate::check`) and every address bound (`bind::Bindings`), so this
//! only enqueues work: it never allocates, synchronizes or copies to the host, which is what makes a
//! whole run capturable as a CUDA graph.

use super::bind::Bindings;
use super::context::{DevPtr, Gpu};
use super::error::{CudaError, CudaResult};
use super::fuse::{self, Launch};
use super::ops::gemm::{self, GemmArgs, GemmShape, LinearArgs};
use super::ops::norm::RmsNormArgs;
use super::ops::{attention, elementwise as ew, layout, norm, rope, timestep};
use super::prepare::{attention_launches, conv_plan};
use cudarc::driver::result;
use hbridge_graph::{Graph, Node, Op, RopeKind, TensorId};

const BF16: usize = 2;

/// Fills in the node a launcher error happened at: the label of an `Unsupported` error, the `during`
/// of driver and cuBLASLt errors.
pub fn at_node(e: CudaError, label: &str) -> CudaError {
    match e {
        CudaError::Unsupported {
            op,
            label: l,
            problem,
        } if l.is_empty() => CudaError::Unsupported {
            op,
            label: label.to_string(),
            problem,
        },
        CudaError::Driver { during, message } => CudaError::Driver {
            during: format!("{during} at `{label}`"),
            message,
        },
        CudaError::Blas { during, message } => CudaError::Blas {
            during: format!("{during} at `{label}`"),
            message,
        },
        e => e,
    }
}

/// Enqueues every node of `graph` in order, adjacent pairs fused where [`fuse::plan`] says.
pub fn launch_all(gpu: &Gpu, graph: &Graph, b: &Bindings) -> CudaResult<()> {
    launch_all_marked(gpu, graph, b, &mut |_| Ok(()))
}

/// [`launch_all`], calling `mark(k)` between launches: before node `k` for `k < n` (`n` nodes), with
/// `k = n` after the last node and `k = n + 1` after the state writes. A profile records a CUDA event
/// at each mark.
pub fn launch_all_marked(
    gpu: &Gpu,
    graph: &Graph,
    b: &Bindings,
    mark: &mut dyn FnMut(usize) -> CudaResult<()>,
) -> CudaResult<()> {
    for ((i, node), fused) in graph.nodes.iter().enumerate().zip(fuse::plan(graph)) {
        mark(i)?;
        match fused {
            Launch::Node => launch(gpu, graph, b, i, node),
            Launch::Skip => Ok(()),
            _ => fuse::launch_fused(gpu, graph, b, i, fused),
        }
        .map_err(|e| at_node(e, &graph.tensor(node.out).label))?;
    }
    mark(graph.nodes.len())?;
    // After every node: no launch above reads a state row these overwrite.
    for w in &graph.state_writes {
        let (st, src) = (graph.tensor(w.state), graph.tensor(w.src));
        layout::write_rows(
            gpu,
            b.get(graph, w.src)?,
            b.get(graph, w.state)?,
            b.get(graph, w.row)?,
            src.shape[0],
            src.shape[1],
            st.shape[0],
        )
        .map_err(|e| at_node(e, &st.label))?;
    }
    mark(graph.nodes.len() + 1)
}

fn internal(op: &'static str, problem: impl Into<String>) -> CudaError {
    CudaError::Unsupported {
        op,
        label: String::new(),
        problem: problem.into(),
    }
}

/// Enqueues node `index`.
pub fn launch(gpu: &Gpu, graph: &Graph, b: &Bindings, index: usize, node: &Node) -> CudaResult<()> {
    let shape = |id: TensorId| graph.tensor(id).shape.as_slice();
    let numel = |id: TensorId| graph.tensor(id).numel();
    let p = |id: TensorId| b.get(graph, id);
    let out_id = node.out;
    if numel(out_id) == 0 {
        // Nothing to write; a zero-sized grid would be a launch error.
        return Ok(());
    }
    let out = p(out_id)?;
    match &node.op {
        Op::Embed { table, ids } => layout::embed(
            gpu,
            p(*table)?,
            p(*ids)?,
            out,
            shape(*ids)[0],
            shape(*table)[1],
        ),
        Op::GatherRows { x, rows } => {
            let idx = b
                .gathers
                .get(&index)
                .copied()
                .ok_or_else(|| internal("gather_rows", "row list not uploaded"))?;
            // A row gather is an embedding lookup with the tensor as the table.
            layout::embed(gpu, p(*x)?, idx, out, rows.len(), shape(*x)[1])
        }
        Op::RmsNorm {
            x,
            weight,
            dim,
            eps,
        } => norm::rmsnorm(
            gpu,
            &RmsNormArgs {
                x: p(*x)?,
                residual: None,
                residual_out: None,
                weight: weight.map(p).transpose()?,
                scale: None,
                gated: None,
                out,
                rows: numel(*x) / dim,
                dim: *dim,
                eps: *eps,
            },
        ),
        Op::LayerNorm { x, dim, eps } => {
            norm::layernorm(gpu, p(*x)?, out, numel(*x) / dim, *dim, *eps)
        }
        Op::GroupNorm {
            x,
            weight,
            bias,
            groups,
            eps,
        } => {
            let s = shape(*x);
            norm::group_norm(
                gpu,
                p(*x)?,
                p(*weight)?,
                p(*bias)?,
                out,
                s[0],
                s[1] * s[2],
                *groups,
                *eps,
            )
        }
        Op::Linear { x, w, bias } => gemm::linear(
            gpu,
            &LinearArgs {
                x: p(*x)?,
                w: p(*w)?,
                bias: bias.map(p).transpose()?,
                y: out,
                n: shape(*x)[0],
                in_features: shape(*x)[1],
                out_features: shape(*w)[0],
            },
        ),
        Op::Add { a, b: rhs } => ew::add(gpu, p(*a)?, p(*rhs)?, out, numel(*a), numel(*rhs)),
        Op::Modulate { x, scale } => {
            ew::modulate(gpu, p(*x)?, p(*scale)?, out, numel(*x), numel(*scale))
        }
        Op::GateResidual { x, gate, y } => {
            ew::gate_residual(gpu, p(*x)?, p(*gate)?, p(*y)?, out, numel(*x), numel(*gate))
        }
        Op::Affine { x, scale, shift } => ew::affine(gpu, p(*x)?, out, numel(*x), *scale, *shift),
        Op::Silu { x } => ew::silu(gpu, p(*x)?, out, numel(*x)),
        Op::Gelu { x } => ew::gelu(gpu, p(*x)?, out, numel(*x)),
        Op::SwiGlu { gate, up } => ew::swiglu(gpu, p(*gate)?, p(*up)?, out, numel(*gate)),
        Op::Rope {
            x,
            positions,
            heads,
            head_dim,
            kind,
        } => {
            let n = shape(*x)[0];
            match kind {
                RopeKind::Mrope { section, theta } => rope::mrope(
                    gpu,
                    p(*x)?,
                    p(*positions)?,
                    out,
                    heads * head_dim,
                    n,
                    *heads,
                    *head_dim,
                    *section,
                    *theta,
                ),
                RopeKind::Interleaved3 { axes, theta } => rope::interleaved3(
                    gpu,
                    p(*x)?,
                    p(*positions)?,
                    out,
                    n,
                    *heads,
                    *head_dim,
                    *axes,
                    *theta,
                ),
                RopeKind::Vision2d { theta } => rope::vision2d(
                    gpu,
                    p(*x)?,
                    p(*positions)?,
                    out,
                    n,
                    *heads,
                    *head_dim,
                    *theta,
                ),
            }
        }
        Op::Attention { .. } | Op::BlockAttention { .. } => {
            let ptrs = |id: TensorId| {
                b.ptr
                    .get(id.index())
                    .copied()
                    .flatten()
                    .unwrap_or(DevPtr(0))
            };
            for id in node.op.inputs() {
                p(id)?;
            }
            for l in attention_launches(graph, &node.op, out, ptrs) {
                attention::attention(gpu, &l.args(), b.attn_workspace)?;
            }
            Ok(())
        }
        Op::SliceCols { x, start, len } => {
            let (n, c) = (shape(*x)[0], shape(*x)[1]);
            layout::copy2d(gpu, p(*x)?.offset(*start, BF16), c, out, *len, n, *len)
        }
        Op::SliceRows { x, start, len } => {
            let c = shape(*x)[1];
            layout::copy2d(gpu, p(*x)?.offset(start * c, BF16), c, out, c, *len, c)
        }
        Op::ConcatRows { parts } => {
            let mut row = 0;
            for part in parts {
                let (r, c) = (shape(*part)[0], shape(*part)[1]);
                if r > 0 {
                    layout::copy2d(gpu, p(*part)?, c, out.offset(row * c, BF16), c, r, c)?;
                }
                row += r;
            }
            Ok(())
        }
        Op::Reshape { x, .. } => {
            // The planner gives a reshape its own storage (the input may be overwritten while the
            // output lives), so this is a copy, stream-ordered and capturable.
            let bytes = numel(*x) * BF16;
            // SAFETY: both addresses hold `numel` bf16 values (validated shapes, bound buffers).
            unsafe { result::memcpy_dtod_async(out.0, p(*x)?.0, bytes, gpu.stream().cu_stream()) }
                .map_err(|e| CudaError::driver(format!("copying {bytes} bytes for a reshape"), e))
        }
        Op::Transpose { x } => layout::transpose(gpu, p(*x)?, out, shape(*x)[0], shape(*x)[1]),
        Op::Patchify { x, patch } => {
            let s = shape(*x);
            layout::patchify(gpu, p(*x)?, out, s[0], s[1], s[2], *patch)
        }
        Op::Unpatchify {
            x,
            patch,
            channels,
            height,
            width,
        } => layout::unpatchify(gpu, p(*x)?, out, *channels, *height, *width, *patch),
        Op::Upsample2x { x } => {
            let s = shape(*x);
            layout::upsample2x(gpu, p(*x)?, out, s[0], s[1], s[2])
        }
        Op::TimestepFeatures { t, half, scale } => {
            timestep::timestep_features(gpu, b.get_f32(graph, *t)?, out, *half, *scale)
        }
        Op::Conv2d { x, w, bias, .. } => conv2d(
            gpu,
            graph,
            b,
            &node.op,
            out_id,
            (p(*x)?, p(*w)?, bias.map(p).transpose()?),
            out,
        ),
    }
}

/// `Conv2d` as GEMMs: `out [cout, P] = W [cout, cin*k*k] @ cols^T`, with `cols [rows*out_w, cin*k*k]` from
/// im2col per band of output rows (each band's GEMM writes its own output columns), or
/// `W [cout, cin] @ x [cin, P]` directly for a 1x1 convolution; then the per-channel bias.
fn conv2d(
    gpu: &Gpu,
    graph: &Graph,
    b: &Bindings,
    op: &Op,
    out_id: TensorId,
    (x, w, bias): (DevPtr, DevPtr, Option<DevPtr>),
    out: DevPtr,
) -> CudaResult<()> {
    let plan =
        conv_plan(graph, op, out_id).ok_or_else(|| internal("conv2d", "not a convolution"))?;
    let g = plan.geometry;
    if (g.out_h(), g.out_w()) != (plan.out_h, plan.out_w) {
        return Err(internal(
            "conv2d",
            format!(
                "geometry gives {}x{}, the output is {}x{}",
                g.out_h(),
                g.out_w(),
                plan.out_h,
                plan.out_w
            ),
        ));
    }
    let (p, kfull) = (plan.pixels(), g.cin * plan.kk);
    match plan.band {
        None => gemm::gemm(
            gpu,
            &GemmArgs {
                shape: GemmShape {
                    m: plan.cout,
                    n: p,
                    k: g.cin,
                    a_trans: false,
                    lda: g.cin,
                    b_trans: false,
                    ldb: p,
                    ldc: p,
                },
                a: w,
                b: x,
                c: out,
                bias: None,
                accumulate: false,
            },
        )?,
        Some(band) => {
            let (cols, cap) = b
                .cols
                .ok_or_else(|| internal("conv2d", "no im2col scratch"))?;
            if plan.cols_len() > cap {
                return Err(internal(
                    "conv2d",
                    format!(
                        "im2col needs {} elements, the scratch has {cap}",
                        plan.cols_len()
                    ),
                ));
            }
            let mut oy0 = 0;
            while oy0 < plan.out_h {
                let rows = band.min(plan.out_h - oy0);
                let n = rows * plan.out_w;
                layout::im2col_rows(gpu, x, cols, &g, oy0, rows)?;
                gemm::gemm(
                    gpu,
                    &GemmArgs {
                        shape: GemmShape {
                            m: plan.cout,
                            n,
                            k: kfull,
                            a_trans: false,
                            lda: kfull,
                            b_trans: true,
                            ldb: kfull,
                            ldc: p,
                        },
                        a: w,
                        b: cols,
                        c: out.offset(oy0 * plan.out_w, BF16),
                        bias: None,
                        accumulate: false,
                    },
                )?;
                oy0 += rows;
            }
        }
    }
    match bias {
        Some(bias) => ew::add_channel_bias(gpu, out, bias, out, plan.cout, p),
        None => Ok(()),
    }
}

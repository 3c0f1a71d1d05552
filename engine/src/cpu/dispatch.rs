//! One node: an op's attributes and input shapes -> the kernel call. Shapes were validated beforehand.

use super::error::{EngineError, Result};
use super::ops::attention::{attention, block_attention, AttnShape, Segment};
use super::ops::conv::{conv2d, Conv2dShape};
use super::ops::linear_bf16::linear_bf16;
use super::ops::norm::RowNorm;
use super::ops::{elementwise as ew, embed, layout, linear, norm, norm_fused, rope, timestep};
use super::validate::View;
use hbridge_graph::{Graph, Op, RopeKind, TensorId};

/// The node's inputs, resolved to slices.
pub(crate) struct Inputs<'a> {
    pub items: Vec<(TensorId, View<'a>)>,
}

impl<'a> Inputs<'a> {
    fn view(&self, id: TensorId) -> Option<View<'a>> {
        self.items.iter().find(|(i, _)| *i == id).map(|(_, v)| *v)
    }

    fn f32(&self, id: TensorId) -> Result<&'a [f32]> {
        match self.view(id) {
            Some(View::F32(v)) => Ok(v),
            _ => Err(EngineError::Graph {
                label: format!("tensor {}", id.0),
                problem: "expected an F32 input".into(),
            }),
        }
    }

    fn i32(&self, id: TensorId) -> Result<&'a [i32]> {
        match self.view(id) {
            Some(View::I32(v)) => Ok(v),
            _ => Err(EngineError::Graph {
                label: format!("tensor {}", id.0),
                problem: "expected an I32 input".into(),
            }),
        }
    }
}

fn rc(s: &[usize]) -> (usize, usize) {
    (s[0], s[1])
}

fn chw(s: &[usize]) -> (usize, usize, usize) {
    (s[0], s[1], s[2])
}

/// Runs `op` writing `out` (the node's output, `out_id`).
pub(crate) fn run(
    graph: &Graph,
    op: &Op,
    out_id: TensorId,
    inp: &Inputs<'_>,
    out: &mut [f32],
) -> Result<()> {
    let shape = |id: TensorId| graph.tensor(id).shape.as_slice();
    match op {
        Op::Embed { table, ids } => {
            let (vocab, d) = rc(shape(*table));
            let ids_v = inp.i32(*ids)?;
            let looked_up = match inp.view(*table) {
                Some(View::Bf16(t)) => embed::embed(t, vocab, d, ids_v, out),
                _ => embed::embed(inp.f32(*table)?, vocab, d, ids_v, out),
            };
            looked_up.map_err(|(position, id)| EngineError::TokenOutOfRange {
                tensor: graph.tensor(*ids).label.clone(),
                position,
                id: id as i64,
                vocab,
            })?;
        }
        Op::RmsNorm {
            x,
            weight,
            dim,
            eps,
        } => {
            let w = weight.map(|w| inp.f32(w)).transpose()?;
            norm::rms_norm(inp.f32(*x)?, w, *dim, *eps, out);
        }
        Op::LayerNorm { x, dim, eps } => norm::layer_norm(inp.f32(*x)?, *dim, *eps, out),
        Op::Linear { x, w, bias } => {
            let (n, k) = rc(shape(*x));
            let b = bias.map(|b| inp.f32(b)).transpose()?;
            let (xs, out_features) = (inp.f32(*x)?, shape(*w)[0]);
            match inp.view(*w) {
                Some(View::Bf16(ws)) => linear_bf16(xs, n, k, ws, out_features, b, out),
                Some(View::Packed(p)) => linear::linear_packed(xs, n, k, p, b, out),
                _ => linear::linear(xs, n, k, inp.f32(*w)?, out_features, b, out),
            }
        }
        Op::Add { a, b } => ew::add(inp.f32(*a)?, inp.f32(*b)?, out),
        Op::Modulate { x, scale } => ew::modulate(inp.f32(*x)?, inp.f32(*scale)?, out),
        Op::GateResidual { x, gate, y } => {
            ew::gate_residual(inp.f32(*x)?, inp.f32(*gate)?, inp.f32(*y)?, out)
        }
        Op::Affine { x, scale, shift } => ew::affine(inp.f32(*x)?, *scale, *shift, out),
        Op::Silu { x } => ew::silu(inp.f32(*x)?, out),
        Op::Gelu { x } => ew::gelu(inp.f32(*x)?, out),
        Op::SwiGlu { gate, up } => ew::swiglu(inp.f32(*gate)?, inp.f32(*up)?, out),
        Op::Rope {
            x,
            positions,
            heads,
            head_dim,
            kind,
        } => {
            let (xs, pos) = (inp.f32(*x)?, inp.i32(*positions)?);
            match kind {
                RopeKind::Mrope { section, theta } => {
                    rope::mrope(xs, pos, *heads, *head_dim, *section, *theta, out)
                }
                RopeKind::Interleaved3 { axes, theta } => {
                    rope::interleaved3(xs, pos, *heads, *head_dim, *axes, *theta, out)
                }
                RopeKind::Vision2d { theta } => {
                    rope::vision2d(xs, pos, *heads, *head_dim, *theta, out)
                }
            }
        }
        Op::Attention {
            q,
            segments,
            heads,
            kv_heads,
            head_dim,
            causal,
            scale,
        } => {
            let segs = segments
                .iter()
                .map(|s| {
                    let rows = shape(s.k)[0];
                    // Validated to lie in [0, rows] before any compute.
                    let len = match s.len {
                        Some(l) => (inp.i32(l)?[0].max(0) as usize).min(rows),
                        None => rows,
                    };
                    Ok(Segment {
                        k: inp.f32(s.k)?,
                        v: inp.f32(s.v)?,
                        len,
                        rows,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let s = AttnShape {
                nq: shape(*q)[0],
                heads: *heads,
                kv_heads: *kv_heads,
                head_dim: *head_dim,
                causal: *causal,
                scale: *scale,
            };
            attention(inp.f32(*q)?, &segs, &s, out);
        }
        Op::SliceCols { x, start, len } => {
            layout::slice_cols(inp.f32(*x)?, shape(*x)[1], *start, *len, out)
        }
        Op::SliceRows { x, start, len } => {
            let c = shape(*x)[1];
            layout::copy(&inp.f32(*x)?[start * c..(start + len) * c], out);
        }
        Op::ConcatRows { parts } => {
            let parts = parts
                .iter()
                .map(|p| inp.f32(*p))
                .collect::<Result<Vec<_>>>()?;
            layout::concat_rows(&parts, out);
        }
        Op::Patchify { x, patch } => {
            let (c, h, w) = chw(shape(*x));
            layout::patchify(inp.f32(*x)?, c, h, w, *patch, out);
        }
        Op::Unpatchify {
            x,
            patch,
            channels,
            height,
            width,
        } => layout::unpatchify(inp.f32(*x)?, *channels, *height, *width, *patch, out),
        Op::TimestepFeatures { t, half, scale } => {
            timestep::timestep_features(inp.f32(*t)?[0], *half, *scale, out)
        }
        Op::Conv2d {
            x,
            w,
            bias,
            stride,
            pad,
            pad_bottom_right_only,
        } => {
            let (cin, h, wd) = chw(shape(*x));
            let (cout, hout, wout) = chw(shape(out_id));
            let s = Conv2dShape {
                cin,
                h,
                w: wd,
                cout,
                k: shape(*w)[2],
                stride: *stride,
                pad_before: if *pad_bottom_right_only { 0 } else { *pad },
                hout,
                wout,
            };
            let b = bias.map(|b| inp.f32(b)).transpose()?;
            conv2d(inp.f32(*x)?, inp.f32(*w)?, b, &s, out);
        }
        Op::GroupNorm { .. } => group_norm(graph, op, inp, false, out)?,
        Op::Upsample2x { x } => {
            let (_, h, w) = chw(shape(*x));
            layout::upsample2x(inp.f32(*x)?, h, w, out);
        }
        Op::Transpose { x } => {
            let (a, b) = rc(shape(*x));
            layout::transpose(inp.f32(*x)?, a, b, out);
        }
        Op::Reshape { x, .. } => layout::copy(inp.f32(*x)?, out),
        Op::GatherRows { x, rows } => layout::gather_rows(inp.f32(*x)?, shape(*x)[1], rows, out),
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
            let s = AttnShape {
                nq: shape(*q)[0],
                heads: *heads,
                kv_heads: *kv_heads,
                head_dim: *head_dim,
                causal: false,
                scale: *scale,
            };
            let (qs, ks, vs) = (inp.f32(*q)?, inp.f32(*k)?, inp.f32(*v)?);
            block_attention(qs, ks, vs, blocks, &s, out);
        }
    }
    Ok(())
}

/// `op`, a `GroupNorm`, with `silu`: the SiLU of its result (the fused pair of
/// [`hbridge_graph::fusion::Kind::GroupNormSilu`], written to `out`, the SiLU's output).
pub(crate) fn group_norm(
    graph: &Graph,
    op: &Op,
    inp: &Inputs<'_>,
    silu: bool,
    out: &mut [f32],
) -> Result<()> {
    let Op::GroupNorm {
        x,
        weight,
        bias,
        groups,
        eps,
    } = op
    else {
        return Err(EngineError::Graph {
            label: op.name().into(),
            problem: "a fused GroupNorm + SiLU must start with a GroupNorm".into(),
        });
    };
    let (c, h, w) = chw(&graph.tensor(*x).shape);
    norm::group_norm(
        inp.f32(*x)?,
        c,
        h * w,
        (inp.f32(*weight)?, inp.f32(*bias)?),
        *groups,
        *eps,
        silu,
        out,
    );
    Ok(())
}

/// `gate` and `up`, two `Linear`s of one input, and the `SwiGlu` of their outputs, in one pass (the
/// group [`hbridge_graph::fusion::Kind::GateUpSwiGlu`], written to `out`, the SwiGLU's output). The
/// executor calls it only where [`linear::gate_up_fusable`] holds for the weights (packed) and rows.
pub(crate) fn gate_up_swiglu(
    graph: &Graph,
    gate: &Op,
    up: &Op,
    inp: &Inputs<'_>,
    out: &mut [f32],
) -> Result<()> {
    let (
        Op::Linear { x, w: wg, bias: bg },
        Op::Linear {
            x: x_up,
            w: wu,
            bias: bu,
        },
    ) = (gate, up)
    else {
        return Err(EngineError::Graph {
            label: gate.name().into(),
            problem: "a fused gate/up SwiGLU must start with two Linears".into(),
        });
    };
    let packed = |w: TensorId| match inp.view(w) {
        Some(View::Packed(p)) => Ok(p),
        _ => Err(EngineError::Graph {
            label: format!("tensor {}", w.0),
            problem: "a fused gate/up SwiGLU needs packed weights".into(),
        }),
    };
    if x != x_up {
        return Err(EngineError::Graph {
            label: up.name().into(),
            problem: "a fused gate/up SwiGLU's linears must share their input".into(),
        });
    }
    let (rows, _) = rc(&graph.tensor(*x).shape);
    let bias = |b: &Option<TensorId>| b.map(|b| inp.f32(b)).transpose();
    linear::gate_up_swiglu(
        inp.f32(*x)?,
        rows,
        (packed(*wg)?, bias(bg)?),
        (packed(*wu)?, bias(bu)?),
        out,
    );
    Ok(())
}

/// A row norm op's input, width and [`RowNorm`].
fn row_norm<'a>(op: &Op, inp: &Inputs<'a>) -> Result<(TensorId, usize, RowNorm<'a>)> {
    match op {
        Op::RmsNorm {
            x,
            weight,
            dim,
            eps,
        } => {
            let weight = weight.map(|w| inp.f32(w)).transpose()?;
            Ok((*x, *dim, RowNorm::Rms { weight, eps: *eps }))
        }
        Op::LayerNorm { x, dim, eps } => Ok((*x, *dim, RowNorm::Layer { eps: *eps })),
        _ => Err(EngineError::Graph {
            label: op.name().into(),
            problem: "a fused norm group must start with an RmsNorm or a LayerNorm".into(),
        }),
    }
}

/// `norm`, a row norm, and `next`, the op reading it: a `Modulate` (the group
/// [`hbridge_graph::fusion::Kind::NormModulate`]) or a `GateResidual` with it as the gated term
/// ([`hbridge_graph::fusion::Kind::NormGate`]), in one pass written to `out`, `next`'s output.
pub(crate) fn norm_then(norm: &Op, next: &Op, inp: &Inputs<'_>, out: &mut [f32]) -> Result<()> {
    let (x, dim, rn) = row_norm(norm, inp)?;
    match next {
        Op::Modulate { scale, .. } => {
            norm_fused::norm_modulate(inp.f32(x)?, rn, dim, inp.f32(*scale)?, out)
        }
        Op::GateResidual { x: res, gate, .. } => {
            norm_fused::norm_gate(inp.f32(x)?, rn, dim, (inp.f32(*res)?, inp.f32(*gate)?), out)
        }
        _ => {
            return Err(EngineError::Graph {
                label: next.name().into(),
                problem: "a fused norm group must end with a Modulate or a GateResidual".into(),
            })
        }
    }
    Ok(())
}

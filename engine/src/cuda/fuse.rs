//! Launch-time fusion: the groups of adjacent nodes `hbridge_graph::fusion` names (the memory plan
//! already keeps every member's output clear of what the group reads) run as one kernel pass:
//! - `RmsNorm` / `LayerNorm` then `Modulate` (the DiT's `norm(x) * (1 + scale)`): the norm kernel's
//!   modulation;
//! - `RmsNorm` then `GateResidual` (the DiT's `x + tanh(gate) * norm(y)`): its gated epilogue;
//! - `Add` then `RmsNorm` of the sum (the und expert's residual stream): the norm kernel's residual
//!   input, writing the sum too (still read by the next residual add), bit for bit what the two kernels
//!   write (the kernel rounds the sum to bf16 before its statistics);
//! - with the decode GEMV on (`HBRIDGE_GEMV=1`) and few rows: q/k/v as one grouped GEMV, and gate, up
//!   and the SwiGLU as one GEMV with the SwiGLU in its epilogue (gate and up never stored).
//!
//! `GroupNorm` then `SiLU` (the VAE's) runs node by node here; the CPU backend fuses it.
//!
//! The norm pairs save a read and a write of the activation (on hbridge-7b4b's gen step 41 MB, ~14 us at
//! the copy ceiling, four times per block) and a launch; their fused launch writes the second node's
//! output and never the norm's own, which nothing else reads. The add pairs and the GEMV groups save
//! launches: per und layer 2 + 2 + 2 of the 16 kernels of hbridge-7b4b's decode step. A group the kernels
//! cannot take as it is (alignment, GEMV off, too many rows) runs node by node.

use super::bind::Bindings;
use super::context::Gpu;
use super::dispatch;
use super::error::{CudaError, CudaResult};
use super::ops::gemm::LinearArgs;
use super::ops::gemv;
use super::ops::norm::{self, Gated, LayerNormArgs, RmsNormArgs};
use hbridge_graph::fusion::{self, Kind};
use hbridge_graph::{Graph, Op, TensorId};

/// What the executor launches for each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// The node's own kernel.
    Node,
    /// Nothing: the previous node's fused launch wrote this node's output.
    Skip,
    /// This norm with modulation `scale`, writing `out` (the next node's output).
    NormModulate { scale: TensorId, out: TensorId },
    /// This RMSNorm with the gated epilogue `x + tanh(gate) * norm`, writing `out`.
    NormGate {
        x: TensorId,
        gate: TensorId,
        out: TensorId,
    },
    /// This `Add` and the RMSNorm after it (of the sum, `out`) as one residual-norm launch.
    AddNorm { out: TensorId },
    /// This `Linear` and the `len - 1` after it, of the same input, as one grouped GEMV.
    LinearGroup { len: usize },
    /// This `Linear` (gate), the next (up) and the `SwiGlu` of both, as one GEMV writing `out`.
    GateUpSwiGlu { out: TensorId },
}

/// `HBRIDGE_FUSE=0` launches every node on its own (for A/B measurements).
pub const ENV: &str = "HBRIDGE_FUSE";

/// Whether fusion is on (read once: every eager run plans its launches again).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(ENV).as_deref() != Ok("0"))
}

/// The launch of every node of `graph`, in node order.
pub fn plan(graph: &Graph) -> Vec<Launch> {
    let mut plan = vec![Launch::Node; graph.nodes.len()];
    if !enabled() {
        return plan;
    }
    for (i, group) in fusion::groups(graph).into_iter().enumerate() {
        let Some(group) = group else { continue };
        let next = &graph.nodes[i + 1];
        let last = &graph.nodes[i + group.len - 1];
        plan[i] = match (group.kind, &next.op) {
            (Kind::NormModulate, Op::Modulate { scale, .. }) => Launch::NormModulate {
                scale: *scale,
                out: next.out,
            },
            (Kind::NormGate, Op::GateResidual { x, gate, .. }) => Launch::NormGate {
                x: *x,
                gate: *gate,
                out: next.out,
            },
            (Kind::AddNorm, _) => Launch::AddNorm { out: next.out },
            (Kind::LinearSiblings, _) => Launch::LinearGroup { len: group.len },
            (Kind::GateUpSwiGlu, _) => Launch::GateUpSwiGlu { out: last.out },
            _ => continue,
        };
        for skip in &mut plan[i + 1..i + group.len] {
            *skip = Launch::Skip;
        }
    }
    plan
}

/// Enqueues the fused launch `launch` of norm node `index` and the node after it (a
/// [`Launch::NormModulate`] or [`Launch::NormGate`] of [`plan`]). A gated pair whose rows or pointers
/// the gated epilogue cannot take (it is 16-byte-access only) runs unfused.
pub fn launch_fused(
    gpu: &Gpu,
    graph: &Graph,
    b: &Bindings,
    index: usize,
    launch: Launch,
) -> CudaResult<()> {
    let node = &graph.nodes[index];
    let p = |id: TensorId| b.get(graph, id);
    match launch {
        Launch::AddNorm { out } => return launch_add_norm(gpu, graph, b, index, out),
        Launch::LinearGroup { len } => return launch_linear_group(gpu, graph, b, index, len),
        Launch::GateUpSwiGlu { out } => return launch_gate_up_swiglu(gpu, graph, b, index, out),
        _ => {}
    }
    let (scale, gated, out) = match launch {
        Launch::NormModulate { scale, out } => (Some(p(scale)?), None, out),
        Launch::NormGate { x, gate, out } => (
            None,
            Some(Gated {
                x: p(x)?,
                gate: p(gate)?,
            }),
            out,
        ),
        _ => return Ok(()),
    };
    if graph.tensor(out).numel() == 0 {
        return Ok(());
    }
    let out = p(out)?;
    match node.op {
        Op::RmsNorm {
            x,
            weight,
            dim,
            eps,
        } => {
            let (x, weight) = (p(x)?, weight.map(p).transpose()?);
            if let Some(g) = gated {
                let ptrs = [x, out, g.x, g.gate].into_iter().chain(weight);
                if !norm::gated_fits(dim, &ptrs.collect::<Vec<_>>()) {
                    let next = &graph.nodes[index + 1];
                    dispatch::launch(gpu, graph, b, index, node)?;
                    return dispatch::launch(gpu, graph, b, index + 1, next);
                }
            }
            norm::rmsnorm(
                gpu,
                &RmsNormArgs {
                    x,
                    residual: None,
                    residual_out: None,
                    weight,
                    scale,
                    gated,
                    out,
                    rows: graph.tensor(node.out).numel() / dim,
                    dim,
                    eps,
                },
            )
        }
        Op::LayerNorm { x, dim, eps } if gated.is_none() => norm::layernorm_modulated(
            gpu,
            &LayerNormArgs {
                x: p(x)?,
                scale,
                out,
                rows: graph.tensor(x).numel() / dim,
                dim,
                eps,
            },
        ),
        _ => Err(CudaError::Unsupported {
            op: node.op.name(),
            label: String::new(),
            problem: format!("no fused launch {launch:?} for this op"),
        }),
    }
}

/// [`Launch::AddNorm`]: `Add` node `index` (`sum = a + b`) and the RMSNorm after it (`out = norm(sum)`)
/// as one residual-norm launch writing both.
fn launch_add_norm(
    gpu: &Gpu,
    graph: &Graph,
    b: &Bindings,
    index: usize,
    out: TensorId,
) -> CudaResult<()> {
    let (add, norm_node) = (&graph.nodes[index], &graph.nodes[index + 1]);
    let (
        Op::Add { a, b: rhs },
        Op::RmsNorm {
            weight, dim, eps, ..
        },
    ) = (&add.op, &norm_node.op)
    else {
        return Err(CudaError::Unsupported {
            op: add.op.name(),
            label: String::new(),
            problem: "an add-norm launch needs an Add followed by an RmsNorm".into(),
        });
    };
    let n = graph.tensor(add.out).numel();
    if n == 0 {
        return Ok(());
    }
    let p = |id: TensorId| b.get(graph, id);
    norm::rmsnorm(
        gpu,
        &RmsNormArgs {
            x: p(*a)?,
            residual: Some(p(*rhs)?),
            residual_out: Some(p(add.out)?),
            weight: weight.map(p).transpose()?,
            scale: None,
            gated: None,
            out: p(out)?,
            rows: n / dim,
            dim: *dim,
            eps: *eps,
        },
    )
}

/// The GEMV arguments of `Linear` node `index` (`None` for another op).
fn linear_args(graph: &Graph, b: &Bindings, index: usize) -> CudaResult<Option<LinearArgs>> {
    let node = &graph.nodes[index];
    let Op::Linear { x, w, bias } = node.op else {
        return Ok(None);
    };
    let p = |id: TensorId| b.get(graph, id);
    let (xs, ws) = (&graph.tensor(x).shape, &graph.tensor(w).shape);
    Ok(Some(LinearArgs {
        x: p(x)?,
        w: p(w)?,
        bias: bias.map(p).transpose()?,
        y: p(node.out)?,
        n: xs[0],
        in_features: xs[1],
        out_features: ws[0],
    }))
}

/// Runs nodes `index .. index + len` one by one (a group the fused kernels cannot take).
fn launch_each(gpu: &Gpu, graph: &Graph, b: &Bindings, index: usize, len: usize) -> CudaResult<()> {
    for i in index..index + len {
        dispatch::launch(gpu, graph, b, i, &graph.nodes[i])?;
    }
    Ok(())
}

/// [`Launch::LinearGroup`]: `len` linears of one input as one grouped GEMV when the GEMV is on and
/// takes them, else one by one.
fn launch_linear_group(
    gpu: &Gpu,
    graph: &Graph,
    b: &Bindings,
    index: usize,
    len: usize,
) -> CudaResult<()> {
    let products = (index..index + len)
        .map(|i| linear_args(graph, b, i))
        .collect::<CudaResult<Option<Vec<_>>>>()?;
    match products {
        Some(products) if gemv::enabled() && gemv::group_fits(&products) => {
            gemv::gemv_group(gpu, &products)
        }
        _ => launch_each(gpu, graph, b, index, len),
    }
}

/// [`Launch::GateUpSwiGlu`]: gate, up and their SwiGLU (`out`) as one GEMV when the GEMV is on and
/// takes them, else one by one.
fn launch_gate_up_swiglu(
    gpu: &Gpu,
    graph: &Graph,
    b: &Bindings,
    index: usize,
    out: TensorId,
) -> CudaResult<()> {
    let (gate, up) = (
        linear_args(graph, b, index)?,
        linear_args(graph, b, index + 1)?,
    );
    match (gate, up) {
        (Some(gate), Some(up)) if gemv::enabled() && gemv::swiglu_fits(&gate, &up) => {
            gemv::gemv_swiglu(gpu, &gate, &up, b.get(graph, out)?)
        }
        _ => launch_each(gpu, graph, b, index, 3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbridge_graph::DataType;
    use hbridge_loader::Part;

    /// A norm -> modulate -> norm -> gated residual block over rows of `d`, with its output
    /// marked; returns the graph and the block's (x, scale, gate, out) tensors.
    fn block(d: usize) -> (Graph, [TensorId; 4]) {
        let mut g = Graph::default();
        let x = g.input("x", &[3, d], DataType::F32);
        let s = g.input("s", &[d], DataType::F32);
        let gate = g.input("g", &[d], DataType::F32);
        let w = g.weight(Part::Gen, "w", &[d]);
        let n = g
            .push(
                Op::RmsNorm {
                    x,
                    weight: Some(w),
                    dim: d,
                    eps: 1e-6,
                },
                "n",
            )
            .unwrap();
        let h = g.push(Op::Modulate { x: n, scale: s }, "h").unwrap();
        let a = g
            .push(
                Op::RmsNorm {
                    x: h,
                    weight: Some(w),
                    dim: d,
                    eps: 1e-6,
                },
                "a",
            )
            .unwrap();
        let out = g.push(Op::GateResidual { x, gate, y: a }, "x").unwrap();
        g.mark_output("out", out);
        (g, [x, s, gate, out])
    }

    #[test]
    fn norms_fold_in_their_single_reader() {
        let (g, [x, s, gate, out]) = block(8);
        let p = plan(&g);
        let h = g.nodes[1].out;
        assert_eq!(
            p,
            vec![
                Launch::NormModulate { scale: s, out: h },
                Launch::Skip,
                Launch::NormGate { x, gate, out },
                Launch::Skip
            ]
        );
    }

    fn tiny_config() -> hbridge_loader::config::ModelConfig {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/model");
        hbridge_loader::config::ModelConfig::read(&dir).unwrap()
    }

    /// On a real gen step every modulated block fuses its four norm pairs, and norm_out its
    /// modulation.
    #[test]
    fn every_gen_block_fuses_four_pairs() {
        use hbridge_graph::build::{gen_step, GenStepSpec};
        let config = tiny_config();
        let spec = GenStepSpec {
            latent: [config.vae.latent_channels, 4, 6],
            context_len: 5,
            hidden_states: false,
            srt: true,
            und_kv_states: true,
        };
        let g = gen_step(&config, &spec).unwrap();
        let p = plan(&g);
        let blocks = config.gen.num_layers + config.gen.num_refiner_layers;
        let count = |f: fn(&Launch) -> bool| p.iter().filter(|l| f(l)).count();
        assert_eq!(
            count(|l| matches!(l, Launch::NormModulate { .. })),
            2 * blocks + 1
        );
        assert_eq!(count(|l| matches!(l, Launch::NormGate { .. })), 2 * blocks);
        // Every fused launch skips the rest of its group: the norm pairs one node, the linear groups
        // (q/k/v; only a GEMV of few rows runs them as one) their length less one.
        let group_skips: usize = p
            .iter()
            .map(|l| match l {
                Launch::LinearGroup { len } => len - 1,
                Launch::GateUpSwiGlu { .. } => 2,
                _ => 0,
            })
            .sum();
        assert!(count(|l| matches!(l, Launch::LinearGroup { .. })) >= blocks);
        assert_eq!(count(|l| *l == Launch::Skip), 4 * blocks + 1 + group_skips);
    }

    /// The und layer's residual stream: each add feeds the next norm and the next add; both adds fold
    /// into their norms, a broadcast add or an add followed by something else does not.
    #[test]
    fn residual_adds_fold_into_the_next_norm() {
        let d = 8;
        let mut g = Graph::default();
        let x = g.input("x", &[3, d], DataType::F32);
        let y = g.input("y", &[3, d], DataType::F32);
        let row = g.input("row", &[d], DataType::F32);
        let w = g.weight(Part::Und, "w", &[d]);
        let norm = |g: &mut Graph, x: TensorId, label: &str| {
            g.push(
                Op::RmsNorm {
                    x,
                    weight: Some(w),
                    dim: d,
                    eps: 1e-6,
                },
                label,
            )
            .unwrap()
        };
        let h = g.push(Op::Add { a: x, b: y }, "h").unwrap();
        let n1 = norm(&mut g, h, "n1");
        let h2 = g.push(Op::Add { a: h, b: n1 }, "h2").unwrap();
        let n2 = norm(&mut g, h2, "n2");
        let h3 = g.push(Op::Add { a: h2, b: row }, "h3").unwrap();
        let n3 = norm(&mut g, h3, "n3");
        let h4 = g.push(Op::Add { a: n3, b: n2 }, "h4").unwrap();
        g.mark_output("h4", h4);
        assert_eq!(
            plan(&g),
            vec![
                Launch::AddNorm { out: n1 },
                Launch::Skip,
                Launch::AddNorm { out: n2 },
                Launch::Skip,
                Launch::Node,
                Launch::Node,
                Launch::Node
            ]
        );
    }

    /// The decode step of the tiny und config: two residual adds per layer fold, the final norm too.
    #[test]
    fn every_und_layer_folds_its_adds_qkv_and_gate_up() {
        use hbridge_graph::build::und_decode_step;
        let config = tiny_config();
        let names = hbridge_loader::manifest::UndNames::NESTED;
        let g = und_decode_step(&config.und, &names, 16).unwrap();
        let p = plan(&g);
        let count = |f: fn(&Launch) -> bool| p.iter().filter(|l| f(l)).count();
        let layers = config.und.num_layers;
        assert_eq!(count(|l| matches!(l, Launch::AddNorm { .. })), 2 * layers);
        assert_eq!(
            count(|l| *l == Launch::LinearGroup { len: 3 }),
            layers,
            "q, k and v"
        );
        assert_eq!(count(|l| matches!(l, Launch::GateUpSwiGlu { .. })), layers);
    }

    #[test]
    fn a_norm_read_twice_or_per_head_stays_unfused() {
        let d = 8;
        let (mut g, _) = block(d);
        // The first norm is also an output: it must be written, so it runs on its own.
        let n = g.nodes[0].out;
        g.mark_output("n", n);
        let p = plan(&g);
        assert_eq!(&p[..2], &[Launch::Node, Launch::Node]);
        assert!(matches!(p[2], Launch::NormGate { .. }));

        // A per-head norm (dim 4 over rows of 8) followed by a row modulation is not this fusion.
        let mut g = Graph::default();
        let x = g.input("x", &[3, d], DataType::F32);
        let s = g.input("s", &[d], DataType::F32);
        let n = g
            .push(
                Op::RmsNorm {
                    x,
                    weight: None,
                    dim: 4,
                    eps: 1e-6,
                },
                "n",
            )
            .unwrap();
        let h = g.push(Op::Modulate { x: n, scale: s }, "h").unwrap();
        g.mark_output("h", h);
        assert_eq!(plan(&g), vec![Launch::Node, Launch::Node]);
    }
}

//! Launch-time fusion: the adjacent node pairs `hbridge_graph::fusion` names (the memory plan already
//! keeps each pair's second output clear of what the first node reads) run as one kernel pass:
//! - `RmsNorm` / `LayerNorm` then `Modulate` (the DiT's `norm(x) * (1 + scale)`): the norm kernel's
//!   modulation;
//! - `RmsNorm` then `GateResidual` (the DiT's `x + tanh(gate) * norm(y)`): its gated epilogue;
//! - `Add` then `RmsNorm` of the sum (the und expert's residual stream): the norm kernel's residual
//!   input, writing the sum too (still read by the next residual add), bit for bit what the two kernels
//!   write (the kernel rounds the sum to bf16 before its statistics).
//!
//! The norm pairs save a read and a write of the activation (on hbridge-7b4b's gen step 41 MB, ~14 us at
//! the copy ceiling, four times per block) and a launch; their fused launch writes the second node's
//! output and never the norm's own, which nothing else reads. The add pairs save a launch and a pass,
//! twice per und layer: 56 of the ~450 launches of hbridge-7b4b's decode step.

use super::bind::Bindings;
use super::context::Gpu;
use super::dispatch;
use super::error::{CudaError, CudaResult};
use super::ops::norm::{self, Gated, LayerNormArgs, RmsNormArgs};
use hbridge_graph::fusion::{self, Pair};
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
}

/// `HBRIDGE_FUSE=0` launches every node on its own (for A/B measurements).
pub const ENV: &str = "HBRIDGE_FUSE";

/// The launch of every node of `graph`, in node order.
pub fn plan(graph: &Graph) -> Vec<Launch> {
    let mut plan = vec![Launch::Node; graph.nodes.len()];
    if std::env::var(ENV).as_deref() == Ok("0") {
        return plan;
    }
    for (i, pair) in fusion::pairs(graph).into_iter().enumerate() {
        let Some(pair) = pair else { continue };
        let next = &graph.nodes[i + 1];
        plan[i] = match (pair, &next.op) {
            (Pair::NormModulate, Op::Modulate { scale, .. }) => Launch::NormModulate {
                scale: *scale,
                out: next.out,
            },
            (Pair::NormGate, Op::GateResidual { x, gate, .. }) => Launch::NormGate {
                x: *x,
                gate: *gate,
                out: next.out,
            },
            (Pair::AddNorm, _) => Launch::AddNorm { out: next.out },
            _ => continue,
        };
        plan[i + 1] = Launch::Skip;
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
    if let Launch::AddNorm { out } = launch {
        return launch_add_norm(gpu, graph, b, index, out);
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
        Launch::Node | Launch::Skip | Launch::AddNorm { .. } => return Ok(()),
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

    /// On a real gen step every modulated block fuses its four norm pairs, and norm_out its
    /// modulation.
    #[test]
    fn every_gen_block_fuses_four_pairs() {
        use hbridge_graph::build::{gen_step, GenStepSpec};
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/model");
        let config = hbridge_loader::config::ModelConfig::read(&dir).unwrap();
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
        assert_eq!(count(|l| *l == Launch::Skip), 4 * blocks + 1);
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
    fn every_und_layer_folds_two_adds() {
        use hbridge_graph::build::und_decode_step;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/model");
        let config = hbridge_loader::config::ModelConfig::read(&dir).unwrap();
        let names = hbridge_loader::manifest::UndNames::NESTED;
        let g = und_decode_step(&config.und, &names, 16).unwrap();
        let p = plan(&g);
        let folded = p
            .iter()
            .filter(|l| matches!(l, Launch::AddNorm { .. }))
            .count();
        assert_eq!(folded, 2 * config.und.num_layers);
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

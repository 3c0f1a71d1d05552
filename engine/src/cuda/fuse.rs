//! Launch-time fusion of adjacent nodes into one kernel pass. The graph stays op-by-op (the CPU backend
//! runs it as written); here a row norm whose only reader is the next node folds that node in:
//! - `RmsNorm` / `LayerNorm` then `Modulate` (the DiT's `norm(x) * (1 + scale)`): the norm kernel's
//!   modulation;
//! - `RmsNorm` then `GateResidual` (the DiT's `x + tanh(gate) * norm(y)`): its gated epilogue.
//!
//! Each fusion saves a read and a write of the activation (on hbridge-7b4b's gen step 41 MB, ~14 us at
//! the copy ceiling, four times per block) and a launch. The fused launch writes the second node's
//! output; the norm's own output is never written, which is safe because nothing else reads it.

use super::bind::Bindings;
use super::context::Gpu;
use super::dispatch;
use super::error::{CudaError, CudaResult};
use super::ops::norm::{self, Gated, LayerNormArgs, RmsNormArgs};
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
}

/// `HBRIDGE_FUSE=0` launches every node on its own (for A/B measurements).
pub const ENV: &str = "HBRIDGE_FUSE";

/// The launch of every node of `graph`, in node order.
pub fn plan(graph: &Graph) -> Vec<Launch> {
    if std::env::var(ENV).as_deref() == Ok("0") {
        return vec![Launch::Node; graph.nodes.len()];
    }
    let mut readers = vec![0usize; graph.tensors.len()];
    for node in &graph.nodes {
        for id in node.op.inputs() {
            readers[id.index()] += 1;
        }
    }
    for (_, id) in &graph.outputs {
        readers[id.index()] += 1;
    }
    for w in &graph.state_writes {
        readers[w.src.index()] += 1;
    }
    let numel = |id: TensorId| graph.tensor(id).numel();
    let mut plan = vec![Launch::Node; graph.nodes.len()];
    for i in 0..graph.nodes.len().saturating_sub(1) {
        if plan[i] != Launch::Node {
            continue;
        }
        let (node, next) = (&graph.nodes[i], &graph.nodes[i + 1]);
        let (dim, rms) = match node.op {
            Op::RmsNorm { dim, .. } => (dim, true),
            Op::LayerNorm { dim, .. } => (dim, false),
            _ => continue,
        };
        let y = node.out;
        if readers[y.index()] != 1 {
            continue;
        }
        let fused = match next.op {
            // The modulation row must be the norm's row (not a per-head norm).
            Op::Modulate { x, scale } if x == y && numel(scale) == dim => Launch::NormModulate {
                scale,
                out: next.out,
            },
            Op::GateResidual { x, gate, y: gy }
                if rms && gy == y && x != y && numel(gate) == dim =>
            {
                Launch::NormGate {
                    x,
                    gate,
                    out: next.out,
                }
            }
            _ => continue,
        };
        plan[i] = fused;
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
        Launch::Node | Launch::Skip => return Ok(()),
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

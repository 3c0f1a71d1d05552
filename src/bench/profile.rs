//! `hbridge bench --profile`: where one run of a workload's graph spends its time, by op kind (with the
//! work each kind did, from the graph: achieved TFLOP/s or GB/s, and on CUDA the percentage of the
//! ceilings measured in the same run) and by single node, so a step can be ranked without an external
//! profiler.

use crate::model::GraphProfile;
use hbridge_engine::ceilings::Ceilings;
use hbridge_engine::profile::{KindTime, ShapeTime};
use std::fmt::Write;

/// Slowest single nodes kept per profile.
pub const SLOWEST: usize = 10;
/// Slowest compute shapes kept per profile.
pub const SHAPES: usize = 12;

/// One node among a profile's slowest.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowNode {
    /// Index in the graph's node list.
    pub index: usize,
    /// The node's output label (`gen.layers.3.attn.q`, ...).
    pub label: String,
    /// Its op kind.
    pub kind: &'static str,
    /// Its time in milliseconds.
    pub ms: f64,
}

/// One workload's per-node profile, summed by op kind.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProfile {
    /// Which graph ran: `und_prefill`, `und_decode_step` or `gen_step_cond`.
    pub workload: &'static str,
    /// Nodes in the graph.
    pub nodes: usize,
    /// Every node's time plus the state writes', in milliseconds.
    pub total_ms: f64,
    /// By op kind, slowest first.
    pub kinds: Vec<KindTime>,
    /// The [`SHAPES`] slowest shapes of the compute nodes (GEMMs by M x N x K, attention), slowest first.
    pub shapes: Vec<ShapeTime>,
    /// The [`SLOWEST`] slowest nodes, slowest first.
    pub slowest: Vec<SlowNode>,
}

/// How close one op kind came to the device's ceilings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OfCeiling {
    /// The larger of achieved FLOP/s over the GEMM ceiling and bytes/s over the copy ceiling (a GEMM at
    /// one row, as in decode, is bound by its weight stream, not its FLOPs).
    pub fraction: f64,
    /// `gemm` or `copy`: which ceiling `fraction` is of.
    pub bound: &'static str,
}

/// `k`'s fraction of the nearer ceiling (see [`OfCeiling`]).
pub fn of_ceiling(k: &KindTime, c: &Ceilings) -> OfCeiling {
    let gemm = k.flops_per_s() / c.gemm_flops_per_s;
    let copy = k.bytes_per_s() / c.copy_bytes_per_s;
    if k.is_compute() && gemm >= copy {
        OfCeiling {
            fraction: gemm,
            bound: "gemm",
        }
    } else {
        OfCeiling {
            fraction: copy,
            bound: "copy",
        }
    }
}

impl StepProfile {
    /// The summary of `p` under the name `workload`.
    pub fn new(workload: &'static str, p: &GraphProfile) -> StepProfile {
        let kinds = p.times.by_kind(&p.graph, p.elem.activation, p.elem.weight);
        let mut shapes = p.times.by_shape(&p.graph, p.elem.activation, p.elem.weight);
        shapes.truncate(SHAPES);
        let slowest = p
            .times
            .slowest(SLOWEST)
            .into_iter()
            .map(|(i, ms)| {
                let node = &p.graph.nodes[i];
                SlowNode {
                    index: i,
                    label: p.graph.tensor(node.out).label.clone(),
                    kind: node.op.name(),
                    ms: ms as f64,
                }
            })
            .collect();
        StepProfile {
            workload,
            nodes: p.graph.nodes.len(),
            total_ms: p.times.total_ms(),
            kinds,
            shapes,
            slowest,
        }
    }

    fn share(&self, ms: f64) -> f64 {
        if self.total_ms > 0.0 {
            ms / self.total_ms
        } else {
            0.0
        }
    }

    /// The printed table: one line per op kind, then the slowest nodes. The `% ceil` column only with
    /// `ceilings`.
    pub fn table(&self, ceilings: Option<&Ceilings>) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "profile {}: {} nodes, {:.3} ms in one eager run",
            self.workload, self.nodes, self.total_ms
        );
        let _ = write!(
            s,
            "  {:<18} {:>6} {:>11} {:>7} {:>10} {:>10}",
            "op kind", "nodes", "total ms", "share", "TFLOP/s", "GB/s"
        );
        let _ = writeln!(
            s,
            "{}",
            if ceilings.is_some() {
                "      % ceil"
            } else {
                ""
            }
        );
        for k in &self.kinds {
            let tflops = if k.is_compute() {
                format!("{:.3}", k.flops_per_s() / 1e12)
            } else {
                String::new()
            };
            let _ = write!(
                s,
                "  {:<18} {:>6} {:>11.3} {:>6.1}% {:>10} {:>10.1}",
                k.kind,
                k.nodes,
                k.ms,
                self.share(k.ms) * 100.0,
                tflops,
                k.bytes_per_s() / 1e9,
            );
            if k.flops == 0.0 && k.bytes == 0.0 && k.ms > 0.0 {
                // Every node of the kind was computed in an earlier node's pass (a fused SiLU or
                // SwiGLU).
                let _ = write!(s, "  fused into an earlier node");
            } else if let Some(c) = ceilings {
                let o = of_ceiling(k, c);
                let _ = write!(s, " {:>6.0}% {}", o.fraction * 100.0, o.bound);
            }
            s.push('\n');
        }
        if !self.shapes.is_empty() {
            let _ = writeln!(
                s,
                "  compute by shape (GEMMs M x N x K; convolutions in->out channels, kernel, stride, input size):{}",
                if ceilings.is_some() {
                    "  % of the compute ceiling"
                } else {
                    ""
                }
            );
            for sh in &self.shapes {
                let k = &sh.time;
                let _ = write!(
                    s,
                    "  {:<10} {:<34} {:>4} x {:>10.3} ms {:>6.1}% {:>9.3} TFLOP/s",
                    k.kind,
                    sh.shape,
                    k.nodes,
                    k.ms,
                    self.share(k.ms) * 100.0,
                    k.flops_per_s() / 1e12
                );
                if let Some(c) = ceilings {
                    let _ = write!(s, " {:>5.0}%", k.flops_per_s() / c.gemm_flops_per_s * 100.0);
                }
                s.push('\n');
            }
        }
        let _ = writeln!(s, "  slowest nodes:");
        for n in &self.slowest {
            let _ = writeln!(
                s,
                "  {:>11.3} ms {:>6.1}%  {:<16} {} (node {})",
                n.ms,
                self.share(n.ms) * 100.0,
                n.kind,
                n.label,
                n.index
            );
        }
        s
    }

    /// The profile as JSON (`hbridge bench --json`'s `profiles` entries).
    pub fn to_json(&self, ceilings: Option<&Ceilings>) -> serde_json::Value {
        let kinds: Vec<serde_json::Value> = self
            .kinds
            .iter()
            .map(|k| {
                let c = ceilings.map(|c| of_ceiling(k, c));
                serde_json::json!({
                    "kind": k.kind,
                    "nodes": k.nodes,
                    "ms": k.ms,
                    "share": self.share(k.ms),
                    "flops": k.flops,
                    "bytes": k.bytes,
                    "tflop_per_s": k.is_compute().then(|| k.flops_per_s() / 1e12),
                    "gb_per_s": k.bytes_per_s() / 1e9,
                    "of_ceiling": c.map(|c| c.fraction),
                    "bound": c.map(|c| c.bound),
                })
            })
            .collect();
        let slowest: Vec<serde_json::Value> = self
            .slowest
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node": n.index, "label": n.label, "kind": n.kind, "ms": n.ms,
                })
            })
            .collect();
        let shapes: Vec<serde_json::Value> = self
            .shapes
            .iter()
            .map(|sh| {
                let k = &sh.time;
                serde_json::json!({
                    "kind": k.kind,
                    "shape": sh.shape,
                    "nodes": k.nodes,
                    "ms": k.ms,
                    "flops": k.flops,
                    "tflop_per_s": k.flops_per_s() / 1e12,
                    "of_gemm_ceiling": ceilings.map(|c| k.flops_per_s() / c.gemm_flops_per_s),
                })
            })
            .collect();
        serde_json::json!({
            "workload": self.workload,
            "nodes": self.nodes,
            "total_ms": self.total_ms,
            "kinds": kinds,
            "shapes": shapes,
            "slowest": slowest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(flops: f64, bytes: f64) -> KindTime {
        KindTime {
            kind: "linear",
            nodes: 1,
            ms: 1.0,
            flops,
            bytes,
        }
    }

    /// A kind is held to the ceiling it comes nearer to: a large GEMM to the GEMM ceiling, a one-row
    /// GEMM (its weight stream) and any memory-bound kind to the copy ceiling.
    #[test]
    fn of_ceiling_picks_the_nearer_bound() {
        let c = Ceilings {
            gemm_flops_per_s: 800e12,
            copy_bytes_per_s: 3e12,
            gemm: String::new(),
            copy: String::new(),
        };
        let big = of_ceiling(&kind(0.4e12, 1e9), &c);
        assert_eq!(big.bound, "gemm");
        assert!((big.fraction - 0.5).abs() < 1e-12);
        let decode = of_ceiling(&kind(2e9, 1.5e9), &c);
        assert_eq!(decode.bound, "copy");
        assert!((decode.fraction - 0.5).abs() < 1e-12);
        let norm = of_ceiling(&kind(0.0, 0.3e9), &c);
        assert_eq!(norm.bound, "copy");
        assert!((norm.fraction - 0.1).abs() < 1e-12);
    }
}
